"""The deep-bounded-activations rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import torch.nn as nn

from gradscope.layers import is_functional
from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import Violation
from gradscope.rules.example_models import he, stack, x64, xavier_tanh

DEPTH = 8
"""Bounded hidden activations on an effective depth of this many layers or more."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Eight or more tanh/sigmoid-family hidden activation layers in a model whose effective depth
        (weight layers on the shortest gradient path, see no-skip-connections) is eight or more.
        Gated units inside LSTM/GRU modules are not hidden layers and do not count.

    Why it matters:
        The derivative of tanh is at most 1 and of sigmoid at most 0.25, and less wherever the
        unit is away from 0: stacked without skips, they shrink the gradient geometrically even
        with a good init.

    Example:
        >>> import torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(32, 32), nn.Tanh())])

    Fix:
        Use ReLU-family activations (with He init) for hidden layers; if the bounded activations
        must stay, use Xavier init and residual connections. Pseudo-normalization every few
        layers (``gradscope.fixes.insert_pseudo_norm``) keeps the backward signal at scale but
        trained deep tanh MLPs on digits worse than Xavier init or residuals (docs/pseudo-norm.md).
    """
    structure = records.structure
    if structure is None or structure.effective_depth is None or structure.effective_depth < DEPTH:
        return []
    bounded = structure.bounded_activations
    if len(bounded) < DEPTH:
        return []
    modules = [n for n in bounded if not is_functional(n)]
    message = (
        f"{len(bounded)} tanh/sigmoid hidden activations on a gradient path through "
        f"{structure.effective_depth} weight layers: their derivatives (at most 1 for tanh, 0.25 "
        "for sigmoid) compound across depth."
    )
    fix = "Use ReLU-family hidden activations with He init"
    if modules:
        fix += ":\n" + advice.replace_modules(modules, "nn.ReLU()") + "\n" + advice.code(
            advice.REINIT_CALL)
    fix += ("\nor keep them with Xavier init (tanh) and residual connections. Pseudo-normalization "
            "also keeps the backward signal at scale, but on digits it trained worse than those "
            "(docs/pseudo-norm.md):\n" + advice.PSEUDO_NORM_SNIPPET)
    return [Violation(bounded, message, fix, {"bounded_activations": len(bounded),
                                                 "effective_depth": structure.effective_depth})]


def pair(bad: bool) -> dict:
    model = stack(8, nn.Tanh, init=xavier_tanh) if bad else stack(8, nn.ReLU, init=he)
    return {"model": model, "inputs": x64()}
