"""The unstable-learning-rate rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradscope.layers import RELU
from gradscope.records import Records
from gradscope.rules import advice
from gradscope.rules.base import ERROR, INFO, WARNING, Violation, about_assumed_recipe, fmt
from gradscope.rules.example_models import cross_entropy, he, stack, x64

DIVERGED = 10.0
"""The probe's loss rising this many times above its first value is divergence."""

FAILS_ABOVE = 10.0
"""Curvature this many times the recipe's stability limit, in a model without normalisation,
fails; between 1 and this, it is at risk."""

THIN_MARGIN = 0.15
"""In a deep ReLU-family stack (``DEEP`` or more hidden weight layers) without normalisation or
skips, curvature above this fraction of the limit at initialisation is at risk: such models sharpen
several-fold as they train (progressive sharpening, Cohen et al. 2021) and have nothing that brings
the step back down."""

DEEP = 10

DESCENDING = 0.4
"""Under an adaptive optimizer, a probe whose loss ended this share of its first value or more
below it, and stayed below its first value through the second half of the steps, has shown the
recipe descending: a curvature above the limit is then information (adaptive optimizers train at
their preconditioned edge of stability, Cohen et al. 2022)."""

CLIMBING = 1.25
"""The probe's last loss this many times its first, on the batch it trains on, …"""

GROWING = 1.5
"""… while the total gradient norm grows this many times: the recipe is not descending, in a
model without normalisation layers (whose catapult-like early rise brings the gradient down)."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        The learning rate against the curvature of the loss. The recipe probe of ``diagnose``
        measures the largest eigenvalue of the loss Hessian on the probe batch (for Adam-like
        optimizers, of the Hessian preconditioned by the optimizer's per-parameter scale) and
        compares it with the recipe's stability limit: ``2 / lr`` for plain SGD,
        ``2 (1 + β) / lr`` with momentum β, ``2 (1 + β1) / ((1 - β1) lr)`` for Adam. An error
        when the probe's loss became non-finite after a finite first step, or rose 10x in a model
        without normalisation layers (information when it then came back down, ending 40% or more
        below its first value and below it through the second half of the steps: a spike the
        recipe recovered from), or when the curvature is 10x or more above the limit in a
        model without normalisation layers; a warning when, in a model without normalisation
        layers, the loss on the probe batch (the batch the probe trains on) ends 1.25x or more
        above its first value while the gradient norm grows 1.5x or more: the recipe climbs
        instead of descending; a warning from 1x (information when skip connections
        shorten the model); a warning from 0.15x in a ReLU-family stack of 10 or more hidden weight
        layers with neither normalisation nor skips, whose curvature grows several-fold as it
        trains (progressive sharpening). Under SGD without momentum, when the probe's loss stayed
        finite and did not rise 10x, curvature 10x the limit is a warning, not an error, and
        curvature between 1x and 10x (or a sharpening ReLU stack) information: plain SGD often
        leaves a sharp start by one short spike of the loss (the catapult phase of Lewkowycz et
        al. 2020) and trains with its curvature at the limit (the edge of stability of Cohen et
        al. 2021). Under an adaptive optimizer (Adam, Adadelta …), a curvature above the limit is
        information when the probe's loss fell (ending 40% or more below its first value, and
        below it through the second half of the steps): such optimizers train at their
        preconditioned edge of stability.
        Information only when the model has normalisation layers, whose scale invariance lets
        training shrink its effective step by itself. With gradient clipping the severity is at
        most a warning. Under gradscope's default loss (no loss given), whose scale may be far
        from the real one, the curvature thresholds are 10x higher, and a divergence the curvature
        does not explain by that margin is a warning. When gradscope assumed the recipe (no
        optimizer given), the finding is information: an assumed recipe never makes a warning.
        For a model that already fits the probe batch (its loss a quarter or less of a constant
        prediction's: a trained model), a rise of the probe's loss that ends below the constant
        prediction's loss is information (a fresh optimizer's first steps shake a trained model),
        and the sharpening ReLU stack's warning does not apply.

    Why it matters:
        Along a direction whose curvature exceeds the limit, each step overshoots the minimum by
        more than it started from: the loss oscillates with growing amplitude and diverges to
        Inf/NaN, often after tens to hundreds of steps. The largest stable learning rate is the
        one that puts the curvature at the limit. On the very batch it trains on, a stable step
        lowers the loss: a loss that climbs there while the gradient grows is that divergence
        already under way, whatever the curvature measured at initialisation (deep ELU/SELU
        stacks and transformers without normalisation sharpen within a few steps).

    Example:
        An 8-layer He-initialised ReLU MLP is fine at lr 0.005; at lr 0.5 with momentum 0.9 its
        curvature is about 10x the limit:

        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(64, 64), nn.ReLU())], nn.Linear(64, 10))
        >>> for layer in model[::2]:
        ...     _ = nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        >>> bad = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    Fix:
        Lower the learning rate to about half the largest stable one printed with the finding,
        or warm it up from there over the first few hundred steps; clip the gradient norm; and
        initialise the weights for their activation.
    """
    return about_assumed_recipe(_violations(records), records)


