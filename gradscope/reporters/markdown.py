"""The report as markdown, verdict first: for ``--markdown`` files and the GitHub Actions step
summary."""

from __future__ import annotations

import math

from gradscope.layers import leaf_layers
from gradscope.report import Report
from gradscope.reporters import fix_blocks
from gradscope.reporters.escape import markdown_fence, markdown_text, show_controls
from gradscope.reporters.verdict import verdict_text
from gradscope.sweep import FLAT_SLOPE


def _cell(value, percent: bool = False, measured: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan" if measured else ""
    if percent:
        return f"{100 * value:.0f}%"
    return f"{value:.2e}"


def findings_markdown(report: Report) -> str:
    if not report.findings:
        return markdown_text(report.no_findings_text) + "\n"
    lines = []
    for f in report.findings:
        lines += [f"### {f.severity}: {f.code} `{f.rule}`", "", markdown_text(f.message), ""]
        first = True
        for code, text in fix_blocks(f.fix):  # prose and code in their order
            if code:
                block = show_controls(text)
                fence = markdown_fence(block)
                lines += [fence + "python", block, fence, ""]
            else:
                lines += [("**Fix:** " if first else "") + markdown_text(" ".join(text.splitlines())), ""]
            first = False
    return "\n".join(lines)


def verdict_markdown(report: Report) -> str:
    """The verdict's section: the headline, then its reasons, numbers and recipe notes as a list."""
    text = verdict_text(report)
    if text is None:
        return ""
    lines = [f"**{markdown_text(text.verdict)}** {markdown_text(text.under)}", ""]
    lines += [f"- {markdown_text(line)}" for line in text.details]
    return "\n".join(lines) + "\n\n"


def report_markdown(report: Report, title: str) -> str:
    layers = report.layers.set_index("layer").loc[leaf_layers(list(report.layers["layer"]))]
    nans = report.measured_nans()
    rows = [
        f"| {markdown_text(name or '(model)')} | {markdown_text(str(r['type']))} | "
        + " | ".join(_cell(r[metric], percent, (name, metric) in nans)
                     for metric, percent in (("out_grad_norm", False), ("grad_norm", False),
                                             ("dead_fraction", True), ("saturation", True)))
        + " |"
        for name, r in layers.iterrows()
    ]
    counts = ", ".join(f"{sum(f.severity == s for f in report.findings)} {s}" for s in ("error", "warning", "info"))
    return "\n".join([
        f"## gradscope: {markdown_text(title)}", "",
        verdict_markdown(report) + f"{markdown_text(str(report.model['class']))}, {report.model['parameters']:,} parameters, "
        f"{report.options.get('steps')} step(s), loss: {markdown_text(str(report.options.get('loss')))}. Findings: {counts}.", "",
        findings_markdown(report),
        "<details><summary>Per-layer statistics (input → output)</summary>", "",
        "| layer | type | signal | weight grad | dead | saturated |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows, "", "</details>", "",
    ])


def _slope(mean: float, spread: float) -> str:
    if not math.isfinite(mean):
        return ""
    return f"{mean:+.2f} ± {spread:.2f}" if math.isfinite(spread) else f"{mean:+.2f}"


def coordcheck_markdown(report, title: str) -> str:
    """A :class:`~gradscope.report.CoordReport` as markdown: the settings, the findings, the
    per-layer table of verdicts and slopes."""
    sweep = report.sweep
    rows = [
        f"| {markdown_text(r.layer or '(model output)')} | {markdown_text(str(r.type))} | {r.role} | {r.verdict} | "
        f"{_slope(r.act_rms_slope, r.act_rms_spread)} | {_slope(r.first_delta_rms_slope, r.first_delta_rms_spread)} | "
        f"{_slope(r.init_act_rms_slope, r.init_act_rms_spread)} | {_slope(r.signal_rms_slope, r.signal_rms_spread)} | "
        f"{_slope(r.update_norm_slope, r.update_norm_spread)} |"
        for r in sweep.layer_table().itertuples(index=False)
    ]
    counts = ", ".join(f"{sum(f.severity == s for f in report.findings)} {s}" for s in ("error", "warning", "info"))
    return "\n".join([
        f"## gradscope coordcheck: {markdown_text(title)}", "",
        f"Widths {', '.join(map(str, sweep.widths))}, {len(sweep.seeds)} seeds, {sweep.steps} steps of "
        f"{markdown_text(sweep.optimizer)}. Findings: {counts}.", "",
        findings_markdown(report),
        "Log-log slope of each quantity against width, mean ± std over seeds (flat: |slope| < "
        f"{FLAT_SLOPE:g}); act: activation RMS after the last update; Δ: change of the output "
        "by the first update that moves it; init: activation RMS at step 0.", "",
        "| layer | type | role | verdict | act | Δ | init | signal | ‖Δw‖ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows, "",
    ])
