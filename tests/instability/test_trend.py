"""The loss-trend alarm ("loss rising", gradscope/detectors.py): quiet on noisy losses that do not
climb, raised on a climb before the loss is back where it started, not raised by one spike, the
same on the host and on the device, reported without skipping an update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gradscope
from gradscope.detectors import LOSS_RISING, LOSS_SPIKE, Detector, DetectorState, TrendState
from gradscope.errors import UsageError
from gradscope.rules import find_rule
from gradscope.rules.example_models import report_of


def _alarms(losses, detector=None):
    state = DetectorState(detector or Detector("zscore"), 2, np)
    out = []
    for step, loss in enumerate(losses):
        alarm, _ = state.update(np.array([loss, 0.0]))
        if int(alarm[0]):
            out.append((step, int(alarm[0])))
    return out


def _training_curve(rng, steps=3000, start=2.3, end=0.05, noise=0.3):
    """A loss falling exponentially from ``start`` to ``end`` with multiplicative log-normal
    batch-to-batch noise, as per-batch classification losses look."""
    t = np.arange(steps)
    clean = end + (start - end) * np.exp(-t / 300)
    return clean * rng.lognormal(0.0, noise, steps)


@pytest.mark.parametrize("noise", [0.1, 0.5, 1.0])
def test_a_falling_noisy_loss_never_raises_loss_rising(noise):
    rng = np.random.default_rng(int(noise * 10))
    fired = [(s, b) for s, b in _alarms(_training_curve(rng, noise=noise)) if b & LOSS_RISING]
    assert fired == []


@pytest.mark.parametrize("name, draw", [
    ("gaussian", lambda rng, n: 1.0 + 0.1 * rng.standard_normal(n)),
    ("heavy-tailed", lambda rng, n: 0.01 * (rng.pareto(1.5, n) + 1)),
    ("log-normal", lambda rng, n: 0.05 * rng.lognormal(0.0, 2.0, n)),
])
def test_a_loss_that_only_wanders_raises_no_loss_rising_in_20000_steps(name, draw):
    """A monitor attached to a run already at its plateau: no fall to give back, and the noise
    alone (heavy tails too) never climbs 15 of its standard deviations."""
    losses = draw(np.random.default_rng(3), 20000)
    state = TrendState(0.3)
    assert not any(state.step(float(v)) for v in losses), name


def test_a_climb_is_caught_before_the_loss_is_back_where_it_started():
    """The loss falls from 5.5 to 3.0 over 300 steps, then climbs 0.01 a step under noise; the
    alarm comes once the smoothed loss has climbed 30% of the fall back (0.75 above its
    minimum), before the loss regains half of its fall, and not before the climb began."""
    rng = np.random.default_rng(4)
    fall = 3.0 + 2.5 * np.exp(-np.arange(300) / 60)
    climb = fall[-1] + 0.01 * np.arange(1, 301)
    losses = np.concatenate([fall, climb]) + 0.1 * rng.standard_normal(600)
    rising = [s for s, b in _alarms(losses) if b & LOSS_RISING]
    assert rising, "no alarm"
    first = rising[0]
    assert 300 + 75 <= first < 300 + 125  # 0.75 up, plus the smoothed loss's lag of ten-odd steps
    assert losses[first - 5:first + 5].mean() < 3.0 + 0.5 * 2.5


def test_one_spike_is_a_spike_not_a_rise():
    rng = np.random.default_rng(5)
    losses = _training_curve(rng, steps=800, noise=0.1)
    losses[500] *= 50
    fired = _alarms(losses)
    assert [s for s, b in fired if b & LOSS_SPIKE] == [500]
    assert [s for s, b in fired if b & LOSS_RISING] == []


def test_trend_zero_turns_the_alarm_off_and_bad_values_say_what_to_pass():
    losses = np.concatenate([np.linspace(3.0, 1.0, 200), np.linspace(1.0, 3.0, 200)])
    assert any(b & LOSS_RISING for _, b in _alarms(losses))
    assert not any(b & LOSS_RISING for _, b in _alarms(losses, Detector("zscore", trend=0)))
    assert Detector("ratio").trend == 0.0 and Detector("zscore").trend == 0.3
    with pytest.raises(UsageError, match=r"`trend` to be a share of the loss's fall between 0 and 1 but got 2"):
        Detector("zscore", trend=2)


def test_numpy_and_torch_arithmetic_give_the_same_trend():
    """The host's float arithmetic and the device's where-only arithmetic agree step by step on
    the alarm and the trend's numbers, through a NaN loss and a step without a loss."""
    rng = np.random.default_rng(6)
    losses = np.concatenate([np.linspace(4.0, 2.0, 150), np.linspace(2.0, 4.0, 150)])
    losses = losses + 0.05 * rng.standard_normal(300)
    losses[100] = math.nan
    losses[200] = losses[199] * 30  # a spike the clip holds back
    host, device = TrendState(0.3), TrendState(0.3, torch, lambda shape, v: torch.full(shape, v, dtype=torch.float64))
    for step, value in enumerate(losses):
        a = host.step(float(value))
        b = bool(device.update(torch.tensor([value], dtype=torch.float64))[0])
        assert a == b, step
        for x, y in zip(host.values(), device.values()):
            assert (math.isnan(x) and math.isnan(float(y))) or float(y) == pytest.approx(x, rel=1e-12), step


