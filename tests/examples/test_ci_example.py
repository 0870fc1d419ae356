"""examples/ci: the committed baseline passes for the committed model and a breaking change fails,
its verdict first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "ci" / "model.py"
BASELINE = ROOT / "examples" / "ci" / "gradscope-baseline.json"


def check(model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradscope.cli", "check", str(model), "--baseline", str(BASELINE)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}, cwd=ROOT,
    )


def test_committed_model_passes_its_baseline():
    result = check(MODEL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Gradient-flow check passed." in result.stdout
    assert result.stdout.startswith("Verdict: TRAINS under SGD lr 0.05 momentum 0.9\n")  # build_optimizer's


def test_sigmoid_without_residuals_fails_naming_the_layers(tmp_path):
    broken = tmp_path / "model.py"
    broken.write_text(MODEL.read_text().replace("ACTIVATION = nn.ReLU", "ACTIVATION = nn.Sigmoid")
                      .replace("RESIDUAL = True", "RESIDUAL = False"))
    result = check(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAIL Verdict regressed against the baseline: trains -> fails.")
    assert "FAIL new error finding: GS101 vanishing-gradient" in result.stdout
    assert "stem: 6.47e-02 ->" in result.stdout
