"""Baselines record the verdict; a worse verdict fails the check, a better one does not, and a
baseline written before verdicts still loads and says so."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

import gradscope
from gradscope.baseline import baseline_dict, compare, read_baseline, write_baseline
from gradscope.errors import UsageError
from gradscope.reporters.verdict import comparison_lines
from gradscope.verdict import VERDICTS


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return gradscope.diagnose(model, torch.randn(16, 8), probe_steps=2)


def labelled(report, label: str, recipe_text: str | None = None):
    recipe = report.verdict.recipe if recipe_text is None else {**report.verdict.recipe, "text": recipe_text}
    return dataclasses.replace(report, verdict=dataclasses.replace(report.verdict, label=label, recipe=recipe))


def test_the_baseline_records_the_verdict_label_reasons_and_recipe(report, tmp_path):
    write_baseline(labelled(report, "at-risk"), tmp_path / "b.json")
    recorded = read_baseline(tmp_path / "b.json")["verdict"]
    assert recorded == {"label": "at-risk", "reasons": report.verdict.reasons, "recipe": report.verdict.recipe}
    assert recorded["recipe"]["text"] == "SGD lr 0.01 momentum 0.9" and recorded["recipe"]["assumed"] is True


@pytest.mark.parametrize("before", VERDICTS)
@pytest.mark.parametrize("now", VERDICTS)
def test_a_worse_verdict_is_a_regression_and_a_better_one_an_improvement(report, before, now):
    comparison = compare(labelled(report, now), baseline_dict(labelled(report, before)), "error", 1.0)
    worse = VERDICTS.index(now) > VERDICTS.index(before)
    better = VERDICTS.index(now) < VERDICTS.index(before)
    assert (comparison.verdict_regressed, comparison.verdict_improved, comparison.failed) == (worse, better, worse)


def test_the_regression_is_said_first_and_the_improvement_with_a_hint(report):
    worse = compare(labelled(report, "fails"), baseline_dict(labelled(report, "trains")), "at-risk", 1.0)
    assert comparison_lines(worse) == [
        (True, "Verdict regressed against the baseline: trains -> fails."),
        (True, "Verdict fails: --fail-on at-risk fails the check on at-risk or fails."),
    ]
    better = compare(labelled(report, "trains"), baseline_dict(labelled(report, "at-risk")), "error", 1.0)
    assert comparison_lines(better) == [(False, "Verdict improved against the baseline: at-risk -> trains. Refresh the "
                                                "baseline with --update-baseline, so that going back to at-risk fails.")]


def test_a_changed_recipe_is_named_beside_the_verdicts(report):
    comparison = compare(labelled(report, "fails", "Adam lr 0.1"), baseline_dict(labelled(report, "trains")), "error", 1.0)
    assert comparison_lines(comparison)[0][1] == (
        "Verdict regressed against the baseline: trains -> fails (baseline under SGD lr 0.01 momentum 0.9 (assumed); "
        "now under Adam lr 0.1 (assumed)).")


def test_a_baseline_from_before_verdicts_loads_and_is_not_compared(report, tmp_path):
    old = baseline_dict(report)
    del old["verdict"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    comparison = compare(labelled(report, "fails"), read_baseline(tmp_path / "old.json"), "error", 1.0)
    assert comparison.predates_verdicts and not comparison.verdict_regressed and not comparison.failed
    assert comparison_lines(comparison) == [(False, "The baseline predates verdicts (it records none), so the verdict "
                                                    "is not compared; refresh it with --update-baseline to record one.")]


def test_a_baseline_of_a_report_without_a_verdict_records_null(report, tmp_path):
    write_baseline(dataclasses.replace(report, verdict=None), tmp_path / "b.json")
    comparison = compare(report, read_baseline(tmp_path / "b.json"), "error", 1.0)
    assert comparison.verdict_before is None and not comparison.predates_verdicts and not comparison.failed
    assert comparison_lines(comparison) == [(False, "The baseline records no verdict (nothing could be judged when "
                                                    "it was written), so the verdict is not compared; refresh it "
                                                    "with --update-baseline to record one.")]


@pytest.mark.parametrize("verdict", ['"fails"', '{"label": "broken"}', '{"label": "fails", "recipe": "SGD"}'])
def test_a_malformed_verdict_is_a_usage_error(report, tmp_path, verdict):
    text = json.dumps(baseline_dict(report)).replace('"verdict": {', '"verdict": ' + verdict + ', "was": {')
    (tmp_path / "b.json").write_text(text)
    with pytest.raises(UsageError, match=r'malformed "verdict" \(a label, one of trains, at-risk, fails, and the '
                                         r"recipe or null\); write a new one with --update-baseline"):
        read_baseline(tmp_path / "b.json")


@pytest.mark.parametrize("label, limit, fails", [
    ("trains", "at-risk", False), ("at-risk", "at-risk", True), ("fails", "at-risk", True),
    ("at-risk", "fails", False), ("fails", "fails", True),
])
def test_fail_on_a_verdict_gates_on_the_verdict_not_on_findings(report, label, limit, fails):
    comparison = compare(labelled(report, label), None, limit, 1.0)
    assert comparison.verdict_over_limit == fails and comparison.failed == fails
    assert comparison.new_findings == []


def test_fail_on_a_severity_or_never_does_not_gate_on_the_verdict(report):
    for fail_on in ("never", "info", "warning", "error"):
        assert not compare(labelled(report, "fails"), None, fail_on, 1.0).verdict_over_limit


def test_a_report_without_a_verdict_passes_a_verdict_gate(report):
    assert not compare(dataclasses.replace(report, verdict=None), None, "at-risk", 1.0).failed



def test_a_baseline_of_another_model_fails_the_check_instead_of_comparing_nothing(report):
    other = baseline_dict(report)
    other["signal"] = {f"encoder.block{name}.proj" if name else name: value for name, value in other["signal"].items()}
    assert "" in other["signal"]  # the root, in every model: no layer in common for all that
    comparison = compare(report, other, "error", 1.0)
    assert comparison.no_layer_in_common and comparison.failed and not comparison.moved
    assert comparison_lines(comparison) == [(True, f"The baseline shares none of its {len(other['signal']) - 1} layers "
                                                   "with the model (a baseline of another model, or every layer "
                                                   "renamed), so the gradient flow was not compared; if the change is "
                                                   "meant, rewrite it with --update-baseline.")]
    one_left = {**other, "signal": {**other["signal"], "0": baseline_dict(report)["signal"]["0"]}}
    assert not compare(report, one_left, "error", 1.0).failed  # compared on the layer in common


def _wrapped(report, prefix: str):
    """The baseline of ``report``'s model as if every name had ``prefix`` (the model in a container)."""
    signal = baseline_dict(report)["signal"]
    return {**baseline_dict(report), "signal": {(prefix + name if name else prefix[:-1]): value
                                                for name, value in signal.items()} | {"": signal[""]}}


