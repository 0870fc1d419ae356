"""The CUDA path on a GPU: every statistic against the float64 reference, and what the host waits
for per step (at most one wait for the device per logged step, none on the others) in float32,
under bf16 autocast, with a float16 GradScaler that skips a step, and under torch.compile.

A wait is counted twice over, independently of gradscope's own code: torch's sync debug mode
warns at every synchronizing CUDA call (a blocking copy, ``.item()``), and the CUDA events the
monitor creates count each ``synchronize()`` made while their work was still running.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradscope
import gradscope.pulse
from tests import models
from tests.test_monitor import train_and_compare

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def exact_float32(monkeypatch):
    """Plain float32 matrix products and convolutions (no TF32), as the reference's tolerance assumes."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def cuda_batch(*shape, out=3):
    return lambda: (torch.randn(*shape, device="cuda"), torch.randn(shape[0], out, device="cuda"))


@pytest.mark.parametrize(("make", "shape"), [(models.mlp, (32, 6)), (models.conv_bn, (8, 3, 6, 6))],
                         ids=["mlp", "conv_bn"])
@pytest.mark.parametrize("every", [1, 3])
def test_statistics_on_cuda_match_the_float64_reference(make, shape, every, exact_float32):
    torch.manual_seed(0)
    train_and_compare(make().cuda(), cuda_batch(*shape), steps=4, every=every)


class CountingEvent(torch.cuda.Event):
    """A CUDA event that counts the waits: ``synchronize()`` calls made before its work finished."""

    waits = 0

    def synchronize(self) -> None:
        if not self.query():
            CountingEvent.waits += 1
        super().synchronize()


