"""collapsed-representations' second pattern: the probe's SGD steps shrink the gradient 3x while the
loss hardly falls, in a model without skips (a 30-layer LayerNorm ReLU MLP on digits); the numbers
against a plain float64 training loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import gradscope


class _Block(nn.Module):
    def __init__(self, skip: bool) -> None:
        super().__init__()
        self.layer, self.norm, self.skip = nn.Linear(64, 64), nn.LayerNorm(64), skip

    def forward(self, x):
        y = F.relu(self.norm(self.layer(x)))
        return x + y if self.skip else y


def _stack(skip: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), *[_Block(skip) for _ in range(30)], nn.Linear(64, 10))


def _batch():
    digits = load_digits()
    x = torch.tensor(digits.data[:64], dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(digits.target[:64])


def _reference(model: nn.Module, x, y, lr: float, momentum: float, steps: int = 10):
    """Total gradient norms and losses of ``steps`` SGD steps, plain autograd in float64."""
    model = copy.deepcopy(model).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses, norms = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x.double()), y)
        loss.backward()
        losses.append(float(loss.detach()))
        norms.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))))
        opt.step()
    with torch.no_grad():
        losses.append(float(F.cross_entropy(model(x.double()), y)))
    return losses, norms


def test_a_layernorm_stack_settling_under_sgd_is_at_risk_with_the_probes_numbers():
    model, (x, y) = _stack(), _batch()
    losses, norms = _reference(model, x, y, 0.05, 0.9)
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y),
                                optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    [finding] = [f for f in report.findings if f.rule == "collapsed-representations"]
    assert finding.severity == "warning" and "settling on one prediction" in finding.message
    assert finding.evidence["gradient_shrink"] == pytest.approx(norms[-1] / norms[0], rel=1e-3)
    assert finding.evidence["loss_fall"] == pytest.approx((losses[0] - losses[-1]) / losses[0], rel=1e-2, abs=1e-4)
    assert norms[-1] / norms[0] < 1 / 3 and (losses[0] - losses[-1]) / losses[0] < 0.15
    assert report.verdict.label == "at-risk"


@pytest.mark.parametrize("skip, optimizer", [(True, "sgd"), (False, "adam")])
def test_skips_or_an_adaptive_optimizer_do_not_settle_so(skip, optimizer):
    model, (x, y) = _stack(skip), _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd" \
        else torch.optim.Adam(model.parameters(), lr=1e-3)
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=opt)
    assert not [f for f in report.findings if "settling" in f.message]
