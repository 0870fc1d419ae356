"""GS205 post-ln-transformer."""

from __future__ import annotations

from gradscope.rules.base import INFO, Finding, Records, Rule
from gradscope.rules import advice


def check(records: Records) -> list[Finding]:
    """What it checks:
        LayerNorms applied to the sum of a residual connection (``norm(x + f(x))``, the
        original "post-LN" transformer, as in BERT and ``nn.TransformerEncoderLayer`` with
        ``norm_first=False``), read from the autograd graph: a LayerNorm whose input is an
        addition consumed by nothing else. Two or more make a post-LN model.

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
    return [RULE.finding(names, message, fix, {"post_ln_norms": len(structure.post_ln)})]


RULE = Rule("GS205", "post-ln-transformer", INFO,
            "LayerNorm after the residual sum (post-LN): needs warm-up; pre-LN is more stable.", check)
