"""The deep-narrow-relu rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradscope.layers import RELU
from gradscope.records import Records
from gradscope.rules import advice
from gradscope.rules.base import Violation, about_fitted_model, fmt
from gradscope.rules.example_models import he, stack, x64

DEPTH_OVER_WIDTH = 1.0
"""The sum of 1/width over the hidden ReLU layers at which the spread of the signal's length
across inputs (and inits) becomes of the order of the signal itself."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Deep narrow ReLU stacks: the sum of ``1 / width`` over the hidden weight layers followed by
        a ReLU-family activation (width: output features or channels), in a model without
        normalisation layers whose skip connections, if any, do not shorten the gradient's path to
        under half of its weight layers. A warning at 1 or more (e.g. 16 layers of width 16).
        A model that already fits the probe batch (its loss a quarter or less of a constant
        prediction's: a trained model, a resumed checkpoint) gets information instead: training got
        past what this predicts.

    Why it matters:
        Hanin & Rolnick (2018): even at the right (He) init, the variance across inputs and inits
        of the log of the activation length grows in proportion to that sum. When it reaches about
        1, some inputs' signals die or blow up by orders of magnitude at depth, units die, and
        training stalls or fails depending on the seed; making the net wider helps, deeper hurts.

    Example:
        30 He-initialised ReLU layers of width 16: the sum is 28 / 16 = 1.75.

        >>> import torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(30) for m in (nn.Linear(16, 16), nn.ReLU())], nn.Linear(16, 10))

    Fix:
        Make the layers wider (or the net shallower) so that the sum of 1/width stays well under
        1, or add normalisation and residual connections, which remove the effect.
    """
    structure = records.structure
    if structure is None or structure.normalized or structure.skips:
        return []
    hidden = [w for w in structure.weight_layers[:-1] if w.activation == RELU]
    total = sum(1.0 / w.fan_out for w in hidden if w.fan_out > 0)
    if total < DEPTH_OVER_WIDTH:
        return []
    widths = sorted({w.fan_out for w in hidden})
    spread = ""
    dynamics = records.dynamics
    if dynamics is not None and dynamics.length_spread:
        values = list(dynamics.length_spread.values())
        spread = (f" Measured: the spread (std across samples) of ln |output| goes from {fmt(values[0])} "
                  f"at the first weight layer to {fmt(max(values[1:-1] or values))} at its widest inside.")
    message = (f"{len(hidden)} hidden ReLU layers of width {'/'.join(str(w) for w in widths[:4])}: the sum "
               f"of 1/width is {fmt(total)}, where the fluctuation of the signal across inputs becomes as "
               f"large as the signal (Hanin & Rolnick 2018).{spread}")
    fix = (f"Widen the layers (the sum of 1/width falls below 1 at width {int(len(hidden) / DEPTH_OVER_WIDTH) + 1} "
           f"for {len(hidden)} layers) or use fewer of them, or add normalisation "
           f"({advice.norm_choice(structure)}) and residual connections:\n" + advice.RESIDUAL_SNIPPET)
    return about_fitted_model([Violation([w.name for w in hidden[:6]], message, fix,
                                         {"sum_inverse_width": total, "hidden_relu_layers": len(hidden),
                                          "widths": widths})], records)


def pair(bad: bool) -> dict:
    torch.manual_seed(0)
    width = 16 if bad else 128
    return {"model": stack(30, nn.ReLU, width=width, init=he), "inputs": x64(width=width)}
