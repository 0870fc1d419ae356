"""layernorm-stack (GS207): depth counted in weight layers followed by LayerNorm/RMSNorm, the
adaptive optimizer's depths (by activation family), and what keeps it quiet (skips, BatchNorm, a shallower stack)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import gradscope
from gradscope.rules.example_models import x64


class RMSNorm(nn.Module):
    """A hand-written RMSNorm, as many models define their own."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class Residual(nn.Module):
    def __init__(self, norm) -> None:
        super().__init__()
        self.layer, self.norm = nn.Linear(64, 64), norm(64)

    def forward(self, x):
        return x + torch.relu(self.norm(self.layer(x)))


def _stack(depth: int, norm=nn.LayerNorm, skip: bool = False) -> nn.Module:
    torch.manual_seed(0)
    blocks = [Residual(norm) for _ in range(depth)] if skip else \
        [m for _ in range(depth) for m in (nn.Linear(64, 64), norm(64), nn.ReLU())]
    return nn.Sequential(*blocks, nn.Linear(64, 10))


def _findings(model, optimizer=None):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    report = gradscope.diagnose(model, x64(), optimizer=optimizer)
    return [f for f in report.findings if f.rule == "layernorm-stack"]


@pytest.mark.parametrize("depth, norm, found", [
    (16, nn.LayerNorm, True), (15, nn.LayerNorm, False), (20, RMSNorm, True), (20, nn.BatchNorm1d, False),
])
def test_the_depth_is_counted_in_layers_followed_by_a_per_sample_norm(depth, norm, found):
    findings = _findings(_stack(depth, norm))
    assert bool(findings) == found
    if found:
        assert findings[0].severity == "warning" and findings[0].evidence["normalised_layers"] == depth


@pytest.mark.parametrize("depth, activation, limit", [
    (22, nn.ReLU, 22), (21, nn.ReLU, None), (22, nn.GELU, 22), (24, nn.Tanh, None), (30, nn.Tanh, 30),
])
def test_under_adam_relu_family_stacks_need_22_layers_and_bounded_ones_30(depth, activation, limit):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(64, 64), nn.LayerNorm(64), activation())],
                          nn.Linear(64, 10))
    findings = _findings(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    assert [f.evidence["depth_limit"] for f in findings] == ([limit] if limit else [])
    if findings:
        assert findings[0].evidence["adaptive"] and "under Adam" in findings[0].message


def test_skips_keep_it_quiet_under_any_optimizer():
    assert not _findings(_stack(30, skip=True))
    model = _stack(30, skip=True)
    assert not _findings(model, torch.optim.Adam(model.parameters(), lr=1e-3))


def test_an_assumed_recipe_makes_it_information():
    model = _stack(20)
    report = gradscope.diagnose(model, x64())
    [finding] = [f for f in report.findings if f.rule == "layernorm-stack"]
    assert finding.severity == "info" and "assumed" in finding.message
