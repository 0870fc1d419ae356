"""The run directory on disk: ``meta.json``, ``findings.json`` and the history's Parquet parts
(``history/part-NNNNNN.parquet``), each written atomically (temporary file, then rename). The format
is documented in docs/run-directory.md; ``History`` writes the parts, the run-directory sink the
JSON files, and reports read them back.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope.atomic import write_atomic
from gradscope.errors import GradscopeWarning, UsageError
from gradscope.pulse import PULSE_COLUMNS

COLUMNS = ["step", "layer", "metric", "value"]
FORMAT = "gradscope-run"
FORMAT_VERSION = 1
META_FILE = "meta.json"
HISTORY_DIR = "history"


def empty_history() -> pd.DataFrame:
    return typed_history(pd.DataFrame({
        "step": pd.Series(dtype=np.int64),
        "layer": pd.Series(dtype=object),
        "metric": pd.Series(dtype=object),
        "value": pd.Series(dtype=np.float64),
    }))


def typed_history(frame: pd.DataFrame) -> pd.DataFrame:
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
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **meta,
    }
    write_atomic(run_dir / META_FILE, json.dumps(full, indent=2))


FINDINGS_FILE = "findings.json"


def write_findings(run_dir: Path, findings: list[dict]) -> None:
    """Write ``findings.json`` (the rules over the whole run, at its end) atomically."""
    write_atomic(run_dir / FINDINGS_FILE,
                 json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "findings": findings}, indent=2))


EVENTS_FILE = "events.jsonl"
PULSE_FILE = "pulse.parquet"


def append_event(run_dir: Path, event: dict) -> None:
    """One spike event as a JSON line of ``events.jsonl``, appended as it happens."""
    with open(Path(run_dir) / EVENTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(event, allow_nan=False) + "\n")


def write_events(run_dir: Path, events: list[dict]) -> None:
    """``events.jsonl`` at the end of the run: every episode as it ended (rewritten atomically)."""
    write_atomic(Path(run_dir) / EVENTS_FILE, "".join(json.dumps(e, allow_nan=False) + "\n" for e in events))


def write_pulse(run_dir: Path, pulse: pd.DataFrame) -> None:
    """``pulse.parquet``: every step's loss, gradient norm, z-scores, alarm bits and skips (the
    per-parameter columns are left out: they are estimates, kept for attribution)."""
    columns = [c for c in pulse.columns if not str(c).startswith("grad_norm/")]
    path = Path(run_dir) / PULSE_FILE
    tmp = path.with_suffix(".tmp")
    pulse[columns].to_parquet(tmp, index=False)
    os.replace(tmp, path)


UNWRITTEN = "unwritten"
"""``pulse.attrs[UNWRITTEN]``: the run watched every step but stopped before writing its pulse."""


def read_training(run_dir: str | os.PathLike, meta: dict | None = None) -> dict:
    """The pulse and the events of a run directory, where the run wrote them ({} otherwise). The
    events are written as they happen and the pulse when the run stops, so a run that was killed
    has events and no pulse. A last line cut short by the kill is left out, with a warning; any
    other damage is a ``UsageError`` naming the file. A run whose ``meta`` says it watched every
    step (``"detects"``) and that left neither gets an empty pulse marked :data:`UNWRITTEN`, so
    that the report says what its training rules could not read."""
    run_dir = Path(run_dir)
    events = _read_events(run_dir / EVENTS_FILE) if (run_dir / EVENTS_FILE).exists() else []
    path = run_dir / PULSE_FILE
    if path.exists():
        try:
            pulse = pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any reader error means a damaged file
            raise UsageError(f"{str(path)!r} cannot be read ({type(e).__name__}: {e}); the run directory "
                             f"is damaged. Delete it to read the run without its every-step pulse.") from e
        missing = [c for c in ("step", *PULSE_COLUMNS) if c not in pulse.columns]
        if missing:
            raise UsageError(f"{str(path)!r} is not a gradscope pulse (it lacks the columns "
                             f"{', '.join(missing)}); delete it to read the run without its pulse.")
    elif events or (meta or {}).get("detects"):  # killed: the events stand without the steps' rows
        pulse = pd.DataFrame(columns=["step", *PULSE_COLUMNS])
        pulse.attrs[UNWRITTEN] = not events
    else:
        return {}
    return {"pulse": pulse, "events": events}


def _read_events(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{str(path)!r} cannot be read ({e}); the run directory is damaged.") from e
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # cut short by a kill while it was written
                warnings.warn(f"{path}: its last line was cut short (the run was killed while writing it), "
                              "so that event is left out.", GradscopeWarning, stacklevel=2)
                continue
            raise UsageError(f"{str(path)!r} line {number} is not JSON; the run directory is damaged "
                             "(delete the line to read the other events).") from None
        if not (isinstance(event, dict) and isinstance(event.get("step"), int) and not isinstance(event["step"], bool)
                and isinstance(event.get("alarms"), list) and all(isinstance(a, str) for a in event["alarms"])):
            raise UsageError(f"{str(path)!r} line {number} is not a gradscope event (an object with an integer "
                             "\"step\" and a list of \"alarms\"); the run directory is damaged (delete the line to "
                             "read the other events).")
        events.append(event)
    return events


def read_meta(run_dir: str | os.PathLike) -> dict:
    """The run's ``meta.json``, checked for format and version."""
    path = Path(run_dir) / META_FILE
    if not Path(run_dir).exists():
        raise UsageError(f"{str(run_dir)!r} does not exist; pass the directory given as log_dir= to gradscope.monitor.")
    if not Path(run_dir).is_dir():
        raise UsageError(f"{str(run_dir)!r} is a file, not a run directory; pass the directory given as log_dir= "
                         "to gradscope.monitor.")
    if not path.is_file():
        raise UsageError(
            f"{str(run_dir)!r} is not a gradscope run directory: it has no {META_FILE}. "
            "Pass the directory given as log_dir= to gradscope.monitor."
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{str(path)!r} is not valid JSON ({e}); the run directory is corrupt.") from e
    if not isinstance(meta, dict):
        raise UsageError(
            f"{str(path)!r} holds a JSON {type(meta).__name__}, not the object gradscope writes; "
            "the run directory is damaged."
        )
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise UsageError(
            f"{str(path)!r} has format {meta.get('format')!r} version {meta.get('format_version')!r}; "
            f"this gradscope reads {FORMAT!r} version {FORMAT_VERSION}."
        )
    return meta


def run_status(meta: dict) -> str | None:
    """The run's status as a reader should say it: ``complete``; ``running``; or, for a run still
    marked running whose writing process (``pid`` on ``host``) no longer exists on this machine,
    ``stopped without closing`` (killed, crashed, or its monitor never stopped). A run written
    on another machine, or by a version that did not record its process, stays ``running``."""
    status = meta.get("status")
    pid = meta.get("pid")
    if status != "running" or meta.get("host") != socket.gethostname() or not isinstance(pid, int):
        return status
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return "stopped without closing"
    except (PermissionError, OSError, ValueError):
        return status  # it exists under another user, or cannot be asked: say what was written
    return status


def read_history(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The long table stored in a run directory's Parquet parts (complete parts only)."""
    parts = sorted((Path(run_dir) / HISTORY_DIR).glob("part-*.parquet"))
    if not parts:
        return empty_history()
    numbers = [int(p.stem.partition("-")[2]) for p in parts if p.stem.partition("-")[2].isdigit()]
    gone = sorted(set(range(max(numbers) + 1)) - set(numbers)) if numbers else []
    if gone:
        warnings.warn(f"{run_dir}: history part{'s' if len(gone) > 1 else ''} "
                      f"{', '.join(f'part-{n:06d}.parquet' for n in gone[:5])}{' …' if len(gone) > 5 else ''} "
                      f"{'are' if len(gone) > 1 else 'is'} missing (deleted?): the report has a gap in its steps there.",
                      GradscopeWarning, stacklevel=2)
    frames = []
    for part in parts:
        try:
            frames.append(pd.read_parquet(part))
        except Exception as e:  # noqa: BLE001 - any reader error means a damaged part
            raise UsageError(
                f"History part {str(part)!r} cannot be read ({type(e).__name__}: {e}); "
                "delete it to load the rest of the run."
            ) from e
        try:
            frames[-1] = typed_history(frames[-1][COLUMNS])
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(
                f"History part {str(part)!r} is not a gradscope history part (expected columns "
                f"{', '.join(COLUMNS)} of types int, str, str, float; it has "
                f"{', '.join(map(str, frames[-1].columns))}); delete it to load the rest of the run."
            ) from e
    return typed_history(pd.concat(frames, ignore_index=True))


LAYER_COLUMNS = ["layer", "type", "kind", "trainable", "order"]


def meta_layers(meta: dict, run_dir: str | os.PathLike) -> pd.DataFrame:
    """The layer table of ``meta.json``, checked for shape."""
    rows = meta.get("layers", [])
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("layer"), str) and isinstance(r.get("kind"), str) for r in rows
    ):
        raise UsageError(
            f"{str(Path(run_dir) / META_FILE)!r} has a malformed \"layers\" list (expected objects "
            "with \"layer\" and \"kind\" strings); the run directory is damaged."
        )
    frame = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    if frame["order"].isna().any():
        frame["order"] = range(len(frame))
    return frame
