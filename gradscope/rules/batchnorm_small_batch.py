"""The batchnorm-small-batch rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import Violation

MIN_BATCH = 8
"""BatchNorm's batch statistics are too noisy below this many samples."""


def detect(records: Records) -> list[Violation]:
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
    return [Violation(structure.batch_norms, message, fix,
                         {"batch_size": structure.batch_size, "batch_norms": len(structure.batch_norms)})]


def pair(bad: bool) -> dict:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    images = torch.randn(2 if bad else 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return {"model": model, "inputs": images}
