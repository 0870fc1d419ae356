"""The hidden-updates-scale-with-width rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

from gradscope.rules.base import Violation
from gradscope.rules.example_widths import MuP, adam, mlp_pair
from gradscope.sweep import DELTA_RMS, FLAT, GROWS, HIDDEN, OUTPUT, READOUT, ACT_RMS, WidthSweep, slope_list


def detect(sweep: WidthSweep) -> list[Violation]:
    """What it checks:
        In a width sweep (``gradscope.coordcheck``), the change that the first update makes to each
        hidden layer's output (weights whose fan-in and fan-out both grow with width): the RMS
        of (output after − output before) on the same input, against width, on log-log axes; a
        slope of 0.25 or more in magnitude. Under SGD it is judged only when the model's output
        is flat in width: otherwise an oversized readout is the cause (readout-grows-with-width).

    Why it matters:
        Adam's update has entries of the size of the learning rate whatever the width, and a
        hidden layer sums width-many of them: its output changes in proportion to width per step
        at a fixed learning rate. The best learning rate then shrinks with width and does not
        transfer. µP scales Adam's hidden learning rate as ``1 / width`` and keeps SGD's constant
        (Yang et al. 2022, Tensor Programs V, Table 3).

    Example:
        An MLP trained with ``torch.optim.Adam(model.parameters(), lr=1e-2)`` at every width: the
        hidden layers' change per update has slope about +1.

    Fix:
        Under Adam, give the hidden weight matrices the learning rate ``lr * base_width / width``
        in their own parameter group (mup's ``MuAdam`` does this), keeping the input layer's,
        the biases' and the norms' at ``lr``; under SGD, keep the hidden learning rate the same at
        every width. Updates that shrink under Adam can also come from its ``eps``: under µP the
        gradients shrink as ``1 / width``, so use ``eps=1e-12`` or scale it as ``1 / width``.
    """
    hidden = sweep.of_role(HIDDEN)
    if not sweep.adaptive:
        output = sweep.of_role(OUTPUT) or sweep.of_role(READOUT)
        if any(sweep.final(layer, ACT_RMS).trend != FLAT for layer in output):
            return []
    found = sweep.off(hidden, DELTA_RMS, at=sweep.first)
    if not found:
        return []
    grows = all(slope.trend == GROWS for slope in found.values())
    direction = "grows" if grows else "shrinks" if all(s.trend != GROWS for s in found.values()) else "moves"
    message = (f"The change the first update makes to hidden layers' outputs {direction} with width under "
               f"{sweep.optimizer}: log-log slope {slope_list(found)} (under µP, flat: |slope| < 0.25).")
    if sweep.adaptive:
        fix = ("Give the hidden weight matrices Adam's learning rate lr * base_width / width in a parameter group "
               "of their own (as mup's MuAdam does), keeping the input layer's, the biases' and the norms' at lr."
               + ("" if grows else " The updates shrink with width: the learning rate falls faster than 1/width, or "
                  "Adam's eps is not small next to the gradients (under µP they shrink as 1/width): use eps=1e-12 "
                  "or scale eps as 1/width."))
    else:
        fix = ("Under SGD keep the hidden layers' learning rate the same at every width (µP, Tensor Programs V, "
               "Table 3); scale the input layer's by width and the readout's by 1/width instead.")
    return [Violation(list(found), message, fix, {"slopes": {layer: [s.mean, s.spread] for layer, s in found.items()}})]


def pair(bad: bool) -> dict:
    return mlp_pair(MuP(hidden_lr=not bad), adam)
