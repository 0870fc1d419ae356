"""The HTML report: self-contained, escaped, bounded for large runs."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

import gradscope
from gradscope.report import build_report
from gradscope.reporters.html import MAX_STEPS, render_html
from gradscope.rules import find_rule


def test_page_is_self_contained():
    page = render_html(gradscope.diagnose(**find_rule("vanishing-gradient").pair(True)), "deep sigmoid")
    assert "Plotly.newPlot(" in page and "plotly.js v" in page.lower()
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)  # nothing loaded from elsewhere
    assert "GS101" in page and "vanishing-gradient" in page


class Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.add_module("</script><script>alert(1)</script>", nn.Linear(4, 4))
        self.add_module("<b>bold</b>", nn.Sigmoid())
        self.add_module("rtl\u202eLTR", nn.Linear(4, 4))

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x


def test_layer_names_are_escaped():
    page = render_html(gradscope.diagnose(Named(), torch.randn(8, 4)), "<i>title</i>")
    assert "<script>alert(1)" not in page and "</script><script>" not in page
    assert "<b>bold</b>" not in page and "<i>title</i>" not in page
    assert "&lt;i&gt;title&lt;/i&gt;" in page
    assert "\u202e" not in page  # a right-to-left override is shown as an escape, not obeyed


def test_bar_charts_of_sequential_layers_name_them_on_a_category_axis():
    """nn.Sequential's layers are called "0", "1", …: plotly would read them as numbers."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2))
    page = render_html(gradscope.diagnose(model, torch.randn(16, 4)), "sequential")
    plots = [p for p in page.split("Plotly.newPlot(")[1:] if '"type":"bar"' in p]
    assert plots, "no bar chart"
    assert all(re.search(r'"xaxis":\{[^}]*"type":"category"', p) for p in plots)


def synthetic_report(layers: int, steps: int, params_per_layer: int = 2):
    """A run of ``layers`` modules (each with its parameters) over ``steps`` logged steps."""
    rng = np.random.default_rng(0)
    modules = [f"blocks.{i}.fc" for i in range(layers)]
    params = [f"{m}.{p}" for m in modules for p in ("weight", "bias")[:params_per_layer]]
    rows = []
    step_ids = np.arange(steps)
    for depth, name in enumerate(modules):
        signal = 10 ** (-depth / layers * 2 + rng.normal(0, 0.1, steps))
        rows.append(pd.DataFrame({"step": step_ids, "layer": name, "metric": "out_grad_norm", "value": signal}))
    for name in params:
        rows.append(pd.DataFrame({"step": step_ids, "layer": name, "metric": "grad_norm", "value": rng.random(steps)}))
        rows.append(pd.DataFrame({"step": step_ids, "layer": name, "metric": "weight_norm", "value": 1 + rng.random(steps)}))
        rows.append(pd.DataFrame({"step": step_ids, "layer": name, "metric": "update_ratio", "value": 1e-3 * rng.random(steps)}))
    history = pd.concat(rows, ignore_index=True)
    layer_table = pd.DataFrame(
        [{"layer": p, "type": "Linear", "kind": "parameter", "trainable": True} for p in params]
        + [{"layer": m, "type": "Linear", "kind": "module", "trainable": False} for m in modules])
    layer_table["order"] = range(len(layer_table))
    return build_report(history, layer_table, None, {"class": "Big", "parameters": 1}, {"steps": steps})


def test_large_run_is_downsampled_and_stays_small():
    report = synthetic_report(layers=600, steps=2000)  # 1200 parameter tensors
    page = render_html(report, "big")
    assert f"{MAX_STEPS} of 2000 logged steps" in page
    assert "every 2th layer" in page
    size_mb = len(page.encode()) / 1e6
    assert size_mb < 12, size_mb  # plotly.js is about 4.6 MB of it


