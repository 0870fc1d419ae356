"""init-mismatch names the activation that runs after each layer and calls an init PyTorch's
default only where the weights are; a flat measured profile and tied weights raise no warning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import gradscope
from gradscope.rules.base import INFO, WARNING
from gradscope.rules.example_models import stack, x64


def _finding(model, inputs=None):
    report = gradscope.diagnose(model, x64() if inputs is None else inputs, probe_steps=0)
    found = [f for f in report.findings if f.rule == "init-mismatch"]
    return found[0] if found else None


def _gain_reference(layer: nn.Linear) -> float:
    return layer.weight.detach().double().std().item() * math.sqrt(layer.in_features)


def test_default_init_under_relu_is_called_pytorchs_default():
    torch.manual_seed(0)
    model = stack(8, nn.ReLU)
    finding = _finding(model)
    assert finding.severity == INFO
    assert "8 layers feeding ReLU activations keep PyTorch's default init" in finding.message
    for name, gain in finding.evidence["gain"].items():
        assert gain == pytest.approx(_gain_reference(model.get_submodule(name)), rel=1e-9)
    assert all(finding.evidence["default_init"].values())
    assert finding.evidence["orders_across"] >= 1


def test_a_small_normal_init_under_gelu_names_gelu_and_its_gain():
    torch.manual_seed(0)
    model = stack(8, nn.GELU, init=lambda w: nn.init.normal_(w, std=0.5 / math.sqrt(w.shape[1])))
    finding = _finding(model)
    assert finding.message.startswith("8 layers feeding GELU activations have an init of gain 0.")
    assert "ReLU activations" not in finding.message and "default" not in finding.message
    assert not any(finding.evidence["default_init"].values())


class _NormalisedStack(nn.Module):
    """N(0, 1) weights, each layer's output normalised before its ReLU: the scale does no harm."""

    def __init__(self, depth: int = 6, width: int = 64) -> None:
        super().__init__()
        layers = []
        for _ in range(depth):
            linear = nn.Linear(width, width)
            nn.init.normal_(linear.weight)
            layers += [linear, nn.LayerNorm(width), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Linear(width, 10))

    def forward(self, x):
        return self.body(x)


def test_large_weights_with_a_flat_measured_profile_are_informational():
    torch.manual_seed(0)
    finding = _finding(_NormalisedStack())
    assert finding.severity == INFO
    assert abs(finding.evidence["profile_orders"]) < 1
    assert "flat" in finding.message


def test_large_weights_where_the_signal_explodes_are_a_warning():
    torch.manual_seed(0)
    finding = _finding(stack(10, None, init=nn.init.normal_))
    assert finding.severity == WARNING
    assert finding.evidence["profile_orders"] <= -1


def test_kaiming_fan_out_on_layers_that_reduce_channels_is_a_standard_init():
    """torchvision's conv init, kaiming_normal_(mode="fan_out"): std x sqrt(fan_in) is above 3 on
    a 1x1 conv from 256 to 16 channels (a squeeze-excite reduction), by design."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 16, 1), nn.ReLU(),
                          nn.Conv2d(16, 256, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))
    for module in model:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    report = gradscope.diagnose(model, torch.randn(8, 3, 8, 8), probe_steps=0)
    reduce = next(w for w in report.structure.weight_layers if w.name == "2")
    assert reduce.gain == pytest.approx(math.sqrt(2 * 256 / 16), rel=0.1)  # 5.7, above 3
    assert not [f for f in report.findings if f.rule == "init-mismatch" and "far larger" in f.message]
    nn.init.normal_(model[2].weight)  # N(0, 1): far larger whichever fan it is measured against
    report = gradscope.diagnose(model, torch.randn(8, 3, 8, 8), probe_steps=0)
    assert [f for f in report.findings if f.rule == "init-mismatch" and "far larger" in f.message]
