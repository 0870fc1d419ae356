"""Dead units across consecutive steps and with small batches."""

from __future__ import annotations

import torch
import torch.nn as nn

import gradscope
from gradscope.rules import find_rule
from gradscope.structure import ModelStructure
from tests.rules.records import make_records

check = find_rule("dead-units").check

TYPES = {"fc": "Linear", "act": "ReLU", "out": "Linear"}


def records(fractions: list[float], batch: int | None = None):
    values = {(s, "act", "dead_fraction"): f for s, f in enumerate(fractions)}
    structure = ModelStructure("M", 0, batch, [], [], []) if batch is not None else None
    return make_records(values, TYPES, structure)


def test_dead_on_each_of_the_last_three_steps():
    [finding] = check(records([0.1, 0.6, 0.7, 0.95]))
    assert finding.severity == "error" and finding.layers == ["act"]
    assert finding.evidence["steps"] == [1, 2, 3]
    assert "model.act = nn.LeakyReLU(0.01)" in finding.fix
    assert "'fc'" in finding.fix  # the layer before it gets a positive bias


def test_recovering_units_are_not_dead():
    assert check(records([0.9, 0.2, 0.8, 0.8])) == []
    [finding] = check(records([0.2, 0.6, 0.6, 0.6]))
    assert finding.severity == "warning"


def test_small_batch_only_counts_near_total_death():
    assert check(records([0.7], batch=2)) == []
    assert check(records([0.7], batch=16)) != []
    assert check(records([0.95], batch=2)) != []


def test_most_units_dead_in_a_bottleneck_of_a_few_units_is_information():
    """A squeeze-excite-like reduction to 4 units with 3 of them dead: information, while a
    64-unit layer as dead is a warning or an error."""
    torch.manual_seed(0)

    def model(width: int) -> nn.Module:
        m = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 8))
        with torch.no_grad():
            m[0].bias[: width * 3 // 4 + (width == 64) * 8] = -100.0  # 3 of 4, or 56 of 64, never fire
        return m

    [narrow] = [f for f in gradscope.diagnose(model(4), torch.randn(32, 16), probe_steps=0).findings
                if f.rule == "dead-units"]
    assert narrow.severity == "info" and narrow.evidence["units"] == {"1": 4}
    [wide] = [f for f in gradscope.diagnose(model(64), torch.randn(32, 16), probe_steps=0).findings
              if f.rule == "dead-units"]
    assert wide.severity in ("warning", "error")
