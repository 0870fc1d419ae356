"""Running the gradscope command as a user would (typer's CliRunner) and checking the contract every
fault test holds it to: the expected exit code, no traceback, the user's files untouched."""

from __future__ import annotations

import textwrap
from pathlib import Path

from typer.testing import CliRunner

from gradscope.cli import app

ENV = {"COLUMNS": "100", "NO_COLOR": "1", "GITHUB_ACTIONS": "", "GITHUB_STEP_SUMMARY": ""}

SIGMOID = """
    import torch.nn as nn

    def build_model():
        layers = [m for _ in range(12) for m in (nn.Linear(32, 32), nn.Sigmoid())]
        return nn.Sequential(*layers, nn.Linear(32, 4))
"""


def model_file(directory: Path, source: str = SIGMOID, name: str = "model.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def files(directory: Path) -> dict[Path, bytes]:
    """Every file under ``directory`` with its bytes, to compare before and after a command."""
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def invoke(*args, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env={**ENV, **(env or {})})


def assert_exit(result, code: int) -> None:
    """Exit ``code`` with no traceback and no escaped exception."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
