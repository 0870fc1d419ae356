"""The input-updates-scale-with-width rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

from gradscope.rules.base import Violation
from gradscope.rules.example_widths import MuP, mlp_pair, sgd
from gradscope.sweep import DELTA_RMS, INPUT, WidthSweep, slope_list


def detect(sweep: WidthSweep) -> list[Violation]:
    """What it checks:
        In a width sweep (``gradscope.coordcheck``), the change that the first update makes to
        each input layer's output (embeddings, and weights whose fan-out grows with width but
        whose fan-in does not): the RMS of (output after − output before) on the same input,
        against width; a log-log slope of 0.25 or more in magnitude.

    Why it matters:
        An input layer's width-many outputs each get a gradient that shrinks with width (the
        layers above spread the signal over more units): under SGD at a fixed learning rate
        the embeddings learn more slowly the wider the model, until they barely move. Under
        Adam they change by the learning rate whatever the width, unless their learning rate
        was scaled with width too. µP: input learning rate ``∝ width`` under SGD, constant under
        Adam (Yang et al. 2022, Tensor Programs V, Table 3).

    Example:
        An MLP trained with ``torch.optim.SGD(model.parameters(), lr=0.1)`` at every width: the
        input layer's change per update has slope about -0.5 (-1 with a µP readout).

    Fix:
        Under SGD, give the input layer (the embeddings) and the biases the learning rate
        ``lr * width / base_width`` (mup's ``MuSGD``), or an input multiplier; under Adam, keep
        their learning rate constant in width (only hidden matrices get ``1 / width``).
    """
    found = sweep.off(sweep.of_role(INPUT), DELTA_RMS, at=sweep.first)
    if not found:
        return []
    message = (f"The change the first update makes to the input layers' outputs depends on width under {sweep.optimizer}: "
               f"log-log slope {slope_list(found)} (under µP, flat: |slope| < 0.25).")
    if sweep.adaptive:
        fix = ("Under Adam keep the learning rate of the input layer (embeddings) and of the biases the same at "
               "every width; only hidden weight matrices get lr * base_width / width.")
    else:
        fix = ("Under SGD give the input layer (embeddings) and the biases the learning rate lr * width / "
               "base_width in a parameter group of their own (as mup's MuSGD does), or multiply the embedding's "
               "output by a constant tuned at the base width.")
    return [Violation(list(found), message, fix, {"slopes": {layer: [s.mean, s.spread] for layer, s in found.items()}})]


def pair(bad: bool) -> dict:
    return mlp_pair(MuP(input_lr=not bad), sgd)
