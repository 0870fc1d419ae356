"""The collapsed-representations rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradscope.probe import DEFAULT_LOSS
from gradscope.records import Records
from gradscope.rules import advice
from gradscope.rules.base import ERROR, INFO, WARNING, Violation, about_fitted_model, fmt
from gradscope.rules.example_models import he, stack, x64

FAILS_AT = 4.0
"""Orders of magnitude of collapse, -log10(1 - correlation), at the last hidden weight layer that
fail: correlation 0.9999 between samples. (7–8-layer default-init ReLU MLPs reach 2.6 orders and
still train on digits under SGD with momentum.)"""

AT_RISK_AT = 3.0
"""… and that put training at risk (correlation 0.999)."""

ADAPTIVE_AT_RISK_AT = 7.0
"""Under an adaptive optimizer (Adam …), which rescales each parameter's gradient and trains many
collapsed nets, only a collapse to float32 resolution (the samples identical to 7 digits) puts
training at risk; less is informational."""

MIN_LAYERS = 4

SETTLED_GRADIENT = 1 / 3
"""In the recipe probe, a total gradient norm that falls to this share of its first value or less
(3x) ..."""

SETTLED_LOSS = 0.15
"""... while the loss falls by less than this share of its first value: the outputs are settling on
one prediction for every sample."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Forward signal collapse: in one forward pass at initialisation, the mean correlation
        between the samples' outputs of each weight layer (each sample's output vector centred
        over its features, then the cosine between samples, averaged over pairs). Collapse is
        measured in orders of magnitude, ``-log10(1 - correlation)``, at the last hidden weight
        layer (the one before the output layer), relative to the first. An error at 4 orders
        (correlation 0.9999), a warning at 3, in models with 4 or more weight layers where skip
        connections do not shorten the gradient's path to under half of them. Under an adaptive
        optimizer (Adam, RMSprop …), which trains many collapsed nets, a warning only at 7 orders
        (identical to float32 resolution), information below.

        And the collapse as training makes it: in the recipe probe's steps under a
        non-adaptive optimizer (SGD), the total gradient norm falls 3x or more while the loss
        falls by less than 15%, in a model without skip connections: the outputs settle on one
        prediction for every sample (the loss's floor for a constant output), where SGD's steps
        shrink with the gradient. A warning (information under gradscope's default loss).
        A model that already fits the probe batch far better than a constant prediction (its loss a
        twentieth of one's or less: a trained model, a resumed checkpoint) gets information instead
        (its gradients are small because its loss is).

    Why it matters:
        When every sample reaches the output layer as nearly the same vector, the output cannot
        depend on the input, and the gradient has the same direction for every sample: training
        sits at chance although gradient norms look healthy. Deep stacks without skips collapse
        this way: default-init ReLU nets (the bias takes over), LayerNorm stacks, narrow nets.
        A 30-layer LayerNorm ReLU MLP on digits is not collapsed at initialisation (correlation
        0.97 at its last hidden layer), but in ten SGD steps its gradient norm falls 30x while its
        loss moves from 2.34 to 2.27 (ln 10 = 2.30, a constant guess), and it ends at chance.

    Example:
        A 20-layer ReLU MLP with PyTorch's default init (about a third of He's variance): the
        per-sample signal shrinks by half per layer and the shared bias is all that remains.

        >>> import torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(64, 64), nn.ReLU())], nn.Linear(64, 10))

    Fix:
        Add skip connections (residual blocks) and normalisation, and initialise for the
        activation (He for ReLU) so that each layer keeps the signal's variance.
    """
    dynamics, structure = records.dynamics, records.structure
    if dynamics is None or structure is None or structure.skips:
        return []
    at_init = _at_initialisation(dynamics, structure)
    if at_init is not None and at_init.severity != INFO:
        return about_fitted_model([at_init], records, deep=True)
    # a loss far below a constant guess's is no output settling on one (the pattern reads a start)
    settled = _settled_in_the_probe(dynamics, structure) if not dynamics.deeply_fitted else None
    return [settled] if settled is not None else [at_init] if at_init is not None else []


def _at_initialisation(dynamics, structure) -> Violation | None:
    """The collapse with depth in one forward pass at initialisation."""
    similarity = [(n, c) for n, c in dynamics.similarity.items() if math.isfinite(c)]
    if len(similarity) < MIN_LAYERS:
        return None
    first, last = similarity[0], similarity[-2]
    orders = _orders(last[1]) - max(_orders(first[1]), 0.0)
    if orders < AT_RISK_AT:
        return None
    adaptive = dynamics.recipe.adaptive
    severity = (WARNING if orders >= ADAPTIVE_AT_RISK_AT else INFO) if adaptive else \
        ERROR if orders >= FAILS_AT else WARNING
    collapsed = [n for n, c in similarity[:-1] if _orders(c) >= AT_RISK_AT]
    message = (
        f"The samples' representations collapse with depth: their mean correlation rises from "
        f"{fmt(first[1])} after {first[0]!r} to {1 - 10 ** -_orders(last[1]):.6g} after {last[0]!r} "
        f"({orders:.1f} orders of magnitude closer to identical); the output layer cannot tell the "
        "inputs apart."
        + (f" Under {dynamics.recipe.text()}, whose per-parameter scaling can still separate them, this "
           "is informational below 7 orders." if adaptive and severity == INFO else ""))
    fix = ("Add skip connections around the blocks, a normalisation layer in each "
           f"({advice.norm_choice(structure)}), and initialise for the activation:\n" + advice.RESIDUAL_SNIPPET)
    return Violation(collapsed[:6] or [last[0]], message, fix,
                     {"orders": orders, "correlation_first": first[1], "correlation_last_hidden": last[1],
                      "layers": len(similarity)},
                     severity)


def _settled_in_the_probe(dynamics, structure) -> Violation | None:
    """The probe's SGD steps shrink the gradient 3x while the loss hardly falls."""
    losses, norms = dynamics.losses, dynamics.grad_norms
    if dynamics.recipe.adaptive or dynamics.nonfinite or len(norms) < 2 or len(losses) < 2 \
            or len(structure.weight_layers) < MIN_LAYERS or norms[0] <= 0 or losses[0] == 0:
        return None
    shrink = norms[-1] / norms[0]
    fall = (losses[0] - losses[-1]) / abs(losses[0])
    if shrink > SETTLED_GRADIENT or fall >= SETTLED_LOSS:
        return None
    default = dynamics.loss_kind == DEFAULT_LOSS
    message = (
        f"Under {dynamics.recipe.text()} the total gradient norm fell {1 / shrink:.3g}x in the probe's "
        f"{len(norms)} steps ({fmt(norms[0])} to {fmt(norms[-1])}) while the loss fell {fall:.0%} "
        f"({losses[0]:.4g} to {losses[-1]:.4g}): the outputs are settling on one prediction for every "
        "sample, where SGD's steps shrink with the gradient and training stalls near a constant guess."
        + (" Measured under gradscope's default loss, so informational." if default else ""))
    fix = ("Add skip connections around the blocks and initialise for the activation, or train with an "
           "adaptive optimizer (Adam), whose steps do not shrink with the gradient:\n" + advice.RESIDUAL_SNIPPET)
    return Violation(["(model)"], message, fix,
                     {"gradient_shrink": shrink, "loss_fall": fall, "probe_steps": len(norms)},
                     INFO if default else WARNING)


def _orders(correlation: float) -> float:
    return -math.log10(max(1.0 - correlation, 1e-12))


def pair(bad: bool) -> dict:
    torch.manual_seed(0)
    return {"model": stack(20, nn.ReLU, init=None if bad else he), "inputs": x64()}
