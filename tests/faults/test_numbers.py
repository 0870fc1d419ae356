"""Values at the edge of float32 and empty batches are measured, never called non-finite."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import gradscope
from gradscope.stats.reductions import foreach_norms, sum_of_squares


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


@pytest.mark.parametrize("contiguous", [True, False])
def test_the_sum_of_squares_of_large_finite_values_is_finite(contiguous):
    x = torch.full((64, 64), 5e19)
    x = x if contiguous else x.t()
    expected = 64 * 64 * 5e19 ** 2  # float64 reference
    assert math.isclose(float(sum_of_squares(x)), expected, rel_tol=1e-6)
    [norm] = foreach_norms([x])
    assert math.isclose(norm.item(), math.sqrt(expected), rel_tol=1e-6)
    assert math.isinf(float(sum_of_squares(torch.tensor([1.0, math.inf]))))  # a real Inf stays


def test_finite_activations_whose_float32_sum_of_squares_overflows_raise_no_nonfinite_finding():
    # elements of ~1e18 are finite and LayerNorm handles them, but their float32 sum of squares
    # over the batch (~1e39) overflows
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), Scale(1e18), nn.LayerNorm(64), nn.Linear(64, 1))
    inputs = torch.randn(32, 8)
    with torch.no_grad():
        hidden = model[1](model[0](inputs)).double()
    assert math.isinf(hidden.float().pow(2).sum().item())  # the overflow this test is about
    report = gradscope.diagnose(model, inputs)
    assert "nonfinite-gradient" not in [f.rule for f in report.findings]
    act = report.layers.set_index("layer")["act_rms"]
    assert math.isclose(act["1"], hidden.pow(2).mean().sqrt().item(), rel_tol=1e-5)


def test_an_empty_batch_is_not_a_nonfinite_forward():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.monitor(model, optimizer=opt) as mon:
        for batch in (8, 0, 8):
            model(torch.randn(batch, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
    assert "nonfinite-gradient" not in [f.rule for f in mon.findings()]
    empty_step = mon.to_dataframe().query("step == 1")
    assert empty_step["value"].notna().all()
    assert not empty_step.query("metric in ['act_rms', 'dead_fraction', 'saturation']").size