def waits_per_step(mode: str, monitored: bool, steps: int, every: int, monkeypatch, **options):
    """(synchronizing CUDA calls, event waits, CUDA graphs the pulse holds) of each step of a
    training run on CUDA."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = models.mlp().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    forward = torch.compile(model) if mode == "compile" else model
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10) if mode == "fp16-scaler" else None
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 6, generator=g).cuda(), torch.randn(16, 3, generator=g).cuda()) for _ in range(steps)]
    if scaler is not None:
        data[4][0][0, 0] = float("inf")  # the scaler skips step 4
    monkeypatch.setattr(torch.cuda, "Event", CountingEvent)
    if scaler is not None:
        options["scaler"] = scaler
    mon = gradscope.monitor(model, every=every, optimizer=opt, **options) if monitored else None
    counts = []
    if mon:
        mon.start()
    try:
        for x, y in data:
            torch.cuda.synchronize()
            CountingEvent.waits = 0
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    dtype = {"bf16": torch.bfloat16, "fp16-scaler": torch.float16}.get(mode)
                    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                        loss = F.mse_loss(forward(x).float(), y)
                    if scaler is None:
                        loss.backward()
                        opt.step()
                    else:
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    opt.zero_grad()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchronizing" in str(w.message) for w in caught)
            graphs = len(mon._pulse._graphs or {}) if mon is not None and mon._pulse is not None else 0
            counts.append((syncs, CountingEvent.waits, graphs))
    finally:
        if mon:
            mon.stop()
    return counts, mon


@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp16-scaler", "compile"])
@pytest.mark.parametrize("guard", [None, "skip"])
def test_the_host_waits_at_most_once_per_logged_step(mode, guard, monkeypatch):
    """No wait beyond the user's own loop's (a GradScaler's step reads its inf flag) on an
    unlogged step, and at most one on a logged step, with the guard too (SGD without momentum
    keeps no state: the guard puts back the weights on the device, from the first step on)."""
    steps, every = 8, 3
    plain, _ = waits_per_step(mode, False, steps, every, monkeypatch)
    watched, mon = waits_per_step(mode, True, steps, every, monkeypatch, guard=guard)
    start = 1 if mode == "compile" else 0  # the first compiled step compiles, monitored or not
    for step in range(start, steps):
        (plain_syncs, plain_waits, _), (syncs, waits, _) = plain[step], watched[step]
        assert plain_waits == 0
        assert syncs >= plain_syncs
        allowed = int(step % every == 0)  # a logged step reads the pulse's ring
        extra = syncs - plain_syncs + waits
        assert extra <= allowed, (f"step {step}: {syncs} synchronizing calls (the plain loop made "
                                  f"{plain_syncs}) and {waits} event waits")
    df = mon.to_dataframe()
    assert sorted(df.step.unique()) == [0, 3, 6]  # every logged step arrived
    assert len(mon.pulse_history()) == steps  # and every step's pulse
    if mode == "fp16-scaler":  # the scaler did skip a step: it halved its scale
        assert mon.scaler.get_scale() == 2.0 ** 9


@pytest.mark.parametrize("guard", [None, "skip"])
def test_the_replayed_pulse_waits_for_nothing(guard, monkeypatch):
    """Past the detector's warm-up (step 50) the pulse replays its CUDA graph: the step that
    captures it waits for the device once (the capture); the others as before, nothing beyond
    the plain loop's waits on an unlogged step."""
    steps, every = 80, 40
    plain, _ = waits_per_step("fp32", False, steps, every, monkeypatch)
    watched, _ = waits_per_step("fp32", True, steps, every, monkeypatch, guard=guard)
    graphs = [count for _, _, count in watched]
    assert graphs[-1] >= 1  # the graph path ran
    for step in range(1, steps):
        if graphs[step] != graphs[step - 1]:
            continue  # this step captured a graph
        (plain_syncs, _, _), (syncs, waits, _) = plain[step], watched[step]
        allowed = int(step % every == 0)
        assert syncs - plain_syncs + waits <= allowed, (f"step {step}: {syncs} synchronizing calls (the "
                                                        f"plain loop made {plain_syncs}) and {waits} event waits")


def regression_run(guard, steps=300, corrupt=(200, 250)):
    """An MLP regression on CUDA with corrupt batches; (monitor, each step's loss, each step's
    total gradient norm in float64), the last two read by plain autograd."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(2000, 20, generator=g).cuda()
    losses, norms = [], []
    with gradscope.monitor(model, every=50, optimizer=opt, guard=guard) as mon:
        for step in range(steps):
            index = torch.randint(0, 2000, (32,), generator=g).cuda()
            x = x_all[index] * (30.0 if step in corrupt else 1.0)
            loss = F.mse_loss(model(x), x_all[index][:, :1] * 2)
            loss.backward()
            losses.append(loss.detach().double())
            norms.append(torch.stack([p.grad.double().norm() for p in model.parameters()]).norm())
            opt.step()
            opt.zero_grad()
    return mon, torch.stack(losses).cpu().numpy(), torch.stack(norms).cpu().numpy()


@pytest.mark.parametrize("guard", [None, "skip"])
def test_the_pulse_replayed_as_a_cuda_graph_matches_plain_kernels_and_autograd(guard, monkeypatch):
    """Past the detector's warm-up the pulse's arithmetic is one CUDA graph replay a step: every
    step's row, the events and the guard's skips are those of the same arithmetic run kernel by
    kernel, and the loss and gradient norm are plain autograd's."""
    runs = {}
    for graphs in (True, False):
        monkeypatch.setattr(gradscope.pulse, "CUDA_GRAPHS", graphs)
        runs[graphs] = regression_run(guard)
    (replayed, losses, norms), (plain, _, _) = runs[True], runs[False]
    assert replayed._pulse._graphs and plain._pulse._graphs is None  # the graph path did run
    a, b = replayed.pulse_history(), plain.pulse_history()
    assert a.shape == b.shape == (300, b.shape[1])
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())  # NaN where NaN
    assert [e.step for e in replayed.events] == [e.step for e in plain.events]
    assert replayed.skipped_steps == plain.skipped_steps
    np.testing.assert_allclose(a["loss"].to_numpy(), losses, rtol=1e-6)
    small = norms < 1e18  # past about 1.8e19 a float32 sum of squares overflows (the unguarded run diverges)
    assert small[:200].all()
    np.testing.assert_allclose(a["grad_norm"].to_numpy()[small], norms[small], rtol=1e-5)
    assert 200 in [e.step for e in replayed.events]  # the corrupt batch was caught
    if guard:
        assert 200 in replayed.skipped_steps
