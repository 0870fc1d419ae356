"""The no-skip-connections rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import torch.nn as nn

from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import Violation
from gradscope.rules.example_models import Residual, he, stack, x64

DEPTH = 10
"""Weight layers on the shortest gradient path from which a plain stack counts as deep."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        The *effective depth* of the model, read from the autograd graph of one forward pass
        (``gradscope.diagnose`` only): the number of weight layers (Linear, Conv, RNN weights) on
        the shortest path from the loss to the weight layer farthest from it. Skip connections
        shorten it (a ResNet-50 or a transformer has an effective depth of a handful); a plain
        stack's equals its layer count. It fires at 10 or more.

    Why it matters:
        Every layer on the only path multiplies the gradient by its Jacobian, so small per-layer
        deviations compound exponentially with depth. An identity path gives the gradient a
        route that does not compound.

    Example:
        >>> import torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(32, 32), nn.ReLU())])

    Fix:
        Wrap blocks of 2-3 layers as ``x + block(x)`` (pre-activation residual blocks), or
        make the stack shallower.
    """
    structure = records.structure
    if structure is None or structure.effective_depth is None or structure.effective_depth < DEPTH:
        return []
    layers = [w.name for w in structure.weight_layers]
    message = (
        f"The gradient's shortest path from the loss to the layer farthest from it crosses "
        f"{structure.effective_depth} weight layers: no skip connection shortens it (a plain stack, or "
        "skips that bypass other layers than the deepest, as around a U-Net's bottleneck), so "
        "per-layer gains compound along it."
    )
    fix = ("Add residual connections around blocks of 2-3 layers, e.g.:\n" + advice.RESIDUAL_SNIPPET
           + "\n" + advice.code("# blocks = nn.Sequential(*[Residual(nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w))) for _ in range(n)])"))
    return [Violation(layers, message, fix, {"effective_depth": structure.effective_depth,
                                                "weight_layers": len(layers)})]


def pair(bad: bool) -> dict:
    if bad:
        model = stack(12, nn.ReLU, init=he)
    else:
        blocks = [Residual(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))) for _ in range(6)]
        model = nn.Sequential(*blocks, nn.Linear(64, 10))
    return {"model": model, "inputs": x64()}
