"""Dead units across consecutive steps and with small batches."""

from __future__ import annotations

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
