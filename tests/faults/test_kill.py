"""kill -9 of a training process at random points: what is on disk is read back whole by
``gradscope summary`` and ``gradscope report``, findings included."""

from __future__ import annotations

import json
import random
import textwrap

import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from tests.killing import kill_after

TRAIN = textwrap.dedent("""
    import sys, torch, torch.nn as nn, gradscope
    torch.manual_seed(0)
    layers = [m for _ in range(12) for m in (nn.Linear(32, 32), nn.Sigmoid())]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, optimizer=opt, log_dir=sys.argv[1], flush_every=2):
        for step in range(100000):
            model(torch.randn(16, 32)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            print(step, flush=True)
""")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_killed_run_is_read_whole(tmp_path, seed):
    steps = random.Random(seed).randint(5, 40)
    run_dir = kill_after(TRAIN, tmp_path, steps)
    runner = CliRunner()
    result = runner.invoke(app, ["summary", str(run_dir), "--json", str(tmp_path / "s.json")])
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert len(report["layers"]) == 26  # 12 Linear, 12 Sigmoid, the output Linear, the root
    assert "vanishing-gradient" in [f["rule"] for f in report["findings"]]
    assert report["options"]["status"] == "stopped without closing"  # its process is gone
    coverage = report["coverage"]  # the training rules say what they could not read, or judged the alarms
    alarms = (run_dir / "events.jsonl").exists()
    for slug in ("training-divergence", "training-spike", "rising-loss"):
        assert (slug in coverage["checked"]) if alarms else \
            "stopped before writing its every-step pulse" in coverage["not_checked"][slug]
    assert "(run stopped without closing)" in " ".join(result.output.split())
    on_disk = len(list((run_dir / "history").glob("part-*.parquet")))
    part_sizes = [min(2 ** k, 2) for k in range(on_disk)]  # 1, 2, 2, …: flush_every=2
    assert report["options"]["steps"] == sum(part_sizes)  # every complete part is read
    html = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(run_dir), "-o", str(html)])
    assert result.exit_code == 0, result.output
    assert "vanishing-gradient" in html.read_text()
