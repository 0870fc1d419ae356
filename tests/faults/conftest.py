"""Fixtures that break the world around gradscope: a tiny or read-only filesystem (a real tmpfs
where the test may mount one, else a patched writer raising the same OSError), a finished run
directory to damage or report on, and helpers that check the user's model and files are untouched."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gradscope
import gradscope.atomic
from tests import models


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class Disk:
    """A filesystem at ``path`` that can run full: a real 512 KiB tmpfs, or (without mount
    rights) the Parquet writer patched to raise ENOSPC while ``full``."""

    def __init__(self, path: Path, real: bool, monkeypatch) -> None:
        self.path = path
        self.real = real
        self._monkeypatch = monkeypatch
        self._filler: Path | None = None
        self._full = False
        if not real:
            import gradscope.history
            import gradscope.rundir

            original = gradscope.atomic.write_atomic

            def write_atomic(target, data):
                if self._full and str(target).startswith(str(path)):
                    raise OSError(errno.ENOSPC, "No space left on device", str(target))
                return original(target, data)

            for module in (gradscope.history, gradscope.rundir):
                monkeypatch.setattr(module, "write_atomic", write_atomic)

    def fill(self) -> None:
        self._full = True
        if self.real:
            self._filler = self.path / f"filler-{uuid.uuid4().hex}"
            with contextlib.suppress(OSError), open(self._filler, "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()

    def free(self) -> None:
        self._full = False
        if self._filler is not None:
            self._filler.unlink()
            self._filler = None


@pytest.fixture
def disk(tmp_path, monkeypatch):
    mount_point = tmp_path / "disk"
    real = _mount(mount_point, "size=512k")
    try:
        yield Disk(mount_point, real, monkeypatch)
    finally:
        if real:
            _unmount(mount_point)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only directory: a read-only tmpfs, or None where none can be mounted (root ignores
    permission bits, so chmod cannot make one)."""
    mount_point = tmp_path / "ro"
    if not _mount(mount_point, "ro,size=64k"):
        yield None
        return
    try:
        yield mount_point
    finally:
        _unmount(mount_point)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory of four logged steps of a small MLP, in two history parts."""
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.monitor(model, optimizer=opt, log_dir=tmp_path / "run", flush_every=2):
        for _ in range(4):
            F.mse_loss(model(torch.randn(8, 6)), torch.randn(8, 3)).backward()
            opt.step()
            opt.zero_grad()
    return tmp_path / "run"
