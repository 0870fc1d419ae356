"""The probe's loss and gradient norm climbing on the batch they train on."""

from __future__ import annotations

import pytest

from gradscope.probe import DEFAULT_LOSS, GIVEN_LOSS, Dynamics
from gradscope.recipe import Recipe
from gradscope.rules import find_rule
from tests.rules.records import make_records

check = find_rule("unstable-learning-rate").check

TYPES = {"fc": "Linear", "fc.weight": "Linear", "out": "Linear", "out.weight": "Linear"}


def run(losses: list[float], norms: list[float], loss_kind: str = GIVEN_LOSS, curvature: float = 1.0,
        momentum: float = 0.9):
    recipe = Recipe("SGD", 0.05, momentum=momentum)
    dynamics = Dynamics(recipe, loss_kind, len(norms), losses, norms, [1e-3] * len(norms),
                        {"fc.weight": 1e-3, "out.weight": 1e-3}, curvature, "Hessian-vector products",
                        None, recipe.stability_threshold())
    return check(make_records({(0, "fc.weight", "grad_norm"): 1.0}, TYPES, dynamics=dynamics))


CLIMB = [2.3, 2.2, 2.4, 2.6, 2.9, 3.4]


def test_a_loss_climbing_with_the_gradient_on_its_own_batch_is_a_warning():
    [finding] = run(CLIMB, [1.0, 1.1, 1.3, 1.6, 2.0])
    assert finding.severity == "warning" and "climbing, not descending" in finding.message
    assert finding.evidence["loss_climb"] == pytest.approx(3.4 / 2.3)
    assert finding.evidence["grad_norm_growth"] == pytest.approx(2.0)


@pytest.mark.parametrize("losses, norms", [
    ([2.3, 6.0, 9.0, 5.0, 3.0, 1.5], [1.0, 3.0, 2.0, 1.0, 0.8]),  # a catapult: up, then down
    (CLIMB, [1.0, 0.9, 0.7, 0.5, 0.4]),  # the loss climbs while the gradient shrinks
    ([2.3, 2.3, 2.4, 2.5, 2.6, 2.8], [1.0, 1.1, 1.3, 1.6, 2.0]),  # 1.22x: under the threshold
])
def test_a_catapult_a_shrinking_gradient_or_a_small_rise_is_not(losses, norms):
    assert run(losses, norms) == []


def test_under_the_default_loss_a_climb_is_information():
    [finding] = run(CLIMB, [1.0, 1.1, 1.3, 1.6, 2.0], loss_kind=DEFAULT_LOSS)
    assert finding.severity == "info" and "default loss" in finding.message


DESCENT = [2.3, 2.1, 1.9, 1.8, 1.6, 1.5]


@pytest.mark.parametrize("momentum, severity", [(0.9, "error"), (0.0, "warning")])
def test_curvature_ten_times_the_limit_fails_with_momentum_and_is_at_risk_without(momentum, severity):
    limit = Recipe("SGD", 0.05, momentum=momentum).stability_threshold()
    assert limit == pytest.approx(2 * (1 + momentum) / 0.05)  # Cohen et al.'s heavy-ball limit
    [finding] = run(DESCENT, [1.0, 0.9, 0.8, 0.8, 0.7], curvature=20 * limit, momentum=momentum)
    assert finding.severity == severity and finding.evidence["stability_ratio"] == pytest.approx(20)
    assert ("catapult" in finding.message) == (momentum == 0.0)


@pytest.mark.parametrize("momentum, severity", [(0.9, "warning"), (0.0, "info")])
def test_curvature_over_the_limit_is_at_risk_with_momentum_and_the_edge_of_stability_without(momentum, severity):
    limit = Recipe("SGD", 0.05, momentum=momentum).stability_threshold()
    [finding] = run(DESCENT, [1.0, 0.9, 0.8, 0.8, 0.7], curvature=3 * limit, momentum=momentum)
    assert finding.severity == severity and finding.evidence["stability_ratio"] == pytest.approx(3)


def _adaptive(losses, curvature_ratio=5.0):
    recipe = Recipe("Adadelta", 1.0)
    dynamics = Dynamics(recipe, GIVEN_LOSS, len(losses) - 1, losses, [1.0] * (len(losses) - 1),
                        [1e-3] * (len(losses) - 1), {"fc.weight": 1e-3, "out.weight": 1e-3},
                        curvature_ratio * recipe.stability_threshold(), "Hessian-vector products",
                        None, recipe.stability_threshold())
    return check(make_records({(0, "fc.weight", "grad_norm"): 1.0}, TYPES, dynamics=dynamics))


def test_under_an_adaptive_optimizer_a_probe_that_descended_makes_curvature_information():
    """pytorch/examples' MNIST recipe (Adadelta lr 1.0) with dropout: a noisy loss that ends far
    below where it started. Curvature 5x the limit is then information, not a warning."""
    [finding] = _adaptive([2.28, 1.74, 2.0, 1.63, 0.97, 1.36, 0.23, 0.035, 0.014, 0.01, 0.008])
    assert finding.severity == "info" and "fell by 100%" in finding.message


