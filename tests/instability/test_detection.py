"""Detection, attribution, the flight recorder and the guard, on real training loops."""

from __future__ import annotations

import copy
import gc
import json
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope.detectors import GRAD_NONFINITE, GRAD_SPIKE, LOSS_NONFINITE, LOSS_SPIKE, Detector, DetectorState
from gradscope.report import load_run_report
from tests.test_sync import OpLog


def regression(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 20, generator=g)
    return model, x, x[:, :1] * 2, g


def train(model, x_all, y_all, g, opt, mon, steps, corrupt=(), grad_scale=None, accumulate=1, corrupt_micro=None):
    for step in range(steps):
        for micro in range(accumulate):
            index = torch.randint(0, len(x_all), (32,), generator=g)
            bad = step in corrupt and (corrupt_micro is None or micro == corrupt_micro)
            x = x_all[index] * (30.0 if bad else 1.0)
            loss = F.mse_loss(model(x), y_all[index]) / accumulate
            loss.backward()
        if grad_scale is not None and step in grad_scale[0]:
            for p in grad_scale[1].parameters():
                p.grad.mul_(grad_scale[2])
        opt.step()
        opt.zero_grad()


def test_a_stable_run_raises_no_alarm_and_a_corrupt_batch_is_caught_on_its_step_at_every_100():
    model, x, y, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=100, optimizer=opt) as mon:
        train(model, x, y, g, opt, mon, 600, corrupt=(450,))
    [event] = mon.events[:1]
    assert event.step == 450 and "gradient spike" in event.alarms and "loss spike" in event.alarms
    assert all(e.step >= 450 for e in mon.events)  # 450 stable steps, no false alarm
    logged = set(mon.to_dataframe()["step"].unique())
    assert set(range(451, 461)) <= logged  # the flight recorder: every step after the detection
    assert 462 not in logged or any(e.step > 450 for e in mon.events)


def test_the_layer_whose_gradient_left_its_band_first_is_named():
    """Gradients of one layer alone are scaled 50x on steps 300-302: that layer, not the last one
    (first in backward order), is where the spike began."""
    model, x, y, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with gradscope.monitor(model, every=100, optimizer=opt) as mon:
        train(model, x, y, g, opt, mon, 320, grad_scale=((300, 301, 302), model[2], 50.0))
    [event] = mon.events
    assert event.step == 300 and event.alarms == ["gradient spike"]
    assert event.layer in ("2.weight", "2.bias") and event.layer_left_at == 300
    assert event.layer_ratio == pytest.approx(50.0, rel=0.3)


