"""A training process killed with SIGKILL mid-run, for the tests of what its run directory keeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill_after(script: str, tmp_path: Path, steps: int) -> Path:
    """Run ``script`` (Python source that trains into the run directory given as its first
    argument and prints each step number once the step is done) in a subprocess, and SIGKILL it
    once ``steps`` steps are done (or after two minutes). Returns the run directory."""
    path = tmp_path / "train.py"
    path.write_text(script)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(path), str(run_dir)], stdout=subprocess.PIPE,
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
