"""Monitor options, as data, validated once for the Python API and the integrations."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gradscope.errors import UsageError, UsageTypeError


@dataclass
class MonitorConfig:
    """Options of :func:`gradscope.monitor`."""

    every: int = 1
    """Log steps 0, every, 2*every, …; on other steps the hooks are not installed."""

    functional: bool = True
    """Also capture activation functions called inside forwards (``F.relu``, ``torch.tanh`` …)."""

    log_dir: str | os.PathLike | None = None
    """Run directory to stream the history to (Parquet); RAM then keeps ``window`` steps."""

    window: int = 1000
    """With ``log_dir``: logged steps kept in RAM besides what is on disk."""

    flush_every: int = 100
    """With ``log_dir``: logged steps per Parquet part written to the run directory (the first
    parts hold 1, 2, 4, … steps, so that a run killed early keeps its first steps)."""

    strict: bool = False
    """Re-raise errors inside gradscope's hooks instead of warning once and skipping the statistic."""

    weights_every: int = 10
    """``weight_norm`` and ``update_ratio`` (a pass over the weights and a copy of them kept across
    ``optimizer.step()``, the dearest statistics of a logged step) are recorded on one logged step
    in ``weights_every``: every 10th step at ``every=1``, every 100th at ``every=10``. Weights move
    slowly; pass 1 to record them at every logged step."""

    tensorboard: object = None
    """A TensorBoard log directory, or a ``torch.utils.tensorboard.SummaryWriter``, to write each
    logged step's statistics to (``gradscope/<metric>/<layer>``)."""

    histograms_every: int | None = None
    """With ``tensorboard``: also write histograms of gradients and activations every this many
    logged steps (None: never)."""

    findings_every: int = 10
    """With ``tensorboard``: apply the rules every this many logged steps and write the findings
    as text when they change."""

    detect: object = "zscore"
    """Spike detection on every step (gradscope/detectors.py): ``"zscore"`` (default), ``"ratio"``
    (llm-foundry's rule), ``"rtol"`` (Lightning's SpikeDetection), a ``gradscope.Detector`` with
    its own parameters, or None to turn the every-step pulse off."""

    guard: object = None
    """``"skip"``: do not take an optimizer step on which the detector raised an alarm (a spike, a
    non-finite loss or gradient); parameters and optimizer state are left as they were."""

    record_after: int = 10
    """After a detection, record every statistic of this many steps (the flight recorder), whatever
    ``every`` is. In a single process only: under DDP/FSDP2 each logged step is a collective of all
    ranks, which cannot learn of one rank's detection before the next logged step."""

    def __post_init__(self) -> None:
        for name in ("every", "window", "flush_every", "weights_every", "record_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageTypeError(
                    f"Expected `{name}` to be a positive int but got {value!r} "
                    f"({type(value).__name__}); pass e.g. {name}=10."
                )
            if value < 1:
                raise UsageError(
                    f"Expected `{name}` to be a positive int but got {value}; "
                    f"pass {name}=1 to log every step."
                    if name == "every"
                    else f"Expected `{name}` to be a positive int but got {value}."
                )
        for name in ("findings_every", "histograms_every"):
            value = getattr(self, name)
            if value is None and name == "histograms_every":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"Expected `{name}` to be a positive int but got {value!r}.")
        if self.tensorboard is not None and not isinstance(self.tensorboard, (str, os.PathLike)) \
                and not hasattr(self.tensorboard, "add_scalar"):
            raise UsageTypeError(
                f"Expected `tensorboard` to be a log directory or a SummaryWriter but got "
                f"{type(self.tensorboard).__name__}."
            )
        if self.histograms_every is not None and self.tensorboard is None:
            raise UsageError("`histograms_every` writes to TensorBoard; pass tensorboard=DIR as well.")
        from gradscope.detectors import as_detector
        from gradscope.guard import check_guard

        self.detect = as_detector(self.detect)
        self.guard = check_guard(self.guard, self.detect)
        for name in ("functional", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise UsageTypeError(
                    f"Expected `{name}` to be a bool but got {getattr(self, name)!r}."
                )
        if self.log_dir is not None:
            if not isinstance(self.log_dir, (str, os.PathLike)):
                raise UsageTypeError(
                    f"Expected `log_dir` to be a path but got {self.log_dir!r} "
                    f"({type(self.log_dir).__name__})."
                )
            if not os.fspath(self.log_dir).strip():
                raise UsageError(
                    "`log_dir` is empty, which would write the run into the current directory; pass a "
                    "directory for the run (log_dir='runs/exp1'), or leave log_dir out to keep it in memory."
                )
            path = Path(self.log_dir)
            if path.exists() and not path.is_dir():
                raise UsageError(
                    f"`log_dir` {str(path)!r} exists and is not a directory; "
                    "pass a new or existing directory."
                )
