"""Damaged run directories and baselines: exit 2, a message naming the file, no traceback, and
the files left as they were."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app


def damage_meta(run_dir, meta):
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return run_dir / "meta.json"


CASES = {
    "meta is a list": lambda d: damage_meta(d, [1, 2, 3]),
    "meta layers of the wrong shape": lambda d: damage_meta(
        d, {**json.loads((d / "meta.json").read_text()), "layers": ["a", "b"]}),
    "meta layers not a list": lambda d: damage_meta(
        d, {**json.loads((d / "meta.json").read_text()), "layers": {"a": 1}}),
    "meta not JSON": lambda d: (d / "meta.json").write_text("{not json") and d / "meta.json",
    "a part with another schema": lambda d: (
        pd.DataFrame({"x": [1.0]}).to_parquet(d / "history" / "part-000000.parquet"),
        d / "history" / "part-000000.parquet")[1],
    "a part with wrong types": lambda d: (
        pd.DataFrame({"step": ["a"], "layer": [1], "metric": ["m"], "value": ["v"]}).to_parquet(
            d / "history" / "part-000001.parquet"), d / "history" / "part-000001.parquet")[1],
    "a truncated part": lambda d: (
        (d / "history" / "part-000000.parquet").write_bytes(
            (d / "history" / "part-000000.parquet").read_bytes()[:50]),
        d / "history" / "part-000000.parquet")[1],
}


@pytest.mark.parametrize("command", ["summary", "report"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_run_directory_exits_2_naming_the_file(run_dir, tmp_path, case, command):
    damaged = CASES[case](run_dir)
    contents = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    args = [command, str(run_dir)] + (["-o", str(tmp_path / "r.html")] if command == "report" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert damaged.name in result.output
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == contents


@pytest.mark.parametrize("signal", [True, "1.0", None, float("nan"), -1.0, [1.0]])
def test_a_baseline_with_a_bad_signal_value_is_refused(tmp_path, signal):
    from gradscope.baseline import read_baseline

    path = tmp_path / "baseline.json"
    text = json.dumps({"format": "gradscope-baseline", "version": 1, "findings": [],
                       "signal": {"0": signal}})
    path.write_text(text)
    with pytest.raises(gradscope.UsageError, match="malformed \"signal\" table"):
        read_baseline(path)
    assert path.read_text() == text


def test_a_measured_nan_stays_nan_in_the_json_report():
    """A NaN that was measured is written "nan"; a statistic that does not apply is null."""
    class NaNOut(torch.nn.Module):
        def forward(self, x):
            return x * torch.nan

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), NaNOut(), torch.nn.Linear(4, 1))
    report = gradscope.diagnose(model, torch.randn(8, 4))
    rows = {row["layer"]: row for row in json.loads(report.to_json())["layers"]}
    assert rows["1"]["act_rms"] == "nan"
    assert rows["1"]["dead_fraction"] is None and rows["1"]["grad_norm"] is None


def test_a_nan_weight_gradient_beside_a_finite_bias_gradient_is_nan_for_its_module_in_every_report():
    """A module's gradient norm combines its parameters': a NaN in one of them is the module's
    value, shown "nan" in the terminal, Markdown and JSON reports; a blank means "does not apply"."""
    from rich.console import Console

    from gradscope.reporters.markdown import report_markdown
    from gradscope.reporters.terminal import TerminalReport

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.monitor(model, every=1, optimizer=opt) as mon:
        x = torch.randn(16, 4)
        x[0, 0] = torch.nan  # 0.weight's gradient x^T g is NaN in one column; 0.bias's is finite
        model(x).sum().backward()
        opt.step()
    history = mon.to_dataframe().set_index(["layer", "metric"])["value"]
    assert history[("0.weight", "grad_norm")] != history[("0.weight", "grad_norm")]
    assert history[("0.bias", "grad_norm")] > 0  # finite: a sum that skipped NaNs would show it
    report = mon.report()
    rows = {row["layer"]: row for row in json.loads(report.to_json())["layers"]}
    assert rows["0"]["grad_norm"] == "nan" and rows["1"]["grad_norm"] is None
    console = Console(width=120, record=True)
    console.print(TerminalReport(report).layer_table(width=120))
    cells = {line.split()[0]: [c.strip() for c in line.split("│")]
             for line in console.export_text().splitlines() if line[:2] in ("0 ", "1 ")}
    assert cells["0"][4] == "nan" and cells["1"][4] == ""  # weight grad: NaN, and does not apply
    table = [line for line in report_markdown(report, "t").splitlines() if line.startswith("| 0 |")]
    assert table and table[0].split("|")[4].strip() == "nan"


@pytest.mark.parametrize("damage", ["truncated pulse", "pulse of another kind", "event of another kind"])
def test_a_damaged_pulse_or_event_file_is_exit_2_naming_it(run_dir, damage):
    pulse, events = run_dir / "pulse.parquet", run_dir / "events.jsonl"
    assert pulse.exists()
    if damage == "truncated pulse":
        pulse.write_bytes(pulse.read_bytes()[:100])
    elif damage == "pulse of another kind":
        pd.DataFrame({"step": [0, 1]}).to_parquet(pulse)
    else:
        events.write_text('{"step": "abc", "alarms": 5}\n')
    result = CliRunner().invoke(app, ["summary", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (events.name if damage.startswith("event") else pulse.name) in " ".join(result.output.split())
