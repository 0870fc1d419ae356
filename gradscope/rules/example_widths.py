"""The models of the width rules' bad/good pairs (``gradscope.coordcheck`` keyword arguments): a
small MLP and a one-layer attention model in µP (Yang et al. 2022, Tensor Programs V, Table 3
with the readout multiplier of Table 8), each with one thing that can be put back to the standard
parametrisation (SP), so that a pair differs in exactly what its rule names.

>>> model = MLP(64)
>>> model(inputs(64)).shape
torch.Size([64, 4])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IN, OUT, BATCH, BASE_WIDTH = 16, 4, 64, 32
"""Input features, outputs, batch and the base width at which µP equals SP."""
VOCAB, TOKENS, HEADS = 32, 16, 2
WIDTHS = (64, 128, 256, 512)
LR = 0.005
"""Adam's learning rate at the base width: a few steps show the trend, and the widest SP model
does not yet overshoot its targets (which would bend its curve back)."""
SGD_LR = 0.1


@dataclass(frozen=True)
class MuP:
    """Which of µP's rules the models follow (True: µP, False: SP for that rule)."""

    readout: bool = True
    """Readout multiplier ``BASE_WIDTH / width`` and zero-initialised readout (SP: neither)."""
    attention: bool = True
    """Attention logits scaled by ``1 / d_head`` (SP: ``1 / sqrt(d_head)``)."""
    hidden_lr: bool = True
    """Adam's hidden learning rate ``LR * BASE_WIDTH / width`` (SP: ``LR`` at every width)."""
    input_lr: bool = True
    """SGD's input-layer and bias learning rate ``SGD_LR * width / BASE_WIDTH`` (SP: ``SGD_LR``)."""
    init: bool = True
    """Hidden weights with variance ``1 / fan_in`` (SP here: N(0, 1), as with a fixed std)."""


class MLP(nn.Module):
    def __init__(self, width: int, mup: MuP = MuP()) -> None:
        super().__init__()
        self.input = nn.Linear(IN, width)
        self.hidden = nn.Linear(width, width)
        self.readout = nn.Linear(width, OUT, bias=False)
        if not mup.init:
            nn.init.normal_(self.hidden.weight, std=1.0)
        if mup.readout:
            nn.init.zeros_(self.readout.weight)
        self.multiplier = BASE_WIDTH / width if mup.readout else 1.0

    def forward(self, x):
        return self.readout(F.relu(self.hidden(F.relu(self.input(x))))) * self.multiplier


class Attention(nn.Module):
    """Token embedding, one causal self-attention layer with a residual, readout."""

    def __init__(self, width: int, mup: MuP = MuP()) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.readout = nn.Linear(width, VOCAB, bias=False)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.qkv.weight[:width])  # µP's zero query: the logits are what training makes them
        self.head_dim = width // HEADS
        self.scale = 1 / self.head_dim if mup.attention else 1 / math.sqrt(self.head_dim)
        self.multiplier = BASE_WIDTH / width

    def forward(self, idx):
        x = self.embed(idx)
        q, k, v = (t.unflatten(-1, (HEADS, self.head_dim)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.readout(x + y.transpose(1, 2).flatten(2)) * self.multiplier


def inputs(width: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, IN, generator=torch.Generator().manual_seed(0))


def tokens(width: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, TOKENS), generator=torch.Generator().manual_seed(0))


def adam(mup: MuP = MuP()):
    """``optimizer(model)``: Adam with µP's per-layer learning rates (hidden: 1/width)."""
    def build(model: nn.Module) -> torch.optim.Optimizer:
        width = model.readout.in_features
        hidden = [m.weight for m in model.modules() if isinstance(m, nn.Linear)
                  and m.in_features == width and m.out_features % width == 0]
        rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
        scale = BASE_WIDTH / width if mup.hidden_lr else 1.0
        return torch.optim.Adam([{"params": hidden, "lr": LR * scale}, {"params": rest, "lr": LR}])
    return build


def sgd(mup: MuP = MuP()):
    """``optimizer(model)`` for :class:`MLP`: SGD with µP's learning rates (input layer and biases:
    ``width``; hidden: constant; readout: with its multiplier, ``width`` too, as mup's MuSGD)."""
    def build(model: nn.Module) -> torch.optim.Optimizer:
        width = model.readout.in_features
        grows = width / BASE_WIDTH if mup.input_lr else 1.0
        return torch.optim.SGD([
            {"params": [model.hidden.weight], "lr": SGD_LR},
            {"params": [model.input.weight, model.input.bias, model.hidden.bias], "lr": SGD_LR * grows},
            {"params": [model.readout.weight], "lr": SGD_LR * (width / BASE_WIDTH if model.multiplier != 1 else 1)},
        ])
    return build


def mlp_pair(mup: MuP, optimizer) -> dict:
    """``gradscope.coordcheck`` keyword arguments for the MLP under ``optimizer(mup)``."""
    return {"build_model": lambda width: MLP(width, mup), "widths": WIDTHS, "inputs": inputs,
            "optimizer": optimizer(mup), "steps": 5, "seeds": 3}
