"""examples/dashboards.py writes a run directory, TensorBoard events and an HTML report."""

from __future__ import annotations

import pytest

from tests.examples.scripts import example

pytest.importorskip("sklearn")


def test_dashboards_example(tmp_path, capsys):
    with example("dashboards") as module:
        path = module.main(["--steps", "40", "--out", str(tmp_path)])
    assert path.exists() and "Plotly.newPlot" in path.read_text()
    assert (tmp_path / "run" / "meta.json").exists() and (tmp_path / "run" / "findings.json").exists()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "GS101 vanishing-gradient error" in capsys.readouterr().out