def test_the_timeline_draws_every_steps_loss_and_norm_and_marks_the_spike_where_it_fired():
    """The loss the training loop itself read, step by step, and the gradient norm autograd gave
    (float64) are what the timeline draws; the corrupt batch's step carries the event marker."""
    import torch.nn.functional as F

    from gradscope.reporters.html import _Figures

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    losses, norms = [], []
    with gradscope.monitor(model, every=50, optimizer=opt) as mon:
        for step in range(120):
            x = torch.randn(32, 8, generator=g) * (30.0 if step == 100 else 1.0)
            loss = F.mse_loss(model(x), x[:, :1])
            loss.backward()
            losses.append(loss.item())
            norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters())))
            opt.step()
            opt.zero_grad()
        report = mon.report()
    event_steps = [e.step for e in mon.events]
    assert event_steps[0] == 100  # the corrupt batch (the damage it did may fire again later)
    figure = _Figures(report).timeline()
    loss_trace, smoothed, norm_trace, loss_marks, norm_marks = figure.data
    assert [t.name for t in figure.data] == ["loss", "smoothed loss", "gradient norm", "event", "event"]
    # the loss trend's smoothed loss: tracked from its 11th loss on, an average of the losses
    assert all(y is None for y in smoothed.y[:10]) and smoothed.y[10] is not None
    assert min(losses[:51]) <= smoothed.y[50] <= max(losses[:51])
    assert list(loss_trace.x) == list(range(120))
    np.testing.assert_allclose(loss_trace.y, losses, rtol=1e-6)
    # every parameter has at most 1,024 elements here: the pulse's sampled norms are exact
    np.testing.assert_allclose(norm_trace.y, norms, rtol=1e-5)
    assert list(loss_marks.x) == event_steps and list(norm_marks.x) == event_steps
    np.testing.assert_allclose(loss_marks.y, [losses[s] for s in event_steps], rtol=1e-6)
    np.testing.assert_allclose(norm_marks.y, [norms[s] for s in event_steps], rtol=1e-5)
    assert "step 100" in loss_marks.hovertext[0]
    page = render_html(report, "run")
    assert "Loss and gradient norm, every step" in page


def test_a_diagnosis_without_a_training_run_has_no_timeline_section():
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    page = render_html(gradscope.diagnose(model, torch.randn(8, 6)), "model")
    assert "Loss and gradient norm, every step" not in page


def test_the_timeline_tells_skipped_events_apart_and_marks_a_non_finite_norm():
    """The markers of events whose update the guard skipped differ from the others, with a
    legend; a non-finite gradient norm, which has no place on a log axis, still gets its marker
    (at the panel's top) where before the gradient panel had none."""
    import torch.nn.functional as F

    from gradscope.reporters.html import _Figures

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    with gradscope.monitor(model, every=50, optimizer=opt, guard="skip") as mon:
        for step in range(140):
            x = torch.randn(32, 8, generator=g) * (30.0 if step == 100 else 1.0)
            F.mse_loss(model(x), x[:, :1]).backward()
            if step == 120:
                model[2].weight.grad[0, 0] = float("nan")
            opt.step()
            opt.zero_grad()
        report = mon.report()
    assert 100 in mon.skipped_steps and 120 in mon.skipped_steps
    figure = _Figures(report).timeline()
    skipped = [t for t in figure.data if t.name == "event, update skipped by the guard"]
    assert len(skipped) == 2 and skipped[0].showlegend and not skipped[1].showlegend
    norm_marks = skipped[1]
    assert 120 in list(norm_marks.x)
    top = max(y for y in figure.data[2].y if y is not None)
    assert norm_marks.y[list(norm_marks.x).index(120)] == top
    assert figure.layout.showlegend is not False


def test_an_event_at_a_zero_gradient_norm_is_marked_at_the_bottom_of_the_log_axis():
    """A loss spike whose step has all-zero gradients: its marker on the gradient norm's log axis
    had the value 0, which a log axis cannot place, so it was not drawn."""
    import torch.nn.functional as F

    from gradscope.reporters.html import _Figures

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    with gradscope.monitor(model, every=50, optimizer=opt) as mon:
        for step in range(120):
            x = torch.randn(32, 8, generator=g)
            loss = F.mse_loss(model(x), x[:, :1])
            if step == 100:
                loss = loss * 0 + 1000.0  # a spike of the loss with every gradient 0
            loss.backward()
            opt.step()
            opt.zero_grad()
        report = mon.report()
    assert [e.step for e in mon.events][:1] == [100]
    figure = _Figures(report).timeline()
    marks = [t for t in figure.data if t.name == "event"]
    norm_marks = marks[1]
    at = list(norm_marks.x).index(100)
    norms = [y for y in figure.data[2].y if y is not None and y > 0]
    assert norm_marks.y[at] == min(norms) > 0


def test_the_heatmaps_put_steps_on_a_linear_axis():
    """The flight recorder's steps after an event (101–109 at every=50) sat on a category axis,
    each as wide as fifty steps: time looked stretched around every event."""
    from gradscope.reporters.html import _Figures

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=50, optimizer=opt) as mon:
        for step in range(160):
            x = torch.randn(32, 8) * (30.0 if step == 100 else 1.0)
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    heatmap = [f for t, f, _ in _Figures(mon.report()).all() if t == "Backpropagated signal over training"][0]
    steps = list(heatmap.data[0].x)
    assert steps == sorted(steps) and all(isinstance(s, int) for s in steps)
    assert 101 in steps and 150 in steps  # the recorder's steps among the logged ones
    assert heatmap.layout.xaxis.type == "linear"
