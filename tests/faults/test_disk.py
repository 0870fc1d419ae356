"""A full or read-only disk never stops training, never loses what was written, and costs a
bounded amount of time and RAM."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F

import gradscope
import gradscope.history
from tests import models


def train(model, opt, steps, mon=None):
    torch.manual_seed(0)
    for _ in range(steps):
        F.mse_loss(model(torch.randn(8, 6)), torch.randn(8, 3)).backward()
        opt.step()
        opt.zero_grad()


def test_a_disk_that_fills_mid_run_is_backed_off_bounded_and_reported(disk, monkeypatch):
    serialised = []
    original = gradscope.history.History._frame

    def counting(self, chunks):
        serialised.append(len(chunks))
        return original(self, chunks)

    monkeypatch.setattr(gradscope.history.History, "_frame", counting)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run_dir = disk.path / "run"
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(gradscope.GradscopeWarning, match="writing the history") as caught:
        with gradscope.monitor(model, optimizer=opt, log_dir=run_dir, flush_every=5, window=40) as mon:
            train(model, opt, 22)  # parts of 1, 2, 4, 5, 5, 5 logged steps
            disk.fill()
            train(model, opt, 400)
            assert mon.history.unwritten <= 40  # bounded RAM
            disk.free()
            parts = len(list((run_dir / "history").glob("part-*.parquet")))
            train(model, opt, 40)  # the disk recovered: written again before the run ends
            assert len(list((run_dir / "history").glob("part-*.parquet"))) > parts
    assert len([w for w in caught if "writing the history" in str(w.message)]) == 1  # warned once
    # training went on: the model moved on every step
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # every unwritten step was serialised a bounded number of times (backoff), not every step
    assert sum(serialised) < 3000, sum(serialised)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "complete"
    lost = meta["lost_steps"]
    assert lost, "the steps that did not fit are listed"
    on_disk = set(gradscope.rundir.read_history(run_dir)["step"].unique().tolist())
    lost_steps = {s for first, last in lost for s in range(first, last + 1)}
    assert set(range(22)) <= on_disk  # written before the disk filled: kept
    assert on_disk.isdisjoint(lost_steps) and on_disk | lost_steps == set(range(462))
    assert not list(run_dir.rglob("*.tmp"))  # no half-written file left behind


def test_a_full_disk_costs_no_more_per_step_than_a_healthy_one(disk):
    """Each logged step on a full disk costs about what it costs on a healthy one (no
    re-serialising of everything unwritten at every step)."""
    def seconds_per_step(fill: bool) -> float:
        model = models.mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with pytest.warns() if fill else _nothing():
            # the healthy run writes outside the small disk, which it would fill on its own
            run_dir = disk.path / "run-full" if fill else disk.path.parent / "run-healthy"
            with gradscope.monitor(model, optimizer=opt, log_dir=run_dir,
                                   flush_every=5, window=100):
                if fill:
                    disk.fill()
                start = time.perf_counter()
                train(model, opt, 300)
                elapsed = time.perf_counter() - start
                disk.free()
        return elapsed / 300

    healthy, full = seconds_per_step(False), seconds_per_step(True)
    assert full < 3 * healthy + 1e-3, (healthy, full)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_read_only_log_dir_is_a_usage_error_before_training(read_only_dir):
    if read_only_dir is None:
        pytest.skip("no read-only filesystem can be mounted here")
    model = models.mlp()
    with pytest.raises(gradscope.UsageError, match="cannot be used as a run directory"):
        gradscope.monitor(model, log_dir=read_only_dir / "run")


def test_a_read_only_tensorboard_dir_leaves_nothing_installed(read_only_dir):
    if read_only_dir is None:
        pytest.skip("no read-only filesystem can be mounted here")
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradscope.monitor(model, optimizer=opt, tensorboard=read_only_dir / "tb")
    with pytest.raises(OSError):
        mon.start()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with gradscope.monitor(model, optimizer=opt):  # not "already watched"
        train(model, opt, 2)


def test_a_second_run_into_the_same_log_dir_is_refused_and_the_first_kept(tmp_path):
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.monitor(model, optimizer=opt, log_dir=tmp_path / "run", flush_every=2):
        train(model, opt, 6)
    first = gradscope.rundir.read_history(tmp_path / "run")
    meta = (tmp_path / "run" / "meta.json").read_text()
    with pytest.raises(gradscope.UsageError, match="already holds a gradscope run"):
        gradscope.monitor(model, optimizer=opt, log_dir=tmp_path / "run")
    assert gradscope.rundir.read_history(tmp_path / "run").equals(first)
    assert (tmp_path / "run" / "meta.json").read_text() == meta


def test_one_monitor_entered_once_per_epoch_writes_one_run(tmp_path):
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradscope.monitor(model, optimizer=opt, log_dir=tmp_path / "run", flush_every=2)
    for _ in range(3):
        with mon:
            train(model, opt, 4)
    steps = gradscope.rundir.read_history(tmp_path / "run")["step"].unique().tolist()
    assert sorted(steps) == list(range(12))


@pytest.mark.parametrize("window, flush_every, failures, steps", [(10, 10, 1, 50), (1000, 100, 3, 3000)])
def test_after_failed_writes_the_history_is_written_again(tmp_path, monkeypatch, window, flush_every,
                                                            failures, steps):
    """A few failed writes early on lose at most what did not fit in RAM; later writes go through."""
    import numpy as np
    import pandas as pd

    original = pd.DataFrame.to_parquet
    attempts = []

    def flaky(frame, *args, **kwargs):
        attempts.append(len(frame))
        if len(attempts) <= failures:
            raise OSError(28, "No space left on device")
        return original(frame, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)
    names = lambda: (np.array(["a"], dtype=object), np.array(["grad_norm"], dtype=object))  # noqa: E731
    history = gradscope.history.History(names, tmp_path / "run", window=window, flush_every=flush_every)
    history.on_write_error = lambda error: None
    for step in range(steps):
        history.append(step, np.array([0]), np.array([float(step)]))
    history.flush()
    on_disk = set(gradscope.rundir.read_history(tmp_path / "run")["step"].tolist())
    lost = {s for first, last in history.lost_steps for s in range(first, last + 1)}
    assert on_disk | lost == set(range(steps)) and not on_disk & lost
    assert len(lost) <= failures * max(window, flush_every)
    assert max(on_disk) == steps - 1


@pytest.mark.parametrize("how", ["deleted", "replaced by a file"])
def test_a_run_directory_that_goes_away_mid_run_keeps_every_step_still_in_ram(tmp_path, how):
    import shutil

    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run_dir = tmp_path / "run"
    with pytest.warns(gradscope.GradscopeWarning):
        with gradscope.monitor(model, optimizer=opt, log_dir=run_dir, flush_every=2) as mon:
            for step in range(10):
                F.mse_loss(model(torch.randn(8, 6)), torch.randn(8, 3)).backward()
                opt.step()
                opt.zero_grad()
                if step == 3:
                    shutil.rmtree(run_dir)
                    if how == "replaced by a file":
                        run_dir.write_text("not a directory")
    assert sorted(mon.to_dataframe()["step"].unique().tolist()) == list(range(10))
