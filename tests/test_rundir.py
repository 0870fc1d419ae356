"""The run directory: streamed history, bounded RAM, metadata, partial and corrupt runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import gradscope
from gradscope.rundir import read_history, read_meta, run_status
from tests import models


def run(log_dir=None, steps=12, **options):
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.monitor(model, every=2, optimizer=opt, log_dir=log_dir, **options) as mon:
        for _ in range(steps):
            F.mse_loss(model(torch.randn(8, 6)), torch.randn(8, 3)).backward()
            opt.step()
            opt.zero_grad()
    return mon


def test_streamed_history_equals_the_in_memory_one(tmp_path):
    in_memory = run().to_dataframe()
    mon = run(tmp_path / "run", window=2, flush_every=2)
    streamed = mon.to_dataframe()
    pd.testing.assert_frame_equal(streamed, in_memory)
    # parts of 1, 2, 2 logged steps, and the last one at the end of the run
    assert len(list((tmp_path / "run" / "history").glob("part-*.parquet"))) == 4
    assert read_history(tmp_path / "run").equals(streamed)
    # RAM keeps the window, the disk keeps everything
    assert sorted(mon.history.recent().step.unique().tolist()) == [8, 10]


def test_meta_describes_the_run(tmp_path):
    run(tmp_path / "run", steps=4)
    meta = read_meta(tmp_path / "run")
    assert meta["format"] == "gradscope-run" and meta["format_version"] == 1
    assert meta["status"] == "complete"
    assert meta["steps_logged"] == 2 and meta["last_step"] == 2
    assert meta["every"] == 2
    assert meta["torch_version"] == torch.__version__
    assert meta["gradscope_version"] == gradscope.__version__
    layers = [layer["layer"] for layer in meta["layers"]]
    assert layers[:2] == ["0.weight", "0.bias"] and "" in layers
    assert set(meta["metrics"]) == set(gradscope.STATISTICS)


def test_a_killed_run_loads_up_to_its_last_complete_part(tmp_path):
    run(tmp_path / "run", flush_every=2)
    history = tmp_path / "run" / "history"
    (history / "part-000003.parquet.tmp").write_bytes(b"half a file")  # killed while writing
    df = read_history(tmp_path / "run")
    assert sorted(df.step.unique().tolist()) == [0, 2, 4, 6, 8, 10]


def test_a_running_run_whose_process_is_gone_is_called_stopped_without_closing():
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = {"status": "running", "host": socket.gethostname()}
    assert run_status({**here, "pid": os.getpid()}) == "running"
    assert run_status({**here, "pid": int(ended.stdout)}) == "stopped without closing"
    assert run_status({**here, "host": "another-machine", "pid": int(ended.stdout)}) == "running"
    assert run_status({"status": "running"}) == "running"  # written before host and pid were kept
    assert run_status({**here, "status": "complete", "pid": int(ended.stdout)}) == "complete"


def test_corrupt_runs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a gradscope run directory: it has no meta.json"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "gradscope-run", "format_version": 99}))
    with pytest.raises(ValueError, match="version 99; this gradscope reads 'gradscope-run' version 1"):
        read_meta(tmp_path)
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "part-000000.parquet").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="part-000000.parquet' cannot be read .* delete it"):
        read_history(tmp_path)


def test_log_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        gradscope.monitor(models.mlp(), log_dir=path)


def test_memory_is_bounded_by_the_window(tmp_path):
    mon = run(tmp_path / "run", steps=60, window=5, flush_every=4)
    assert len(mon.history._recent) == 5
    assert len(mon.history._unflushed) == 0
    assert mon.to_dataframe().step.nunique() == 30


def test_the_first_parts_are_small_so_that_a_run_killed_early_keeps_its_first_steps(tmp_path):
    import numpy as np

    from gradscope.history import History

    names = lambda: (np.array(["a"], dtype=object), np.array(["grad_norm"], dtype=object))  # noqa: E731
    history = History(names, tmp_path / "run", flush_every=5)
    for step in range(20):
        history.append(step, np.array([0]), np.array([float(step)]))
        if step == 0:  # on disk as soon as the first logged step lands
            assert read_history(tmp_path / "run").step.tolist() == [0]
    parts = sorted((tmp_path / "run" / "history").glob("part-*.parquet"))
    assert [len(pd.read_parquet(p)) for p in parts] == [1, 2, 4, 5, 5]
    assert history.unwritten == 3
    assert read_history(tmp_path / "run").step.tolist() == list(range(17))


def test_a_missing_history_part_is_said_not_read_past_silently(tmp_path):
    run(tmp_path / "run", flush_every=2)
    (tmp_path / "run" / "history" / "part-000001.parquet").unlink()
    with pytest.warns(gradscope.GradscopeWarning, match="part-000001.parquet is missing"):
        df = read_history(tmp_path / "run")
    assert 1 not in df["step"].tolist() and 0 in df["step"].tolist()
