"""Sinks: destinations the monitor hands each logged step to, as host values it already copied
(no device synchronisation). A sink implements the small :class:`Sink` protocol; a new
destination is one new file here, not more ``Monitor`` code.

- ``tensorboard.py``: scalars, a custom-scalars layout, findings text and histograms.
- ``run_directory.py``: ``meta.json`` and ``findings.json`` of a run directory (the history's
  Parquet parts are written by ``gradscope.history.History``, which also reads them back).

Sinks sit downstream of capture: they may read the rules (findings), the capture stage never does.
The monitor's front (gradscope/api.py) opens the sinks its options ask for and hands them to the
capture lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class StepRecord:
    """One logged step as it reached the host: parallel arrays, one item per recorded value."""

    step: int
    layers: np.ndarray
    metrics: np.ndarray
    values: np.ndarray


@runtime_checkable
class Sink(Protocol):
    def log(self, record: StepRecord) -> None:
        """One logged step."""

    def close(self) -> None:
        """The run ended (the history is complete and flushed)."""

    def abort(self) -> None:
        """The run never started (``start()`` failed after this sink opened): release what was
        opened and leave nothing behind that says a run happened."""


class RunView(Protocol):
    """What a sink may read of the run it serves (a ``gradscope.Monitor`` is one)."""

    def to_dataframe(self) -> pd.DataFrame: ...

    def recent_history(self) -> pd.DataFrame: ...

    @property
    def layers(self) -> pd.DataFrame: ...

    @property
    def layer_count(self) -> int: ...

    def model_summary(self) -> dict: ...

    def run_meta(self) -> dict: ...


def abort_sinks(sinks: list[Sink]) -> None:
    """Abort sinks of a run that never started, newest first; best effort, since the start's own
    error is the one to raise."""
    for sink in reversed(sinks):
        try:
            sink.abort()
        except Exception:  # noqa: BLE001 - the start's error propagates
            pass
