"""kill -9 of a training process at random points: what is on disk is read back whole by
``gradscope summary`` and ``gradscope report``, findings included."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app

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


def kill_after(tmp_path: Path, steps: int) -> Path:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if int(line) + 1 >= steps or time.monotonic() > deadline:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    return run_dir


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_killed_run_is_read_whole(tmp_path, seed):
    steps = random.Random(seed).randint(5, 40)
    run_dir = kill_after(tmp_path, steps)
    runner = CliRunner()
    result = runner.invoke(app, ["summary", str(run_dir), "--json", str(tmp_path / "s.json")])
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert len(report["layers"]) == 26  # 12 Linear, 12 Sigmoid, the output Linear, the root
    assert "vanishing-gradient" in [f["rule"] for f in report["findings"]]
    on_disk = len(list((run_dir / "history").glob("part-*.parquet")))
    assert report["options"]["steps"] == 2 * on_disk  # every complete part is read
    html = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(run_dir), "-o", str(html)])
    assert result.exit_code == 0, result.output
    assert "vanishing-gradient" in html.read_text()
