"""The report as markdown: for ``--markdown`` files and the GitHub Actions step summary."""

from __future__ import annotations

import math

from gradscope.layers import leaf_layers
from gradscope.report import Report


def _cell(value, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if percent:
        return f"{100 * value:.0f}%"
    return f"{value:.2e}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def findings_markdown(report: Report) -> str:
    if not report.findings:
        return "No findings: gradient flow looks healthy.\n"
    lines = []
    for f in report.findings:
        prose, code = [], []
        for line in f.fix.splitlines():
            (code if line.startswith("    ") else prose).append(line)
        lines += [
            f"### {f.severity}: {f.code} `{f.rule}`", "", _escape(f.message), "",
            "**Fix:** " + _escape(" ".join(prose)), "",
        ]
        if code:
            lines += ["```python", *(line[4:] for line in code), "```", ""]
    return "\n".join(lines)


def report_markdown(report: Report, title: str) -> str:
    layers = report.layers.set_index("layer").loc[leaf_layers(list(report.layers["layer"]))]
    rows = [
        f"| `{_escape(name or '(model)')}` | {_escape(str(r['type']))} | {_cell(r['out_grad_norm'])} | "
        f"{_cell(r['grad_norm'])} | {_cell(r['dead_fraction'], True)} | {_cell(r['saturation'], True)} |"
        for name, r in layers.iterrows()
    ]
    counts = ", ".join(f"{sum(f.severity == s for f in report.findings)} {s}" for s in ("error", "warning", "info"))
    return "\n".join([
        f"## gradscope: {_escape(title)}", "",
        f"{report.model['class']}, {report.model['parameters']:,} parameters, "
        f"{report.options.get('steps')} step(s), loss: {report.options.get('loss')}. Findings: {counts}.", "",
        findings_markdown(report),
        "<details><summary>Per-layer statistics (input → output)</summary>", "",
        "| layer | type | signal | weight grad | dead | saturated |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows, "", "</details>", "",
    ])
