"""The verdict comes first in every output: its text (gradscope.reporters.verdict) for each kind of
report, and where each reporter puts it."""

from __future__ import annotations

import dataclasses
import io
import re
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import gradscope
from gradscope.baseline import baseline_dict, compare
from gradscope.reporters.ci import append_step_summary, github_annotations, write_junit
from gradscope.reporters.html import render_html
from gradscope.reporters.markdown import report_markdown
from gradscope.reporters.terminal import TerminalReport
from gradscope.reporters.verdict import FROM_DEFAULT, FROM_FILE, FROM_OPTIONS_OVER_FILE, verdict_text
from gradscope.verdict import Verdict

RECIPE = {"optimizer": "SGD", "lr": 0.05, "momentum": 0.9, "beta2": None, "weight_decay": 0.0, "nesterov": False,
          "clip_grad_norm": None, "assumed": False, "text": "SGD lr 0.05 momentum 0.9"}
EVIDENCE = {"probe_steps": 10, "loss_first": 2.3, "loss_last": 0.96, "loss_finite": True, "curvature": 52.5,
            "stability_threshold": 76.0, "stability_ratio": 0.69, "largest_stable_lr": 0.0724,
            "median_update_ratio": 0.00395, "probe_seconds": 0.02}


@pytest.fixture(scope="module")
def diagnosed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return gradscope.diagnose(model, torch.randn(16, 8), probe_steps=2)


def with_verdict(report, label="fails", reasons=("GS101 vanishing-gradient",), recipe=RECIPE, evidence=EVIDENCE,
                 **options):
    verdict = Verdict(label, list(reasons), recipe, dict(evidence) if recipe else {}, "")
    return dataclasses.replace(report, verdict=verdict, options={**report.options, **options})


def test_headline_reasons_and_measured_numbers(diagnosed):
    text = verdict_text(with_verdict(diagnosed, loss="loss_fn"))
    assert text.headline == "Verdict: FAILS under SGD lr 0.05 momentum 0.9"
    assert text.details == [
        "Decided by: GS101 vanishing-gradient.",
        "Loss: 2.3 -> 0.96 over 10 probe steps.",
        "Curvature: 52.5 against the recipe's stability limit 76 (0.69x); largest stable lr 0.0724.",
        "Median update ratio ‖Δw‖ / ‖w‖: 0.00395.",
        "Loss: the given loss_fn.",
    ]


@pytest.mark.parametrize("kind, expected", [
    ("default", "Loss assumed: gradscope's default, 0.5 ‖y - r‖² / (P √K) toward a fixed random target"),
    ("output[1]", "Loss: the model's own (output[1])."),
    ("output.loss", "Loss: the model's own (output.loss)."),
])
def test_the_verdict_says_which_loss_was_used(diagnosed, kind, expected):
    assert verdict_text(with_verdict(diagnosed, loss=kind)).details[4].startswith(expected)


def test_the_measured_numbers_of_a_real_probe_are_the_verdicts_evidence(diagnosed):
    evidence = diagnosed.verdict.evidence
    text = "\n".join(verdict_text(diagnosed).details)
    assert f"over {evidence['probe_steps']} probe steps" in text
    assert f"Median update ratio ‖Δw‖ / ‖w‖: {gradscope.rules.base.fmt(evidence['median_update_ratio'])}." in text


def test_missing_and_non_finite_evidence(diagnosed):
    text = verdict_text(with_verdict(diagnosed, evidence={"probe_steps": 10, "loss_first": 2.3, "loss_last": 1e30,
                                                          "loss_finite": False, "curvature": "inf"}, loss="loss_fn"))
    assert text.details[1:3] == ["Loss: 2.3 -> non-finite within 10 probe steps.", "Curvature: inf."]


def test_a_curvature_not_measured_says_why(diagnosed):
    dynamics = dataclasses.replace(diagnosed.dynamics, curvature=None, curvature_note="the reason")
    verdict = gradscope.verdict.decide([], dynamics)
    assert "curvature" not in verdict.evidence and verdict.evidence["curvature_not_measured"] == "the reason"
    assert "curvature not measured (the reason)" in verdict.message
    text = verdict_text(dataclasses.replace(diagnosed, verdict=verdict))
    assert "Curvature: not measured: the reason." in text.details