def test_the_corrupt_micro_batch_is_named_under_gradient_accumulation():
    model, x, y, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    with gradscope.monitor(model, every=100, optimizer=opt) as mon:
        train(model, x, y, g, opt, mon, 260, corrupt=(250,), accumulate=4, corrupt_micro=2)
    event = mon.events[0]
    assert event.step == 250 and event.micro_batches == 4 and event.micro_batch == 2
    assert "micro-batch 2 of 4" in event.text


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["cpu", "gpu-path"])
@pytest.mark.parametrize("optimizer", ["sgd", "sgd-momentum", "sgd-momentum-raised", "adamw"])
def test_the_guard_leaves_parameters_and_optimizer_state_bit_identical(host_arithmetic, optimizer):
    """sgd-momentum-raised: SGD without momentum (no state) until the corrupt step, which is the
    first with momentum: skipped, it must not leave a momentum buffer behind."""
    model, x, y, g = regression()
    opt = (torch.optim.SGD(model.parameters(), lr=0.01) if optimizer in ("sgd", "sgd-momentum-raised") else
           torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if optimizer == "sgd-momentum"
           else torch.optim.AdamW(model.parameters(), lr=1e-3))
    mon = gradscope.monitor(model, every=100, optimizer=opt, guard="skip")
    mon._host_arithmetic = host_arithmetic
    with mon:
        train(model, x, y, g, opt, mon, 200)
        if optimizer == "sgd-momentum-raised":
            for group in opt.param_groups:
                group["momentum"] = 0.9
        before = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        log = OpLog()
        with log:
            train(model, x, y, g, opt, mon, 1, corrupt=(0,))  # step 200: a corrupt batch
        after = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        if host_arithmetic is False and optimizer in ("sgd", "sgd-momentum"):  # (AdamW's step reads its step count)
            # put back on the device, without reading the alarm on the host
            assert log.syncs == [], log.syncs
        train(model, x, y, g, opt, mon, 50)
    for k in after[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    assert {i: set(s) for i, s in after[1]["state"].items()} == {i: set(s) for i, s in before[1]["state"].items()}
    for i, state in after[1]["state"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(before[1]["state"][i][k]), torch.as_tensor(v)), (i, k)
    assert mon.skipped_steps == [200]
    assert torch.isfinite(F.mse_loss(model(x), y))  # and training went on
    findings = {f.rule: f for f in mon.findings()}
    assert "skipped-updates" in findings and "1 optimizer update" in findings["skipped-updates"].message


def train_with_closure(model, x_all, y_all, g, opt, steps, corrupt=()):
    """``opt.step(closure)``, the closure zeroing, running the forward and the backward; the
    losses ``step()`` returned."""
    returned = []
    for step in range(steps):
        index = torch.randint(0, len(x_all), (32,), generator=g)
        x = x_all[index] * (30.0 if step in corrupt else 1.0)

        def closure():
            opt.zero_grad()
            loss = F.mse_loss(model(x), y_all[index])
            loss.backward()
            return loss

        returned.append(opt.step(closure))
    return returned


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["cpu", "gpu-path"])
@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adamw"])
def test_the_guard_holds_back_a_step_whose_closure_the_optimizer_evaluates(host_arithmetic, optimizer):
    """``opt.step(closure)`` of torch's one-evaluation optimizers: the guard evaluates the closure
    first and decides before the update (before, a closure step passed unguarded). The step
    returns the closure's loss either way."""
    model, x, y, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if optimizer == "sgd-momentum" \
        else torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = gradscope.monitor(model, every=100, optimizer=opt, guard="skip")
    mon._host_arithmetic = host_arithmetic
    evaluations = []
    with mon:
        train_with_closure(model, x, y, g, opt, 200)
        before = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        index = torch.randint(0, len(x), (32,), generator=g)

        def corrupt():
            evaluations.append(1)
            opt.zero_grad()
            loss = F.mse_loss(model(x[index] * 30.0), y[index])
            loss.backward()
            return loss

        returned = opt.step(corrupt)  # step 200
        after = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        with torch.no_grad():  # the weights did not move: the corrupt batch's loss at them
            expected = F.mse_loss(model(x[index] * 30.0), y[index])
        train_with_closure(model, x, y, g, opt, 20)
    assert len(evaluations) == 1  # evaluated once, as the optimizer alone would
    assert torch.equal(returned.detach(), expected)
    for k in after[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    for i, state in after[1]["state"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(before[1]["state"][i][k]), torch.as_tensor(v)), (i, k)
    assert mon.skipped_steps == [200]
    assert mon.events[0].step == 200 and mon.events[0].skipped


def test_the_guard_says_it_cannot_hold_back_an_lbfgs_step():
    """LBFGS evaluates its closure many times inside the step: the guard cannot decide before
    the update, says so once, and reports the spike as not skipped."""
    model, x, y, g = regression()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    with pytest.warns(gradscope.GradscopeWarning, match=r"cannot guard LBFGS.step\(closure\)"):
        with gradscope.monitor(model, every=100, optimizer=opt, guard="skip") as mon:
            train_with_closure(model, x, y, g, opt, 60, corrupt=(55,))
    assert mon.skipped_steps == []
    assert [e.step for e in mon.events][:1] == [55] and not mon.events[0].skipped
    assert mon.events[0].guard == "could not act"


def test_the_fix_suggests_the_guard_only_to_a_run_without_it():
    """A run whose guard was on (it skipped nothing: the alarm was not one it acts on, or it
    could not act) is not told to turn it on."""
    from gradscope.records import Records
    from gradscope.rules.advice import instability_fix

    records = Records(pd.DataFrame(columns=["step", "layer", "metric", "value"]), pd.DataFrame())
    suggest = 'Train with gradscope.monitor(..., guard="skip")'
    assert suggest in instability_fix([{"layer": "fc.weight", "guard": None}], records)
    assert suggest not in instability_fix([{"layer": "fc.weight", "guard": "on"}], records)
    fix = instability_fix([{"layer": "fc.weight", "guard": "could not act"}], records)
    assert suggest not in fix and "could not hold back" in fix


def test_a_guard_without_the_optimizer_says_it_skips_nothing():
    model, x, y, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(gradscope.GradscopeWarning, match=r"follows no optimizer .* no update is skipped"):
        with gradscope.monitor(model, every=100, guard="skip") as mon:
            for _ in range(3):
                F.mse_loss(model(x[:32]), y[:32]).backward()
                mon.step()
                opt.step()
                opt.zero_grad()


def test_without_the_guard_the_same_batch_changes_the_weights():
    """The other side of the guard test: the corrupt batch does move the weights when not guarded."""
    model, x, y, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with gradscope.monitor(model, every=100, optimizer=opt) as mon:
        train(model, x, y, g, opt, mon, 200)
        before = copy.deepcopy(model.state_dict())
        train(model, x, y, g, opt, mon, 1, corrupt=(0,))
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert mon.skipped_steps == []


def test_a_nonfinite_gradient_is_skipped_by_the_guard_even_outside_the_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=100, optimizer=opt, guard="skip") as mon:
        for step in range(3):
            F.mse_loss(model(torch.randn(8, 256)), torch.randn(8, 1)).backward()
            if step == 2:
                model[0].weight.grad[0, 1] = float("nan")  # element 1: the sample reads 0, 65, …
            before = model[0].weight.detach().clone()
            opt.step()
            opt.zero_grad()
    assert torch.equal(before, model[0].weight.detach())
    assert mon.skipped_steps == [2] and "non-finite gradient" in mon.events[0].alarms