def test_a_model_put_into_a_container_or_taken_out_of_one_is_compared_name_for_name():
    """Every name of a model wrapped in a container gains the container's attribute (``model.0``
    where the baseline has ``0``): the check failed as if it were another model. It compares the
    names with the prefix, says so, and still fails a layer whose signal moved."""
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(16, 8)
    plain = baseline_dict(gradscope.diagnose(inner, x, probe_steps=2))

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner

        def forward(self, x):
            return self.model(x)

    wrapped = gradscope.diagnose(Wrapper(), x, probe_steps=2)
    comparison = compare(wrapped, plain, "error", 1.0)
    assert comparison.renamed == ("", "model.") and not comparison.failed
    assert comparison.compared_layers == len([n for n in plain["signal"] if n])
    assert any("begin with 'model.'" in line for _, line in comparison_lines(comparison))
    back = compare(gradscope.diagnose(inner, x, probe_steps=2), baseline_dict(wrapped), "error", 1.0)
    assert back.renamed == ("model.", "") and not back.failed
    with torch.no_grad():
        inner[2].weight.mul_(1e-6)  # a change that breaks the gradient flow, under the new names
    broken = compare(gradscope.diagnose(Wrapper(), x, probe_steps=2), plain, "error", 1.0)
    assert broken.renamed == ("", "model.") and broken.failed and "model.0" in broken.moved


