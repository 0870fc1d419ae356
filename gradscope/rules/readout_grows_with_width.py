"""The readout-grows-with-width rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

from gradscope.rules.base import Violation
from gradscope.rules.example_widths import MuP, adam, mlp_pair
from gradscope.sweep import ACT_RMS, DELTA_RMS, GROWS, OUTPUT, READOUT, WidthSweep, slope_list


def detect(sweep: WidthSweep) -> list[Violation]:
    """What it checks:
        In a width sweep (``gradscope.coordcheck``), the model's output against width on log-log
        axes: the change the first update makes to it (the RMS of output after − output before,
        same input) and its size (RMS) after the last update. A slope of 0.25 or more in either
        (the output grows at least as width^0.25) is a finding. Where the model's output is not a
        tensor, the readout layers' outputs (weights whose fan-in grows with width and fan-out
        does not) are judged.

    Why it matters:
        In the standard parametrisation the readout's update adds up width-many aligned terms, so
        the logits grow in proportion to width after a few steps (width^1 under Adam): the
        learning rate that is best for a narrow model makes a wide one diverge, and tuned
        hyperparameters do not transfer across widths (Yang et al. 2022, Tensor Programs V).

    Example:
        An MLP or GPT whose readout is a plain ``nn.Linear(width, classes)`` trained with Adam at a
        fixed learning rate: the logits' slope is about +1 after 5 steps.

    Fix:
        Multiply the readout's output by ``base_width / width`` (µP's output multiplier, mup's
        ``MuReadout``) and initialise the readout weights to zero; or, without a multiplier,
        initialise them with std ``1 / width`` (or zero) and scale their learning rate as
        ``1 / width`` (Tensor Programs V, Table 3).
    """
    judged = sweep.of_role(OUTPUT) or sweep.of_role(READOUT)
    sizes = {layer: sweep.final(layer, ACT_RMS) for layer in judged}
    changes = {layer: sweep.first(layer, DELTA_RMS) for layer in judged}
    growing = [layer for layer in judged if GROWS in (sizes[layer].trend, changes[layer].trend)]
    if not growing:
        return []
    readouts = sweep.of_role(READOUT)
    sizes = {layer: sizes[layer] for layer in growing}
    changes = {layer: changes[layer] for layer in growing}
    message = (f"The model's output grows with width: the change the first update makes to it has log-log slope "
               f"{slope_list(changes)} against width, its RMS after {sweep.steps} updates slope {slope_list(sizes)} "
               f"(under µP both are flat, |slope| < 0.25). Readout layers: {', '.join(readouts) or 'none found'}.")
    fix = ("Multiply the readout's output by base_width / width (µP's output multiplier, as mup's MuReadout "
           "does) and initialise the readout weights to zero; or, without a multiplier, initialise them with "
           "std 1/width (or zero) and scale their learning rate as 1/width (Tensor Programs V, Table 3).")
    return [Violation(readouts or list(growing), message, fix,
                      {"slopes": {layer: [s.mean, s.spread] for layer, s in sizes.items()},
                       "change_slopes": {layer: [s.mean, s.spread] for layer, s in changes.items()}})]


def pair(bad: bool) -> dict:
    return mlp_pair(MuP(readout=not bad), adam)