@pytest.mark.parametrize("skipped", [110, 0], ids=["later", "first step"])
@pytest.mark.parametrize("built", ["before the monitor", "inside it"])
def test_the_guard_and_a_learning_rate_scheduler_work_together(built, skipped, recwarn):
    """A scheduler wraps ``optimizer.step`` (to check it runs before ``scheduler.step()``); the
    guard's step must be one it can wrap, and must keep the wrapper it found. A first step the
    guard holds back still counts as called: before, the scheduler warned that its step came
    before the optimizer's."""
    model, x, y, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    make = lambda: torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)  # noqa: E731
    scheduler = make() if built == "before the monitor" else None
    with gradscope.monitor(model, every=100, optimizer=opt, guard="skip") as mon:
        scheduler = scheduler or make()
        for step in range(120):
            bad = step == skipped
            # a spike needs the warm-up's band; a NaN gradient is caught from the first step
            train(model, x, y, g, opt, mon, 1, corrupt=(0,) if bad and step else (),
                  grad_scale=((0,), model, float("nan")) if bad and not step else None)
            scheduler.step()
    train(model, x, y, g, opt, None, 1)  # the optimizer steps as before once the monitor is gone
    scheduler.step()
    assert mon.skipped_steps == [skipped]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 2)  # 121 scheduler steps
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message) or "overridden" in str(w.message)]
    # a scheduler built inside wrapped the guard's step, which stays in its chain: it holds the
    # monitor only weakly, so the monitor and its history are freed all the same
    gone = weakref.ref(mon)
    del mon
    gc.collect()
    assert gone() is None
    train(model, x, y, g, opt, None, 1)


