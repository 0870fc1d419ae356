"""The dead-units rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from gradscope.layers import is_functional
from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import ERROR, INFO, WARNING, Violation, pct
from gradscope.rules.example_models import he, x64

WARN_FRACTION = 0.5
"""More than this fraction of a layer's units dead is a warning."""

MIN_UNITS = 16
"""ReLU layers of fewer units (known from diagnose's structure) are information when most of
their units are dead."""

ERROR_FRACTION = 0.9
"""At or above this fraction dead is an error."""

CONSECUTIVE = 3
"""In a run, the layer must be dead beyond the threshold on this many latest logged steps."""

SMALL_BATCH = 4
"""Below this batch size a healthy ReLU unit misses every sample by chance (probability 2^-B), so
only the error threshold applies."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        ReLU-family layers (``dead_fraction``: units that were never above zero for any sample
        and position of a logged step). It fires when more than half of a layer's units are dead;
        over a run, on each of the latest 3 logged steps. Warning above 50%, error at 90% or
        more. With a batch under 4 samples only the 90% level applies, since a healthy unit
        misses a batch of B samples with probability about 2^-B. A layer of fewer than 16 units
        (known in ``diagnose``, from the layer before it: a squeeze-excite bottleneck) is
        information: a few dead units there are little capacity, and their fraction no trend.

    Why it matters:
        A dead ReLU passes no gradient, to its inputs or its weights, so it never comes back:
        the layer has lost that capacity for good, and a fully dead layer cuts the gradient path.

    Example:
        Biases pushed strongly negative (here by init; in training by a large learning rate):

        >>> import torch.nn as nn
        >>> bad = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
        >>> _ = nn.init.constant_(bad[0].bias, -6.0)

    Fix:
        Use LeakyReLU (or GELU), initialise the preceding layer with He init and a small positive
        bias, lower the learning rate, or add normalisation before the activation.
    """
    wide = records.wide("dead_fraction", recent=True)
    if wide.empty or wide.shape[1] == 0:
        return []
    steps = [s for s in records.steps if s in wide.index][-CONSECUTIVE:]
    batch = records.structure.batch_size if records.structure is not None else None
    threshold = ERROR_FRACTION if batch is not None and batch < SMALL_BATCH else WARN_FRACTION
    dead: list[tuple[str, float]] = []
    for layer in [n for n in records.depth_order if n in wide.columns]:
        values = wide.loc[steps, layer].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values) and (values > threshold).all():
            dead.append((layer, float(values[-1])))
    if not dead:
        return []
    units = _units(records)
    few = [(n, f) for n, f in dead if units.get(n, MIN_UNITS) < MIN_UNITS]
    if len(few) == len(dead):
        # a bottleneck of a few units (a squeeze-excite reduction to 4-8 channels): a dead one
        # among them is a small loss of capacity, and the fraction of so few is no trend
        listed = ", ".join(f"{n} ({pct(f)} of {units[n]} units)" for n, f in few[:8])
        return [Violation([n for n, _ in few], (
            f"Most units are dead in {len(few)} narrow ReLU layer{'s' if len(few) > 1 else ''} of fewer than "
            f"{MIN_UNITS} units: {listed}{' …' if len(few) > 8 else ''}."), _fix(records, [n for n, _ in few]),
            {"dead_fraction": dict(few), "threshold": threshold, "steps": steps, "batch_size": batch,
             "units": {n: units[n] for n, _ in few}}, INFO)]
    dead = [(n, f) for n, f in dead if (n, f) not in few]
    worst = max(f for _, f in dead)
    severity = ERROR if worst >= ERROR_FRACTION else WARNING
    names = [n for n, _ in dead]
    listed = ", ".join(f"{n} ({pct(f)})" for n, f in dead[:8])
    message = (
        f"{len(dead)} ReLU layer{'s' if len(dead) > 1 else ''} with most units dead (never above "
        f"zero for any sample" + (f" on each of the last {len(steps)} logged steps" if len(steps) > 1 else "")
        + f"): {listed}{' …' if len(dead) > 8 else ''}."
    )
    return [Violation(names, message, _fix(records, names), {
        "dead_fraction": {n: f for n, f in dead}, "threshold": threshold, "steps": steps,
        "batch_size": batch,
    }, severity)]


def _units(records: Records) -> dict[str, int]:
    """Units of each activation that follows a weight layer, from diagnose's structure (the
    layer's fan-out); a monitor's history does not say."""
    if records.structure is None:
        return {}
    return {w.activation_layer: w.fan_out for w in records.structure.weight_layers
            if w.activation_layer is not None}


def _fix(records: Records, names: list[str]) -> str:
    modules = [n for n in names if not is_functional(n)]
    lines = []
    if modules:
        lines.append("Swap the dead ReLUs for LeakyReLU, which keeps a gradient below zero:\n" + advice.replace_modules(
            modules, "nn.LeakyReLU(0.01)"))
    else:
        lines.append("Replace F.relu with F.leaky_relu(x, 0.01) in the forwards that call it.")
    before = [p for p in (records.preceding_weight_layer(n) for n in names) if p is not None]
    if before:
        lines.append("Give the layers before them He init and a small positive bias:\n" + advice.code(
            f"for name in {advice.names_list(before)}:",
            "    layer = model.get_submodule(name)",
            '    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")',
            "    if layer.bias is not None:",
            "        nn.init.constant_(layer.bias, 0.01)"))
    lines.append("If units die during training, lower the learning rate (or warm it up), or add "
                 "normalisation before the activation.")
    return "\n".join(lines)


def pair(bad: bool) -> dict:
    torch.manual_seed(0)  # the same model whatever ran before: its findings are in a doctest
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    he(model[0].weight)
    nn.init.constant_(model[0].bias, -6.0 if bad else 0.0)
    return {"model": model, "inputs": x64(16)}
