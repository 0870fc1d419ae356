"""Mixed precision with a ``torch.amp.GradScaler``: the scaler may skip ``optimizer.step()`` (Inf or
NaN gradients), so a monitored step ends when ``scaler.step()`` returns, taken or skipped. The
scaler's ``step`` is wrapped for the monitor's lifetime and put back exactly afterwards; a skip is
recorded as ``amp_skipped`` on the model (layer ""). A disabled scaler (``enabled=False``) scales
by 1 and skips nothing: the monitor runs as without one.
"""

from __future__ import annotations

from typing import Callable

import torch

from gradscope.buffer import Layout, StepBuffer
from gradscope.errors import UsageError, UsageTypeError
from gradscope.stats import FOUND_INF, PRESENCE


def check_scaler(scaler: object, optimizer: torch.optim.Optimizer | None) -> object:
    """``scaler`` if it is a GradScaler that scales the loss, None for None or a disabled scaler.

    ``torch.cuda.amp.GradScaler`` is a ``torch.amp.GradScaler``, and so is every subclass. A
    disabled scaler (``GradScaler(enabled=False)``, nanoGPT's default under bf16 and on the CPU)
    multiplies the loss by 1 and never skips a step, so the monitor has nothing to unscale or
    follow: it is treated as no scaler.

    >>> check_scaler(torch.amp.GradScaler("cpu", enabled=False), None) is None
    True
    """
    if scaler is None:
        return None
    if not _is_grad_scaler(scaler):
        raise UsageTypeError(
            f"Expected `scaler` to be a torch.amp.GradScaler (or torch.cuda.amp.GradScaler) but got "
            f"{_type_name(scaler)}; pass the GradScaler whose step() your loop calls, or leave "
            "scaler= out when the loss is not scaled."
        )
    if not scaler.is_enabled():
        return None
    if optimizer is None:
        raise UsageError(
            "scaler= needs optimizer= as well: the monitor reads the gradients once the scaler has "
            "unscaled them, at the optimizer's step; pass the optimizer you give to scaler.step()."
        )
    return scaler


def _is_grad_scaler(scaler: object) -> bool:
    if isinstance(scaler, torch.amp.GradScaler):
        return True
    # a look-alike with the GradScaler interface the monitor uses
    return all(callable(getattr(scaler, name, None)) for name in ("step", "update", "scale", "is_enabled")) \
        and hasattr(scaler, "_per_optimizer_states")


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class ScalerPatch:
    """Wraps ``scaler.step`` so that ``on_step_end(optimizer, loss_scale)`` runs when it returns.

    ``loss_scale`` is the scale the loss was multiplied by in this step (a device tensor, or None
    before the scaler's first use)."""

    def __init__(self, scaler: object, on_step_end: Callable[[object, object], None]) -> None:
        self.scaler = scaler
        self._on_step_end = on_step_end
        self._original: Callable | None = None
        self._had_own_step = False

    def install(self) -> None:
        self._had_own_step = "step" in vars(self.scaler)
        self._original = self.scaler.step
        self.scaler.step = self._step

    def restore(self) -> None:
        """Undo the patch, exactly: only if it is still ours (a second monitor may share the
        scaler), putting back what was there before."""
        if self._original is None:
            return
        current = vars(self.scaler).get("step")
        if getattr(current, "__func__", None) is ScalerPatch._step and current.__self__ is self:
            if self._had_own_step:
                self.scaler.step = self._original
            else:
                del self.scaler.step  # back to the class's method
        self._original = None

    def _step(self, optimizer, *args, **kwargs):
        scale = getattr(self.scaler, "_scale", None)
        try:
            return self._original(optimizer, *args, **kwargs)
        finally:
            self._on_step_end(optimizer, scale)


def found_inf(scaler: object, optimizer: object) -> torch.Tensor | None:
    """The scaler's found-Inf flags of ``optimizer`` in this step, summed over devices (a 0-dim
    tensor on the device, not read back; positive when ``scaler.step`` skipped the update), or
    None before the scaler checked any."""
    found = [f.reshape(()) for f in _found_per_device(scaler, optimizer).values()]
    if not found:
        return None
    return torch.stack([f.to(found[0].device) for f in found]).sum()


def unscaled(scaler: object, optimizer: object) -> bool:
    """Whether ``optimizer``'s gradients are free of ``scaler``'s loss scale now: the scaler is
    disabled, or ``scaler.unscale_(optimizer)`` ran in this step."""
    return not scaler.is_enabled() or bool(_found_per_device(scaler, optimizer))


def _found_per_device(scaler: object, optimizer: object) -> dict:
    """The scaler's found-Inf flag per device for ``optimizer`` in this step (filled when it
    unscales the gradients; empty before)."""
    return scaler._per_optimizer_states.get(id(optimizer), {}).get("found_inf_per_device", {})


def record_skip(scaler: object, optimizer: object, layout: Layout, buffer: StepBuffer) -> None:
    """Queue ``amp_skipped`` for the step: the scaler's found-Inf flags of ``optimizer``, summed
    over devices on the device."""
    found = found_inf(scaler, optimizer)
    entry = layout.entry("", "amp_skipped")
    if found is not None:
        buffer.add(layout.slot(entry, FOUND_INF), found)
    buffer.count(layout.slot(entry, PRESENCE))