def test_a_gradient_of_exactly_zero_is_no_nonfinite_gradient():
    """A loss that does not depend on the parameters (a loss weight at 0, every unit dead) gives
    gradients of exactly 0: no alarm, no divergence, and the verdict stays trains."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.monitor(model, every=10, optimizer=opt, guard="skip") as mon:
        for _ in range(30):
            ((model(torch.randn(16, 4)) * 0).sum() + 1.0).backward()
            opt.step()
            opt.zero_grad()
    assert mon.events == [] and "training-divergence" not in [f.rule for f in mon.findings()]
    assert mon.report().verdict.label == "trains"


def test_events_reach_the_run_directory_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, x, y, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=100, optimizer=opt, guard="skip", log_dir=tmp_path / "run",
                           tensorboard=tmp_path / "tb") as mon:
        train(model, x, y, g, opt, mon, 300, corrupt=(250,))
    lines = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["skipped"]) for e in lines] == [(250, True)]
    report = load_run_report(tmp_path / "run")  # events.jsonl and pulse.parquet read back
    assert "skipped-updates" in [f.rule for f in report.findings]
    accumulator = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("gradscope/skipped")] == [250]
    assert [e.step for e in accumulator.Scalars("gradscope/spike")] == [250]
    # a run killed before it stopped has its events (written as they happen) but no pulse.parquet
    # (written at the stop): the report still tells of the spike
    (tmp_path / "run" / "pulse.parquet").unlink()
    with (tmp_path / "run" / "events.jsonl").open("a") as f:
        f.write('{"step": 27')  # a last line cut short by the kill
    with pytest.warns(gradscope.GradscopeWarning, match="its last line was cut short"):
        killed = load_run_report(tmp_path / "run")
    assert {"training-spike", "skipped-updates"} <= {f.rule for f in killed.findings}
    with (tmp_path / "run" / "events.jsonl").open("a") as f:
        f.write('}\n{"step": "abc", "alarms": 5}\n')  # damage, not a kill: said, naming the file
    with pytest.raises(gradscope.UsageError, match="events.jsonl' line 2 is not a gradscope event"):
        load_run_report(tmp_path / "run")


def test_the_loss_rules_options_match_their_definitions():
    """ratio (llm-foundry: above 2x the mean of the last 100, 4 steps in a row) and rtol
    (Lightning: not better than the last accepted, and 2x the running mean away from it) on a
    hand-made loss trace."""
    loss = np.full(160, 1.0)
    loss[120:130] = 3.0  # ten steps at 3x
    for kind, first in (("ratio", 123), ("rtol", 120)):
        state = DetectorState(Detector(kind), 2, np)
        fired = []
        for step, value in enumerate(loss):
            alarm, _ = state.update(np.array([value, 0.0]))
            if alarm[0]:
                fired.append(step)
        assert fired[0] == first, (kind, fired)


def test_numpy_and_torch_arithmetic_raise_the_same_alarms():
    rng = np.random.default_rng(0)
    trace = np.column_stack([1 + 0.05 * rng.standard_normal(400), rng.standard_normal((400, 3)) * 0.1])
    trace[300, 1] += 3.0
    trace[350, 0] += 2.0
    for kind in ("zscore", "ratio", "rtol"):
        a, b = DetectorState(Detector(kind), 4, np), DetectorState(Detector(kind), 4, torch, torch.device("cpu"))
        for row in trace:
            alarm_a, z_a = a.update(row.copy())
            alarm_b, z_b = b.update(torch.tensor(row, dtype=torch.float32))
            assert int(alarm_a[0]) == int(alarm_b[0])
            assert np.allclose(z_a, z_b.numpy(), rtol=1e-3, atol=1e-3)


def test_numpy_and_torch_agree_when_the_first_loss_comes_after_the_warm_up():
    """No loss for the first 60 steps (a backward on a non-scalar, say), then a steady one: the
    first losses have no band yet and no spike floor, and neither arithmetic raises a spike for
    them. The host's once raised one on 100 steps in a row there, which the guard skipped."""
    rng = np.random.default_rng(2)
    trace = np.column_stack([1 + 0.05 * rng.standard_normal(200), 0.1 * rng.standard_normal((200, 2))])
    a, b = DetectorState(Detector("zscore"), 3, np), DetectorState(Detector("zscore"), 3, torch, torch.device("cpu"))
    fired_a, fired_b = [], []
    for step, row in enumerate(trace):
        has_loss = step >= 60
        row = row.copy()
        if not has_loss:
            row[0] = np.nan
        alarm_a, _ = a.update(row.copy(), has_loss)
        alarm_b, _ = b.update(torch.tensor(row), has_loss)
        fired_a += [step] if int(alarm_a[0]) else []
        fired_b += [step] if int(alarm_b[0]) else []
    assert fired_a == fired_b == []


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_a_spike_after_a_nonfinite_step_and_a_step_without_loss_is_still_caught(xp):
    """A NaN loss, an Inf gradient norm (a GradScaler's overflow step) and a step with no loss
    are not averaged into the running statistics: the spike that follows is caught."""
    rng = np.random.default_rng(1)
    trace = np.column_stack([1 + 0.05 * rng.standard_normal(300), 0.1 * rng.standard_normal((300, 2))])
    trace[120, 0] = np.nan
    trace[130, 1] = np.inf
    trace[135:138, 1] = -np.inf  # log of a gradient norm of exactly 0: finite, no alarm
    trace[250, 0] += 2.0
    trace[280, 1] += 3.0
    state = DetectorState(Detector("zscore"), 3, xp, torch.device("cpu") if xp is torch else None)
    fired = []
    for step, row in enumerate(trace):
        has_loss = step != 140
        if not has_loss:
            row = row.copy()
            row[0] = np.nan
        alarm, z = state.update(row.copy() if xp is np else torch.tensor(row), has_loss)
        if int(alarm[0]):
            fired.append((step, int(alarm[0])))
        assert np.isfinite(np.asarray(z)).all(), step
    assert fired == [(120, LOSS_NONFINITE), (130, GRAD_NONFINITE), (250, LOSS_SPIKE), (280, GRAD_SPIKE)]


