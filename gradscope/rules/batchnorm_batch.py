"""GS203 batchnorm-small-batch."""

from __future__ import annotations

from gradscope.rules import advice
from gradscope.rules.base import WARNING, Finding, Records, Rule

MIN_BATCH = 8
"""BatchNorm's batch statistics are too noisy below this many samples."""


def check(records: Records) -> list[Finding]:
    """What it checks:
        BatchNorm layers used with a batch of fewer than 8 samples (``gradscope.diagnose``
        knows the batch from the inputs it was given).

    Why it matters:
        BatchNorm normalises with the batch's own mean and variance. With a few samples these
        estimates are noisy, training and evaluation statistics disagree, and with one sample per
        channel position the output is constant and the gradient is zero.

    Example:
        >>> import torch.nn as nn
        >>> bad = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
        >>> # run with a batch of 2 images

    Fix:
        GroupNorm (convolutions) or LayerNorm (features and sequences), which normalise each
        sample on its own; or larger batches.
    """
    structure = records.structure
    if structure is None or structure.batch_size is None or structure.batch_size >= MIN_BATCH:
        return []
    if not structure.batch_norms:
        return []
    message = (
        f"{len(structure.batch_norms)} BatchNorm layers run on batches of {structure.batch_size} "
        f"samples (fewer than {MIN_BATCH}): their batch statistics are noisy."
    )
    fix = ("Normalise per sample instead (GroupNorm for convolutions, LayerNorm otherwise):\n"
           + advice.replace_modules(
               structure.batch_norms, "nn.GroupNorm(math.gcd(8, old.num_features), old.num_features)"))
    return [RULE.finding(structure.batch_norms, message, fix,
                         {"batch_size": structure.batch_size, "batch_norms": len(structure.batch_norms)})]


RULE = Rule("GS203", "batchnorm-small-batch", WARNING,
            "BatchNorm with fewer than 8 samples per batch.", check)
