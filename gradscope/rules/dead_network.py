"""The dead-network rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from gradscope.records import Records
from gradscope.rules import advice
from gradscope.rules.base import Violation
from gradscope.rules.example_models import stack, x64

ALL_DEAD = 0.999
"""A layer whose ``dead_fraction`` is at least this on every recent logged step has no live unit."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        A ReLU-family layer with every unit dead (never above zero for any sample, on each of the
        recent logged steps) while every module before it receives a backpropagated signal of
        exactly 0 and every weight of the model (each parameter but the biases) gets a gradient
        of exactly 0 on those steps: no other path carries the input to the output, and only
        biases still move. Of such layers, the one nearest the output is named. An error, which
        decides the verdict: in a monitored run as in ``diagnose``. A dead side branch, a
        zero-initialised adapter or a residual block whose branch is dead leaves the main path's
        weights learning, and is left to dead-units.

    Why it matters:
        Past a layer whose units are all dead, the model's output no longer depends on its input:
        it is the same for every sample, set by the biases after that layer. Nothing before the
        layer gets a gradient, so nothing there can learn or bring the units back; the loss sits
        at a constant guess's for good. A learning rate too high for a plain ReLU stack kills its
        units this way in a few steps (a 4-layer MLP on digits under SGD at lr 0.5 with momentum
        0.9 ends at chance, 0.10), while the run's gradient norms still look alive: the output
        layer's bias keeps learning.

    Example:
        The last hidden layer's bias pushed far below zero (in training, by a large step):

        >>> import torch.nn as nn
        >>> bad = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> _ = nn.init.constant_(bad[2].bias, -100.0)

    Fix:
        Restart from a checkpoint taken before the units died, with a lower learning rate (or a
        warm-up) and gradient clipping; LeakyReLU or GELU, He init and normalisation before the
        activation keep units from dying.
    """
    dead = records.wide("dead_fraction", recent=True)
    signal = records.wide("out_grad_norm", recent=True)
    if dead.empty or signal.empty:
        return []
    order = records.depth_order
    named = None
    for i, layer in enumerate(order):
        if layer not in dead.columns:
            continue
        fractions = dead[layer].to_numpy(dtype=float)
        if not (len(fractions) and np.all(np.isfinite(fractions)) and np.all(fractions >= ALL_DEAD)):
            continue
        before = [n for n in order[:i] if n in signal.columns]
        values = signal[before].to_numpy(dtype=float) if before else np.empty((0, 0))
        values = values[np.isfinite(values)]
        if len(values) and np.all(values == 0):
            named = (layer, before)
    if named is None or not _only_biases_learn(records):
        return []
    layer, before = named
    kind = records.types.get(layer, "ReLU")
    steps = len(dead.index)
    message = (f"Every unit of {layer} ({kind}) is dead on {'each of the last ' + str(steps) if steps > 1 else 'the'} "
               f"logged step{'s' if steps > 1 else ''}, the {len(before)} modules before it receive a "
               "backpropagated signal of exactly 0, and every weight of the model gets a gradient of exactly "
               "0: on these batches the output no longer depends on the input (it is the same for every "
               "sample), and only biases still learn. Samples that reach a unit of the layer (other data, "
               "a batch of another kind) would revive it; on the data seen, none does.")
    fix = ("Restart from a checkpoint taken before the units died, with a lower learning rate (10x lower, "
           "or a warm-up) and gradient clipping; use LeakyReLU or GELU, He init and normalisation before "
           "the activation:\n" + advice.clip_code(1.0))
    return [Violation([layer], message, fix, {"layer": layer, "modules_before": len(before), "steps": steps})]


def _only_biases_learn(records: Records) -> bool:
    """Every parameter but the biases has a gradient norm of exactly 0 on the recent logged steps
    (at least one such parameter recorded)."""
    norms = records.wide("grad_norm", recent=True)
    weights = [c for c in norms.columns if not str(c).endswith("bias")]
    values = norms[weights].to_numpy(dtype=float) if weights else np.empty(0)
    values = values[np.isfinite(values)]
    return bool(len(values)) and bool(np.all(values == 0))


def pair(bad: bool) -> dict:
    """Two hidden ReLU layers; in the bad model the second one's bias is -100, so none of its
    units fires."""
    torch.manual_seed(0)
    model = stack(2, nn.ReLU)
    if bad:
        nn.init.constant_(model[2].bias, -100.0)
    return {"model": model, "inputs": x64()}
