"""The step buffer's rescaling is read from what each statistic declares: only ``loss_scaled``
components are divided by the loss scale (and the 1/world of a global mean loss), only
``REPLICATED`` statistics of unsharded parameters by the world size."""

from __future__ import annotations

import torch

from gradscope.buffer import Layout
from gradscope.stats import REPLICATED, STATISTICS
from gradscope.stats.rescale import RescalePlan


def layout_with_every_statistic() -> Layout:
    layout = Layout()
    for metric, stat in STATISTICS.items():
        for layer in ("a", "shard"):
            entry = layout.entry(layer, metric)
            for component in (*stat.state, *stat.host_state):
                layout.slot(entry, component)
    return layout


def factors(plan: RescalePlan, layout: Layout, scale, world: int) -> torch.Tensor:
    """The factor each slot of the buffer is multiplied by."""
    out = torch.ones(layout.size, dtype=torch.float64)
    for offsets, factor in plan.rescales(scale, world, torch.device("cpu")):
        out[offsets] *= factor
    return out


def test_no_scale_one_rank_rescales_nothing():
    layout = layout_with_every_statistic()
    assert RescalePlan(layout, lambda layer: False).rescales(None, 1, torch.device("cpu")) == []


def test_factors_follow_the_declarations():
    layout = layout_with_every_statistic()
    plan = RescalePlan(layout, lambda layer: layer == "shard")
    got = factors(plan, layout, torch.tensor(8.0), world=4)
    for entry in layout.entries:
        stat = STATISTICS[entry.metric]
        for component, (offset, _) in entry.slots.items():
            expected = 1.0
            if component in stat.loss_scaled:
                expected /= (8.0 * 4) ** 2
            if stat.dist_reduce == REPLICATED and entry.layer != "shard" and component in stat.state:
                expected /= 4
            assert got[offset].item() == expected, (entry.layer, entry.metric, component)


def test_the_backpropagated_signal_is_the_only_loss_scaled_statistic():
    """Parameter gradients are read after a GradScaler unscales them: grad_norm carries no scale."""
    assert [name for name, s in STATISTICS.items() if s.loss_scaled] == ["out_grad_norm"]