@pytest.mark.parametrize("layer, qk_norm, z_loss", [
    ("blocks.0.attn.qkv.weight", True, False),
    ("lm_head.weight", False, True),
    ("bert.encoder.layer.0.attention.output.dense.weight", True, False),
    ("blocks.0.mlp.fc.weight", False, False),
])
def test_the_fix_names_qk_norm_or_a_z_loss_by_where_the_spike_began(layer, qk_norm, z_loss):
    from gradscope.records import Records
    from gradscope.rules.advice import instability_fix

    pulse = pd.DataFrame({"step": range(20), "alarm": [0] * 19 + [3], "grad_norm": [1.0] * 19 + [50.0]})
    records = Records(pd.DataFrame(columns=["step", "layer", "metric", "value"]), pd.DataFrame(), pulse=pulse)
    fix = instability_fix([{"layer": layer, "lr": 0.01}], records)
    assert ("qk-norm" in fix) == qk_norm and ("z-loss" in fix) == z_loss
    assert "try 0.0033" in fix and "max_norm=1" in fix  # the 99th percentile of the quiet steps' norms


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_a_converged_losss_heavy_tail_is_no_spike_but_a_real_jump_is(xp):
    """Near convergence the loss sits at ~0.002 and a batch with one hard sample reads 0.02-0.05:
    many standard deviations of that quiet loss, but a hundredth of the fall it made from 2.3. A
    jump to 3.0 is still a spike."""
    rng = np.random.default_rng(0)
    losses = list(2.3 * np.exp(-np.arange(800) / 60) + 0.002 + rng.exponential(0.0002, 800))
    hard = {1200: 0.05, 1300: 0.03, 1400: 0.045, 1500: 0.02}
    losses += [hard.get(t, 0.002 + rng.exponential(0.0002)) for t in range(800, 1600)] + [3.0]
    state = DetectorState(Detector("zscore", trend=0), 2, xp)
    alarms, z_hard = [], []
    for loss in losses:
        y = np.array([loss, 0.0]) if xp is np else torch.tensor([loss, 0.0], dtype=torch.float64)
        alarm, z = state.update(y)
        alarms.append(int(alarm[0]))
        if len(alarms) - 1 in hard:
            z_hard.append(float(z[0]))
    assert z_hard[0] > 100  # the z-score alone raised it, at 8
    assert [t for t, bits in enumerate(alarms) if bits & LOSS_SPIKE] == [len(losses) - 1]


def test_a_run_nonfinite_from_its_first_step_is_not_blamed_on_the_learning_rate():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.monitor(model, every=1, optimizer=opt) as mon:
        for _ in range(3):
            x = torch.randn(16, 4)
            x[0, 0] = torch.nan  # the data, from the first step on
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
    divergence = next(f for f in mon.findings() if f.rule == "training-divergence")
    assert "from its first step, before any update" in divergence.message
    assert "learning rate" not in divergence.fix.lower() and "torch.isfinite(inputs)" in divergence.fix


def _loss_spikes(losses, xp) -> list[int]:
    """The steps at which the default z-score detector (without the trend) raises a loss spike."""
    state = DetectorState(Detector("zscore", trend=0), 2, xp)
    fired = []
    for step, loss in enumerate(losses):
        y = np.array([loss, 0.0]) if xp is np else torch.tensor([loss, 0.0], dtype=torch.float64)
        if int(state.update(y)[0][0]) & LOSS_SPIKE:
            fired.append(step)
    return fired


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_a_new_level_is_taken_into_the_band_after_a_window_in_a_row(xp):
    """A loss that jumps to a new level and stays there (a new task) raises a window of spikes
    (100 steps), then is taken into the band (whose spread the jump widened for a while); a later
    spike ten times the new level is caught again."""
    rng = np.random.default_rng(2)
    losses = np.concatenate([0.5 + 0.01 * rng.standard_normal(300), 3.0 + 0.01 * rng.standard_normal(400)])
    losses[690] = 30.0
    assert _loss_spikes(losses, xp) == [*range(300, 400), 690]


def test_the_guard_does_not_stop_training_at_a_new_task():
    """Continual learning: the targets change at step 200 and the loss jumps once, for good. The
    guard skips the first 100 updates of the new task (a window), then the model learns it (plain
    autograd's loss on the new targets falls 10x), where a guard that skipped every step left it
    untrained."""
    model, x_all, y_all, g = regression()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradscope.monitor(model, optimizer=opt, every=50, guard="skip") as mon:
        train(model, x_all, y_all, g, opt, mon, 200)
        new_targets = -5 * x_all[:, 1:2] + 3
        with torch.no_grad():
            before = float(F.mse_loss(model(x_all), new_targets))
        train(model, x_all, new_targets, g, opt, mon, 400)
    with torch.no_grad():
        after = float(F.mse_loss(model(x_all), new_targets))
    assert len(mon.skipped_steps) <= 101 and all(s >= 200 for s in mon.skipped_steps)
    assert after < before / 10