def _violations(records: Records) -> list[Violation]:
    dynamics = records.dynamics
    if dynamics is None:
        return []
    recipe = dynamics.recipe
    losses, norms = dynamics.losses, dynamics.grad_norms
    if not losses or not math.isfinite(losses[0]) or not norms or not math.isfinite(norms[0]):
        return []  # non-finite at the first step: the model's doing (nonfinite-gradient), not the recipe's
    ratio = dynamics.stability_ratio
    moved = dynamics.layer_update_ratios
    layers = sorted(moved, key=lambda n: -moved[n] if math.isfinite(moved[n]) else 0.0)[:5]
    normalized = records.structure is not None and records.structure.normalized
    evidence = {"curvature": dynamics.curvature, "stability_limit": dynamics.threshold,
                "stability_ratio": ratio, "largest_stable_lr": dynamics.largest_stable_lr,
                "lr": recipe.lr, "recipe": recipe.text(), "probe_losses": losses}
    curvature_text = (f"; the curvature of the loss is {fmt(dynamics.curvature)}, {fmt(ratio)}x the "
                      f"limit of {recipe.text()} ({fmt(dynamics.threshold)})" if ratio is not None else "")
    # under the default loss, a divergence the curvature does not explain by the margin is the loss's doing
    loss_made = dynamics.loss_margin > 1 and ratio is not None and ratio < dynamics.loss_margin
    loss_text = (" under gradscope's default loss, whose scale may be far from yours (pass your loss "
                 "to decide)" if loss_made else "")
    if dynamics.nonfinite:
        step = len(losses) - 1 if not math.isfinite(losses[-1]) else len(norms) - 1
        return [Violation(layers, f"The loss became non-finite at probe step {step} of {recipe.text()}"
                          f"{loss_text} (first loss {fmt(losses[0])}){curvature_text}.", _fix(dynamics),
                          evidence, WARNING if loss_made else ERROR)]
    rise = max(losses) / losses[0] if losses[0] > 0 else 1.0
    kept = _kept_its_fit(dynamics)
    if rise >= DIVERGED:
        came_back = not kept and _descended(dynamics)
        if came_back and not normalized:  # the spike was survived; a curvature past the limit still counts
            curvature = _curvature_violation(records, layers, evidence, normalized)
            if curvature is not None and curvature.severity in (WARNING, ERROR):
                return [curvature]
        back = (f"; then it came back down to {fmt(losses[-1])}, {fmt(losses[-1] / losses[0])} of its first "
                f"value ({fmt(losses[0])}), and stayed below that: a spike the recipe recovered from (the "
                "catapult of a large step, Lewkowycz et al. 2020), informational." if came_back else "")
        return [Violation(layers, f"The loss rose {fmt(rise)}x within {len(losses) - 1} probe steps of "
                          f"{recipe.text()}{loss_text}{curvature_text}"
                          + (kept or back or ("; the model's normalisation layers usually bring it back, "
                                              "so this is informational." if normalized else ".")),
                          _fix(dynamics), evidence,
                          INFO if normalized or kept or came_back else WARNING if loss_made else ERROR)]
    curvature = _curvature_violation(records, layers, evidence, normalized)
    default_loss = dynamics.loss_margin > 1  # the climb of a stand-in loss says little of the real one
    default_text = (" under gradscope's default loss, whose scale may be far from yours (pass your loss "
                    "to decide)" if default_loss else "")
    climb = losses[-1] / losses[0] if losses[0] > 0 and math.isfinite(losses[-1]) else 0.0
    growth = norms[-1] / norms[0] if norms[0] > 0 and math.isfinite(norms[-1]) else 0.0
    if (climb >= CLIMBING and growth >= GROWING and not normalized
            and (curvature is None or curvature.severity == INFO)):
        return [Violation(layers, (
            f"On the batch it trains on, the loss rose from {fmt(losses[0])} to {fmt(losses[-1])} "
            f"({fmt(climb)}x) and the gradient norm {fmt(growth)}x within {len(losses) - 1} probe steps "
            f"of {recipe.text()}{default_text}{curvature_text}: the recipe is climbing, not descending, "
            f"in a model without normalisation{kept or '.'}"), _fix(dynamics),
            {**evidence, "loss_climb": climb, "grad_norm_growth": growth},
            INFO if default_loss or kept else WARNING)]
    return [curvature] if curvature is not None else []