def test_a_rising_loss_is_reported_and_the_guard_skips_no_update():
    """The rule's bad run (the learning rate grows 2% a step from step 200) under guard="skip":
    "loss rising" episodes become a rising-loss finding with the smoothed loss and its minimum;
    updates are skipped only for spike or non-finite steps, never for a rising-only step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(2000, 20, generator=g)
    y_all = x_all[:, :1] * 2
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=100, optimizer=opt, guard="skip") as mon:
        for step in range(400):
            if step >= 200:
                opt.param_groups[0]["lr"] *= 1.02
            index = torch.randint(0, 2000, (32,), generator=g)
            torch.nn.functional.mse_loss(model(x_all[index]), y_all[index]).backward()
            opt.step()
            opt.zero_grad()
    rising = [e for e in mon.events if "loss rising" in e.alarms]
    assert rising and rising[0].step > 200
    first = rising[0]
    assert first.smoothed_loss > first.lowest_loss and first.fall > 0
    assert first.smoothed_loss - first.lowest_loss > 0.3 * first.fall
    pulse = mon.pulse_history()
    row = pulse[pulse["step"] == first.step].iloc[0]
    assert row["loss_smoothed"] == pytest.approx(first.smoothed_loss, rel=1e-5)
    rising_only = pulse[(pulse["alarm"] == LOSS_RISING)]
    assert len(rising_only) and (rising_only["skipped"] == 0).all()
    assert set(mon.skipped_steps) <= set(pulse[(pulse["alarm"] % LOSS_RISING) != 0]["step"])
    assert "rising-loss" in {f.rule for f in mon.findings()}


def test_the_rule_pair():
    rule = find_rule("rising-loss")
    bad, good = report_of(rule.pair(bad=True)), report_of(rule.pair(bad=False))
    [finding] = [f for f in bad.findings if f.rule == "rising-loss"]
    assert "climbed back" in finding.message and "Detector(trend=0)" in finding.fix
    assert bad.verdict.label in ("at-risk", "fails")
    assert "rising-loss" not in {f.rule for f in good.findings}


def test_an_early_wiggle_of_a_loss_that_has_hardly_fallen_is_not_a_climb():
    """Early in training (SGD with momentum) the loss falls from 2.30 to 1.96 and swings back to
    2.2 over a few tens of steps before falling for good: most of a small fall, but a tenth of
    the loss, under the 20% a climb needs."""
    rng = np.random.default_rng(7)
    t = np.arange(400)
    swing = 0.35 * np.exp(-((t - 80) / 12.0) ** 2)
    losses = 0.3 + 2.0 * np.exp(-t / 300) + swing + 0.02 * rng.standard_normal(400)
    assert max(losses[70:90]) > 2.1 and min(losses[50:65]) < 2.0
    assert not any(b & LOSS_RISING for _, b in _alarms(losses))


def test_a_run_that_came_back_down_gets_information_not_a_warning():
    """The learning rate grows 2% a step from step 200 and is put back at step 370: the loss
    climbs, the alarm is raised, the run recovers; the finding says so and the verdict stays
    trains. The same climb left running is a warning (the rule's bad pair, above)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 1))
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(2000, 20, generator=g)
    y_all = x_all[:, :1] * 2
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=100, optimizer=opt) as mon:
        for step in range(600):
            if 200 <= step < 370:
                opt.param_groups[0]["lr"] *= 1.02
            if step == 370:
                opt.param_groups[0]["lr"] = 0.01
            index = torch.randint(0, 2000, (32,), generator=g)
            torch.nn.functional.mse_loss(model(x_all[index]), y_all[index]).backward()
            opt.step()
            opt.zero_grad()
    report = mon.report()
    [finding] = [f for f in report.findings if f.rule == "rising-loss"]
    assert finding.severity == "info" and "came back down" in finding.message
    assert finding.evidence["still_rising"] is False
    assert report.verdict.label == "trains"
