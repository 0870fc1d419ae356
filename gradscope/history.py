"""The run history: one row per (step, layer, metric), in RAM and optionally streamed to a run
directory's Parquet parts (gradscope/rundir.py holds the on-disk format, docs/run-directory.md
documents it).
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from gradscope.atomic import write_atomic
from gradscope.errors import GradscopeWarning, UsageError
from gradscope.rundir import HISTORY_DIR, META_FILE, empty_history, read_history, typed_history

MAX_BACKOFF = 64
"""After failed writes, the next attempt waits up to this many parts' worth of logged steps."""

Names = Callable[[], tuple[np.ndarray, np.ndarray]]
"""Returns (layer, metric) arrays indexed by entry id; entries only ever get appended."""


class History:
    """Logged steps as (step, entry ids, values) chunks, rendered to a long table on demand.

    Without a run directory everything stays in RAM (about 12 bytes a value). With one, logged
    steps are written as Parquet parts and RAM keeps the last ``window`` steps. The first parts
    are small so that a run killed early keeps its first steps: they hold 1, 2, 4, … logged
    steps, up to ``flush_every`` per part from then on.

    A write that fails (a full or read-only disk) never stops training: ``on_write_error`` is
    called with the error, the next attempt backs off (2, 4, … up to ``MAX_BACKOFF`` batches
    later, and at the latest when the buffer is full again), at most ``max(window, flush_every)``
    unwritten steps are kept, and the steps dropped from that bound are listed in ``lost_steps``
    as ``[first, last]`` ranges.
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
        self._max_unflushed = max(window, flush_every)
        self._backoff = 1
        self._since_attempt = 0
        self.lost_steps: list[list[int]] = []
        self._losing = False
        self.on_write_error: Callable[[OSError], None] | None = None
        if self.run_dir is not None:
            _refuse_previous_run(self.run_dir)
            (self.run_dir / HISTORY_DIR).mkdir(parents=True, exist_ok=True)

    def append(self, step: int, entry_ids: np.ndarray, values: np.ndarray) -> None:
        chunk = (step, entry_ids, values)
        self._recent.append(chunk)
        self.steps_logged += 1
        self.last_step = step
        if self.run_dir is not None:
            self._unflushed.append(chunk)
            self._since_attempt += 1
            if len(self._unflushed) > self._max_unflushed:
                self._drop_oldest()
            if self._since_attempt >= min(self._part_size * self._backoff, self._max_unflushed):
                self.flush()

    @property
    def _part_size(self) -> int:
        """Logged steps in the next part: 1, 2, 4, … up to ``flush_every``."""
        return min(1 << min(self._parts, 30), self._flush_every)

    def flush(self) -> bool:
        """Write the steps not yet on disk as one Parquet part (atomically: temp file, rename).
        Returns False when the write failed (reported through ``on_write_error``)."""
        if self.run_dir is None or not self._unflushed:
            return True
        path = self.run_dir / HISTORY_DIR / f"part-{self._parts:06d}.parquet"
        self._since_attempt = 0
        last = self.run_dir / HISTORY_DIR / f"part-{self._parts - 1:06d}.parquet"
        if self._parts and not last.exists() and self.on_write_error is not None:
            self.on_write_error(FileNotFoundError(
                2, "the history parts written earlier are gone (the run directory was deleted or "
                   "replaced); the steps still in RAM are kept", str(last)))
        try:
            write_atomic(path, self._frame(self._unflushed).to_parquet(index=False))
        except OSError as e:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            if self.on_write_error is not None:
                self.on_write_error(e)
            return False
        self._parts += 1
        self._unflushed.clear()
        self._losing = False
        self._backoff = 1
        return True

    @property
    def unwritten(self) -> int:
        """Logged steps not yet on disk."""
        return len(self._unflushed)

    def mark_unwritten_lost(self) -> None:
        """The run ends with steps that could not be written: list them as lost on disk."""
        while self._unflushed:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        step = self._unflushed.pop(0)[0]
        if self._losing:  # the logged steps since the last loss were all dropped too
            self.lost_steps[-1][1] = step
        else:
            self.lost_steps.append([step, step])
            self._losing = True

    def to_dataframe(self) -> pd.DataFrame:
        """The whole history as a long table with columns step, layer, metric, value."""
        if self.run_dir is None:
            return self._frame(list(self._recent))
        try:
            with warnings.catch_warnings():  # a part gone was reported when it was missed
                warnings.simplefilter("ignore", GradscopeWarning)
                on_disk = read_history(self.run_dir) if self._parts else empty_history()
        except (UsageError, OSError):  # parts damaged or gone since they were written
            on_disk = empty_history()
        # the steps in RAM stand in for those no longer on disk (a directory deleted or replaced
        # during the run), and the unwritten ones are only there
        held = {c[0]: c for c in self._recent}
        held.update({c[0]: c for c in self._unflushed})
        written = set(on_disk["step"].unique().tolist())
        missing = [held[step] for step in sorted(held) if step not in written]
        return typed_history(pd.concat([on_disk, self._frame(missing)], ignore_index=True))

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


def holds_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a gradscope run (its meta.json or a history part)."""
    return (run_dir / META_FILE).exists() or any((run_dir / HISTORY_DIR).glob("part-*.parquet"))


def _refuse_previous_run(run_dir: Path) -> None:
    """A second run into a directory that holds one would mix two histories (steps from 0 again,
    one meta.json): refuse before anything is written."""
    if holds_a_run(run_dir):
        raise UsageError(
            f"`log_dir` {str(run_dir)!r} already holds a gradscope run; pass a new directory for "
            "each run (e.g. runs/<name>-<date>), or delete the old one. To monitor one run in "
            "several blocks (one per epoch), create the monitor once and enter it each time: "
            "`with mon: ...`."
        )
