"""Small models covering the shapes of real training code, shared by the tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
        nn.Linear(16, 12), nn.Sigmoid(), nn.Linear(12, 12), nn.Hardtanh(-0.5, 0.5),
        nn.Linear(12, 3),
    )


def conv_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )


class SequenceConv(nn.Module):
    """A (N, C, L) ReLU after Conv1d: units are channels, not the last dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean(dim=2))


class LSTMRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
        self.head = nn.Linear(7, 2)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


class Pair(nn.Module):
    """Returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.a(x), torch.tanh(self.b(x))


class TupleDictModel(nn.Module):
    """Takes keyword inputs and returns a dict holding a tensor and a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair()
        self.out = nn.Linear(7, 2)

    def forward(self, x, scale):
        a, b = self.pair(x)
        logits = self.out(torch.cat([a, b], dim=1)) * scale
        return {"logits": logits, "aux": (a, b), "ids": torch.arange(3)}


def inplace_relu() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 10), nn.ReLU(inplace=True), nn.Linear(10, 10), nn.ReLU(inplace=True),
        nn.Linear(10, 2),
    )


class Shared(nn.Module):
    """One Linear applied twice and one ReLU module after layers of two widths."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.mid = nn.Linear(8, 8)
        self.wide = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        h = self.act(self.inp(x))
        h = self.mid(self.mid(h))
        return self.out(self.act(self.wide(h)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.fc(x))


class Checkpointed(nn.Module):
    """Two blocks run through torch.utils.checkpoint while ``use_checkpoint`` is set."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.use_checkpoint = True
        self.inp = nn.Linear(5, 8)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            if self.use_checkpoint:
                h = checkpoint(block, h, use_reentrant=self.reentrant)
            else:
                h = block(h)
        return self.out(h)


class Functional(nn.Module):
    """Activations called as functions inside forwards, at two depths."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.inner = FunctionalInner()
        self.fc3 = nn.Linear(10, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = self.inner(h)
        return self.fc3(torch.sigmoid(h))


class FunctionalInner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 10)
        self.fc2 = nn.Linear(10, 10)

    def forward(self, x):
        return self.fc2(self.fc(x).tanh()).relu()
