"""The updates-off-band rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn as nn

from gradscope.layers import parameter_owner
from gradscope.records import Records
from gradscope.rules.base import ERROR, INFO, WARNING, Violation, about_assumed_recipe, about_fitted_model, fmt
from gradscope.rules.example_models import stack, x64

STALLED_BELOW = 1e-4
"""A median update ratio below this stalls training: at 1e-4 per step, 600 steps move the
weights by a few percent at most."""

UNSTABLE_ABOVE = 0.3
"""A median update ratio above this (in a model without normalisation) rewrites the weights
every few steps."""

LARGE_GAIN = 3.0
"""std(weight) * sqrt(fan_in) above which a weight is far larger than a standard init (He gives
1.41, PyTorch's default 0.58): under a normalisation layer its step shrinks as 1 / ||w||^2."""

BAND = (1e-4, 1e-2)
"""Where most working recipes put the update ratio (about 1e-3)."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        The size of the recipe's updates: ``||Δw|| / ||w||`` for every weight tensor the recipe
        trains at each step of ``diagnose``'s recipe probe, its median over the weights, and the
        median of that over the probe steps. Working recipes put it near 1e-3. Under SGD with
        momentum β the probe's first steps are smaller than the steady ones while the momentum
        builds up; the lower limit is applied to the steady size (the median step divided by
        the median of ``1 - β^k`` over the steps: 2.3x larger for β = 0.9 over 10 steps). A weight outside
        the optimizer, in a parameter group at under a tenth of the largest learning rate
        (discriminative learning rates, a trunk kept nearly frozen), or that no gradient reached
        (an unused head, a stop-gradient branch, an expert no sample was routed to) is left out:
        it does not move by design. An error below 1e-4 (the updates are
        too small for the model to learn in a normal run); a warning above 0.3 in a model
        without normalisation layers (each step rewrites a third of the weights). Under
        gradscope's default loss (no loss given), whose scale may be far from the real one, both
        limits are 10x wider. When gradscope assumed the recipe (no optimizer given), the finding
        is information: an assumed recipe never makes an error.
        Small updates that grow 10x or more over the probe (from its first step that moved) beyond
        what momentum explains are information: weights behind a scale that starts near or at 0
        (ConvNeXt's layer scale of 1e-6, ReZero's or SkipInit's residual gate) move once it has
        grown.
        A model that already fits the probe batch far better than a constant prediction (its loss a
        twentieth of one's or less: a trained model, a resumed checkpoint) gets information instead
        of an error for updates too small. So does a model whose small updates are those of
        weights feeding a normalisation layer and far larger than a standard init
        (scale-invariant: a large weight there takes a proportionally smaller step) while its
        other weights move within the band: it learns through those, with its normalised layers
        near their initial random features.

    Why it matters:
        The update ratio is the step size as the model feels it. Far below the band the weights
        barely move, whatever the loss says: a learning rate too small for the gradients the model
        produces (a vanishing gradient, a collapsed forward signal, weights far larger than their
        gradients). Far above it, training is a random walk that diverges without normalisation.

    Example:
        A 12-layer ReLU MLP with PyTorch's default init: its gradients are so small that SGD at lr
        0.001 moves the weights by about 5e-7 of their size per step.

        >>> import torch, torch.nn as nn
        >>> bad = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.ReLU())], nn.Linear(64, 10))
        >>> optimizer = torch.optim.SGD(bad.parameters(), lr=0.001, momentum=0.9)

    Fix:
        Too small: fix the gradient first (see vanishing-gradient and collapsed-representations:
        init for the activation, normalisation, skips), then raise the learning rate or use an
        adaptive optimizer (Adam), whose update ratio is about lr / weight scale. Too large:
        lower the learning rate and add normalisation.
    """
    return about_assumed_recipe(_violations(records), records)


def _violations(records: Records) -> list[Violation]:
    dynamics = records.dynamics
    if dynamics is None or dynamics.nonfinite:
        return []
    median = dynamics.median_update_ratio
    if median is None:
        return []
    per_step = [r for r in dynamics.update_ratios if math.isfinite(r)]
    recipe = dynamics.recipe.text()
    layers = sorted(dynamics.layer_update_ratios, key=lambda n: dynamics.layer_update_ratios[n])
    evidence = {"median_update_ratio": median, "per_step": per_step, "band": list(BAND), "recipe": recipe}
    margin = dynamics.loss_margin  # under the default loss, its scale alone must not make a finding
    ramp = momentum_ramp(dynamics.recipe, len(per_step))
    if median * ramp < STALLED_BELOW / margin:
        how_far = (f"{fmt(1e-3 / median)}x below the usual 1e-3" if median > 0 else
                   "exactly 0: most weights did not move (no gradient reached them, or the learning rate is 0)")
        message = (f"Updates are {fmt(median)} of the weights' size per step under {recipe} (median over "
                   f"{len(per_step)} probe steps and the trained weights), {how_far}{_margin_text(margin)}")
        if ramp > 1 and median > 0:
            evidence["momentum_ramp"] = ramp
            message += (f"; {fmt(median * ramp)} once the momentum has built up (the probe's steps are "
                        f"{fmt(ramp)}x smaller on the median)")
        growth = _growth(per_step, dynamics.recipe)
        if growth is not None and growth >= UNLOCKING:
            evidence["growth"] = growth
            return [Violation(layers[:5], (
                f"{message}; but they grow: {fmt(growth)}x from the first probe step to the last, beyond "
                "what momentum explains. Weights behind a scale that starts near 0 (a layer scale, as in "
                "ConvNeXt's 1e-6, or a zero-initialised residual gate) get gradients as small as it, and "
                "move once it has grown, which the probe shows under way; informational."),
                _fix(small=True), evidence, INFO)]
        scale_free, others, moved = _scale_invariant(records)
        if scale_free and moved is not None and moved * ramp >= STALLED_BELOW / margin:
            return about_fitted_model([Violation(scale_free[:5], (
                f"{message}. {len(scale_free)} of them feed a normalisation layer, which makes them "
                "scale-invariant: their gradient shrinks as they grow, so these large weights barely "
                f"move; the other weights ({', '.join(others[:3])}{' …' if len(others) > 3 else ''}) move "
                f"by {fmt(moved)}. The model learns through those, with its normalised layers close to "
                "their initial random features."), _fix_scale_invariant(),
                {**evidence, "scale_invariant": scale_free, "others_median_update_ratio": moved}, INFO)],
                records, deep=True)
        return about_fitted_model([Violation(layers[:5], f"{message}: the model will barely learn.",
                                             _fix(small=True), evidence, ERROR)], records, deep=True)
    normalized = records.structure is not None and records.structure.normalized
    if median > UNSTABLE_ABOVE * margin and not normalized:
        return [Violation(layers[-5:], (
            f"Updates are {fmt(median)} of the weights' size per step under {recipe}, "
            f"{fmt(median / 1e-3)}x above the usual 1e-3{_margin_text(margin)}, in a model without "
            "normalisation."),
            _fix(small=False), evidence, WARNING)]
    return []


UNLOCKING = 10.0
"""The growth of the update ratio over the probe (its last step's over its first, divided by what
momentum alone gives) from which small updates are a gate opening, not a stall. Models that
stalled and failed on digits grew 0.1x to 2.7x; a ConvNeXt with its layer scale at 1e-6, whose
blocks' updates start 1e-9 of their weights and which trains to 0.97 under SGD with momentum, grew
over 2,000x."""


def _growth(per_step: list[float], recipe) -> float | None:
    """How many times the probe's last update ratio is its first positive one, over the growth
    momentum alone gives a constant gradient between them (``1 - β^k`` of the steady step at the
    k-th step; Nesterov one step ahead). A gate that starts at exactly 0 (ReZero's, SkipInit's)
    moves nothing behind it at the first step: the growth counts from the first step that moved.
    None without two positive steps."""
    first = next((k for k, r in enumerate(per_step) if r > 0), None)
    if first is None or first == len(per_step) - 1 or not per_step[-1] > 0:
        return None
    beta = recipe.momentum
    momentum = 1.0
    if not recipe.adaptive and 0 < beta < 1:
        ahead = 1 if recipe.nesterov else 0
        momentum = (1 - beta ** (len(per_step) + ahead)) / (1 - beta ** (first + 1 + ahead))
    return per_step[-1] / per_step[first] / momentum


def momentum_ramp(recipe, steps: int) -> float:
    """How much smaller the probe's median step is than the steady step of SGD with momentum β:
    the k-th heavy-ball step moves ``(1 - β^k) / (1 - β)`` gradients' worth where the steady one
    moves ``1 / (1 - β)``, so over ``steps`` steps the median is ``median_k(1 - β^k)`` of it
    (0.44 for β = 0.9 over 10 steps); a Nesterov step is one ahead, ``1 - β^(k+1)``. 1 for plain
    SGD and for adaptive optimizers, whose bias correction makes the first steps full-sized."""
    beta = recipe.momentum
    if recipe.adaptive or not 0 < beta < 1 or steps < 1:
        return 1.0
    ahead = 1 if recipe.nesterov else 0
    return 1.0 / statistics.median(1 - beta ** (k + ahead) for k in range(1, steps + 1))


def _scale_invariant(records: Records) -> tuple[list[str], list[str], float | None]:
    """The trained weights that feed a normalisation layer before their activation (their
    layer's output is normalised, so the loss does not change with their scale) and are far
    larger than a standard init; the other trained weights; and the median over those of their
    update ratios (None without any)."""
    structure, ratios = records.structure, records.dynamics.weight_update_ratios
    if structure is None or not ratios:
        return [], [], None
    # only weights far larger than any standard init: a small step is then their size's doing
    normalized = {layer.name for layer in structure.weight_layers if layer.normalized and layer.gain > LARGE_GAIN}
    scale_free = sorted(name for name in ratios if parameter_owner(name) in normalized)
    others = sorted(name for name in ratios if parameter_owner(name) not in normalized)
    return scale_free, others, statistics.median(ratios[n] for n in others) if others else None


def _fix_scale_invariant() -> str:
    return ("Initialise the weights before each normalisation layer at the usual scale (a larger "
            "weight under a normalisation layer takes a proportionally smaller step: its effective "
            "learning rate is lr / ||w||^2), e.g. He init:\n"
            "    for m in model.modules():\n"
            "        if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
            "            nn.init.kaiming_normal_(m.weight, nonlinearity='relu')\n"
            "or raise their learning rate; weight decay also shrinks them back over training.")


def _margin_text(margin: float) -> str:
    return (f" (measured on gradscope's default loss, so judged with a {fmt(margin)}x margin for its scale)"
            if margin > 1 else "")


def _fix(small: bool) -> str:
    if small:
        return ("Make the gradient reach the weights first (init for the activation, normalisation, "
                "skip connections; see vanishing-gradient), then raise the learning rate, or use Adam, "
                "whose update ratio is about lr / weight scale:\n"
                "    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)")
    return "Lower the learning rate until the update ratio is near 1e-3, and add normalisation layers."


def pair(bad: bool) -> dict:
    torch.manual_seed(0)
    model = stack(12, nn.ReLU)
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9) if bad
                 else torch.optim.Adam(model.parameters(), lr=1e-3))
    return {"model": model, "inputs": x64(), "optimizer": optimizer}
