"""Gradient-norm jumps between steps of a run."""

from __future__ import annotations

import pytest

from gradscope.rules import find_rule
from tests.rules.records import make_records

check = find_rule("exploding-gradient").check

TYPES = {"fc.weight": "Linear", "fc.bias": "Linear", "out.weight": "Linear", "fc": "Linear", "out": "Linear"}


def run(norms: list[float]):
    values = {}
    for step, norm in enumerate(norms):
        values[(step, "fc.weight", "grad_norm")] = norm * 0.6
        values[(step, "fc.bias", "grad_norm")] = norm * 0.0
        values[(step, "out.weight", "grad_norm")] = norm * 0.8
    return check(make_records(values, TYPES))


def test_a_hundredfold_jump_is_reported_at_its_step():
    [finding] = run([1.0, 1.2, 0.9, 1.1, 150.0, 1.0])
    assert finding.rule == "exploding-gradient" and finding.evidence["step"] == 4
    assert finding.evidence["total_grad_norm"] == pytest.approx(150.0)
    assert finding.evidence["median_before"] == pytest.approx(1.05)
    assert finding.layers[0] == "out.weight"
    assert "max_norm=1.1" in finding.fix


def test_steady_decline_and_a_tenfold_rise_are_not_jumps():
    assert run([100.0, 30.0, 10.0, 3.0, 1.0, 0.3]) == []
    assert run([1.0, 1.0, 10.0, 12.0, 11.0]) == []