def test_a_baseline_without_a_signal_passes_on_verdict_and_findings_and_says_so(report):
    compiled_like = {**baseline_dict(report), "signal": {}}
    comparison = compare(report, compiled_like, "error", 1.0)
    assert not comparison.failed
    assert comparison_lines(comparison)[-1] == (
        False, "The baseline records no per-layer signal (no module hook ran when it was written: a compiled model, "
               "or a backward that reached no module), so only the verdict and findings are compared.")
    assert compare(labelled(report, "fails"), compiled_like, "error", 1.0).failed  # the verdict still gates


def test_a_baseline_saved_with_a_byte_order_mark_reads(report, tmp_path):
    write_baseline(report, tmp_path / "b.json")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "b.json").read_bytes())
    assert read_baseline(tmp_path / "bom.json") == read_baseline(tmp_path / "b.json")


def test_the_same_verdict_under_another_recipe_is_said(report):
    comparison = compare(labelled(report, "trains", "Adam lr 0.1"), baseline_dict(labelled(report, "trains")), "error", 1.0)
    assert not comparison.failed
    assert comparison_lines(comparison) == [(False, (
        "Verdict trains as in the baseline, but under another recipe (baseline under SGD lr 0.01 momentum 0.9 "
        "(assumed); now under Adam lr 0.1 (assumed)); refresh the baseline with --update-baseline if the new "
        "recipe is meant."))]



def test_an_unused_parameter_of_a_reached_layer_does_not_fail_the_check_against_its_own_baseline():
    """A layer the forward reaches whose extra parameter is unused by design (a ViT's mask token,
    a parameter on the root): its signal is measured, so it is not a layer the forward stopped
    reaching, and the model passes against its own baseline."""

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
            self.body[0].register_parameter("mask_token", nn.Parameter(torch.zeros(16)))
            self.unused_root = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    report = gradscope.diagnose(Unused(), torch.randn(16, 8), probe_steps=0)
    stalled = [f for f in report.findings if f.rule == "stalled-updates"]
    assert stalled and {"body.0.mask_token", "unused_root"} <= set(stalled[0].layers)
    comparison = compare(report, baseline_dict(report), "error", 1.0)
    assert not comparison.moved and not comparison.failed


def test_a_part_taken_out_of_its_container_leaves_its_siblings_missing_not_compared_with_it():
    """A baseline of Sequential(body, head), checked on body alone: body's layers are compared
    under the prefix, the head is gone. The head's name ``1`` had been kept as it was and compared
    with body's ``0.1`` renamed ``1``, which failed an unchanged body."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(16, 8)
    whole = baseline_dict(gradscope.diagnose(nn.Sequential(body, nn.Linear(4, 2)), x, probe_steps=2))
    comparison = compare(gradscope.diagnose(body, x, probe_steps=2), whole, "error", 1.0)
    assert comparison.renamed == ("0.", "") and not comparison.moved
    assert comparison.missing_layers == ["1"] and comparison.compared_layers == 4


def test_a_small_baseline_is_not_aligned_with_a_few_layers_of_a_large_other_model():
    """A 3-layer baseline against a 40-block model whose names begin with ``blocks.``: three of the
    model's 80 names met the baseline's under that prefix, and the check passed."""
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    small = baseline_dict(gradscope.diagnose(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)), x, probe_steps=0))

    class Large(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(8, 8), nn.ReLU())])

        def forward(self, x):
            return self.blocks(x)

    comparison = compare(gradscope.diagnose(Large(), x, probe_steps=0), small, "error", 1.0)
    assert comparison.renamed is None and comparison.no_layer_in_common and comparison.failed
