"""TensorBoard: each logged step's statistics as scalars under ``gradscope/<metric>/<layer>``,
a custom-scalars layout with one multiline chart per metric across all layers, the findings as a
markdown table when they change, and optional histograms.

Everything is written from host values the monitor already copied: no device synchronisation.
``add_scalar`` only (``add_scalars`` would open a writer per tag). The findings are the rules over
the last logged steps held in RAM, every ``findings_every`` logged steps, and over the whole run
when it ends.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from gradscope.errors import UsageError
from gradscope.reporters.escape import markdown_text
from gradscope.sinks import RunView, StepRecord
from gradscope.stats import STATISTICS
from gradscope.stats.histograms import HEADER, bucket_limits

if TYPE_CHECKING:
    from gradscope.report import Report

FINDINGS_WINDOW = 20
"""Logged steps the periodic findings look at (the rules are cheap enough on these mid-run)."""

ROOT_LAYER = "(model)"
"""Tag name of the root module, whose layer name is the empty string."""


def tag(metric: str, layer: str) -> str:
    return f"gradscope/{metric}/{layer or ROOT_LAYER}"


def layout() -> dict:
    """Custom-scalars layout: per metric, one multiline chart of all layers (tag regex)."""
    charts = {metric: ["Multiline", [f"^gradscope/{metric}/"]] for metric in STATISTICS}
    return {"gradscope: gradient flow across layers": charts}


class TensorBoardSink:
    """Writes to a ``SummaryWriter`` it opens on a directory, or to one the user passes (which it
    flushes but does not close)."""

    name = "tensorboard"

    def __init__(self, target: object, run: RunView, findings_every: int = 10) -> None:
        self._run = run
        self._findings_every = findings_every
        self._steps = 0
        self._last_step: int | None = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is a dependency; a broken install still gets a hint
            raise UsageError("tensorboard= needs the tensorboard package: pip install tensorboard") from e
        if isinstance(target, (str, os.PathLike)):
            self.writer = SummaryWriter(log_dir=str(target))
            self._owned = True
        else:
            self.writer = target
            self._owned = False
        self._layout_written = False
        self._last_findings: tuple | None = None

    def log(self, record: StepRecord) -> None:
        """One logged step: a scalar per (layer, metric) value (NaN and Inf included, as recorded),
        and the findings on the first and every ``findings_every``-th logged step."""
        if not self._layout_written:
            self.writer.add_custom_scalars(layout())
            self._layout_written = True
        for layer, metric, value in zip(record.layers, record.metrics, record.values):
            self.writer.add_scalar(tag(metric, layer), float(value), global_step=record.step)
        if getattr(getattr(self._run, "config", None), "guard", None) is not None:
            # the updates the guard skipped so far: an event's marker is written when it is
            # detected, before the episode's later steps are skipped too
            self.writer.add_scalar("gradscope/skipped_updates", float(len(getattr(self._run, "skipped_steps", ()))),
                                   global_step=record.step)
        self._steps += 1
        self._last_step = record.step
        if self._steps % self._findings_every == 1 or self._findings_every == 1:
            self.log_findings(self._recent_report(), record.step)

    def _recent_report(self) -> Report:
        from gradscope.report import build_report

        recent = self._run.recent_history()
        steps = sorted(recent["step"].unique())[-FINDINGS_WINDOW:]
        recent = recent[recent["step"].isin(steps)]
        return build_report(recent, self._run.layers, None, self._run.model_summary(), {}, **self._training())

    def _training(self) -> dict:
        """The run's pulse and spike events, for the training-run rules (none without detection)."""
        if not getattr(self._run, "detects", False):
            return {}
        return {"pulse": self._run.pulse_history(), "events": self._run.event_dicts()}

    def log_event(self, event) -> None:
        """An event (gradscope/events.py) as it happens: its line under ``gradscope/events`` and a
        marker scalar at the step: ``gradscope/spike`` (a spike or a non-finite value),
        ``gradscope/loss_rising`` (a rising loss alone); with the guard, ``gradscope/skipped``
        where the event's first step was skipped (the count of every skipped update is the
        ``gradscope/skipped_updates`` scalar of the logged steps)."""
        self.writer.add_text("gradscope/events", event.text, event.step)
        rising_only = event.alarms == ["loss rising"]
        self.writer.add_scalar("gradscope/loss_rising" if rising_only else "gradscope/spike", 1.0, event.step)
        if event.skipped:
            self.writer.add_scalar("gradscope/skipped", 1.0, event.step)

    def log_findings(self, report: Report, step: int) -> None:
        """The report's findings as a markdown table (or what was checked, where there is none),
        written only when they differ from the last ones."""
        findings = report.findings
        key = (tuple((f.code, tuple(f.layers)) for f in findings), report.no_findings_text)
        if key == self._last_findings:
            return
        self._last_findings = key
        if not findings:
            text = report.no_findings_text
        else:
            rows = [
                f"| {f.severity} | {f.code} | {f.rule} | {_cell(', '.join(f.layers[:8]))} | {_cell(f.message)} |"
                for f in findings
            ]
            text = "\n".join(["| severity | code | rule | layers | message |", "| --- | --- | --- | --- | --- |", *rows])
        self.writer.add_text("gradscope/findings", text, global_step=step)

    def log_histograms(self, step: int, names: list[tuple[str, str]], rows: np.ndarray) -> None:
        """Histograms from :func:`gradscope.stats.histograms.histogram_row` rows, copied to the
        host together; ``names`` gives (kind, layer) per row, kind "grad" or "activation"."""
        bins = rows.shape[1] - HEADER
        for (kind, layer), row in zip(names, rows):
            lo, hi, count, total, total_sq = (float(v) for v in row[:HEADER])
            if count == 0 or not (math.isfinite(lo) and math.isfinite(hi)):
                continue
            self.writer.add_histogram_raw(
                f"gradscope/{kind}/{layer or ROOT_LAYER}", min=lo, max=hi, num=int(count), sum=total,
                sum_squares=total_sq, bucket_limits=bucket_limits(lo, hi, bins),
                bucket_counts=row[HEADER:].tolist(), global_step=step,
            )

    def abort(self) -> None:
        self.writer.flush()
        if self._owned:
            self.writer.close()

    def close(self) -> None:
        """The findings over the whole run, then flush (and close a writer opened here)."""
        try:
            if self._last_step is not None:
                from gradscope.report import build_report

                history = self._run.to_dataframe()
                report = build_report(history, self._run.layers, None, self._run.model_summary(), {},
                                      **self._training())
                self.log_findings(report, self._last_step)
        finally:
            self.writer.flush()
            if self._owned:
                self.writer.close()


def _cell(text: str) -> str:
    """Text for a cell of the findings' markdown table (TensorBoard renders it): markdown
    punctuation escaped, as in the step summary, so a layer name shows as written."""
    return markdown_text(text.replace("\n", " "))