def test_a_trains_verdict_says_no_finding_predicts_failure(diagnosed):
    text = verdict_text(with_verdict(diagnosed, "trains", reasons=()))
    assert text.label == "trains" and text.details[0] == "No finding predicts failure."


@pytest.mark.parametrize("recipe_from, assumed, expected", [
    (FROM_DEFAULT, True, "Recipe assumed: SGD lr 0.05 momentum 0.9 (gradscope's default), as the model file has no "
                         "build_optimizer(model) and no recipe option was given; give the real one with --optimizer, "
                         "--lr, --momentum and --weight-decay, or define build_optimizer(model) in the model file."),
    (None, True, "Recipe assumed: SGD lr 0.05 momentum 0.9 (gradscope's default), as no optimizer was given; give the "
                 "real one: gradscope.diagnose(..., optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))."),
    (FROM_FILE, False, "Recipe from build_optimizer(model) in the model file."),
    (FROM_OPTIONS_OVER_FILE, False, "Recipe from the command line, which overrides build_optimizer(model) in the "
                                    "model file (not called); drop --optimizer, --lr, --momentum and --weight-decay "
                                    "to use it."),
])
def test_where_the_recipe_came_from_and_how_to_give_the_real_one(diagnosed, recipe_from, assumed, expected):
    report = with_verdict(diagnosed, recipe={**RECIPE, "assumed": assumed})
    if recipe_from is not None:
        report.options["recipe_from"] = recipe_from
    text = verdict_text(report)
    assert text.details[-1] == expected
    assert text.under.endswith("(assumed)") == assumed


@pytest.mark.parametrize("options, expected", [
    ({}, "No recipe probe ran, so the verdict rests on the findings alone."),
    ({"probe_steps": 0}, "No recipe probe ran (0 probe steps), so the verdict rests on the findings alone."),
    ({"probe_error": "RuntimeError: boom"},
     "The recipe probe failed (RuntimeError: boom), so the verdict rests on the findings alone."),
])
def test_without_a_probe_the_verdict_rests_on_the_findings(diagnosed, options, expected):
    text = verdict_text(with_verdict(dataclasses.replace(diagnosed, options={}), recipe=None, **options))
    assert text.headline == "Verdict: FAILS from the findings alone"
    assert text.details == ["Decided by: GS101 vanishing-gradient.", expected]


def test_a_monitor_report_has_a_verdict_without_a_probe():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with gradscope.monitor(model) as mon:
        model(torch.randn(8, 4)).pow(2).mean().backward()
        mon.step()
    text = verdict_text(mon.report())
    assert text.under == "from the findings alone"
    assert text.details[-1] == "No recipe probe ran, so the verdict rests on the findings alone."


def test_a_report_without_a_verdict_shows_none(diagnosed):
    report = dataclasses.replace(diagnosed, verdict=None)
    assert verdict_text(report) is None
    assert TerminalReport(report).verdict_lines() == []
    assert report_markdown(report, "t").startswith("## gradscope: t\n\nSequential")
    assert 'class="verdict"' not in render_html(report, "t")


def terminal(report) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    TerminalReport(report, title="model.py").print(console)
    return console.file.getvalue()


def test_terminal_report_starts_with_the_verdict(diagnosed):
    lines = terminal(with_verdict(diagnosed)).splitlines()
    assert lines[0] == "Verdict: FAILS under SGD lr 0.05 momentum 0.9"
    assert lines[1].strip() == "Decided by: GS101 vanishing-gradient."
    assert lines.index("model.py") > 4


@pytest.mark.parametrize("label, style", [("trains", "green"), ("at-risk", "yellow"), ("fails", "red")])
def test_terminal_verdict_is_coloured_by_label(diagnosed, label, style):
    headline = TerminalReport(with_verdict(diagnosed, label)).verdict_lines()[0]
    assert headline.style == f"bold {style}" and headline.plain.startswith(f"Verdict: {label.upper()}")


