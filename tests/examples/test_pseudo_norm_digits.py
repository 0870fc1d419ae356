"""The pseudo-norm reproduction measures the gradient profile it reports, and pseudo-norm flattens it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.examples.scripts import example

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def script():
    with example("pseudo_norm_digits") as module:
        yield module


@pytest.fixture(scope="module")
def quick_runs(script):
    threads = torch.get_num_threads()
    try:
        return {(r.variant, r.depth): r for r in script.main(["--quick"])}
    finally:
        torch.set_num_threads(threads)


def reference_log10_ratio(script, variant_name: str, depth: int) -> float:
    """Step 0 redone with plain autograd: the gradient at the first and at the last hidden Linear's
    output, on the first minibatch the script trains on, norms in float64."""
    x_train, y_train, _, _ = script.load_data()
    variant = next(v for v in script.VARIANTS if v.name == variant_name)
    torch.manual_seed(0)
    model = script.build(variant, depth, x_train.shape[1])
    names = script.hidden_linears(model)
    outputs = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda module, args, out, name=name: outputs.__setitem__(name, out)
        )
        for name in (names[0], names[-1])
    ]
    try:
        batch = next(script.batches(len(x_train), seed=0))
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        first, last = torch.autograd.grad(loss, [outputs[names[0]], outputs[names[-1]]])
    finally:
        for handle in handles:
            handle.remove()
    return math.log10(first.double().norm().item() / last.double().norm().item())


@pytest.mark.parametrize("variant", ["default", "default+pn/2"])
def test_reported_step_0_profile_matches_autograd(script, quick_runs, variant):
    depth = max(script.QUICK["depths"])
    measured = quick_runs[(variant, depth)].log10_signal_ratio_start
    assert measured == pytest.approx(reference_log10_ratio(script, variant, depth), abs=1e-4)


def test_pseudo_norm_keeps_the_signal_within_an_order_of_magnitude_where_default_init_loses_it(
    script, quick_runs
):
    deepest = max(script.QUICK["depths"])
    assert quick_runs[("default", deepest)].log10_signal_ratio_start < -2
    # every=4 leaves up to three tanh layers unnormalised between PseudoNorms; every 1 or 2 does not
    for variant in ("default+pn/1", "default+pn/2", "xavier+pn/2"):
        for depth in script.QUICK["depths"]:
            assert abs(quick_runs[(variant, depth)].log10_signal_ratio_start) < 1, (variant, depth)
