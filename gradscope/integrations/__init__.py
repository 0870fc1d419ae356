"""Framework integrations, each an optional import of its framework:

- ``gradscope.integrations.lightning.GradscopeCallback`` (PyTorch Lightning),
- ``gradscope.integrations.huggingface.GradscopeTrainerCallback`` (transformers' Trainer).

Both create a monitor when training starts, end each monitored step where the framework has
unscaled and accumulated the gradients, right before the optimizer step, and stop the monitor when
training ends. ``callback.monitor`` is the ``gradscope.Monitor`` (its history, findings, reports).
A second ``fit``/``train`` of the same model with the same callback (resuming, fine-tuning in
phases, or a retry after a run that raised) enters the same monitor again: its steps continue,
in the same run directory.
"""

from __future__ import annotations

from gradscope.api import Monitor


def monitor_for_run(current: Monitor | None, model: object, every: int, options: dict) -> Monitor:
    """The monitor of a callback's new training run: its monitor again when it watched ``model``
    before (stopped first if a run that raised left it started), else a new one."""
    if current is not None:
        if current._active:
            current.stop()
        if current.model is model:
            return current.start()
    return Monitor(model, every, **options).start()
