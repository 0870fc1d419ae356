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
    twice in the trainer's callbacks (``callbacks=[cb, cb]``) would count every step twice.

    Where the trainer's callbacks can be counted (Lightning), each hook acts on the first of its
    ``copies`` calls in a row (:meth:`first`); elsewhere (the Hugging Face Trainer, whose hooks
    are not given its callbacks) a step hook called again with the same trainer state and step is
    the repeat (:meth:`again`). The repeats are ignored, with one warning."""

    def __init__(self) -> None:
        self.copies = 1
        self._ticks: dict[str, int] = {}
        self._last: dict[str, tuple] = {}
        self._warned = False

    def run_starts(self, copies: int = 1) -> None:
        """A new training run: ``copies`` of this callback in the trainer's callbacks."""
        self.copies = max(1, copies)
        self._ticks.clear()
        self._last.clear()
        if self.copies > 1:
            self._warn()

    def first(self, hook: str) -> bool:
        """Whether this call of ``hook`` is the first of its ``copies`` calls in a row."""
        if self.copies == 1:
            return True
        tick = self._ticks.get(hook, 0)
        self._ticks[hook] = (tick + 1) % self.copies
        return tick == 0

    def again(self, event: str, *key) -> bool:
        """Whether ``event`` with ``key`` (the trainer's state and step) came right before."""
        if self._last.get(event) == key:
            self._warn()
            return True
        self._last[event] = key
        return False

    def _warn(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn("gradscope: this callback is in the trainer's callbacks twice; its second "
                          "calls are ignored (each step is recorded once). Give it once.", stacklevel=4)
