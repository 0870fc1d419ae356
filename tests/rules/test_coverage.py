"""The needs the rules declare are honest: without the evidence a rule says it needs, it finds
nothing, and the coverage says it could not judge and why."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

import gradscope
from gradscope.records import Records
from gradscope.rules import DIAGNOSE_RULES, find_rule, rule_coverage
from gradscope.rules.coverage import DEPTH_PROFILE, HEALTHY, RECIPE_PROBE, STRUCTURE, TRAINING_RUN
from gradscope.rules.example_models import report_of

NEEDS = [(rule, need) for rule in DIAGNOSE_RULES for need in rule.needs]


def _bad_report(rule):
    torch.manual_seed(0)
    report = report_of(rule.pair(bad=True))
    assert rule.slug in {f.rule for f in report.findings}
    return report


def _records(report, **without) -> Records:
    records = Records(report.history, report.layers, report.structure, report.dynamics, report.pulse,
                      tuple(report.events))
    return dataclasses.replace(records, **without)


def _shallow(records: Records) -> Records:
    """The records of the first three layers alone: too few for a depth profile."""
    keep = set(records.leaves[:3])
    history = records.history[records.history["layer"].isin(keep)]
    return Records(history, records.layers[records.layers["layer"].isin(keep)], records.structure, records.dynamics)


@pytest.mark.parametrize("rule, need", NEEDS, ids=[f"{r.slug}-{n.name}" for r, n in NEEDS])
def test_without_what_it_needs_a_rule_finds_nothing_and_says_so(rule, need):
    records = _records(_bad_report(rule))
    assert rule.check(records) and rule.missing(records) is None
    if need is STRUCTURE:
        lacking = dataclasses.replace(records, structure=None)
    elif need is RECIPE_PROBE:
        lacking = dataclasses.replace(records, dynamics=None)
    elif need is TRAINING_RUN:
        lacking = dataclasses.replace(records, pulse=pd.DataFrame(columns=["step", "alarm", "grad_norm"]), events=())
        assert rule.check(dataclasses.replace(records, pulse=None)) == []
    else:
        assert need is DEPTH_PROFILE
        lacking = _shallow(records)
    assert rule.check(lacking) == []
    assert rule.missing(lacking).startswith(need.name + ": ")
    assert rule_coverage(lacking).not_checked[rule.slug] == rule.missing(lacking)


def test_every_rule_judges_what_diagnose_records_of_a_deep_model():
    torch.manual_seed(0)
    coverage = gradscope.diagnose(**find_rule("init-mismatch").pair(bad=False)).coverage
    assert coverage.complete and coverage.checked == [r.slug for r in DIAGNOSE_RULES if not r.needs_training_run]
    assert coverage.no_findings_text() == HEALTHY


def test_a_monitor_history_has_neither_structure_nor_probe():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(8, 8), torch.nn.ReLU())])
    with gradscope.monitor(model) as mon:
        model(torch.randn(16, 8)).pow(2).mean().backward()
        mon.step()
    coverage = mon.report().coverage
    assert set(coverage.not_checked) == {r.slug for r in DIAGNOSE_RULES if STRUCTURE in r.needs or RECIPE_PROBE in r.needs}
    assert coverage.not_checked["no-skip-connections"] == (
        "model structure: only gradscope.diagnose records it, a training run's history has none")
    assert coverage.not_checked["updates-off-band"] == "recipe probe: none ran"
    assert "vanishing-gradient" in coverage.checked
