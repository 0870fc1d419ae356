"""The post-ln-transformer rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import Violation


def detect(records: Records) -> list[Violation]:
    """What it checks:
        LayerNorms applied to the residual stream after each sum (``norm(x + f(x))``, the
        original "post-LN" transformer, as in BERT and ``nn.TransformerEncoderLayer`` with
        ``norm_first=False``), read from the autograd graph: a LayerNorm whose input is an
        addition consumed by nothing else, one of whose terms ``x`` also feeds ``f``. The norm
        applied once after the last block of a pre-LN stack (``nn.Transformer(norm_first=True)``'s
        final encoder and decoder norms, Whisper's, mBART's) has that shape too, but there ``x``
        is itself a residual sum, never normalised on the way: it is not counted. Two or more
        make a post-LN model.

    Why it matters:
        In post-LN, every residual path passes through a LayerNorm, so the gradient near the
        output is large at initialisation and the model needs a learning-rate warm-up to train
        stably; pre-LN (``x + f(norm(x))``) keeps a clean identity path.

    Example:
        >>> import torch.nn as nn
        >>> layer = nn.TransformerEncoderLayer(64, 4, batch_first=True)  # norm_first=False
        >>> bad = nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)

    Fix:
        Use pre-LN (``norm_first=True``) or keep post-LN with a learning-rate warm-up of a few
        thousand steps.
    """
    structure = records.structure
    if structure is None or len(structure.post_ln) < 2:
        return []
    message = (
        f"{len(structure.post_ln)} LayerNorms sit after residual sums (post-LN): the model needs a "
        "learning-rate warm-up to train stably."
    )
    fix = (
        "Use pre-LN, e.g. nn.TransformerEncoderLayer(..., norm_first=True), or warm the learning "
        "rate up:\n" + advice.code(
            "scheduler = torch.optim.lr_scheduler.LambdaLR(",
            "    optimizer, lambda step: min(1.0, (step + 1) / 4000))  # call scheduler.step() each step")
    )
    names = sorted(structure.post_ln, key=lambda n: records.depth_order.index(n) if n in records.depth_order else 0)
    return [Violation(names, message, fix, {"post_ln_norms": len(structure.post_ln)})]


def pair(bad: bool) -> dict:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=not bad)
    model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
    return {"model": model, "inputs": torch.randn(4, 10, 32, generator=torch.Generator().manual_seed(0))}
