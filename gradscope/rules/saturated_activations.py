"""The saturated-activations rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from gradscope.rules import advice
from gradscope.records import Records
from gradscope.layers import is_weight_type
from gradscope.rules.base import INFO, Violation, pct
from gradscope.rules.example_models import x64, xavier_tanh

FRACTION = 0.3
"""A bounded activation with more than this fraction of outputs within 1% of its bounds."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Bounded activations (tanh, sigmoid, hardtanh, softsign, hardsigmoid; modules or
        functional calls) whose ``saturation`` (fraction of outputs within 1% of a bound, i.e.
        |tanh| >= 0.99, sigmoid <= 0.01 or >= 0.99) exceeds 30%, as the median of the recent
        logged steps. The model's output activation (no weight layer after it: a classifier's
        sigmoid) is information when it was not saturated at the first logged step: confident
        predictions sit at its bounds by design; saturated from the start, it warns.

    Why it matters:
        A saturated unit's derivative is near zero (tanh'(x) < 0.02 there; exactly zero for
        hardtanh), so it blocks the gradient much like a dead ReLU, and its output carries one bit.
        In a healthy net with a matching init, well under 5% of outputs saturate.

    Example:
        Tanh after N(0, 1) weights: pre-activations have a standard deviation of sqrt(fan_in).

        >>> import torch.nn as nn
        >>> bad = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        >>> _ = nn.init.normal_(bad[0].weight, std=1.0)

    Fix:
        Xavier init for the layers feeding the activation, normalisation (LayerNorm/BatchNorm)
        before it, standardised inputs, and a lower learning rate if saturation grows in training.
    """
    wide = records.wide("saturation", recent=True)
    if wide.empty or wide.shape[1] == 0:
        return []
    steps = [s for s in records.recent_steps if s in wide.index]
    saturated = []
    for layer in [n for n in records.depth_order if n in wide.columns]:
        values = wide.loc[steps, layer].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values) and float(np.median(values)) > FRACTION:
            saturated.append((layer, float(np.median(values))))
    if not saturated:
        return []
    first = records.wide("saturation").iloc[0]  # the first logged step: at init, or as near it as recorded
    # the model's output activation saturated only as training went on: confident predictions;
    # saturated from the start, it is the init's doing (a generator's tanh on wide weights)
    grown = {n for n, _ in saturated if _is_output(records, n) and not float(first.get(n, 0.0)) > FRACTION}
    outputs = [(n, f) for n, f in saturated if n in grown]
    hidden = [(n, f) for n, f in saturated if n not in grown]
    if not hidden:
        # the model's own output: a confident classifier's sigmoid sits near 0 and 1 by design
        # (with BCE its gradient is p - y, which the saturation does not block)
        listed = ", ".join(f"{n} ({pct(f)})" for n, f in outputs)
        return [Violation([n for n, _ in outputs], (
            f"The output activation is saturated: {listed}, and was not at the first logged step. "
            "After the last weight layer this is what confident predictions look like; it blocks "
            "no gradient when the loss takes the logits (nn.BCEWithLogitsLoss, cross-entropy)."),
            "If the loss is computed on the activation's output (nn.BCELoss after nn.Sigmoid), take "
            "the logits instead (nn.BCEWithLogitsLoss): it is the same loss, numerically stable.",
            {"saturation": dict(outputs), "threshold": FRACTION, "steps": steps, "output": True}, INFO)]
    saturated = hidden
    names = [n for n, _ in saturated]
    listed = ", ".join(f"{n} ({pct(f)})" for n, f in saturated[:8])
    message = (
        f"{len(saturated)} bounded activation layer{'s are' if len(saturated) > 1 else ' is'} "
        f"saturated (outputs within 1% of the bounds, where the derivative is near 0): "
        f"{listed}{' …' if len(saturated) > 8 else ''}."
    )
    before = [p for p in (records.preceding_weight_layer(n) for n in names) if p is not None]
    fix = []
    if before:
        fix.append("Initialise the layers feeding them with Xavier:\n"
                   + advice.init_code(before, "xavier", "tanh"))
    if records.preceding_weight_layer(names[0]) == _first_weight(records):
        fix.append("The first activation saturates: standardise the inputs (zero mean, unit variance per feature).")
    fix.append("Put nn.LayerNorm (or BatchNorm for batches of 8+) before the activations, and lower "
               "the learning rate if saturation grows during training.")
    return [Violation(names, message, "\n".join(fix), {
        "saturation": {n: f for n, f in saturated}, "threshold": FRACTION, "steps": steps,
    })]


def _is_output(records: Records, layer: str) -> bool:
    """No weight layer runs after ``layer``: it makes the model's output."""
    names = records.depth_order
    later = names[names.index(layer) + 1:] if layer in names else []
    return not any(is_weight_type(records.types.get(n, "")) for n in later)


def _first_weight(records: Records) -> str | None:
    for name in records.depth_order:
        if records.preceding_weight_layer(name) is not None:
            return records.preceding_weight_layer(name)
    return None


def pair(bad: bool) -> dict:
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    (nn.init.normal_ if bad else xavier_tanh)(model[0].weight)
    return {"model": model, "inputs": x64()}
