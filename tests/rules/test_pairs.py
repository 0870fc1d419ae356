"""Every rule fires on its bad model and not on its good one (the fix applied)."""

from __future__ import annotations

import json

import pytest
import torch

import gradscope
from gradscope.rules import RULES
from gradscope.rules.pairs import PAIRS


def test_every_rule_has_a_pair():
    assert sorted(PAIRS) == sorted(rule.slug for rule in RULES)


@pytest.mark.parametrize("slug", sorted(PAIRS))
def test_bad_model_yields_the_finding_and_good_model_does_not(slug):
    torch.manual_seed(0)
    bad = gradscope.diagnose(**PAIRS[slug](bad=True))
    good = gradscope.diagnose(**PAIRS[slug](bad=False))
    rule = next(r for r in RULES if r.slug == slug)
    found = [f for f in bad.findings if f.rule == slug]
    assert found, f"{slug} not found; got {[f.rule for f in bad.findings]}"
    assert all(f.code == rule.code for f in found)
    assert found[0].layers and found[0].message and found[0].fix
    assert slug not in [f.rule for f in good.findings]
    json.loads(bad.to_json())  # serialisable, strict JSON (no bare NaN)