def _curvature_violation(records: Records, layers: list[str], evidence: dict,
                         normalized: bool) -> Violation | None:
    dynamics = records.dynamics
    recipe, ratio = dynamics.recipe, dynamics.stability_ratio
    if ratio is None:
        return None
    skips = records.structure is not None and records.structure.skips
    scaled = ratio / dynamics.loss_margin
    if scaled >= 1:
        severity = INFO if normalized else ERROR if scaled >= FAILS_ABOVE else INFO if skips else WARNING
        tail = ("; the model's normalisation layers usually let training settle at a smaller effective "
                "step, so this is informational." if normalized else
                "; its skip connections usually keep this in check, so this is informational."
                if severity == INFO else "; steps along the sharpest direction overshoot and grow.")
        if _plain_sgd(recipe) and severity in (ERROR, WARNING):
            severity = WARNING if severity == ERROR else INFO
            tail = ("; without momentum, SGD often leaves such a start through one short loss spike to a "
                    "flatter region (the catapult phase), so this puts training at risk rather than "
                    "failing it." if severity == WARNING else
                    "; without momentum, SGD usually trains at this edge of stability, its curvature "
                    "settling at the limit, so this is informational.")
    elif (scaled >= THIN_MARGIN and not normalized and not skips and not _plain_sgd(recipe)
          and _relu_stack(records) and not dynamics.fitted):  # a fitted model has done its sharpening
        severity = WARNING
        tail = ("; in a ReLU-family stack without normalisation or skips, curvature typically grows "
                "several-fold during training (progressive sharpening) and crosses the limit.")
    else:
        return None
    if recipe.adaptive and severity in (ERROR, WARNING) and _descended(dynamics):
        severity = INFO
        tail = (f"; but the probe's loss fell by {1 - dynamics.losses[-1] / dynamics.losses[0]:.0%} under "
                f"{recipe.optimizer}, whose per-parameter scale adapts the step (adaptive optimizers train "
                "at their edge of stability), so this is informational.")
    if recipe.clip_grad_norm is not None and severity == ERROR:
        severity = WARNING
    margin_text = (f" (measured on gradscope's default loss, so judged with a {fmt(dynamics.loss_margin)}x "
                   "margin for its scale)" if dynamics.loss_margin > 1 else "")
    message = (f"The curvature of the loss ({fmt(dynamics.curvature)}) is {fmt(ratio)}x the stability "
               f"limit of {recipe.text()} ({fmt(dynamics.threshold)}){margin_text}{tail}")
    return Violation(layers, message, _fix(dynamics), evidence, severity)


def _kept_its_fit(dynamics) -> str:
    """Why a rise of the probe's loss is information for a model that already fits the batch and
    whose loss ended below a constant prediction's (``""`` when it is not)."""
    if not dynamics.fitted or dynamics.nonfinite or dynamics.losses[-1] >= dynamics.constant_loss:
        return ""
    return (f"; but the model already fits the probe batch (its first loss is {fmt(dynamics.fit)} of a "
            f"constant prediction's, {fmt(dynamics.constant_loss)}) and its loss ended below that "
            f"({fmt(dynamics.losses[-1])}): the first steps of a fresh optimizer shake a trained model "
            "(Adam's first steps are about lr per weight, whatever the gradient), and it comes back; "
            "informational.")


def _descended(dynamics) -> bool:
    """The probe's (positive) loss ended ``DESCENDING`` of its first value or more below it and
    stayed below its first value through the second half of the steps (dropout's noise allowed)."""
    losses = dynamics.losses
    if dynamics.nonfinite or len(losses) < 3 or losses[0] <= 0:
        return False
    return losses[-1] <= (1 - DESCENDING) * losses[0] and max(losses[len(losses) // 2:]) < losses[0]


def _plain_sgd(recipe) -> bool:
    return not recipe.adaptive and not recipe.momentum


def _relu_stack(records: Records) -> bool:
    hidden = records.structure.weight_layers[:-1]
    return len(hidden) >= DEEP and sum(w.activation == RELU for w in hidden) * 2 > len(hidden)


def _fix(dynamics) -> str:
    stable = dynamics.largest_stable_lr
    lr = dynamics.recipe.lr
    if stable is not None and lr is not None and stable < lr:
        target = stable / 2
        return (f"Lower the learning rate to about {fmt(target)} (the largest stable one is about "
                f"{fmt(stable)}, you have {fmt(lr)}), or warm it up from {fmt(target)} to {fmt(lr)} over "
                "the first few hundred steps:\n"
                + advice.code(f"scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, "
                              f"start_factor={fmt(target / lr)}, total_iters=500)",
                              "# call scheduler.step() after each optimizer.step()")
                + "\nClip the gradient norm as well, and initialise the weights for their activation.")
    return ("Lower the learning rate (by 10x to start), warm it up over the first few hundred steps, "
            "and clip the gradient norm:\n" + advice.clip_code(1.0))


def pair(bad: bool) -> dict:
    torch.manual_seed(0)
    model = stack(8, nn.ReLU, init=he)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5 if bad else 0.005, momentum=0.9)
    return {"model": model, "inputs": x64(), "loss_fn": cross_entropy(), "optimizer": optimizer}
