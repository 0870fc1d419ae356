"""The data flows one way: the capture stage (hooks, parameter statistics, statistics, buffer,
history, distributed, amp, monitor) imports neither the rules engine nor a reporter, at module
level or inside a function, and a monitored training loop loads neither."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gradscope

PACKAGE = Path(gradscope.__file__).parent
CAPTURE = ["hooks.py", "params.py", "buffer.py", "history.py", "rundir.py", "distributed.py",
           "amp.py", "monitor.py", "config.py", "errors.py", "failures.py", "stats/__init__.py",
           "stats/reductions.py", "stats/histograms.py", "stats/rescale.py", "sinks/__init__.py",
           "pulse.py", "detectors.py", "guard.py", "events.py"]
READ_SIDE = ("gradscope.rules", "gradscope.report", "gradscope.reporters", "gradscope.api",
             "gradscope.diagnose", "gradscope.sinks.tensorboard", "gradscope.sinks.run_directory")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("module", CAPTURE)
def test_capture_modules_import_no_rule_and_no_reporter(module):
    bad = {name for name in imported_modules(PACKAGE / module)
           if any(name == r or name.startswith(r + ".") for r in READ_SIDE)}
    assert not bad, f"{module} imports the read side: {sorted(bad)}"


def test_imports_are_seen_inside_functions_too():
    """The check above would catch a lazy import: it walks the whole tree."""
    assert "gradscope.report" in imported_modules(PACKAGE / "api.py")
    assert "gradscope.reporters.html" in imported_modules(PACKAGE / "api.py")


@pytest.mark.parametrize("front", ["gradscope.monitor", "Recorder"])
def test_a_monitored_loop_loads_no_rule_and_no_reporter(front):
    program = f"""
import sys, torch, torch.nn as nn
import gradscope
from gradscope.monitor import Recorder
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with {front}(model, every=2, optimizer=opt) as mon:
    for _ in range(4):
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
assert len(mon.to_dataframe()) > 0
print(sorted(m for m in sys.modules if m.startswith(("gradscope.rules", "gradscope.report"))))
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
