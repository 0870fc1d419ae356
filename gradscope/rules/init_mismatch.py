"""The init-mismatch rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import torch.nn as nn

from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import WARNING, Violation, fmt
from gradscope.rules.example_models import he, stack, x64

DEEP_RELU = 6
"""ReLU layers with PyTorch's default init from which the shrinking signal is worth a note."""

DEFAULT_GAIN = 1.0
"""Gains (std x sqrt(fan_in)) below this are default-like: PyTorch's is 1/sqrt(3) = 0.58."""

LARGE_GAIN = 3.0
"""Gains above this are larger than any standard init: N(0, 1) weights give sqrt(fan_in)."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Each Linear/Conv layer's init scale, the gain ``std(weight) * sqrt(fan_in)`` measured
        when ``gradscope.diagnose`` starts, against the activation that follows it (when no
        normalisation sits in between): PyTorch's default init (gain 0.58) under 6 or more ReLU
        layers in a model whose effective depth (see no-skip-connections) is 6 or more, where He init (gain 1.41) keeps the signal's scale (info); weights with gain
        above 3, such as N(0, 1) (gain sqrt(fan_in)), which explode or saturate (warning).

    Why it matters:
        He init preserves the variance of the forward and backward signal through ReLU layers;
        the default init loses about half the power per layer (a 20-layer ReLU net's input side
        gets 1e-3 of the signal). Oversized weights push tanh/sigmoid into saturation and make
        linear/ReLU stacks explode.

    Example:
        >>> import torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(64, 64), nn.ReLU())])

    Fix:
        ``gradscope.fixes.reinit(model)`` (He before ReLU-family activations, Xavier before
        tanh/sigmoid and linear outputs), or ``nn.init.kaiming_normal_`` per layer.
    """
    structure = records.structure
    if structure is None:
        return []
    findings = []
    large = [w for w in structure.weight_layers if w.gain > LARGE_GAIN and w.fan_in >= 16]
    if large:
        relu = [w.name for w in large if w.activation == "relu"]
        other = [w.name for w in large if w.activation != "relu"]
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
        findings.append(Violation([w.name for w in large], "" + message, fix,
                                     {"gain": {w.name: w.gain for w in large}}, WARNING))
    default_relu = [w for w in structure.weight_layers
                    if w.activation == "relu" and not w.normalized and w.gain < DEFAULT_GAIN]
    deep = structure.effective_depth is not None and structure.effective_depth >= DEEP_RELU
    if deep and len(default_relu) >= DEEP_RELU:
        names = [w.name for w in default_relu]
        message = (
            f"{len(default_relu)} layers feeding ReLU activations keep PyTorch's default init "
            f"(gain {fmt(min(w.gain for w in default_relu))}-{fmt(max(w.gain for w in default_relu))}; "
            "He init is 1.41), which halves the signal's power at every layer."
        )
        findings.append(Violation(names, message, advice.init_code(names, "kaiming", "relu"),
                                     {"gain": {w.name: w.gain for w in default_relu}}))
    return findings


def pair(bad: bool) -> dict:
    return {"model": stack(8, nn.ReLU, init=None if bad else he), "inputs": x64()}
