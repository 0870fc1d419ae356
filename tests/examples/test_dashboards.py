"""examples/dashboards.py writes a run directory, TensorBoard events and an HTML report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "dashboards.py"


def test_dashboards_example(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("dashboards_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        path = module.main(["--steps", "40", "--out", str(tmp_path)])
    finally:
        del sys.modules[spec.name]
    assert path.exists() and "Plotly.newPlot" in path.read_text()
    assert (tmp_path / "run" / "meta.json").exists() and (tmp_path / "run" / "findings.json").exists()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "GS101 vanishing-gradient error" in capsys.readouterr().out
