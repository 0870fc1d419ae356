"""The run history: one row per (step, layer, metric), in RAM and optionally streamed to a run
directory's Parquet parts (gradscope/rundir.py holds the on-disk format, docs/run-directory.md
documents it).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from gradscope.rundir import HISTORY_DIR, empty_history, read_history, typed_history

Names = Callable[[], tuple[np.ndarray, np.ndarray]]
"""Returns (layer, metric) arrays indexed by entry id; entries only ever get appended."""


class History:
    """Logged steps as (step, entry ids, values) chunks, rendered to a long table on demand.

    Without a run directory everything stays in RAM (about 12 bytes a value). With one, every
    ``flush_every`` logged steps become a Parquet part and RAM keeps the last ``window`` steps.
    """

    def __init__(
        self,
        names: Names,
        run_dir: str | os.PathLike | None = None,
        window: int = 1000,
        flush_every: int = 100,
    ) -> None:
        self._names = names
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._flush_every = flush_every
        self._unflushed: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._recent: deque = deque(maxlen=window if self.run_dir else None)
        self._parts = 0
        self.steps_logged = 0
        self.last_step: int | None = None
        if self.run_dir is not None:
            (self.run_dir / HISTORY_DIR).mkdir(parents=True, exist_ok=True)
            self._parts = len(list((self.run_dir / HISTORY_DIR).glob("part-*.parquet")))

    def append(self, step: int, entry_ids: np.ndarray, values: np.ndarray) -> None:
        chunk = (step, entry_ids, values)
        self._recent.append(chunk)
        self.steps_logged += 1
        self.last_step = step
        if self.run_dir is not None:
            self._unflushed.append(chunk)
            if len(self._unflushed) >= self._flush_every:
                self.flush()

    def flush(self) -> None:
        """Write the steps not yet on disk as one Parquet part (atomically: temp file, rename)."""
        if self.run_dir is None or not self._unflushed:
            return
        frame = self._frame(self._unflushed)
        path = self.run_dir / HISTORY_DIR / f"part-{self._parts:06d}.parquet"
        temp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(temp, index=False)
        os.replace(temp, path)
        self._parts += 1
        self._unflushed.clear()

    def to_dataframe(self) -> pd.DataFrame:
        """The whole history as a long table with columns step, layer, metric, value."""
        if self.run_dir is None:
            return self._frame(list(self._recent))
        on_disk = read_history(self.run_dir) if self._parts else empty_history()
        return typed_history(pd.concat([on_disk, self._frame(self._unflushed)], ignore_index=True))

    def recent(self) -> pd.DataFrame:
        """The steps still held in RAM (all of them without a run directory)."""
        return self._frame(list(self._recent))

    def _frame(self, chunks: list[tuple[int, np.ndarray, np.ndarray]]) -> pd.DataFrame:
        if not chunks:
            return empty_history()
        layers, metrics = self._names()
        ids = np.concatenate([c[1] for c in chunks])
        return typed_history(pd.DataFrame({
            "step": np.repeat([c[0] for c in chunks], [len(c[1]) for c in chunks]).astype(np.int64),
            "layer": layers[ids],
            "metric": metrics[ids],
            "value": np.concatenate([c[2] for c in chunks]).astype(np.float64),
        }))