@pytest.mark.parametrize("guard", [None, "skip"])
def test_a_spike_whose_update_did_no_lasting_harm_is_information(guard):
    """A corrupt batch (inputs 5x) at step 150 of an SGD regression: taken, its update throws the
    loss out of its band for many steps (a warning); skipped by the guard, the loss of the next
    steps is where it was (information: one batch, not an instability). The loss after is read
    from the run itself, by plain autograd, as the rule reads it from the pulse."""
    model, x_all, y_all, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    with gradscope.monitor(model, optimizer=opt, every=100, guard=guard) as mon:
        for step in range(260):
            index = torch.randint(0, len(x_all), (32,), generator=g)
            loss = F.mse_loss(model(x_all[index] * (5.0 if step == 150 else 1.0)), y_all[index])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
    before, after = np.median(losses[100:150]), np.median(losses[151:161])
    [finding] = [f for f in mon.findings() if f.rule == "training-spike"]
    if guard is None:
        assert after > 2 * before and finding.severity == "warning"
    else:
        assert after < 1.5 * before and finding.severity == "info" and "went on as before" in finding.message


def test_a_run_whose_units_died_at_a_high_learning_rate_fails():
    """A 4-layer ReLU MLP under SGD lr 1.0 momentum 0.9: its units die within a few hundred steps,
    the output goes constant and the loss sits at a constant guess's (checked by plain autograd:
    the outputs of every sample are equal). The run's verdict is fails, by dead-network; the same
    run at lr 0.01 trains and stays quiet."""
    for lr, label in ((1.0, "fails"), (0.01, "trains")):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        x_all = torch.randn(1000, 64, generator=g)
        y_all = (x_all[:, :10].argmax(1))
        layers = [m for _ in range(4) for m in (nn.Linear(64, 128) if not _ else nn.Linear(128, 128), nn.ReLU())]
        model = nn.Sequential(*layers, nn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        with gradscope.monitor(model, optimizer=opt, every=10) as mon:
            for _ in range(400):
                index = torch.randint(0, 1000, (64,), generator=g)
                F.cross_entropy(model(x_all[index]), y_all[index]).backward()
                opt.step()
                opt.zero_grad()
        with torch.no_grad():
            out = model(x_all[:64])
        constant = bool(torch.allclose(out, out[:1].expand_as(out)))
        report = mon.report()
        assert report.verdict.label == label and constant == (label == "fails")
        assert ("dead-network" in [f.rule for f in report.findings]) == (label == "fails")


def _spike_finding(loss, z: float, at: int = 200, **lr):
    """The training-spike finding of a run whose pulse holds ``loss`` with one loss spike at step
    ``at`` (z-score ``z``)."""
    from gradscope.events import SpikeEvent
    from gradscope.records import Records
    from gradscope.rules import find_rule

    pulse = pd.DataFrame({"step": range(len(loss)), "loss": loss, "grad_norm": 1.0, "alarm": 0.0})
    pulse.loc[at, "alarm"] = float(LOSS_SPIKE)
    event = SpikeEvent(at, ["loss spike"], float(loss[at]), 1.0, z, 0.0, False, **lr)
    records = Records(pd.DataFrame(columns=["step", "layer", "metric", "value"]), pd.DataFrame(),
                      pulse=pulse, events=({**event.to_dict(), "text": event.text},))
    [finding] = find_rule("training-spike").check(records)
    return finding


@pytest.mark.parametrize("lr_before, severity", [(1e-4, "info"), (0.1, "warning"), (None, "warning")])
def test_a_spike_right_after_the_schedule_raised_the_learning_rate_is_information(lr_before, severity):
    """A warm restart (lr from 1e-4 back to 0.1) jolts the loss, which stays above its band for a
    while: expected of the schedule, information. The same spike at a steady lr, or where the lr
    was not known, keeps the warning."""
    rng = np.random.default_rng(0)
    loss = 1.0 + 0.01 * rng.standard_normal(300)
    loss[200], loss[201:260] = 5.0, 2.0
    finding = _spike_finding(loss, 400.0, lr=0.1, lr_before=lr_before)
    assert finding.severity == severity
    assert ("raised the learning rate (from 0.0001 to 0.1" in finding.message) == (severity == "info")


def test_a_raise_of_the_learning_rate_after_which_the_loss_never_came_back_keeps_the_warning():
    """A learning rate raised 30x that broke the model (its loss at chance to the end of the run)
    was called a warm restart's expected jolt, information."""
    rng = np.random.default_rng(0)
    loss = 1.0 + 0.01 * rng.standard_normal(300)
    loss[200], loss[201:] = 5.0, 2.3
    finding = _spike_finding(loss, 400.0, lr=3.0, lr_before=0.1)
    assert finding.severity == "warning"
    assert "the loss did not come back to its band after it, so the raised rate is too high" in finding.message


def test_a_raise_whose_spike_episode_lasts_to_the_end_of_the_run_keeps_the_warning():
    """With the guard on, a raise that broke the model makes one episode to the run's end (every
    update skipped): no step after it says whether the loss came back, and the raise excused it."""
    rng = np.random.default_rng(0)
    loss = 1.0 + 0.01 * rng.standard_normal(300)
    loss[230:] = 80.0
    finding = _spike_finding(loss, 400.0, at=230, lr=0.3, lr_before=0.01, last_step=299, alarm_steps=70,
                             skipped_steps=70)
    assert finding.severity == "warning"


def test_the_guard_keeps_a_model_whole_through_a_burst_of_corrupt_batches():
    """Thirty corrupt batches in a row (inputs 30x, a damaged data shard): the guard skips every
    one of them, and the model's loss on clean data (plain autograd) is where it was before."""
    model, x_all, y_all, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with gradscope.monitor(model, optimizer=opt, every=100, guard="skip") as mon:
        train(model, x_all, y_all, g, opt, mon, 150)
        with torch.no_grad():
            before = float(F.mse_loss(model(x_all), y_all))
        train(model, x_all, y_all, g, opt, mon, 30, corrupt=range(30))
        train(model, x_all, y_all, g, opt, mon, 50)
    with torch.no_grad():
        after = float(F.mse_loss(model(x_all), y_all))
    assert set(range(150, 180)) <= set(mon.skipped_steps)
    assert after < 1.5 * before


@pytest.mark.parametrize("centre, spread, after, severity", [
    (0.82, 0.6, 1.53, "warning"),  # early and noisy: set back by half its fall (and at chance later)
    (0.02, 0.02, 0.038, "info"),  # converged, batch of 4: twice a tiny loss, 1% of the fall
    (0.02, 0.02, 0.019, "info"),  # back where it was
])
def test_a_setback_is_judged_against_the_band_and_the_fall(centre, spread, after, severity):
    """The loss after a spike counts as recovered within 3 robust deviations and 1.5x of the loss
    before it, or within a tenth of the fall the run had made (from 2.3)."""
    rng = np.random.default_rng(0)
    loss = np.concatenate([np.full(10, 2.3), centre + spread * 0.6745 * rng.choice([-1.0, 1.0], 190),
                           [5.0], np.full(20, after)])
    loss = np.abs(loss)
    assert _spike_finding(loss, 50.0).severity == severity


@pytest.mark.parametrize("elevated, severity", [(10, "info"), (60, "warning")])
def test_a_loss_shaken_for_ten_steps_then_back_in_its_band_recovered(elevated, severity):
    """A converged run's loss (median 0.0012, no fall seen) at 2x for the 10 steps after a spike:
    back in its band over steps 11-60 after, the spike did no lasting harm; still 2x there, it
    set the run back."""
    rng = np.random.default_rng(0)
    quiet = lambda n: 0.0012 * np.exp(0.3 * rng.standard_normal(n))  # noqa: E731
    loss = np.concatenate([quiet(200), [0.01], 2 * quiet(elevated), quiet(60 - elevated)])
    assert _spike_finding(loss, 10.0).severity == severity


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_an_explosion_within_the_warm_up_is_a_spike_and_a_tenfold_climb_is_not(xp):
    """A run at a learning rate far too high leaves its start before the z-score has a band: a
    loss 100x the run's first is a spike then. A generator's loss that climbs 10x as its
    discriminator learns is not."""
    assert _loss_spikes([4.8, 4.7, 19.5, 30.0, 60.0, 118.0, 300.0, 700.0, 1320.0], xp)[0] == 7
    assert _loss_spikes([0.7, 0.8, 1.5, 3.0, 5.0, 7.0, 6.5, 6.0, 5.5], xp) == []


def test_a_run_whose_guard_skips_most_updates_is_not_called_trains():
    """AdamW at a learning rate far too high: its first updates throw the loss far out, and the
    guard then skips most of the rest. A run that takes under half its updates is not training:
    skipped-updates warns and the verdict is at-risk, whatever the skipped batches were. The
    corrupt-burst run, which skips 30 of 230, keeps it as information."""
    model, x_all, y_all, g = regression()
    opt = torch.optim.AdamW(model.parameters(), lr=3.0)
    with gradscope.monitor(model, optimizer=opt, every=10, guard="skip") as mon:
        train(model, x_all, y_all, g, opt, mon, 150)
    report = mon.report()
    [skipped] = [f for f in report.findings if f.rule == "skipped-updates"]
    assert len(mon.skipped_steps) > 75 and skipped.severity == "warning" and report.verdict.label != "trains"
    assert f"{len(mon.skipped_steps)} of the run's 150 updates" in skipped.message

    model, x_all, y_all, g = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with gradscope.monitor(model, optimizer=opt, every=100, guard="skip") as mon:
        train(model, x_all, y_all, g, opt, mon, 150)
        train(model, x_all, y_all, g, opt, mon, 30, corrupt=range(30))
        train(model, x_all, y_all, g, opt, mon, 50)
    [skipped] = [f for f in mon.report().findings if f.rule == "skipped-updates"]
    assert skipped.severity == "info"


@pytest.mark.parametrize("after, severity", [(1.0, "info"), (5.0, "warning")])
def test_a_spike_in_the_first_steps_is_judged_against_the_steps_before_it(after, severity):
    """A fresh optimizer's jolt at step 4 of a converged model (loss 1e-4): the 4 steps before
    are its band. Back there, information; five times above it for good, a warning. Before,
    fewer than 10 steps before an episode left it unjudged, and it warned."""
    rng = np.random.default_rng(0)
    quiet = lambda n: 1e-4 * np.exp(0.2 * rng.standard_normal(n))  # noqa: E731
    loss = np.concatenate([quiet(4), [0.02], after * quiet(80)])
    assert _spike_finding(loss, 0.0, at=4).severity == severity


class CountingSGD(torch.optim.Optimizer):
    """Plain SGD that counts its steps in a Python int in each parameter's state, as
    transformers' Adafactor does."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    state = self.state[p]
                    state["step"] = state.get("step", 0) + 1
                    p.add_(p.grad, alpha=-group["lr"])


def test_on_the_device_path_a_step_count_kept_in_a_python_int_is_held_back_too(recwarn):
    """The device path puts tensors back with torch.where; an int in the optimizer's state
    cannot be, so the guard reads the alarm first and does not call the step (one wait, said
    once). Before, the weights were held back but the count moved on."""
    model, x, y, g = regression()
    opt = CountingSGD(model.parameters(), lr=0.01)
    mon = gradscope.monitor(model, every=100, optimizer=opt, guard="skip")
    mon._host_arithmetic = False
    with mon:
        train(model, x, y, g, opt, mon, 60)
        counts = [s["step"] for s in opt.state.values()]
        weights = [p.detach().clone() for p in model.parameters()]
        train(model, x, y, g, opt, mon, 1, corrupt=(0,))
        assert [s["step"] for s in opt.state.values()] == counts
        assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))
        train(model, x, y, g, opt, mon, 1)
        assert [s["step"] for s in opt.state.values()] == [c + 1 for c in counts]
    assert mon.skipped_steps == [60]


def test_loss_and_gradient_spikes_taking_turns_are_one_episode():
    """A diverging run's alarms alternate between both spikes, the loss's alone and the
    gradient's alone: one episode, not one event per change of kind."""
    from gradscope.detectors import GRAD_SPIKE, LOSS_RISING, LOSS_SPIKE
    from gradscope.events import SpikeEvent, extended, extends

    event = SpikeEvent(301, ["loss spike", "gradient spike"], 1.5, 3.0, 9.0, 9.0, False)
    for step, bits in ((302, LOSS_SPIKE), (305, GRAD_SPIKE), (309, LOSS_SPIKE + GRAD_SPIKE)):
        assert extends(event, step, bits)
        event = extended(event, step, False)
    assert event.alarm_steps == 4 and event.last_step == 309
    assert not extends(event, 310, LOSS_SPIKE + LOSS_RISING)  # a rise begins an event of its own
    growing = SpikeEvent(301, ["loss spike"], 1.5, 3.0, 9.0, 0.0, False)
    assert extended(growing, 302, False, GRAD_SPIKE).alarms == ["loss spike", "gradient spike"]
    assert not extends(event, 311, GRAD_NONFINITE)  # a non-finite value is an episode of its own
    assert not extends(event, 321, LOSS_SPIKE)  # past the quiet steps


def test_a_long_held_back_episode_is_traced_to_the_data():
    """Sixty updates in a row held back by the guard (a curriculum's switch to new classes): the
    model did not change meanwhile, so the fix says the data raised the alarm and what to do at a
    switch made by design; a few skipped updates say nothing of it."""
    from gradscope.records import Records
    from gradscope.rules.advice import instability_fix

    records = Records(pd.DataFrame(columns=["step", "layer", "metric", "value"]), pd.DataFrame())
    def fix(step, last_step, skipped):
        return instability_fix([{"layer": "4.bias", "step": step, "last_step": last_step, "skipped": True,
                                 "skipped_steps": skipped, "guard": "on"}], records)

    assert "held back 60 updates of one episode in a row" in fix(600, 659, 60) and "start a new one" in fix(600, 659, 60)
    assert "in a row" not in fix(600, 602, 3)
    assert "in a row" not in fix(100, 295, 40)  # a bad batch every 5th step: the updates between were made