@pytest.mark.parametrize("losses", [
    [2.3, 2.2, 2.1, 2.0, 1.9, 1.8],  # fell 22%: not enough
    [2.3, 1.0, 0.5, 2.5, 1.0, 0.9],  # back above its start in the second half
])
def test_under_an_adaptive_optimizer_a_probe_that_did_not_descend_keeps_the_warning(losses):
    [finding] = _adaptive(losses)
    assert finding.severity == "warning"


def _fitted(losses, constant_loss):
    recipe = Recipe("Adam", 1e-3, momentum=0.9, beta2=0.999)
    dynamics = Dynamics(recipe, GIVEN_LOSS, len(losses) - 1, losses, [1.0] * (len(losses) - 1),
                        [1e-3] * (len(losses) - 1), {"fc.weight": 1e-3, "out.weight": 1e-3},
                        0.05 * recipe.stability_threshold(), "Hessian-vector products", None,
                        recipe.stability_threshold(), constant_loss=constant_loss)
    return check(make_records({(0, "fc.weight", "grad_norm"): 1.0}, TYPES, dynamics=dynamics))


def test_a_fitted_model_shaken_by_a_fresh_optimizer_below_a_constant_guess_is_information():
    """Models trained on digits, diagnosed with a fresh Adam: a CNN's probe loss rose 13x (0.115
    to 1.5), a 12-layer MLP's from 5e-4 to 2.9 after the first step, above a constant
    prediction's (2.25), and both came back below it; training from there ended at 97% and 98%."""
    [finding] = _fitted([0.115, 1.53, 0.9, 0.6, 0.4, 0.3, 0.25, 0.22, 0.21, 0.2, 0.203], 2.26)
    assert finding.severity == "info" and "already fits the probe batch" in finding.message
    [finding] = _fitted([5e-4, 2.93, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.567], 2.25)
    assert finding.severity == "info"


@pytest.mark.parametrize("losses", [
    [0.115, 1.53, 3.0, 6.0, 9.0, 12.0, 14.0, 15.0, 16.0, 17.0, 18.0],  # climbing past a constant guess
    [0.2, 0.9, 1.4, 2.0, 2.5, 2.6, 2.4, 2.3, 2.33, 2.35, 2.34],  # rose 13x and ended at it
])
def test_a_fitted_model_whose_loss_ends_at_a_constant_guess_or_above_keeps_the_error(losses):
    [finding] = _fitted(losses, 2.26)
    assert finding.severity == "error"


@pytest.mark.parametrize("constant_loss, severity", [(100.0, "info"), (9.0, "error"), (None, "error")])
def test_stalled_updates_are_information_only_for_a_model_that_fits_far_better_than_a_constant(
        constant_loss, severity):
    """Updates 1e-6 of the weights: a trained model's (its loss 1/100 of a constant prediction's,
    its gradients small because its loss is) is information; at 1/9 (an untrained contrastive
    encoder at a low temperature measured 0.11, a residual denoiser 0.23) or unknown, an error."""
    recipe = Recipe("SGD", 0.05, momentum=0.9)
    dynamics = Dynamics(recipe, GIVEN_LOSS, 2, [1.0, 1.0, 1.0], [1.0, 1.0], [1e-6, 1e-6],
                        {"fc.weight": 1e-6, "out.weight": 1e-6}, 1.0, "Hessian-vector products", None,
                        recipe.stability_threshold(), constant_loss=constant_loss)
    check_band = find_rule("updates-off-band").check
    [finding] = check_band(make_records({(0, "fc.weight", "grad_norm"): 1.0}, TYPES, dynamics=dynamics))
    assert finding.severity == severity


@pytest.mark.parametrize("losses, severity", [
    # pytorch/examples' super_resolution under its Adam lr 0.01: one spike, back 9x below its start
    ([0.409, 18.4, 3.0, 0.9, 0.4, 0.2, 0.12, 0.08, 0.06, 0.05, 0.0458], "info"),
    ([0.409, 18.4, 3.0, 0.9, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], "error"),  # back only to 0.73 of its start
    ([0.409, 18.4, 0.2, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1], "error"),  # above its start again late
    ([0.409, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 9.0], "error"),  # the spike at the end
])
def test_a_tenfold_spike_the_probe_came_back_from_is_information(losses, severity):
    [finding] = run(losses, [1.0] * (len(losses) - 1))
    assert finding.severity == severity
    assert ("came back down" in finding.message) == (severity == "info")


def test_a_spike_the_probe_came_back_from_keeps_a_curvature_far_past_the_limit():
    losses = [0.409, 18.4, 3.0, 0.9, 0.4, 0.2, 0.12, 0.08, 0.06, 0.05, 0.0458]
    [finding] = run(losses, [1.0] * 10, curvature=800.0)  # 10.5x the limit of SGD lr 0.05 momentum 0.9
    assert finding.severity == "error" and "curvature" in finding.message
