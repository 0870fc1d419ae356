"""The layernorm-stack rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradscope.layers import RELU
from gradscope.records import Records
from gradscope.rules import advice
from gradscope.rules.base import Violation, about_assumed_recipe, about_fitted_model
from gradscope.rules.example_models import x64

DEPTH = 16
"""Weight layers each followed by a per-sample normalisation (LayerNorm, RMSNorm) at which a stack
without skips or BatchNorm fails under SGD …"""

ADAPTIVE_DEPTH = 30
"""… and under an adaptive optimizer (Adam …) …"""

ADAPTIVE_UNBOUNDED_DEPTH = 22
"""… where most of them are followed by a ReLU-family activation (ReLU, leaky ReLU, ELU, GELU …):
on digits, such stacks of 22 normalised layers or more failed under Adam, of 20 or fewer trained,
while a tanh one of 22 trained."""

PER_SAMPLE = ("LayerNorm", "RMSNorm")
"""Normalisation types (by class name, Hugging Face's ``T5LayerNorm``, ``LlamaRMSNorm`` included)
that normalise each sample over its own features."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Deep stacks normalised per sample: 16 or more weight layers each followed by a LayerNorm or
        RMSNorm (under an adaptive optimizer such as Adam: 22 or more where most are followed by a
        ReLU-family activation, 30 or more otherwise), in a model without skip
        connections that shorten the gradient's path to under half of its weight layers and
        without BatchNorm. A warning; information when gradscope assumed the recipe.
        A model that already fits the probe batch (its loss a quarter or less of a constant
        prediction's: a trained model, a resumed checkpoint) gets information instead: training got
        past what this predicts.

    Why it matters:
        A per-sample normalisation rescales each sample's vector but does nothing against the
        samples' vectors becoming alike with depth: BatchNorm, which normalises each feature
        across the batch, keeps deep stacks' representations apart; LayerNorm does not (Daneshmand
        et al. 2021), and without skips nothing else does. On digits, every LayerNorm MLP without
        skips with ReLU, leaky-ReLU or GELU of 16 to 60 layers failed under SGD with momentum and
        under plain SGD, though at initialisation their samples are still far from identical and
        their gradient norms look healthy; tanh ones failed at 24 and 30 layers but trained at
        18, an ELU one trained at 20 (the rule's false alarms); under Adam the ReLU-family and
        GELU ones of 22 normalised layers or more failed (a 26-layer GELU one reached 0.47
        accuracy on one seed of two), of 20 or fewer trained, and tanh ones of 16 and 22 trained;
        10- and 12-layer ones and every one with residual connections trained
        (docs/trainability.md). (Counts are of normalised weight layers: an MLP of depth d here
        has d - 2.)

    Example:
        A 30-layer MLP of Linear → LayerNorm → ReLU blocks, width 64, trained with SGD lr 0.05
        momentum 0.9: the loss stays at ln 10 and the test accuracy at chance.

        >>> import torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(30) for m in (nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU())], nn.Linear(64, 10))

    Fix:
        Add skip connections around the blocks (pre-norm residual blocks: ``x + f(norm(x))``), or
        use BatchNorm between the layers, or make the stack shallower.
    """
    structure, dynamics = records.structure, records.dynamics
    if structure is None or structure.skips or structure.batch_norms:
        return []
    types = records.types
    per_sample = [n for n in structure.norm_layers if any(t in str(types.get(n, "")) for t in PER_SAMPLE)]
    normalised = [w for w in structure.weight_layers if w.normalized]
    adaptive = dynamics is not None and dynamics.recipe.adaptive
    unbounded = sum(w.activation == RELU for w in normalised) * 2 > len(normalised)
    depth = DEPTH if not adaptive else ADAPTIVE_UNBOUNDED_DEPTH if unbounded else ADAPTIVE_DEPTH
    if len(per_sample) < depth or len(normalised) < depth:
        return []
    recipe = f" under {dynamics.recipe.text()}" if dynamics is not None else ""
    measured = ("every ReLU-family and GELU one of 16 to 60 layers failed under SGD, with or without "
                "momentum; tanh and ELU ones of 18-20 layers trained" if not adaptive else
                "the ReLU-family and GELU ones of 22 normalised layers or more failed under Adam, "
                "tanh ones of 22 trained")
    message = (f"{len(per_sample)} weight layers each followed by a per-sample normalisation "
               f"({types.get(per_sample[0], 'LayerNorm')}) in a stack without skip connections or "
               f"BatchNorm{recipe}: such stacks' samples become alike as they train, which LayerNorm "
               f"does not prevent (on digits, {measured}).")
    fix = ("Add skip connections around the blocks (pre-norm residual blocks), or use BatchNorm between "
           "the layers, or make the stack shallower:\n" + advice.RESIDUAL_SNIPPET)
    return about_fitted_model(about_assumed_recipe([Violation(
        [w.name for w in normalised[:6]], message, fix,
        {"normalised_layers": len(per_sample), "depth_limit": depth, "adaptive": adaptive})], records), records)


def pair(bad: bool) -> dict:
    """Linear → LayerNorm → ReLU blocks of width 64 under SGD with momentum: 30 of them (bad), 8
    (good)."""
    torch.manual_seed(0)
    blocks = [m for _ in range(30 if bad else 8) for m in (nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU())]
    model = nn.Sequential(*blocks, nn.Linear(64, 10))
    return {"model": model, "inputs": x64(), "optimizer": torch.optim.SGD(model.parameters(), lr=0.05,
                                                                           momentum=0.9)}
