"""The assertion helper and the pytest fixture users add to their suites."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gradscope import UsageError
from gradscope.rules.example_models import stack, x64


def test_fixture_passes_a_healthy_model(gradient_health):
    report = gradient_health(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), torch.randn(32, 8))
    assert report.worst in (None, "info")


def test_fixture_fails_a_broken_model_with_the_findings(gradient_health):
    with pytest.raises(AssertionError, match=r"error GS101 vanishing-gradient: The backpropagated signal shrinks"):
        gradient_health(stack(12, nn.Sigmoid), x64())


def test_ignore_and_fail_on(gradient_health):
    gradient_health(stack(12, nn.Sigmoid), x64(),
                    ignore=("vanishing-gradient", "updates-off-band", "collapsed-representations"))
    model = stack(6, nn.ReLU)  # default init under 6 ReLU layers: an info finding
    gradient_health(model, x64())
    with pytest.raises(AssertionError, match="GS202 init-mismatch"):
        gradient_health(model, x64(), fail_on="info")
    with pytest.raises(UsageError, match="`ignore` names no rule"):
        gradient_health(model, x64(), ignore=("vanishing",))
