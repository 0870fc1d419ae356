"""The guard, opt-in (``monitor(..., guard="skip")``): an optimizer step whose pulse raised an alarm
(a detected spike, a non-finite loss or gradient) is not taken; a rising loss trend is reported
but skips nothing, since no single update is to blame for it. Parameters and optimizer state are
left bit-identical to what they were before the step, and every skipped step is counted and
reported (a finding, a TensorBoard event, a line in the run directory's events.jsonl).

The optimizer's ``step`` is wrapped on the instance for the monitor's lifetime and put back
exactly afterwards. The decision needs the alarm, which lives on the device:

- on the CPU it is read in place (no device to wait for) and the step is simply not called;
- on a GPU the step runs, and each parameter and state tensor is put back from a copy taken
  before it with ``torch.where(alarm, before, after)``: the decision never leaves the device. That
  costs a copy of the parameters and the optimizer state per step. Optimizer state kept on the
  host (torch's Adam keeps its step count on the CPU unless ``capturable=True`` or
  ``fused=True``), or not created yet (the first step), cannot be restored that way: there the
  guard reads the alarm, one wait for the GPU per step, and says so once. Torch's SGD without
  momentum keeps no state at all, so its weights alone are put back, from the first step on.

Before an alarm can be trusted every element of every gradient is checked for NaN/Inf (the pulse
reads a sample of each gradient on the CPU), so no non-finite value slips through a guarded step.

A step given a closure (``opt.step(closure)``) is decided the same way when the optimizer
evaluates the closure once, before its update (torch's own optimizers but LBFGS): the guard
evaluates it first and hands the step its loss. Any other closure step goes through unguarded,
and the monitor says so.
"""

from __future__ import annotations

import inspect

import torch

from gradscope.distributed import local
from gradscope.errors import UsageError
from gradscope.stats.reductions import stored_values


SKIP = "skip"
MODES = (SKIP,)


def check_guard(guard: object, detect: object) -> str | None:
    """``guard=`` of the monitor, checked: ``"skip"`` or None."""
    if guard is None or guard is False:
        return None
    if guard not in MODES:
        raise UsageError(
            f"Expected `guard` to be 'skip' or None but got {guard!r}; pass guard='skip' to skip the "
            "optimizer update on a detected spike or non-finite gradient."
        )
    if detect is None:
        raise UsageError("guard='skip' acts on the detector's alarms; leave `detect` on (the default 'zscore').")
    return guard


def all_finite(params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """A 0-dim bool tensor: every element of every gradient is finite (None without gradients)."""
    grads = [stored_values(local(p.grad)) for p in params if p.grad is not None]
    if not grads:
        return None
    by_device: dict = {}
    for g in grads:
        by_device.setdefault((g.device, g.dtype), []).append(g)
    flags = []
    for group in by_device.values():
        # the largest magnitude is finite only if every element is (NaN propagates through it)
        largest = torch._foreach_norm(group, ord=float("inf"))
        flags.append(torch.isfinite(torch.stack(largest).float()).all().reshape(1))
    first = flags[0]
    return torch.cat([f.to(first.device) for f in flags]).all() if len(flags) > 1 else first[0]


def evaluates_closure_once(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step(closure)`` calls its closure exactly once, before the update: the
    step functions of torch's own optimizers (a subclass that keeps one), all but LBFGS, which
    calls it many times. Then the guard can evaluate the closure first and decide before the
    update; a closure of any other optimizer (SAM calls it twice, LBFGS in a loop) it cannot."""
    step = inspect.unwrap(type(optimizer).step)
    module = getattr(step, "__module__", None) or ""
    return (module == "torch.optim" or module.startswith("torch.optim.")) \
        and not getattr(step, "__qualname__", "").startswith("LBFGS.")


def _keeps_no_state(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """Whether ``optimizer`` keeps no state for the parameters of ``group``: torch's own SGD
    without momentum (a subclass or a wrapper may keep state elsewhere, and a momentum raised
    later creates it), so putting back the weights undoes a step."""
    return type(optimizer) is torch.optim.SGD and group.get("momentum", 0) == 0


class StateSnapshot:
    """A copy of every parameter and optimizer-state tensor of ``optimizer`` on the device, taken
    before a step, and the device-side put-back after it."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._copies: list[tuple[torch.Tensor, torch.Tensor]] = []

    def restorable(self, device: torch.device) -> str | None:
        """None when every tensor the step can change exists and lives on ``device``; else why
        not: ``"no state yet"`` (the optimizer's first step), ``"state on another device"``, or
        ``"state in Python numbers"`` (transformers' Adafactor counts its steps in an int, which
        the step changes and the device's ``where`` cannot put back)."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.optimizer.state.get(p)
                if not state:
                    if _keeps_no_state(self.optimizer, group):
                        continue
                    return "no state yet"
                if any(isinstance(v, torch.Tensor) and v.device != device for v in state.values()):
                    return "state on another device"
                if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in state.values()):
                    return "state in Python numbers"
        return None

    def take(self) -> None:
        tensors = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                tensors.append(p.data)
                for value in self.optimizer.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor):
                        tensors.append(value)
        self._copies = [(t, t.clone()) for t in tensors]

    def put_back_where(self, skip: torch.Tensor) -> None:
        """Each tensor becomes its copy where ``skip`` (a 0-dim bool on the device) holds; no wait."""
        for tensor, before in self._copies:
            torch.where(skip, before, tensor, out=tensor)
        self._copies = []
