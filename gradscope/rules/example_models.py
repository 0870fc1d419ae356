"""The little models that the rules' bad/good pairs are built from (each rule's ``pair`` sits in
its own module): a plain stack of Linear layers, the inits, a residual wrapper, a singular op, a
fixed batch of inputs and a classification loss on it.

>>> model = stack(2, nn.ReLU, width=8, init=he, out=1)
>>> model(x64(width=8, batch=3)).shape
torch.Size([3, 1])
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


def cross_entropy(classes: int = 10, batch: int = 64):
    """A cross-entropy on fixed labels for :func:`x64`'s batch: a real loss, for the rules whose
    findings scale with the loss (gradscope's default loss gets a margin for its scale)."""
    labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(1))
    return lambda output: nn.functional.cross_entropy(output, labels)
