"""A report: the findings of the rules over a history, the per-layer statistics and what was run.
``gradscope.diagnose`` returns one; a monitor (``mon.report()``) and a run directory
(``load_run_report``) make one too. Reporters (terminal, markdown, HTML, CI) render reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pandas as pd

from gradscope.probe import Dynamics
from gradscope.rundir import meta_layers, read_history, read_meta, read_training, run_status
from gradscope.rules import COORDCHECK_RULES, SEVERITIES, Coverage, Finding, Records, rule_coverage, run_rules
from gradscope.rules.base import json_safe
from gradscope.structure import ModelStructure
from gradscope.summary import layer_summary
from gradscope.sweep import FLAT_SLOPE, WidthSweep
from gradscope.verdict import Verdict, decide

REPORT_VERSION = 1


@dataclass
class Report:
    """Findings, per-layer statistics (``layers``, forward order, last logged step) and the history,
    from :func:`gradscope.diagnose`, ``mon.report()`` or :func:`load_run_report`."""

    model: dict
    findings: list[Finding]
    layers: pd.DataFrame
    history: pd.DataFrame
    structure: ModelStructure | None = None
    options: dict = field(default_factory=dict)
    dynamics: Dynamics | None = None
    verdict: Verdict | None = None
    """Whether the model trains under the recipe: trains / at-risk / fails (``gradscope.verdict``)."""
    coverage: Coverage | None = None
    """Which rules could judge the model and which lacked what they need (``gradscope.rules.coverage``)."""
    pulse: pd.DataFrame | None = None
    """A training run's every-step loss and gradient norm (``Recorder.pulse_history``), or None."""
    events: list[dict] = field(default_factory=list)
    """A training run's spike events (``SpikeEvent.to_dict()`` with its ``text``), oldest first."""

    @property
    def no_findings_text(self) -> str:
        """What every reporter prints where there is no finding: that gradient flow looks healthy
        only where every rule could judge the model, else what was checked and what was not."""
        return self.coverage.no_findings_text() if self.coverage is not None else "No findings."

    @property
    def worst(self) -> str | None:
        """The most severe finding's severity, or None."""
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=SEVERITIES.index)

    def to_dict(self) -> dict:
        return json_safe({
            "version": REPORT_VERSION,
            "verdict": self.verdict.to_dict() if self.verdict is not None else None,
            "model": self.model,
            "options": self.options,
            "findings": [f.to_dict() for f in self.findings],
            "coverage": self.coverage.to_dict() if self.coverage is not None else None,
            "events": self.events,
            "layers": self._layer_rows(),
        })

    def _layer_rows(self) -> list[dict]:
        """Per-layer rows: a statistic that does not apply to a layer is null, a measured NaN
        stays "nan" (json_safe), since it is the most important value a report carries."""
        nans = self.measured_nans()
        rows = self.layers.to_dict(orient="records")
        for row in rows:
            for key, value in row.items():
                if isinstance(value, float) and value != value and (row["layer"], key) not in nans:
                    row[key] = None
        return rows

    def measured_nans(self) -> set[tuple[str, str]]:
        """(layer, metric) cells of the layer table whose value is a measured NaN, which reports
        show as "nan"; other empty cells are statistics that do not apply to the layer."""
        measured = self.layers.attrs.get("measured", {})
        out = set()
        for metric, flags in measured.items():
            if metric in self.layers.columns:
                values = self.layers[metric].tolist()
                out |= {(layer, metric) for layer, value, flag in zip(self.layers["layer"], values, flags)
                        if flag and isinstance(value, float) and value != value}
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON (the format the CLI writes, documented in docs/diagnose.md)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def build_report(
    history: pd.DataFrame,
    layers: pd.DataFrame,
    structure: ModelStructure | None,
    model: dict,
    options: dict,
    dynamics: Dynamics | None = None,
    pulse: pd.DataFrame | None = None,
    events: list[dict] | None = None,
) -> Report:
    """Apply the rules to ``history`` (and a training run's ``pulse`` and spike ``events``) and
    summarise it per layer. Steps a GradScaler skipped (``amp_skipped``) are left out of the
    rules: their Inf/NaN gradients were discarded by design."""
    events = list(events or [])
    records = Records(without_skipped_steps(history), layers, structure, dynamics, pulse, tuple(events))
    if history.empty and dynamics is None and (pulse is None or pulse.empty) and not events:
        # nothing was recorded (a monitor stopped before its first step): no verdict, nothing checked
        coverage = rule_coverage(records)
        nothing = Coverage([], {slug: "no step was recorded" for slug in [*coverage.checked, *coverage.not_checked]})
        return Report(model, [], layer_summary(history, layers), history, structure, options, dynamics,
                      None, nothing, pulse, events)
    findings = run_rules(records)
    return Report(model, findings, layer_summary(history, layers), history, structure, options, dynamics,
                  decide(findings, dynamics, options.get("probe_error")), rule_coverage(records), pulse, events)


def without_skipped_steps(history: pd.DataFrame) -> pd.DataFrame:
    skipped = history[(history["metric"] == "amp_skipped") & (history["value"] >= 1)]["step"].unique()
    if len(skipped) == 0:
        return history
    return history[~history["step"].isin(skipped)]


def load_run_report(run_dir: str | os.PathLike) -> Report:
    """The report of a run directory written by ``gradscope.monitor(..., log_dir=...)``: the rules
    over its stored history (complete parts only, for a run that was killed)."""
    meta = read_meta(run_dir)
    history = read_history(run_dir)
    layers = meta_layers(meta, run_dir)
    model = {**(meta.get("model") if isinstance(meta.get("model"), dict) else {}), "run_dir": str(run_dir)}
    steps = sorted(history["step"].unique().tolist())
    options = {
        "steps": len(steps), "every": meta.get("every"), "last_step": steps[-1] if steps else None,
        "status": run_status(meta), "loss": "training loop", "command": meta.get("command"),
        "gradscope_version": meta.get("gradscope_version"), "torch_version": meta.get("torch_version"),
    }
    return build_report(history, layers, None, model, options, **read_training(run_dir, meta))


COORDCHECK_VERSION = 1


@dataclass
class CoordReport:
    """What :func:`gradscope.coordcheck` found: the width sweep (its long table, slopes and per-layer
    verdicts) and the findings of the coordinate-check rules."""

    sweep: WidthSweep
    findings: list[Finding]
    options: dict = field(default_factory=dict)

    @property
    def worst(self) -> str | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=SEVERITIES.index)

    @property
    def no_findings_text(self) -> str:
        return (f"No findings: what the width rules judge (the model's output, attention logits that grow, the "
                f"input and hidden layers' updates and initial activations) is flat in width (|slope| < "
                f"{FLAT_SLOPE:g}), as µP wants.")

    def to_dict(self) -> dict:
        return json_safe({
            "version": COORDCHECK_VERSION,
            "options": self.options,
            "flat_slope": FLAT_SLOPE,
            "findings": [f.to_dict() for f in self.findings],
            "layers": self.sweep.layer_table().to_dict(orient="records"),
            "slopes": self.sweep.slopes.to_dict(orient="records"),
            "measurements": self.sweep.table.to_dict(orient="records"),
        })

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON (the format ``gradscope coordcheck --json`` writes: docs/coordcheck.md)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def build_coord_report(sweep: WidthSweep, options: dict) -> CoordReport:
    """Apply the coordinate-check rules to ``sweep``."""
    return CoordReport(sweep, run_rules(sweep, COORDCHECK_RULES), options)
