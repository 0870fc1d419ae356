"""Host synchronisations and tensor work per step, counted at the dispatcher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import gradscope
import gradscope.buffer
from tests import models

SYNC_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}


class OpLog(TorchDispatchMode):
    """Records every aten op, and the ones that make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.syncs: list[str] = []
        self.device_to_host: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops.append(name)
        if name in SYNC_OPS:
            self.syncs.append(name)
        out = func(*args, **kwargs)
        from_device = any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)
        if from_device and isinstance(out, torch.Tensor) and out.device.type == "cpu":
            self.device_to_host.append(name)
        return out


def one_step(model, opt, x, y):
    F.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def counted_steps(device: str, every: int, steps: int, monitored: bool, monkeypatch=None, lr=0.1, **options):
    torch.manual_seed(0)
    model = models.mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    data = [(torch.randn(16, 6, device=device), torch.randn(16, 3, device=device)) for _ in range(steps)]
    logs = []
    copies = []
    if monkeypatch is not None:
        original = gradscope.buffer._copy_to_host
        monkeypatch.setattr(gradscope.buffer, "_copy_to_host",
                            lambda b: copies.append(1) or original(b))
    mon = gradscope.monitor(model, every=every, optimizer=opt, **options) if monitored else None
    if mon:
        mon.start()
    try:
        for x, y in data:
            log = OpLog()
            before = len(copies)
            with log:
                one_step(model, opt, x, y)
            logs.append((log, len(copies) - before))
    finally:
        if mon:
            mon.stop()
    return logs


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")]),
])
@pytest.mark.parametrize("tensorboard", [False, True])
@pytest.mark.parametrize("guard", [None, "skip"])
def test_at_most_one_host_copy_per_logged_step_and_no_sync(device, tensorboard, guard, monkeypatch, tmp_path):
    """With spike detection on (the default) and the guard, no step waits for the device."""
    options = {"tensorboard": tmp_path / "tb", "findings_every": 1} if tensorboard else {}
    options["guard"] = guard
    logs = counted_steps(device, every=3, steps=7, monitored=True, monkeypatch=monkeypatch, **options)
    for step, (log, copies) in enumerate(logs):
        logged = step % 3 == 0
        # (the guard puts back SGD without momentum, which keeps no state, on the device: no read)
        assert log.syncs == [], f"step {step} made the host wait: {log.syncs}"
        # the step buffer: one (non-blocking) device-to-host copy per logged step; the pulse: its
        # alarm bits every step (non-blocking) and its ring on a logged step (the logged step's
        # one wait); nothing on a CPU
        assert len(log.device_to_host) == ((3 if logged else 1) if device == "cuda" else 0), step
        assert copies == (1 if logged else 0), step


def test_a_tensor_learning_rate_is_not_read_on_unlogged_steps():
    """The learning rate the spike events compare against is kept for plain numbers only: a
    tensor's (capturable optimizers on a GPU) would be a read from the device every step. An
    unlogged step waits for nothing more than the optimizer's own step does."""
    plain = counted_steps("cpu", every=3, steps=3, monitored=False, lr=torch.tensor(0.1))
    watched = counted_steps("cpu", every=3, steps=3, monitored=True, lr=torch.tensor(0.1))
    for step in (1, 2):
        assert watched[step][0].syncs == plain[step][0].syncs, step


def test_unlogged_steps_do_no_tensor_work_without_detection():
    plain = counted_steps("cpu", every=3, steps=3, monitored=False)
    watched = counted_steps("cpu", every=3, steps=3, monitored=True, detect=None)
    for step in (1, 2):
        assert watched[step][0].ops == plain[step][0].ops, step
    # and the logged step did do work of its own, so the comparison can fail
    assert len(watched[0][0].ops) > len(plain[0][0].ops)


def test_unlogged_steps_with_detection_only_read_a_sample_of_each_gradient():
    """The pulse on the CPU: each gradient detached and its sample read through a numpy view of
    the same memory, the loss detached; no reduction runs as a torch op."""
    plain = counted_steps("cpu", every=3, steps=3, monitored=False)
    watched = counted_steps("cpu", every=3, steps=3, monitored=True)
    n_params = len(list(models.mlp().parameters()))
    for step in (1, 2):
        extra = list(watched[step][0].ops)
        for op in plain[step][0].ops:
            extra.remove(op)
        assert set(extra) <= {"detach", "view"}, extra
        assert extra.count("detach") <= n_params + 2 and len(extra) <= n_params + 3, extra


def test_the_gpu_path_of_the_pulse_reads_whole_gradients_in_one_foreach_norm():
    """The pulse's torch arithmetic (a GPU's), run on the CPU: one foreach norm over the whole
    gradients, no view of them; never a host read."""
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    with gradscope.monitor(model, every=3, optimizer=opt) as mon:
        mon._host_arithmetic = False
        for step in range(3):
            log = OpLog()
            with log:
                one_step(model, opt, x, y)
            assert log.syncs == [], step
            if step > 0:
                assert log.ops.count("_foreach_norm") == 1, log.ops
                assert "as_strided" not in log.ops, log.ops


def test_op_log_sees_a_sync_when_there_is_one():
    log = OpLog()
    with log:
        torch.ones(3).sum().item()
    assert log.syncs == ["_local_scalar_dense"]
    assert log.device_to_host == []
