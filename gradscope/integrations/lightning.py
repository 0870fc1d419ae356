"""PyTorch Lightning: ``Trainer(callbacks=[GradscopeCallback(every=10)])``.

Statistics are taken at ``on_before_optimizer_step``, where Lightning has accumulated the
gradients of ``accumulate_grad_batches`` batches and unscaled them under mixed precision (the
backpropagated signal is divided by the precision plugin's loss scale). Lightning calls this hook
for the steps its scaler then skips as well, so under ``16-mixed`` an overflow step shows up as
non-finite gradients rather than as a skipped step.
"""

from __future__ import annotations

from gradscope.errors import UsageError
from gradscope.api import Monitor
from gradscope.integrations import monitor_for_run, refuse_guard

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
    ``tensorboard``, …); only the global-zero process writes files. ``update_ratio`` is not
    recorded (Lightning drives the optimizer step through a closure).
    """

    def __init__(self, every: int = 1, **options) -> None:
        super().__init__()
        refuse_guard(options, "GradscopeCallback")
        self.every = every
        self.options = options
        self.monitor: Monitor | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        options = dict(self.options)
        if not trainer.is_global_zero:
            options.pop("log_dir", None)
            options.pop("tensorboard", None)
        self.monitor = monitor_for_run(self.monitor, pl_module, self.every, options, trainer.global_step)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        """The loss goes to the spike detector (added up over accumulated micro-batches)."""
        if self.monitor is not None and self.monitor._active and self.monitor.detects:
            self.monitor.observe_loss(loss)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is not None and self.monitor._active:
            self.monitor.read_lr_from(optimizer)  # a schedule's warm restart explains its spike
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            self.monitor.step(loss_scale=getattr(scaler, "_scale", None))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.monitor is not None:
            self.monitor.stop()
