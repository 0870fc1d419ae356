"""Where there is no finding, every reporter prints the same line: that gradient flow looks
healthy only where every rule could judge the model, else what was checked and what was not."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import gradscope
from gradscope.reporters.html import render_html
from gradscope.reporters.markdown import findings_markdown
from gradscope.reporters.terminal import TerminalReport
from gradscope.rules.coverage import HEALTHY
from gradscope.rules.example_models import he, stack, x64
from tests.golden import WIDTH


def _rendered(report) -> dict[str, str]:
    console = Console(file=io.StringIO(), width=10_000, color_system=None)
    TerminalReport(report).print(console)
    return {"terminal": console.file.getvalue(), "markdown": findings_markdown(report),
            "html": render_html(report, "model")}


def _shallow():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2)), x64(16)


@pytest.mark.parametrize("make, complete", [(_shallow, False), (lambda: (stack(6, nn.ReLU, init=he), x64()), True)],
                         ids=["too-shallow-for-a-depth-profile", "deep-enough"])
def test_every_reporter_prints_the_reports_coverage_line(make, complete):
    torch.manual_seed(0)
    report = gradscope.diagnose(*make())
    assert report.findings == []
    line = report.no_findings_text
    assert (line == HEALTHY) == complete
    if not complete:
        assert line.startswith("No findings. Checked: nonfinite-gradient, dead-units, ")
        assert line.endswith("; not checked: vanishing-gradient, exploding-gradient (depth profile: fewer than 4 "
                             "layers (dropout and identity layers not counted) carry a backpropagated signal).")
    for name, text in _rendered(report).items():
        assert line in text, name
        assert (HEALTHY in text) == complete, name


def test_terminal_report_of_a_model_too_shallow_for_the_depth_rules_matches_the_golden_file(golden):
    report = gradscope.diagnose(*_shallow(), probe_steps=0)  # no probe: no numbers that vary in their last digit
    console = Console(file=io.StringIO(), width=WIDTH, color_system=None)
    TerminalReport(report, title="shallow.py").print(console)
    golden.text("diagnose_shallow_no_findings.txt", console.file.getvalue())


def test_tensorboard_writes_the_monitor_reports_line(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, inputs = _shallow()
    with gradscope.monitor(model, tensorboard=tmp_path) as mon:
        model(inputs).pow(2).mean().backward()
        mon.step()
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    [text] = {t.tensor_proto.string_val[0].decode() for t in accumulator.Tensors("gradscope/findings/text_summary")}
    assert text == mon.report().no_findings_text
    assert "not checked" in text and HEALTHY not in text
