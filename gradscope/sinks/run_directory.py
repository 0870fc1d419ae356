"""The run directory's descriptive files: ``meta.json`` (written when the run starts, again as soon
as new layers appear, so that a killed run's directory describes every step on disk, and at the
end) and ``findings.json`` (the rules over the whole run, at its end). The history's Parquet parts
are written by ``gradscope.history.History``. The format is in docs/run-directory.md.
"""

from __future__ import annotations

from pathlib import Path

from gradscope.rundir import META_FILE, append_event, write_events, write_findings, write_meta, write_pulse
from gradscope.sinks import RunView, StepRecord


class RunDirectorySink:
    name = "run directory"

    def __init__(self, run_dir: str | Path, run: RunView) -> None:
        self.run_dir = Path(run_dir)
        self._run = run
        self._layers_written = -1
        self._write_meta("running")

    def log(self, record: StepRecord) -> None:
        if self._run.layer_count != self._layers_written:
            self._write_meta("running")

    def abort(self) -> None:
        (self.run_dir / META_FILE).unlink(missing_ok=True)

    def log_event(self, event) -> None:
        """A spike event, one JSON line in ``events.jsonl`` as it happens (nothing is skipped
        silently: a guarded step's line says ``"skipped": true``)."""
        append_event(self.run_dir, {**event.to_dict(), "text": event.text})

    def close(self) -> None:
        self._write_meta("complete")
        from gradscope.report import build_report

        history = self._run.to_dataframe()
        training = {}
        if getattr(self._run, "detects", False):
            training = {"pulse": self._run.pulse_history(), "events": self._run.event_dicts()}
            write_pulse(self.run_dir, training["pulse"])
            write_events(self.run_dir, training["events"])
        findings = build_report(history, self._run.layers, None, self._run.model_summary(), {}, **training).findings
        write_findings(self.run_dir, [f.to_dict() for f in findings])

    def _write_meta(self, status: str) -> None:
        layers = self._run.layers
        write_meta(self.run_dir, {"status": status, **self._run.run_meta(),
                                  "layers": layers.to_dict(orient="records")})
        self._layers_written = len(layers)
