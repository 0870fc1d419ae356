"""The vanishing-gradient rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import torch.nn as nn

from gradscope.layers import RELU, SIGMOID, TANH, family_of_type, is_functional
from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import INFO, Violation, about_fitted_model, fmt
from gradscope.rules.example_models import he, stack, x64
from gradscope.rules.profile import signal_profile

ORDERS = 3.0
"""Orders of magnitude the signal must lose across depth (trend and quarter medians agreeing)."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        The backpropagated signal (``out_grad_norm``, the gradient of the loss with respect to
        each layer's output) across depth, over the recent logged steps. It fires when the signal
        shrinks by 3 or more orders of magnitude from the output side to the input side, measured
        as a trend over all leaf layers in forward order: a robust (Theil–Sen) slope of log10
        signal and the difference of the input-side and output-side quarter medians must both
        show it, on the profile as measured and with the steps made by normalisation, pooling
        and embedding layers taken out. A single such layer, however large its factor, does not
        trigger it; a geometric decay spread over the depth does. When ``diagnose``'s recipe is
        an adaptive optimizer (Adam, RMSprop …) the finding is informational: dividing each
        parameter's gradient by its own running scale largely undoes the shrinkage, and such
        models train under it.
        A model that already fits the probe batch far better than a constant prediction (its loss a
        twentieth of one's or less: a trained model, a resumed checkpoint) gets information instead
        (its gradients are small because its loss is).

    Why it matters:
        The weight gradient of a layer is its input times the signal at its output. When the
        signal is a thousand times smaller near the input, the first layers barely learn: the
        network trains as if it were shallow, or not at all.

    Example:
        A 12-layer MLP with sigmoid activations and PyTorch's default init: each layer multiplies
        the signal by about 0.25 x 0.58, and the input side receives 1e-10 of the output side.

        >>> import torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.Sigmoid())])

    Fix:
        Initialise for the activation (Xavier for tanh, He for ReLU:
        ``gradscope.fixes.reinit(model, inputs)``); replace sigmoid hidden activations with the ReLU
        family; add residual connections or normalisation (LayerNorm, or BatchNorm for batches of
        8+). Pseudo-normalization (``gradscope.fixes.insert_pseudo_norm``) rescales the signal
        every few bounded activations and flattens the profile, but in the digits measurements
        (docs/pseudo-norm.md) it trained deep tanh MLPs worse than Xavier init or residual
        connections; it is offered last.
    """
    profile = signal_profile(records)
    if profile is None or profile.rise < ORDERS:
        return []
    out_log = profile.log_signal[-profile.quarter:]
    threshold = float(sorted(out_log)[len(out_log) // 2]) - ORDERS
    zero = list(profile.zero_input_side)
    weak = zero + [name for name, y in zip(profile.layers, profile.log_signal) if y <= threshold]
    message = (
        f"The backpropagated signal shrinks by {profile.rise:.1f} orders of magnitude from the "
        f"output side ({fmt(profile.output_side)}) to the input side ({fmt(profile.input_side)}) "
        f"across {len(profile.layers)} layers, about x{fmt(profile.per_layer_factor)} per layer"
        + (f", and {len(zero)} layers nearer the input receive exactly 0 (it underflowed)" if zero else "")
        + (f"; {len(weak)} layers receive less than 1e-3 of the output-side signal: "
           f"{advice.layer_text(weak)}." if weak else ".")
    )
    adaptive = records.dynamics is not None and records.dynamics.recipe.adaptive
    if adaptive:
        message += (f" Under {records.dynamics.recipe.text()} this is informational: an adaptive optimizer "
                    "divides each parameter's gradient by its own scale, which largely undoes the shrinkage.")
    return about_fitted_model([Violation(weak or profile.layers[: profile.quarter], message, _fix(records), {
        "orders": profile.rise,
        "trend_orders": profile.trend,
        "quarter_orders": profile.quarters,
        "adjusted_trend_orders": profile.adjusted_trend,
        "signal_output_side": profile.output_side,
        "signal_input_side": profile.input_side,
        "per_layer_factor": profile.per_layer_factor,
        "layers_in_profile": len(profile.layers),
        "layers_with_zero_signal": len(zero),
        "steps": profile.steps,
    }, INFO if adaptive else None)], records, deep=True)


def _fix(records: Records) -> str:
    structure = records.structure
    parts: list[str] = []
    families = _families(records)
    # diagnose measured each layer's init (a monitor's history did not): layers whose init already
    # suits their activation (gain 1.2 or more) need no re-initialisation
    gains = {w.name: w.gain for w in structure.weight_layers} if structure is not None else {}
    tanh = [n for n, f in families.items() if f == TANH and gains.get(n, 0.0) < 1.2]
    sigmoid = [n for n, f in families.items() if f == SIGMOID]
    relu = [n for n, f in families.items() if f == RELU and gains.get(n, 0.0) < 1.2]
    depth = structure.effective_depth if structure is not None else None
    if tanh:
        parts.append(
            "Initialise the layers before tanh with Xavier (gain 5/3); on digits this took a "
            "20-layer tanh MLP from chance to 93% (docs/pseudo-norm.md):\n"
            + advice.init_code(tanh, "xavier", "tanh")
        )
    if sigmoid:
        modules, calls = _activations_after(records, sigmoid)
        parts.append(
            "Sigmoid's derivative is at most 0.25, so even Xavier init leaves a deep sigmoid "
            "stack with a vanishing signal; use ReLU-family hidden activations with He init:\n"
            + (advice.replace_modules(modules, "nn.ReLU()") + "\n" if modules else "")
            + (f"replace the sigmoid calls in the forward of {_owners(calls)} with torch.relu (a call "
               "in a forward cannot be swapped from outside the model's code), then:\n" if calls else "")
            + advice.code(advice.REINIT_CALL)
        )
    if relu:
        if structure is not None:
            measured = [w for w in structure.weight_layers if w.name in relu]
            advice_text = (f"The layers before {advice.activation_names(measured)} {advice.init_text(measured)}, "
                           "which loses more than half the signal's power at every layer; use He init:\n")
        else:
            advice_text = "Use He init for the layers before ReLU:\n"
        parts.append(advice_text + advice.init_code(relu, "kaiming", "relu"))
    if depth is not None and depth >= 8:
        parts.append(
            f"The shortest gradient path crosses {depth} weight layers: "
            "add residual connections around blocks of 1-3 layers (the most robust fix in the "
            "digits measurements at depth 20 and 40):\n" + advice.RESIDUAL_SNIPPET
        )
    elif depth is None and len(tanh) + len(sigmoid) + len(relu) >= 8:
        parts.append(
            "If these layers have no skip connections around them, add residual connections "
            "around blocks of 1-3 layers (the most robust fix in the digits measurements at "
            "depth 20 and 40):\n" + advice.RESIDUAL_SNIPPET
        )
    if tanh or sigmoid:
        parts.append(
            "If the architecture and init must stay, pseudo-normalization rescales the backward "
            "signal every few bounded activations. It flattens the profile, but on digits it "
            "trained worse than Xavier init or residuals from depth 20 on, and with SGD the "
            "learning rate must drop about 1000x (docs/pseudo-norm.md):\n" + advice.PSEUDO_NORM_SNIPPET
        )
    if not parts:
        parts.append(
            f"Initialise for the activation ({advice.REINIT_CALL}), add normalisation "
            f"({advice.norm_choice(structure)}) or residual connections:\n"
            + advice.RESIDUAL_SNIPPET
        )
    return "\n".join(parts)


def _families(records: Records) -> dict[str, str | None]:
    """Each weight layer and the family of the activation that follows it, in forward order, both
    through the layer vocabulary (``gradscope.layers``): from diagnose's structure, which
    classifies the modules themselves, or from a monitor's history, which classifies their
    recorded types; for PyTorch's own layers the two agree."""
    if records.structure is not None:
        return {w.name: w.activation for w in records.structure.weight_layers}
    return {weight: family_of_type(records.types.get(activation, "")) if activation is not None else None
            for weight, activation in records.activations_after.items()}


def _activations_after(records: Records, weight_layers: list[str]) -> tuple[list[str], list[str]]:
    """The activations that follow the given weight layers in forward order: (modules,
    functional calls such as ``encoder:sigmoid#0``)."""
    after = list(dict.fromkeys(activation for weight, activation in records.activations_after.items()
                               if weight in weight_layers and activation is not None))
    return [a for a in after if not is_functional(a)], [a for a in after if is_functional(a)]


def _owners(calls: list[str]) -> str:
    """The modules whose forward makes the functional ``calls`` (the root: ``the model``)."""
    owners = list(dict.fromkeys(call.partition(":")[0] if ":" in call else "" for call in calls))
    return advice.layer_text([o if o else "the model" for o in owners])


def pair(bad: bool) -> dict:
    # 12 sigmoid layers with PyTorch's default init; fixed: ReLU with He init
    model = stack(12, nn.Sigmoid) if bad else stack(12, nn.ReLU, init=he)
    return {"model": model, "inputs": x64()}
