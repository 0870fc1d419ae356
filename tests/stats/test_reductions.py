"""The device-side reductions against direct float64 computations."""

from __future__ import annotations

import pytest
import torch

from gradscope.buffer import Layout, StepBuffer
from gradscope.stats import reductions as r


def test_foreach_norms_match_float64_and_upcast_half():
    torch.manual_seed(0)
    ts = [torch.randn(7, 3), torch.randn(11)]
    got = r.foreach_norms(ts)
    for g, t in zip(got, ts):
        assert float(g) == pytest.approx(float(t.double().norm()), rel=1e-6)
    half = [torch.full((4,), 300.0, dtype=torch.float16)]
    (norm,) = r.foreach_norms(half)
    assert norm.dtype == torch.float32 and float(norm) == pytest.approx(600.0)  # fp16 max is 65504


def test_nonfinite_counts():
    t = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    counts = r.foreach_nonfinite_counts([t, torch.zeros(3)])
    assert [float(c) for c in counts] == [3.0, 0.0]


@pytest.mark.parametrize("one_kernel", [False, True], ids=["cpu", "gpu-form"])
def test_nonfinite_counts_of_bfloat16_are_exact_past_256(one_kernel):
    """A count kept in bfloat16 would round (999 to 1000)."""
    t = torch.full((999,), float("nan"), dtype=torch.bfloat16)
    t[::7] = 1.0
    (count,) = r.foreach_nonfinite_counts([t], one_kernel=one_kernel)
    assert float(count) == 999 - len(range(0, 999, 7))


def test_delta_norms():
    before, after = [torch.ones(4)], [torch.full((4,), 3.0)]
    (d,) = r.foreach_delta_norms(before, after)
    assert float(d) == pytest.approx(4.0)


@pytest.mark.parametrize(("bounds", "values", "flat"), [
    ((-1.0, 1.0), [-1.0, -0.99, -0.98, 0.0, 0.985, 0.99, 1.0], 4),
    ((0.0, 1.0), [0.0, 0.01, 0.011, 0.5, 0.989, 0.99], 3),
    ((-2.0, 2.0), [-1.98, -1.97, 1.99, 0.0], 2),
])
def test_flat_count_counts_outputs_within_one_percent_of_a_bound(bounds, values, flat):
    t = torch.tensor(values, dtype=torch.float64)
    assert int(r.flat_count(t, bounds)) == flat


@pytest.mark.parametrize(("shape", "producer", "dim"), [
    ((8, 5), None, 1),
    ((8, 4, 5), "AddmmBackward0", 2),
    ((8, 4, 5), "ConvolutionBackward0", 1),
    ((8, 4, 5), "NativeBatchNormBackward0", 1),
    ((8, 4, 5, 5), None, 1),
    ((2, 4, 3, 3, 3), None, 1),
])
def test_unit_dim(shape, producer, dim):
    assert r.unit_dim(torch.zeros(shape), producer) == dim


def test_alive_units_over_samples_and_positions():
    """unit_maxima per unit, then the step buffer's flag: above zero or NaN is alive."""
    y = torch.full((3, 2, 5), -1.0)
    y[2, 1, 0] = 0.5  # unit 0 fires once
    y[0, 0, 3] = 0.0  # exactly zero is not alive
    y[1, 1, 4] = float("nan")  # a NaN unit is alive
    maxima = r.unit_maxima(y, 2)
    y.fill_(1.0)  # what happens to the output later does not change the maxima
    layout = Layout()
    slot = layout.slot(layout.entry("relu", "dead_fraction"), "alive", 5)
    buffer = StepBuffer(layout, torch.device("cpu"))
    buffer.add_positive(slot, maxima)
    state = buffer.finish(0).state()
    assert state[slot:slot + 5].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]

