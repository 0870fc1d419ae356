"""Hugging Face transformers: ``Trainer(..., callbacks=[GradscopeTrainerCallback(every=10)])``.

Statistics are taken at ``on_pre_optimizer_step``, right before ``optimizer.step()``, after the
Trainer has accumulated the gradients and, when ``max_grad_norm > 0``, clipped them (which also
unscales fp16 gradients). Under ``fp16=True`` the backpropagated signal keeps the loss scale and
steps the scaler skips are not told apart; bf16 and fp32 are unaffected.

The spike detector's gradient norms are taken earlier, when the step's last backward pass ends,
before the Trainer clips: a clipped norm reads about ``max_grad_norm`` whatever the spike. Under
``fp16=True`` the gradients are still scaled then (by a loss scale that moves), so there the
norms are taken when the Trainer clips, once Accelerate has unscaled them, before the clip.

With ``guard="skip"`` the callback decides at ``on_pre_optimizer_step`` (every gradient checked
for NaN/Inf, the spike detector's alarm) and wraps the step of the optimizer the Trainer's
``AcceleratedOptimizer`` steps, which then makes the update or holds it back, leaving parameters
and optimizer state as they were. Under DeepSpeed and ``fp16=True`` nothing is guarded, and the
callback says so.
"""

from __future__ import annotations

import torch

from gradscope.errors import UsageError
from gradscope.api import Monitor
from gradscope.guard import check_guard
from gradscope.integrations import _Calls, monitor_for_run

try:
    from transformers import TrainerCallback
except ImportError as e:
    raise UsageError("gradscope.integrations.huggingface needs transformers: pip install transformers") from e


class GradscopeTrainerCallback(TrainerCallback):
    """Watch the Trainer's model's gradient flow during ``trainer.train()``.

    ``every`` and ``options`` are those of :func:`gradscope.monitor`; only the main process
    writes files. ``update_ratio`` is not recorded (the Trainer's optimizer may be wrapped).
    """

    def __init__(self, every: int = 1, **options) -> None:
        self.guard = check_guard(options.get("guard"), options.get("detect", "zscore"))
        self.every = every
        self.options = options
        self.monitor: Monitor | None = None
        self._calls = _Calls()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.monitor is not None and self.monitor._active and self._calls.again("train start", id(state)):
            return  # the same run's start again: this callback given twice
        self._calls.run_starts()
        self._calls.again("train start", id(state))
        options = dict(self.options)
        if not state.is_world_process_zero:
            options.pop("log_dir", None)
            options.pop("tensorboard", None)
        self.monitor = monitor_for_run(self.monitor, model, self.every, options, state.global_step)
        # the Trainer clips before on_pre_optimizer_step: the detector reads the norms before
        self.monitor._norms_at_backward = not getattr(args, "fp16", False)
        if self.monitor._pulse is not None:
            self.monitor._pulse.norms_at_backward = self.monitor._norms_at_backward
        if self.guard is not None:
            why_not = _unguardable(args)
            if why_not is not None:
                self.monitor._decline_guard(
                    f"guard='skip' cannot hold back the Trainer's optimizer step {why_not}, so no "
                    "update is skipped; spikes are still detected and reported.")

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.monitor is not None and self.monitor._active:
            if self._calls.again("step", state.global_step):
                return
            if optimizer is not None:
                self.monitor.read_lr_from(optimizer)  # a schedule's warm restart explains its spike
                if self.guard is not None and not self.monitor._guard_declined:
                    # the Trainer steps without a closure, right after this hook: the decision
                    # taken here is acted on by the wrapped step of the optimizer it wraps
                    inner = _torch_optimizer(optimizer)
                    self.monitor._guard_unfollowed(inner, closure_free=True)
                    self.monitor._decide_guard(inner)
            self.monitor.step()

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.stop()

    def __del__(self) -> None:
        # the Trainer has no exception callback: a run that raised leaves the monitor started
        try:
            if getattr(self, "monitor", None) is not None:
                self.monitor.stop()
        except Exception:  # noqa: BLE001, S110 - nothing can be reported from a finalizer
            pass


def _torch_optimizer(optimizer: object) -> object:
    """The optimizer an Accelerate ``AcceleratedOptimizer`` (itself an optimizer) steps."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _unguardable(args) -> str | None:
    """Why the guard cannot act under these training arguments (the rest of the sentence), or
    None where it can."""
    if getattr(args, "deepspeed", None):
        return "under DeepSpeed, whose engine makes it"
    if getattr(args, "fp16", False):
        return ("under fp16=True, whose loss scaler (which the callback is not given) skips steps "
                "of its own")
    return None
