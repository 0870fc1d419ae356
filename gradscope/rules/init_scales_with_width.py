"""The init-scales-with-width rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

from gradscope.rules.base import Violation
from gradscope.rules.example_widths import MuP, adam, mlp_pair
from gradscope.sweep import ACT_RMS, HIDDEN, INPUT, WidthSweep, slope_list


def detect(sweep: WidthSweep) -> list[Violation]:
    """What it checks:
        In a width sweep (``gradscope.coordcheck``), the size (RMS) of the input and hidden layers'
        outputs at initialisation (step 0, before any update) against width: a log-log slope of
        0.25 or more in magnitude.

    Why it matters:
        A weight matrix whose entries have a fixed variance (N(0, 1), or GPT-2's std 0.02 at every
        width) sums width-many terms: its outputs grow as sqrt(width), compounding layer after
        layer, so activations blow up (or vanish) in wide models before training starts. Variance
        ``1 / fan_in`` keeps them the same at every width (Yang et al. 2022, Tensor Programs V,
        Table 3).

    Example:
        ``nn.init.normal_(layer.weight, std=0.02)`` for every hidden layer: slope about +0.5 at the
        first such layer, more after it.

    Fix:
        Initialise weight matrices with variance proportional to ``1 / fan_in``:
        ``nn.init.normal_(w, std=sigma / math.sqrt(w.shape[1]))`` with ``sigma`` tuned at the base
        width (PyTorch's default ``nn.Linear`` init and ``kaiming_normal_`` do this), or
        ``std=0.02 * math.sqrt(base_width / width)``.
    """
    found = sweep.off(sweep.of_role(INPUT) + sweep.of_role(HIDDEN), ACT_RMS, at=lambda layer, metric: sweep.slope(layer, metric, 0))
    if not found:
        return []
    first = next(iter(found))
    message = (f"Activations at initialisation depend on width: the outputs of {slope_list(found)} have that log-log "
               f"slope against width before any update (under µP, flat: |slope| < 0.25). The first is {first}: "
               "layers after it inherit its scale.")
    fix = ("Initialise weight matrices with variance proportional to 1/fan_in: nn.init.normal_(w, std=sigma / "
           "math.sqrt(w.shape[1])) with sigma tuned at the base width (PyTorch's default nn.Linear init and "
           "kaiming_normal_ do this), or std = 0.02 * math.sqrt(base_width / width) in place of a fixed 0.02.")
    return [Violation(list(found), message, fix, {"slopes": {layer: [s.mean, s.spread] for layer, s in found.items()}})]


def pair(bad: bool) -> dict:
    return mlp_pair(MuP(init=not bad), adam)
