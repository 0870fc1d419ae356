"""The run history: one row per (step, layer, metric), in RAM and optionally streamed to a run
directory. The on-disk format is documented in docs/run-directory.md and is what reports read.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from gradscope.errors import UsageError

COLUMNS = ["step", "layer", "metric", "value"]
FORMAT = "gradscope-run"
FORMAT_VERSION = 1
META_FILE = "meta.json"
HISTORY_DIR = "history"

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
        on_disk = read_history(self.run_dir) if self._parts else _empty()
        return _typed(pd.concat([on_disk, self._frame(self._unflushed)], ignore_index=True))

    def recent(self) -> pd.DataFrame:
        """The steps still held in RAM (all of them without a run directory)."""
        return self._frame(list(self._recent))

    def _frame(self, chunks: list[tuple[int, np.ndarray, np.ndarray]]) -> pd.DataFrame:
        if not chunks:
            return _empty()
        layers, metrics = self._names()
        ids = np.concatenate([c[1] for c in chunks])
        return _typed(pd.DataFrame({
            "step": np.repeat([c[0] for c in chunks], [len(c[1]) for c in chunks]).astype(np.int64),
            "layer": layers[ids],
            "metric": metrics[ids],
            "value": np.concatenate([c[2] for c in chunks]).astype(np.float64),
        }))


def _empty() -> pd.DataFrame:
    return _typed(pd.DataFrame({
        "step": pd.Series(dtype=np.int64),
        "layer": pd.Series(dtype=object),
        "metric": pd.Series(dtype=object),
        "value": pd.Series(dtype=np.float64),
    }))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """One set of column types, whichever way the table was made: int64, str, str, float64."""
    return frame.astype({"step": np.int64, "layer": "str", "metric": "str", "value": np.float64})


def write_meta(run_dir: Path, meta: dict) -> None:
    """Write ``meta.json`` atomically, with the format header and the environment filled in."""
    import torch

    from gradscope.version import __version__

    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gradscope_version": __version__,
        "torch_version": torch.__version__,
        "command": sys.argv,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    temp = run_dir / (META_FILE + ".tmp")
    temp.write_text(json.dumps(full, indent=2))
    os.replace(temp, run_dir / META_FILE)


FINDINGS_FILE = "findings.json"


def write_findings(run_dir: Path, findings: list[dict]) -> None:
    """Write ``findings.json`` (the rules over the whole run, at its end) atomically."""
    temp = run_dir / (FINDINGS_FILE + ".tmp")
    temp.write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "findings": findings}, indent=2))
    os.replace(temp, run_dir / FINDINGS_FILE)


def read_meta(run_dir: str | os.PathLike) -> dict:
    """The run's ``meta.json``, checked for format and version."""
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise UsageError(
            f"{str(run_dir)!r} is not a gradscope run directory: it has no {META_FILE}. "
            "Pass the directory given as log_dir= to gradscope.monitor."
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{str(path)!r} is not valid JSON ({e}); the run directory is corrupt.") from e
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise UsageError(
            f"{str(path)!r} has format {meta.get('format')!r} version {meta.get('format_version')!r}; "
            f"this gradscope reads {FORMAT!r} version {FORMAT_VERSION}."
        )
    return meta


def read_history(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The long table stored in a run directory's Parquet parts (complete parts only)."""
    parts = sorted((Path(run_dir) / HISTORY_DIR).glob("part-*.parquet"))
    if not parts:
        return _empty()
    frames = []
    for part in parts:
        try:
            frames.append(pd.read_parquet(part))
        except Exception as e:  # noqa: BLE001 - any reader error means a damaged part
            raise UsageError(
                f"History part {str(part)!r} cannot be read ({type(e).__name__}: {e}); "
                "delete it to load the rest of the run."
            ) from e
    return _typed(pd.concat(frames, ignore_index=True)[COLUMNS])
