"""A model file that exits (``sys.exit``) or raises a ``BaseException`` that is not an
``Exception``: exit 2 naming the file and what happened, never the exit code the file chose (a CI
gate must not pass silently on ``sys.exit(0)``); Ctrl-C stays exit 130."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.cli import SIGMOID, assert_exit, files, invoke, model_file

CUSTOM = """
    class Stop(BaseException):
        pass
"""

CASES = {
    "sys.exit(0) at import": ("\n    import sys\n    sys.exit(0)\n" + SIGMOID, "called sys.exit(0)", "loading"),
    "sys.exit(3) in build_model": (SIGMOID.replace("def build_model():", "def build_model():\n        import sys; sys.exit(3)"),
                                   "called sys.exit(3)", "loading"),
    "sys.exit('bye') in example_input": (SIGMOID + "\n    def example_input():\n        raise SystemExit('bye')\n",
                                         "called sys.exit('bye')", "loading"),
    "a BaseException in forward": (CUSTOM + """
    import torch.nn as nn

    class Net(nn.Linear):
        def forward(self, x):
            raise Stop("from forward")

    def build_model():
        return Net(4, 2)

    def example_input():
        import torch
        return torch.randn(8, 4)
""", "raised Stop: from forward", "running"),
    "sys.exit(0) in loss_fn": (SIGMOID + "\n    def loss_fn(output, inputs):\n        import sys; sys.exit(0)\n",
                               "called sys.exit(0)", "running"),
}


@pytest.mark.parametrize("command", ["diagnose", "check"])
@pytest.mark.parametrize("case", list(CASES))
def test_an_exit_from_the_model_file_is_exit_2_naming_the_file(tmp_path, case, command):
    source, what, doing = CASES[case]
    path = model_file(tmp_path, source)
    before = files(tmp_path)
    result = invoke(command, path, "--json", tmp_path / "out" / "report.json")
    assert_exit(result, 2)
    message = " ".join(result.output.split())
    assert f"{path} {what}" in message
    assert f"while gradscope was {doing} it" in message
    assert files(tmp_path) == before  # the model file is untouched and no report was written


def test_ctrl_c_in_the_model_file_stays_exit_130(tmp_path):
    path = model_file(tmp_path, SIGMOID.replace("def build_model():", "def build_model():\n        raise KeyboardInterrupt"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "gradscope.cli", "check", str(path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
