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
