"""training-divergence (GS110) and nonfinite-gradient (GS103) on runs whose non-finite step the
guard held back."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope


def nan_gradient_run(guard: str | None, nan_at: int = 150, steps: int = 300):
    """A ReLU MLP learning a linear map with SGD; at step ``nan_at`` one weight's gradient gets a
    NaN (a bad batch's singular op)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    generator = torch.Generator().manual_seed(1)
    x_all = torch.randn(2000, 20, generator=generator)
    y_all = x_all[:, :1] * 2
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with gradscope.monitor(model, every=10, optimizer=opt, guard=guard) as mon:
        for step in range(steps):
            index = torch.randint(0, 2000, (32,), generator=generator)
            F.mse_loss(model(x_all[index]), y_all[index]).backward()
            if step == nan_at:
                model[4].weight.grad[0, 0] = float("nan")
            opt.step()
            opt.zero_grad()
    return mon, mon.report()


def by_rule(report) -> dict:
    return {f.rule: f for f in report.findings}


def test_a_nan_step_the_guard_held_back_is_no_divergence_and_no_failure():
    """Before, a run whose one NaN gradient the guard skipped, and which then trained on as
    before, was told "The run diverged" and called fails."""
    mon, report = nan_gradient_run(guard="skip")
    assert mon.skipped_steps == [150]
    assert all(torch.isfinite(p).all() for p in mon.model.parameters())
    findings = by_rule(report)
    assert "training-divergence" not in findings
    assert findings["nonfinite-gradient"].severity == "warning"
    assert "The guard skipped the update of step 150" in findings["nonfinite-gradient"].message
    assert report.verdict.label == "at-risk"


def test_the_same_nan_without_the_guard_is_a_divergence():
    mon, report = nan_gradient_run(guard=None)
    assert not all(torch.isfinite(p).all() for p in mon.model.parameters())  # the update spread it
    findings = by_rule(report)
    assert findings["training-divergence"].severity == "error"
    assert findings["nonfinite-gradient"].severity == "error"
    assert report.verdict.label == "fails"


def test_a_nan_step_the_guard_held_back_just_before_the_end_is_no_divergence():
    """Three steps before the end there is no telling whether the loss went on as before; the
    weights never took the NaN, so the run did not diverge there."""
    mon, report = nan_gradient_run(guard="skip", nan_at=297)
    assert mon.skipped_steps == [297]
    assert "training-divergence" not in by_rule(report)
    assert report.verdict.label != "fails"
