"""The stability thresholds of gradscope.recipe against the iteration itself: on a quadratic of
curvature λ, the optimizer diverges just above the threshold and converges just below it."""

from __future__ import annotations

import pytest
import torch

from gradscope.recipe import Recipe


def _runs_away(make, curvature: float, steps: int = 2000) -> bool:
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = make([w])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * w.square()).sum().backward()
        opt.step()
    return not bool(w.abs() <= 1.0)  # NaN after Inf counts as run away


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
], ids=["sgd", "heavy-ball", "nesterov"])
def test_sgd_diverges_just_above_the_threshold_and_not_below(make):
    threshold = Recipe.of(make([torch.nn.Parameter(torch.zeros(1))])).stability_threshold()
    assert _runs_away(make, threshold * 1.05)
    assert not _runs_away(make, threshold * 0.95)


def test_recipe_reads_the_first_param_group():
    w = torch.nn.Parameter(torch.zeros(2))
    recipe = Recipe.of(torch.optim.AdamW([w], lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1), clip_grad_norm=1.0)
    assert (recipe.optimizer, recipe.lr, recipe.momentum, recipe.beta2, recipe.weight_decay) == \
        ("AdamW", 3e-4, 0.9, 0.95, 0.1)
    assert recipe.adaptive
    assert recipe.stability_threshold() == pytest.approx(2 * 1.9 / (0.1 * 3e-4))
    assert recipe.text() == "AdamW lr 0.0003 betas (0.9, 0.95) weight decay 0.1 clip 1"
    assert recipe.largest_stable_lr(2 * recipe.stability_threshold()) == pytest.approx(1.5e-4)
