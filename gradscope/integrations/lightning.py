"""PyTorch Lightning: ``Trainer(callbacks=[GradscopeCallback(every=10)])``.

Statistics are taken at ``on_before_optimizer_step``, where Lightning has accumulated the
gradients of ``accumulate_grad_batches`` batches and unscaled them under mixed precision (the
backpropagated signal is divided by the precision plugin's loss scale), before it clips them.
Lightning calls this hook for the steps its scaler then skips as well, so under ``16-mixed`` an
overflow step shows up as non-finite gradients rather than as a skipped step.

With ``guard="skip"`` the callback wraps the step of each optimizer of the run (torch's own,
but LBFGS): Lightning calls it with a closure that runs the training step, the backward pass and
``on_before_optimizer_step``; the wrapped step evaluates that closure first, the callback decides
there (the gradients checked for NaN/Inf, the spike detector's alarm) and the step then makes the
update or holds it back, leaving parameters and optimizer state as they were. Under strategies
that step through an engine of their own (DeepSpeed), nothing is guarded, and the callback says so.
"""

from __future__ import annotations

from gradscope.amp import found_inf
from gradscope.errors import UsageError
from gradscope.api import Monitor
from gradscope.integrations import _Calls, monitor_for_run
from gradscope.guard import check_guard

try:
    import pytorch_lightning as _pl
except ImportError:  # the unified package
    try:
        import lightning.pytorch as _pl
    except ImportError as e:
        raise UsageError(
            "gradscope.integrations.lightning needs PyTorch Lightning: pip install pytorch-lightning"
        ) from e


class GradscopeCallback(_pl.Callback):
    """Watch the LightningModule's gradient flow during ``trainer.fit``.

    ``every`` and ``options`` are those of :func:`gradscope.monitor` (``log_dir``,
    ``tensorboard``, ``guard``, …); only the global-zero process writes files. ``update_ratio``
    is not recorded (Lightning drives the optimizer step through a closure).
    """

    def __init__(self, every: int = 1, **options) -> None:
        super().__init__()
        self.guard = check_guard(options.get("guard"), options.get("detect", "zscore"))
        self.every = every
        self.options = options
        self.monitor: Monitor | None = None
        self._calls = _Calls()

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._calls.first("train start"):
            return
        copies = sum(c is self for c in getattr(trainer, "callbacks", ()))
        self._calls.run_starts(copies)
        self._calls.first("train start")  # (this call was the first of them)
        options = dict(self.options)
        if not trainer.is_global_zero:
            options.pop("log_dir", None)
            options.pop("tensorboard", None)
        self.monitor = monitor_for_run(self.monitor, pl_module, self.every, options, trainer.global_step)
        if self.guard is not None:
            strategy = type(trainer.strategy).__name__
            if strategy in _OWN_STEP_STRATEGIES:
                self.monitor._decline_guard(
                    f"guard='skip' cannot hold back the optimizer step of Lightning's {strategy}, which "
                    "steps through an engine of its own, so no update is skipped; spikes are still "
                    "detected and reported.")
            else:
                for optimizer in trainer.optimizers:
                    self.monitor._guard_unfollowed(optimizer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """The batch's size, for a LightningModule whose training_step calls its layers rather than
        its own forward (whose hook then sees no batch): the epoch's short last batch is read as
        noisier by the spike detector."""
        if self.monitor is not None and self.monitor._active and self.monitor.detects:
            if not self._calls.first("batch"):
                return
            self.monitor._count_batch(batch)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        """The loss goes to the spike detector (added up over accumulated micro-batches)."""
        if self.monitor is not None and self.monitor._active and self.monitor.detects:
            if not self._calls.first("backward"):
                return
            self.monitor.observe_loss(loss)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is not None and self.monitor._active:
            if not self._calls.first("step"):
                return
            self.monitor.read_lr_from(optimizer)  # a schedule's warm restart explains its spike
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            loss_scale = getattr(scaler, "_scale", None)
            if self.guard is not None:  # (under 16-mixed a step the scaler skips is not the guard's)
                skipped = found_inf(scaler, optimizer) if scaler is not None else None
                self.monitor._decide_guard(optimizer, loss_scale, skipped)
            self.monitor.step(loss_scale=loss_scale)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.monitor is not None:
            self.monitor.stop()


_OWN_STEP_STRATEGIES = ("DeepSpeedStrategy", "XLAStrategy", "XLAFSDPStrategy")
"""Lightning strategies whose optimizer step does not go through the torch optimizer's ``step``."""
