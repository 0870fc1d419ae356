"""Mixed precision: with a GradScaler, the monitor reports unscaled statistics and records the
steps the scaler skips instead of calling them exploding or non-finite."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from tests import models


class SubclassedScaler(torch.amp.GradScaler):
    """A GradScaler subclass, as frameworks ship (FSDP's ShardedGradScaler is one)."""


def run(scaler_mode: str, steps: int = 3, inf_at: int | None = None, clip: bool = False,
        scaler_type: type = torch.amp.GradScaler, enabled: bool = True):
    """Train the test MLP; scaler_mode: "none", "scaler" (monitored with scaler=) or "unwatched"
    (a scaler the monitor is not told about)."""
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = scaler_type("cpu", init_scale=2.0 ** 12, enabled=enabled) if scaler_mode != "none" else None
    data = [(torch.randn(16, 6, generator=torch.Generator().manual_seed(i)), torch.randn(16, 3)) for i in range(steps)]
    if inf_at is not None:
        data[inf_at][0][0, 0] = float("inf")
    options = {"scaler": scaler} if scaler_mode == "scaler" else {}
    with gradscope.monitor(model, optimizer=opt, weights_every=1, **options) as mon:
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                if clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
                scaler.step(opt)
                scaler.update()
            opt.zero_grad()
    return mon


def values(mon, metric):
    df = mon.to_dataframe()
    return df[df.metric == metric].set_index(["step", "layer"]).value.sort_index()


@pytest.mark.parametrize("clip, scaler_type", [(False, torch.amp.GradScaler), (True, torch.amp.GradScaler),
                                                (False, SubclassedScaler)])
def test_statistics_are_unscaled_whether_or_not_the_user_unscales(clip, scaler_type):
    plain, scaled = run("none"), run("scaler", clip=clip, scaler_type=scaler_type)
    for metric in ("grad_norm", "out_grad_norm", "act_rms", "update_ratio", "weight_norm"):
        assert values(scaled, metric).to_numpy() == pytest.approx(values(plain, metric).to_numpy(), rel=1e-5), metric
    assert (values(scaled, "amp_skipped") == 0).all()


def test_the_comparison_can_fail_without_scaler():
    plain, unwatched = run("none"), run("unwatched")
    ratio = (values(unwatched, "out_grad_norm") / values(plain, "out_grad_norm")).to_numpy()
    assert ratio == pytest.approx(2.0 ** 12, rel=1e-5)  # the loss scale is still in there


def test_a_skipped_step_is_recorded_not_reported_as_a_problem():
    mon = run("scaler", steps=5, inf_at=2)
    skipped = values(mon, "amp_skipped")
    assert skipped.to_dict() == {(s, ""): (1.0 if s == 2 else 0.0) for s in range(5)}
    assert 2 not in values(mon, "grad_norm").index.get_level_values(0)  # no optimizer step ran
    assert sorted(mon.to_dataframe().step.unique()) == [0, 1, 2, 3, 4]
    rules = {f.rule for f in mon.findings()}
    assert not rules & {"nonfinite-gradient", "exploding-gradient"}, rules


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["cpu", "gpu-path"])
def test_the_scalers_calibration_skips_are_no_divergence(host_arithmetic):
    """A GradScaler starting at a scale whose float16 gradients overflow skips its first steps
    while it lowers the scale, with a finite loss: ordinary calibration, not a diverging run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
    x, y = torch.randn(64, 32), torch.randn(64, 1)
    mon = gradscope.monitor(model, every=1, optimizer=opt, scaler=scaler)
    mon._host_arithmetic = host_arithmetic
    with mon:
        for _ in range(12):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    skipped = values(mon, "amp_skipped")
    assert skipped.sum() >= 1 and skipped.iloc[0] == 1.0  # the calibration happened
    pulse = mon.pulse_history()
    assert not np.isfinite(pulse["grad_norm"].iloc[0])  # the overflow is in the row, as measured
    assert (pulse["alarm"] == 0).all()
    rules = {f.rule for f in mon.findings()}
    assert not rules & {"training-divergence", "training-spike", "nonfinite-gradient"}, rules
    assert mon.report().verdict.label == "trains"


def test_scaler_needs_the_optimizer():
    with pytest.raises(gradscope.UsageError, match="scaler= needs optimizer="):
        gradscope.monitor(nn.Linear(2, 2), scaler=torch.amp.GradScaler("cpu"))
    layer = nn.Linear(2, 2)
    opt = torch.optim.SGD(layer.parameters(), 0.1)
    with pytest.raises(gradscope.UsageTypeError,
                       match=r"Expected `scaler` to be a torch.amp.GradScaler \(or torch.cuda.amp.GradScaler\) "
                             r"but got int; pass the GradScaler"):
        gradscope.monitor(layer, optimizer=opt, scaler=3)
    with pytest.raises(gradscope.UsageTypeError, match="but got torch.optim.sgd.SGD;"):
        gradscope.monitor(layer, optimizer=opt, scaler=opt)


def disabled_scalers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.GradScaler is deprecated
        return [torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler(enabled=False),
                torch.cuda.amp.GradScaler(enabled=False), SubclassedScaler("cpu", enabled=False)]


@pytest.mark.parametrize("index", range(4))
def test_a_disabled_scaler_is_scale_one(index):
    """nanoGPT's GradScaler(enabled=(dtype == "float16")) under bf16 or on the CPU: nothing is
    scaled, so nothing is unscaled or patched, and optimizer= is not needed."""
    scaler = disabled_scalers()[index]
    with gradscope.monitor(nn.Linear(2, 2), scaler=scaler) as mon:
        assert mon.scaler is None and "step" not in vars(scaler)
    plain, disabled = run("none"), run("scaler", enabled=False)
    for metric in ("grad_norm", "out_grad_norm", "act_rms", "update_ratio", "weight_norm"):
        assert values(disabled, metric).to_numpy() == pytest.approx(values(plain, metric).to_numpy(), rel=1e-6), metric
    assert "amp_skipped" not in set(disabled.to_dataframe().metric)


def test_half_precision_gradients_are_reduced_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, optimizer=opt) as mon:
        model(torch.randn(4, 8, dtype=torch.bfloat16)).float().pow(2).mean().backward()
        grads = {n: p.grad.float().norm().item() for n, p in model.named_parameters()}
        opt.step()
    got = values(mon, "grad_norm").droplevel(0).to_dict()
    assert got == pytest.approx(grads, rel=1e-6)


def test_a_scaler_shared_by_two_monitors_is_restored():
    g, d = nn.Linear(4, 4), nn.Linear(4, 1)
    og, od = torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with gradscope.monitor(g, optimizer=og, scaler=scaler) as mg:
        with gradscope.monitor(d, optimizer=od, scaler=scaler) as md:
            for model, opt in ((d, od), (g, og)):
                scaler.scale(model(torch.randn(8, 4)).pow(2).mean()).backward()
                scaler.step(opt)
                opt.zero_grad()
            scaler.update()
        assert "step" in vars(scaler)  # the outer monitor's patch is still in place
    assert "step" not in vars(scaler)  # and gone with it
    assert mg.current_step == 1 and md.current_step == 1
    gradscope.monitor(g, optimizer=og, scaler=scaler).start().stop()  # not left registered