def test_rich_rendering_starts_with_the_verdict(diagnosed):
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(TerminalReport(with_verdict(diagnosed, "at-risk")))
    assert console.file.getvalue().startswith("Verdict: AT-RISK under SGD lr 0.05 momentum 0.9\n")


HOSTILE = {**RECIPE, "optimizer": "Evil", "text": "<b>Evil</b> **lr** \x1b[31m"}


def test_user_text_in_the_verdict_is_escaped_per_output(diagnosed):
    report = with_verdict(diagnosed, recipe=HOSTILE, probe_error=None)
    assert "\x1b" not in terminal(report) and "\\x1b[31m" in terminal(report)
    markdown = report_markdown(report, "t")
    assert "&lt;b&gt;Evil&lt;/b&gt; \\*\\*lr\\*\\*" in markdown and "<b>" not in markdown
    page = render_html(report, "t")
    assert "<b>Evil</b>" not in page and "&lt;b&gt;Evil&lt;/b&gt;" in page


def test_markdown_verdict_is_the_first_section(diagnosed):
    markdown = report_markdown(with_verdict(diagnosed), "model.py")
    assert markdown.startswith("## gradscope: model.py\n\n**Verdict: FAILS** under SGD lr 0.05 momentum 0.9\n\n"
                               "- Decided by: GS101 vanishing-gradient.\n- Loss: 2.3 -&gt; 0.96 over 10 probe steps.\n")
    assert markdown.index("**Verdict") < markdown.index("parameters")


def test_html_banner_is_at_the_top_of_the_page_in_the_verdicts_colour(diagnosed):
    page = render_html(with_verdict(diagnosed, "at-risk"), "model.py")
    banner = re.search(r'<div class="verdict" style="background:(#[0-9a-f]{6})"><div class="headline">'
                       r"<b>Verdict: AT-RISK</b> under SGD lr 0.05 momentum 0.9</div><ul><li>Decided by", page)
    assert banner and banner.group(1) == "#b26a00"
    assert page.index("</header>") < banner.start() < page.index("<main>")


def ci_outputs(report, baseline, tmp_path, monkeypatch, fail_on="error"):
    comparison = compare(report, baseline, fail_on, 1.0)
    annotations = github_annotations(report, comparison, "model.py")
    write_junit(report, comparison, tmp_path / "junit.xml", "model")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    append_step_summary(report, comparison, "model.py")
    return annotations, ET.parse(tmp_path / "junit.xml").getroot(), (tmp_path / "summary.md").read_text()


def test_ci_outputs_start_with_the_verdict_and_fail_on_a_regression(diagnosed, tmp_path, monkeypatch):
    baseline = baseline_dict(with_verdict(diagnosed, "trains", reasons=()))
    annotations, junit, summary = ci_outputs(with_verdict(diagnosed), baseline, tmp_path, monkeypatch)
    assert annotations[0].startswith("::error file=model.py,title=gradscope verdict%3A fails::Verdict: FAILS under "
                                     "SGD lr 0.05 momentum 0.9. Verdict regressed against the baseline: trains -> fails.")
    first = junit[0]
    assert first.get("name") == "verdict" and junit.get("failures") == "1"
    assert first[0].tag == "failure" and first[0].get("message") == \
        "Verdict regressed against the baseline: trains -> fails."
    assert summary.startswith("## gradscope: model.py\n\n**Verdict: FAILS**")
    assert "Gradient-flow check **failed**.\n\n- **FAIL** Verdict regressed against the baseline: trains -&gt; fails." in summary


@pytest.mark.parametrize("label, level", [("trains", "notice"), ("at-risk", "warning"), ("fails", "warning")])
def test_a_verdict_that_does_not_fail_the_check_is_a_notice_or_a_warning(diagnosed, tmp_path, monkeypatch, label, level):
    annotations, junit, _ = ci_outputs(with_verdict(diagnosed, label), None, tmp_path, monkeypatch, "never")
    assert annotations[0].startswith(f"::{level} file=model.py,title=gradscope verdict%3A {label}::")
    assert junit[0].get("name") == "verdict" and junit[0][0].tag == "system-out"
    assert junit[0][0].text.startswith(f"Verdict: {label.upper()} under SGD")
