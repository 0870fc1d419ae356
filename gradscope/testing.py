"""Gradient-health assertions for a project's own test suite.

>>> import torch, torch.nn as nn
>>> from gradscope.testing import assert_healthy
>>> _ = assert_healthy(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), torch.randn(32, 8))

With pytest, the ``gradient_health`` fixture (registered by gradscope's pytest plugin) is this
function, so a test is two lines::

    def test_gradient_flow(gradient_health):
        gradient_health(build_model(), torch.randn(16, 3, 32, 32))
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gradscope.diagnose import diagnose
from gradscope.report import Report
from gradscope.errors import UsageError
from gradscope.rules import RULES, SEVERITIES


def assert_healthy(
    model: nn.Module,
    inputs: object,
    *,
    loss_fn=None,
    steps: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    fail_on: str = "warning",
    ignore: tuple[str, ...] = (),
    seed: int = 0,
) -> Report:
    """Run :func:`gradscope.diagnose` and raise ``AssertionError`` if a finding at ``fail_on``
    severity or above is found (rules in ``ignore``, by slug or code, excepted). Returns the report.
    """
    if fail_on not in SEVERITIES:
        raise UsageError(f"Expected `fail_on` to be one of {', '.join(SEVERITIES)} but got {fail_on!r}.")
    known = {r.slug for r in RULES} | {r.code for r in RULES}
    unknown = [rule for rule in ignore if rule not in known]
    if unknown:
        raise UsageError(f"`ignore` names no rule: {unknown}; see `gradscope rules` for the slugs and codes.")
    report = diagnose(model, inputs, loss_fn, steps, optimizer, seed=seed)
    level = SEVERITIES.index(fail_on)
    failing = [f for f in report.findings
               if SEVERITIES.index(f.severity) >= level and f.rule not in ignore and f.code not in ignore]
    if failing:
        lines = [f"{len(failing)} gradient-flow finding(s) at {fail_on} or above in {type(model).__name__}:"]
        for f in failing:
            lines += [f"{f.severity} {f.code} {f.rule}: {f.message}", "  fix: " + f.fix.replace("\n", "\n  ")]
        raise AssertionError("\n".join(lines))
    return report
