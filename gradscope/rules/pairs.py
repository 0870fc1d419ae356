"""A tiny runnable bad/good model pair per rule. Each function returns the keyword arguments of
``gradscope.diagnose``: with ``bad=True`` the rule's finding, with ``bad=False`` (the fix applied)
not. tests/rules/test_pairs.py checks both; docs/rules/ and ``gradscope explain`` show the source.

>>> import gradscope
>>> [f.rule for f in gradscope.diagnose(**dead_units(bad=True)).findings]
['dead-units']
"""

from __future__ import annotations

import torch
import torch.nn as nn


def stack(depth: int, activation, width: int = 64, init=None, bias=None, out: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        if init is not None:
            init(linear.weight)
        if bias is not None:
            nn.init.constant_(linear.bias, bias)
        layers += [linear] + ([activation()] if activation is not None else [])
    return nn.Sequential(*layers, nn.Linear(width, out))


def he(w):
    nn.init.kaiming_normal_(w, nonlinearity="relu")


def xavier_tanh(w):
    nn.init.xavier_normal_(w, gain=nn.init.calculate_gain("tanh"))


class Residual(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


class Sqrt(nn.Module):
    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return torch.sqrt(x + self.eps)


def x64(width: int = 64, batch: int = 64):
    return torch.randn(batch, width, generator=torch.Generator().manual_seed(0))


# -- one pair per rule ------------------------------------------------------------------------

def vanishing_gradient(bad: bool) -> dict:
    # 12 sigmoid layers with PyTorch's default init; fixed: ReLU with He init
    model = stack(12, nn.Sigmoid) if bad else stack(12, nn.ReLU, init=he)
    return {"model": model, "inputs": x64()}


def exploding_gradient(bad: bool) -> dict:
    # a linear stack with N(0, 1) weights multiplies the signal by ~sqrt(64) per layer
    model = stack(10, None, init=nn.init.normal_ if bad else nn.init.orthogonal_)
    return {"model": model, "inputs": x64()}


def nonfinite_gradient(bad: bool) -> dict:
    # sqrt of a ReLU output: infinite derivative at 0; fixed with an epsilon
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Sqrt(0.0 if bad else 1e-6), nn.Linear(16, 1))
    return {"model": model, "inputs": x64(8)}


def dead_units(bad: bool) -> dict:
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    he(model[0].weight)
    nn.init.constant_(model[0].bias, -6.0 if bad else 0.0)
    return {"model": model, "inputs": x64(16)}


def saturated_activations(bad: bool) -> dict:
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    (nn.init.normal_ if bad else xavier_tanh)(model[0].weight)
    return {"model": model, "inputs": x64()}


def stalled_updates(bad: bool) -> dict:
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    groups = [{"params": model[0].parameters(), "lr": 0.0 if bad else 0.05},
              {"params": list(model[2].parameters()) + list(model[4].parameters())}]
    return {"model": model, "inputs": x64(16), "steps": 3,
            "optimizer": torch.optim.SGD(groups, lr=0.05)}


def no_skip_connections(bad: bool) -> dict:
    if bad:
        model = stack(12, nn.ReLU, init=he)
    else:
        blocks = [Residual(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))) for _ in range(6)]
        model = nn.Sequential(*blocks, nn.Linear(64, 10))
    return {"model": model, "inputs": x64()}


def init_mismatch(bad: bool) -> dict:
    return {"model": stack(8, nn.ReLU, init=None if bad else he), "inputs": x64()}


def batchnorm_small_batch(bad: bool) -> dict:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    images = torch.randn(2 if bad else 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return {"model": model, "inputs": images}


def deep_bounded_activations(bad: bool) -> dict:
    model = stack(8, nn.Tanh, init=xavier_tanh) if bad else stack(8, nn.ReLU, init=he)
    return {"model": model, "inputs": x64()}


def post_ln_transformer(bad: bool) -> dict:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=not bad)
    model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
    return {"model": model, "inputs": torch.randn(4, 10, 32, generator=torch.Generator().manual_seed(0))}


PAIRS = {
    "vanishing-gradient": vanishing_gradient,
    "exploding-gradient": exploding_gradient,
    "nonfinite-gradient": nonfinite_gradient,
    "dead-units": dead_units,
    "saturated-activations": saturated_activations,
    "stalled-updates": stalled_updates,
    "no-skip-connections": no_skip_connections,
    "init-mismatch": init_mismatch,
    "batchnorm-small-batch": batchnorm_small_batch,
    "deep-bounded-activations": deep_bounded_activations,
    "post-ln-transformer": post_ln_transformer,
}
