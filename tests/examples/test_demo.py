"""The README's demo runs and shows the vanishing signal it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_the_sigmoid_signal_vanishing_and_the_relu_signal_not(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/demo.py", "--steps", "20", "--log-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    drops = [float(d) for d in re.findall(r"\(([+-]\d+\.\d) orders of magnitude\)", result.stdout)]
    assert len(drops) == 2, result.stdout
    sigmoid, relu = drops
    assert sigmoid < -6 and relu > -1.5
    assert (tmp_path / "run" / "meta.json").is_file()
