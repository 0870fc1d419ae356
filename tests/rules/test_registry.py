"""The registry: every rule is found from what its findings print, and fires on its bad model and
not on its good one (the fix applied)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gradscope
from gradscope.rules import RULES
from gradscope.rules.example_models import report_of

RULES_DIR = Path(gradscope.__file__).parent / "rules"


@pytest.mark.parametrize("rule", RULES, ids=[r.slug for r in RULES])
def test_rule_lives_in_the_file_named_after_its_slug(rule):
    stem = rule.slug.replace("-", "_")
    assert rule.module == f"gradscope.rules.{stem}"
    assert rule.pair.__module__ == rule.module
    assert (RULES_DIR / f"{stem}.py").exists()


def test_no_rule_module_carries_its_own_code():
    for rule in RULES:
        source = (RULES_DIR / f"{rule.slug.replace('-', '_')}.py").read_text(encoding="utf-8")
        assert rule.code not in source, f"{rule.code} belongs in the registry, not in {rule.module}"


@pytest.mark.parametrize("rule", RULES, ids=[r.slug for r in RULES])
def test_bad_model_yields_the_finding_and_good_model_does_not(rule):
    torch.manual_seed(0)
    if rule.needs_training_run:
        bad, good = report_of(rule.pair(bad=True)), report_of(rule.pair(bad=False))
    else:
        front = getattr(gradscope, rule.front)  # gradscope.diagnose, or gradscope.coordcheck for the width rules
        bad = front(**rule.pair(bad=True))
        good = front(**rule.pair(bad=False))
    found = [f for f in bad.findings if f.rule == rule.slug]
    assert found, f"{rule.slug} not found; got {[f.rule for f in bad.findings]}"
    assert all(f.code == rule.code for f in found)
    assert found[0].layers and found[0].message and found[0].fix
    assert rule.slug not in [f.rule for f in good.findings]
    json.loads(bad.to_json())  # serialisable, strict JSON (no bare NaN)


def test_a_dead_side_branch_or_adapter_is_no_dead_network():
    """A branch whose ReLU is all dead, beside a main path that learns (a metadata side branch
    run first, a zero-initialised adapter): the output still depends on the input, so GS114 stays
    quiet, where a plain stack cut by the same dead layer fails."""
    import torch
    import torch.nn as nn

    import gradscope

    class SideBranch(nn.Module):
        def __init__(self, adapter: bool) -> None:
            super().__init__()
            self.down, self.act = nn.Linear(64, 16), nn.ReLU()
            self.up, self.body = nn.Linear(16, 64), nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
            self.adapter = adapter
            nn.init.zeros_(self.down.weight) if adapter else nn.init.constant_(self.down.bias, -100.0)
            if adapter:
                nn.init.zeros_(self.down.bias)

        def forward(self, x):
            side = self.up(self.act(self.down(x)))
            return self.body(x + side if self.adapter else x) + 0 * side.sum()

    torch.manual_seed(0)
    x = torch.randn(64, 64)
    for adapter in (False, True):
        report = gradscope.diagnose(SideBranch(adapter), x)
        assert "dead-network" not in [f.rule for f in report.findings]
    cut = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    nn.init.constant_(cut[2].bias, -100.0)
    assert "dead-network" in [f.rule for f in gradscope.diagnose(cut, x).findings]
