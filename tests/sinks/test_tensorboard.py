"""TensorBoard event files read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.tensorboard import SummaryWriter

import gradscope
from gradscope.stats import STATISTICS


def train(log_dir, steps=10, every=2, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = {}
    def keep(optimizer, args, kwargs):
        grads[len(grads)] = model[0].weight.grad.clone()

    opt.register_step_pre_hook(keep)
    with gradscope.monitor(model, every=every, optimizer=opt, tensorboard=log_dir, **options) as mon:
        for _ in range(steps):
            model(torch.randn(32, 8)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    return mon, grads


def events(log_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_scalars_equal_the_history(tmp_path):
    mon, _ = train(tmp_path)
    ea = events(tmp_path)
    history = mon.to_dataframe()
    expected_tags = {f"gradscope/{m}/{layer or '(model)'}" for layer, m in zip(history.layer, history.metric)}
    assert set(ea.Tags()["scalars"]) == expected_tags
    for tag in expected_tags:
        _, metric, layer = tag.split("/", 2)
        rows = history[(history.metric == metric) & (history.layer == ("" if layer == "(model)" else layer))]
        got = ea.Scalars(tag)
        assert [e.step for e in got] == rows.step.tolist()
        # weight_norm and update_ratio: one logged step in weights_every = 10
        assert rows.step.tolist() == ([0] if metric in ("weight_norm", "update_ratio") else [0, 2, 4, 6, 8])
        np.testing.assert_allclose([e.value for e in got], rows.value.to_numpy(), rtol=1e-6)  # float32 on disk


def test_custom_scalars_layout_has_a_multiline_chart_per_metric(tmp_path):
    train(tmp_path)
    ea = events(tmp_path)
    [config] = ea.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(config.tensor_proto.string_val[0])
    [category] = layout.category
    charts = {c.title: list(c.multiline.tag) for c in category.chart}
    assert set(charts) == set(STATISTICS)
    assert charts["out_grad_norm"] == ["^gradscope/out_grad_norm/"]


def test_findings_text_is_written_when_they_change(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(32, 32), nn.Sigmoid())], nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, optimizer=opt, tensorboard=tmp_path, findings_every=2):
        for _ in range(6):
            model(torch.randn(16, 32)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    texts = events(tmp_path).Tensors("gradscope/findings/text_summary")
    first = texts[0].tensor_proto.string_val[0].decode()
    assert texts[0].step == 0 and "| error | GS101 | vanishing-gradient |" in first
    assert len(texts) < 6  # not rewritten while unchanged


def test_histograms_match_the_gradient(tmp_path):
    mon, grads = train(tmp_path, steps=9, every=1, histograms_every=4)
    ea = events(tmp_path)
    assert "gradscope/activation/1" in ea.Tags()["histograms"]  # the ReLU's output
    got = ea.Histograms("gradscope/grad/0.weight")
    assert [e.step for e in got] == [0, 4, 8]
    for event in got:
        g = grads[event.step].double().reshape(-1)
        value = event.histogram_value
        assert value.num == g.numel()
        assert value.min == pytest.approx(g.min().item()) and value.max == pytest.approx(g.max().item())
        assert value.sum == pytest.approx(g.sum().item(), rel=1e-6, abs=1e-9)
        assert value.sum_squares == pytest.approx(g.pow(2).sum().item(), rel=1e-6)
        expected, _ = np.histogram(g.numpy(), bins=64, range=(g.min().item(), g.max().item()))
        assert abs(np.array(value.bucket) - expected).sum() <= 2  # float32 binning at the edges
        assert sum(value.bucket) == g.numel()


def test_a_users_writer_is_used_and_left_open(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    train(writer, steps=3, every=1)
    writer.add_scalar("mine", 1.0, 0)  # still open
    writer.close()
    tags = events(tmp_path).Tags()["scalars"]
    assert "mine" in tags and "gradscope/grad_norm/0.weight" in tags


@pytest.mark.parametrize("options, match", [
    ({"tensorboard": 3}, "Expected `tensorboard` to be a log directory or a SummaryWriter but got int"),
    ({"histograms_every": 2}, "pass tensorboard=DIR as well"),
    ({"tensorboard": "x", "findings_every": 0}, "Expected `findings_every` to be a positive int"),
])
def test_bad_options(options, match):
    with pytest.raises(gradscope.UsageError, match=match):
        gradscope.monitor(nn.Linear(2, 2), **options)


def test_a_rising_loss_gets_its_own_marker_and_a_spike_the_spike_marker(tmp_path):
    """The rising-loss rule's bad run (the learning rate grows 2% a step from step 200): its
    episodes go to TensorBoard as events, a rising loss alone under gradscope/loss_rising, a step
    that also spiked under gradscope/spike."""
    import json

    from gradscope.rules.example_models import spiking_run

    torch.manual_seed(0)
    model = spiking_run(None)["model"]
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(2000, 20, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=100, optimizer=opt, tensorboard=tmp_path) as mon:
        for step in range(400):
            if step >= 200:
                opt.param_groups[0]["lr"] *= 1.02
            x = x_all[torch.randint(0, 2000, (32,), generator=g)]
            nn.functional.mse_loss(model(x), x[:, :1] * 2).backward()
            opt.step()
            opt.zero_grad()
    ea = events(tmp_path)
    rising = [e.step for e in mon.events if e.alarms == ["loss rising"]]
    spikes = [e.step for e in mon.events if e.alarms != ["loss rising"]]
    assert rising and [e.step for e in ea.Scalars("gradscope/loss_rising")] == rising
    if spikes:
        assert [e.step for e in ea.Scalars("gradscope/spike")] == spikes
    assert json.dumps(mon.event_dicts())  # the events serialise (finite or named)


def test_findings_cells_show_layer_names_as_written():
    """TensorBoard renders the findings table as markdown: code, emphasis, math and cell
    separators in a layer name are escaped, as in the step summary."""
    from gradscope.sinks.tensorboard import _cell

    assert _cell("tick`x` **bold** $x$ a|b\nnext") == "tick\\`x\\` \\*\\*bold\\*\\* \\$x\\$ a\\|b next"


def test_every_update_the_guard_skipped_is_counted_at_the_logged_steps(tmp_path):
    """An episode's marker is written when it is detected, before its later steps are skipped:
    a run with 200 skipped updates showed three markers of 1.0. The logged steps now carry the
    count so far, equal to the monitor's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=10, optimizer=opt, tensorboard=tmp_path, guard="skip") as mon:
        for step in range(120):
            x = torch.randn(32, 8) * (100.0 if 80 <= step < 84 else 1.0)  # a burst of corrupt batches
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    assert len(mon.skipped_steps) >= 2
    got = {e.step: e.value for e in events(tmp_path).Scalars("gradscope/skipped_updates")}
    assert got[110] == len(mon.skipped_steps)
    assert got[70] == 0 and sorted(got) == sorted(mon.to_dataframe().step.unique())  # (flight recorder's too)
