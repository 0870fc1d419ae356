"""The init-mismatch rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import math

import torch.nn as nn

from gradscope.layers import RELU
from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import INFO, WARNING, Violation, fmt
from gradscope.rules.example_models import he, stack, x64
from gradscope.rules.profile import signal_profile

DEEP_RELU = 6
"""ReLU-family layers with a small init from which the shrinking signal is worth a note."""

DEFAULT_GAIN = 1.0
"""Gains (std x sqrt(fan_in)) below this are small for ReLU: PyTorch's default is 1/sqrt(3) = 0.58."""

LARGE_GAIN = 3.0
"""Gains above this are larger than any standard init: N(0, 1) weights give sqrt(fan_in)."""

FLAT_ORDERS = 1.0
"""A measured depth profile that rises or falls by less than this many orders of magnitude shows
that the init does the gradient no harm."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Each Linear/Conv layer's init scale, the gain ``std(weight) * sqrt(fan_in)`` measured
        when ``gradscope.diagnose`` starts, against the activation that runs after it in the
        forward (when no normalisation sits in between) and against the measured depth profile
        of the backpropagated signal (see vanishing-gradient):

        - weights with gain above 3, such as N(0, 1) (gain sqrt(fan_in)), and above 3 against
          fan_out too (so ``kaiming_normal_(mode="fan_out")`` is standard), which explode or
          saturate: a warning, or info where the measured profile stays within 1 order of
          magnitude, since the model then compensates for them by design;
        - a small init (gain under 1, e.g. PyTorch's default, 0.58) under 6 or more ReLU-family
          layers in a model whose effective depth (see no-skip-connections) is 6 or more, where
          He init (gain 1.41) keeps the signal's scale, when the measured signal does fall by 1
          order of magnitude or more across those layers toward the input (a robust trend over
          them alone; past residual branches it does not): info.

        The message names the activations as they ran (``GELU``, ``relu``) and calls an init
        PyTorch's default only where the weights statistically are (uniform on
        ±1/sqrt(fan_in)). A weight that another module holds too (an output layer tied to the
        input embedding, as in T5 and GPT-2) is left out: its scale is the embedding's.

    Why it matters:
        He init preserves the variance of the forward and backward signal through ReLU layers;
        a smaller init loses power at every layer (a gain g keeps g²/2 of it, PyTorch's default
        about a sixth), and the loss compounds with depth. Oversized weights push tanh/sigmoid
        into saturation and make linear/ReLU stacks explode.

    Example:
        >>> import torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(64, 64), nn.ReLU())])

    Fix:
        ``gradscope.fixes.reinit(model, inputs)`` (He before ReLU-family activations, Xavier
        before tanh/sigmoid and linear outputs, read off a forward on example inputs; tied
        weights are left alone), or ``nn.init.kaiming_normal_`` per layer.
    """
    structure = records.structure
    if structure is None:
        return []
    profile = signal_profile(records)
    rise = profile.rise if profile is not None else None
    own = [w for w in structure.weight_layers if not w.tied_to]
    findings = []
    # a gain measured against fan_out (kaiming_normal_(mode="fan_out"), torchvision's conv init)
    # is standard too: a layer that reduces channels has a large std * sqrt(fan_in) by design
    large = [w for w in own if w.gain > LARGE_GAIN and w.fan_in >= 16
             and w.gain * math.sqrt(w.fan_out / w.fan_in) > LARGE_GAIN]
    if large:
        relu = [w.name for w in large if w.activation == RELU]
        other = [w.name for w in large if w.activation != RELU]
        fix = "\n".join(
            ([advice.init_code(relu, "kaiming", "relu")] if relu else [])
            + ([advice.init_code(other, "xavier", "tanh" if any(
                w.activation == "tanh" for w in large) else "linear")] if other else [])
        )
        message = (
            f"{len(large)} layers have weights far larger than any standard init: std x "
            f"sqrt(fan_in) = {fmt(max(w.gain for w in large))} (N(0, 1) weights give sqrt(fan_in); "
            f"He gives 1.41, Xavier about 1): {advice.layer_text([w.name for w in large])}."
        )
        flat = rise is not None and abs(rise) < FLAT_ORDERS
        if flat:
            message += (f" The measured gradient profile is flat ({rise:+.1f} orders of magnitude toward the "
                        "output side), so the model compensates and this is informational.")
        findings.append(Violation([w.name for w in large], message, fix,
                                  {"gain": {w.name: w.gain for w in large}, "profile_orders": rise},
                                  INFO if flat else WARNING))
    small_relu = [w for w in own if w.activation == RELU and not w.normalized and w.gain < DEFAULT_GAIN]
    names = [w.name for w in small_relu]
    deep = structure.effective_depth is not None and structure.effective_depth >= DEEP_RELU
    # the loss compounds only where the signal passes through these layers one after another: in a
    # plain stack it falls across them, past residual branches it does not
    across = profile.change_across(names) if profile is not None else None
    if deep and len(small_relu) >= DEEP_RELU and (across is None or across >= FLAT_ORDERS):
        message = (
            f"{len(small_relu)} layers feeding {advice.activation_names(small_relu)} activations "
            f"{advice.init_text(small_relu)}; He init (gain 1.41) keeps the signal's power through "
            "ReLU-family activations, a gain g keeps g²/2 of it per layer"
            + (f", and the measured signal falls {across:.1f} orders of magnitude across them toward the input."
               if across is not None else ".")
        )
        findings.append(Violation(names, message, advice.init_code(names, "kaiming", "relu"),
                                  {"gain": {w.name: w.gain for w in small_relu},
                                   "default_init": {w.name: w.default_init for w in small_relu},
                                   "orders_across": across}))
    return findings


def pair(bad: bool) -> dict:
    return {"model": stack(8, nn.ReLU, init=None if bad else he), "inputs": x64()}
