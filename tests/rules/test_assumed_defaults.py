"""An assumed default never makes a warning or an error: the recipe gradscope assumes when no
optimizer is given, and the loss it assumes when the model returns none."""

from __future__ import annotations

import torch
import torch.nn as nn

import gradscope
from gradscope.rules.example_models import cross_entropy, stack, x64


def _updates_off_band(report):
    return next(f for f in report.findings if f.rule == "updates-off-band")


def test_the_assumed_recipe_makes_information_where_the_same_recipe_given_makes_an_error():
    torch.manual_seed(0)
    model = stack(12, nn.ReLU)  # PyTorch's default init: updates of about 1e-7 under SGD lr 0.01
    given = gradscope.diagnose(model, x64(), cross_entropy(),
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    assumed = gradscope.diagnose(model, x64(), cross_entropy())  # gradscope assumes SGD lr 0.01 momentum 0.9
    assert assumed.dynamics.median_update_ratio == given.dynamics.median_update_ratio
    assert _updates_off_band(given).severity == "error"
    finding = _updates_off_band(assumed)
    assert finding.severity == "info" and "The recipe was assumed (SGD lr 0.01 momentum 0.9" in finding.message
    assert "GS108 updates-off-band" not in assumed.verdict.reasons


def test_under_the_default_loss_a_finding_far_enough_from_the_limit_stands_and_says_so():
    torch.manual_seed(0)
    model = stack(12, nn.ReLU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    report = gradscope.diagnose(model, x64(), optimizer=optimizer)  # the default loss, a given recipe
    assert report.options["loss"] == "default" and report.dynamics.median_update_ratio < 1e-6
    finding = _updates_off_band(report)
    assert finding.severity == "error" and "judged with a 10x margin for its scale" in finding.message
