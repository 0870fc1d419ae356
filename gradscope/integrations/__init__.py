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

import warnings
import weakref
from pathlib import Path

from gradscope.api import Monitor
from gradscope.history import holds_a_run


def monitor_for_run(current: Monitor | None, model: object, every: int, options: dict,
                    global_step: int = 0) -> Monitor:
    """The monitor of a callback's new training run: its monitor again when it watched ``model``
    before (stopped first if a run that raised left it started), else a new one. A new monitor
    for a run resumed from a checkpoint (``global_step`` > 0) whose ``log_dir`` holds the run it
    resumes writes next to it, in ``<log_dir>-resumed-at-<step>``, and says so; its steps are
    numbered from ``global_step``, as the trainer numbers them."""
    if current is not None:
        if current._active:
            current.stop()
        if current.model is model:
            return current.start()
    log_dir = options.get("log_dir")
    if log_dir is not None and global_step > 0 and holds_a_run(Path(log_dir)):
        base = Path(log_dir)
        resumed = base.with_name(f"{base.name}-resumed-at-{global_step}")
        n = 2
        while holds_a_run(resumed):
            resumed, n = base.with_name(f"{base.name}-resumed-at-{global_step}-{n}"), n + 1
        warnings.warn(f"gradscope: {str(base)!r} holds the run this training resumes (at step "
                      f"{global_step}); this part is written to {str(resumed)!r}.", stacklevel=3)
        options = {**options, "log_dir": resumed}
    monitor = Monitor(model, every, **options)
    monitor.number_from(global_step)  # steps numbered as the trainer numbers them, on a resumed run too
    return monitor.start()



class _Calls:
    """A callback's hooks called a second time for the same event: the same callback object given
    twice in the trainer's callbacks (``callbacks=[cb, cb]``) would count every step twice. The
    second call is ignored, with one warning."""

    def __init__(self) -> None:
        self._last: dict[str, tuple] = {}
        self._loss: "weakref.ref | None" = None
        self._warned = False

    def again(self, event: str, *key, active=None) -> bool:
        """Whether ``event`` with ``key`` (the trainer's step, …) came right before. ``active``:
        for the run's start, the callback's monitor, which must be running for a repeat."""
        if event == "train start" and (active is None or not active._active):
            self._last[event] = key
            return False
        if self._last.get(event) == key:
            self._warn()
            return True
        self._last[event] = key
        return False

    def again_for(self, tensor) -> bool:
        """Whether ``tensor`` (a loss) came in the call before."""
        if self._loss is not None and self._loss() is tensor:
            self._warn()
            return True
        self._loss = weakref.ref(tensor)
        return False

    def _warn(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn("gradscope: this callback is in the trainer's callbacks twice; its second "
                          "calls are ignored (each step is recorded once). Give it once.", stacklevel=4)
