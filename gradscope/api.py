"""The Python API front: :func:`monitor` and :class:`Monitor`, a ``Recorder`` (the capture
lifecycle and step clock, gradscope/monitor.py) that also reads its records into findings,
reports and an HTML page. The capture stage never imports the read side; this front joins them, loading the rules and
reporters only when a report is asked for, so a monitored training loop loads neither.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path

import torch
import torch.nn as nn

from typing import TYPE_CHECKING

from gradscope.config import MonitorConfig
from gradscope.errors import UsageTypeError
from gradscope.monitor import Recorder
from gradscope.sinks import RunView, Sink, abort_sinks

if TYPE_CHECKING:
    from gradscope.report import Report


class Monitor(Recorder):
    """Records per-layer gradient-flow statistics of ``model`` during training, and reads them.

    Use it through :func:`gradscope.monitor`; ``start()``/``stop()`` do what ``with`` does.
    """

    def _open_sinks(self) -> list[Sink]:
        return open_sinks(self.config, self, self.history.run_dir)

    def findings(self) -> list:
        """The rules (gradscope.rules) over the history so far: a list of ``Finding``."""
        return self.report().findings

    def report(self) -> "Report":
        """A ``gradscope.Report`` of the history so far: findings, per-layer statistics of the
        last logged step, the history."""
        from gradscope.report import build_report  # the rules load when a report is asked for

        return build_report(self.to_dataframe(), self.layers, None, self.model_summary(), {
            "steps": self.history.steps_logged, "every": self.config.every, "loss": "training loop",
            "last_step": self.history.last_step,
        }, pulse=self.pulse_history() if self.detects else None, events=self.event_dicts())

    def save_html(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Write the self-contained HTML report of the history so far (gradscope.reporters.html)."""
        from gradscope.reporters.html import write_html  # plotly loads only when a page is written

        return write_html(self.report(), path, title or f"{type(self.model).__name__} training run")


def open_sinks(config: MonitorConfig, run: RunView, run_dir: Path | None) -> list[Sink]:
    """The sinks ``config`` asks for, opened; on a failure the ones already opened are closed
    before the error propagates. A new destination is one file in gradscope/sinks/ and one line
    here."""
    opened: list[Sink] = []
    try:
        if config.tensorboard is not None:
            from gradscope.sinks.tensorboard import TensorBoardSink

            opened.append(TensorBoardSink(config.tensorboard, run, config.findings_every))
        if run_dir is not None:  # last: nothing after it can fail and leave it half-written
            from gradscope.sinks.run_directory import RunDirectorySink

            opened.append(RunDirectorySink(run_dir, run))
    except BaseException:
        abort_sinks(opened)
        raise
    return opened


def monitor(
    model: nn.Module,
    every: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    **options,
) -> Monitor:
    """Watch ``model``'s gradient flow, logging every ``every``-th optimizer step.

    Options: ``functional`` (capture ``F.relu``-style activations, default True), ``log_dir``
    (stream the history to a run directory), ``window``, ``flush_every``, ``strict``,
    ``weights_every`` (record ``weight_norm``/``update_ratio`` on one logged step in this many, default 10),
    ``scaler`` (a ``torch.amp.GradScaler``: statistics unscaled, skipped steps recorded),
    ``tensorboard`` (a log directory or a ``SummaryWriter``), ``histograms_every``,
    ``findings_every``.

    >>> import torch, torch.nn as nn, gradscope
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with gradscope.monitor(model, every=1, optimizer=opt) as mon:
    ...     for _ in range(3):
    ...         model(torch.randn(16, 4)).pow(2).mean().backward()
    ...         opt.step()
    ...         opt.zero_grad()
    >>> df = mon.to_dataframe()
    >>> sorted(df.step.unique().tolist())
    [0, 1, 2]
    >>> sorted(df.metric.unique())  # doctest: +NORMALIZE_WHITESPACE
    ['act_rms', 'grad_nonfinite', 'grad_norm', 'out_grad_norm', 'saturation', 'update_ratio',
     'weight_norm']
    """
    unknown = sorted(set(options) - _MONITOR_OPTIONS)
    if unknown:
        name = unknown[0]
        known = sorted(_MONITOR_OPTIONS | {"every", "optimizer"})
        close = difflib.get_close_matches(name, known, n=1)
        raise UsageTypeError(
            f"gradscope.monitor got an unknown option {name}={options[name]!r}; expected one of "
            f"{', '.join(known)} (docs/monitor.md)" + (f". Did you mean {close[0]}=?" if close else "."))
    return Monitor(model, every, optimizer, **options)


_MONITOR_OPTIONS = frozenset(
    name for name, p in inspect.signature(Monitor.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY)
"""The keyword options :class:`gradscope.monitor.Recorder` takes."""
