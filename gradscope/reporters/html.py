"""The HTML report: one self-contained file (plotly.js embedded, no network) with the verdict in
a banner at the top, the findings and their fixes, the gradient-flow profile across depth, layers × steps heatmaps of the
backpropagated signal, dead units and saturation, and the update ratios.

Figures are ``plotly.graph_objects`` figures embedded with ``plotly.io.to_html`` (one div and
script each); plotly.js itself is inlined once, in the page's head, so the page fetches nothing.
Every name that comes from the model is escaped: in the page and in plotly's labels (which read
HTML) with ``html_text`` (``html.escape``, bidi overrides escaped), and in the figure data by plotly's JSON encoder, which escapes ``<``,
``>`` and ``/``, so a module called ``</script>`` stays text.
Large runs stay usable: at most ``MAX_STEPS`` step columns (evenly spaced, last step kept) and
``MAX_LAYERS`` layer rows (every k-th leaf layer, noted on the figure); parameters are grouped by
the module that owns them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from gradscope.atomic import write_atomic
from gradscope.report import Report
from gradscope.reporters import fix_blocks
from gradscope.reporters.escape import html_text
from gradscope.reporters.verdict import verdict_text
from gradscope.rules import SEVERITIES
from gradscope.verdict import AT_RISK, FAILS, TRAINS
from gradscope.layers import leaf_layers, parameter_owner
from gradscope.sweep import (ACT_RMS, ATTENTION, DELTA_RMS, FLAT_SLOPE, HIDDEN, INPUT, OTHER, OUTPUT, READOUT,
                             WidthSweep)
from gradscope.version import __version__

MAX_STEPS = 200
MAX_LAYERS = 400
MAX_PULSE_POINTS = 5000
"""Steps of the every-step loss and gradient-norm timeline drawn at most (besides event steps)."""
COLORS = {"error": "#c62828", "warning": "#b26a00", "info": "#1565c0"}
VERDICT_COLORS = {TRAINS: "#2e7d32", AT_RISK: "#b26a00", FAILS: "#c62828"}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       color: #1f2328; background: #f6f8fa; }
header { background: #1f2328; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; font-weight: 600; }
header .meta { color: #c9d1d9; font-size: 13px; }
.verdict { color: #fff; padding: 14px 32px; }
.verdict .headline { font-size: 20px; }
.verdict ul { margin: 6px 0 0 0; padding-left: 20px; font-size: 14px; }
main { padding: 20px 32px 40px 32px; max-width: 1400px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px 20px;
          margin-bottom: 18px; }
h2 { font-size: 17px; margin: 0 0 10px 0; }
.counts span { display: inline-block; margin-right: 14px; font-weight: 600; }
.finding { border-left: 4px solid; padding: 6px 12px; margin: 12px 0; }
.finding .head { font-weight: 600; }
.finding .layers { color: #57606a; font-size: 13px; margin: 2px 0 6px 0; }
.finding p { margin: 4px 0; }
.finding pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 10px;
               overflow-x: auto; font-size: 12.5px; }
.badge { color: #fff; border-radius: 10px; padding: 1px 8px; font-size: 12px; margin-right: 6px; }
.note { color: #57606a; font-size: 13px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
@media (max-width: 1000px) { .grid { grid-template-columns: 1fr; } }
table.slopes { border-collapse: collapse; font-size: 13px; }
table.slopes td, table.slopes th { border-bottom: 1px solid #d0d7de; padding: 3px 10px; text-align: left; }
"""


def _finite(values) -> list:
    """Floats for plotly: NaN/inf become None (gaps)."""
    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]


def _every_kth(items: list, limit: int) -> tuple[list, int]:
    if len(items) <= limit:
        return items, 1
    k = math.ceil(len(items) / limit)
    return items[::k], k


def _steps_shown(steps: list[int]) -> list[int]:
    if len(steps) <= MAX_STEPS:
        return steps
    picks = np.unique(np.linspace(0, len(steps) - 1, MAX_STEPS).round().astype(int))
    return [steps[i] for i in picks]


def _label(name: str) -> str:
    return html_text(name or "(model)")


def _figure(*traces: go.BaseTraceType) -> go.Figure:
    """A figure on plotly.js's own defaults (the ``none`` template): plain white plots, and no
    template copied into every figure's JSON."""
    return go.Figure(list(traces), layout={"template": "none"})


class _Figures:
    """Plotly figures (``plotly.graph_objects``) built from a report."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.history = report.history
        names = list(report.layers["layer"])
        self.leaves = leaf_layers(names)
        self.types = dict(zip(report.layers["layer"], report.layers["type"]))
        self.steps = sorted(int(s) for s in self.history["step"].unique()) if len(self.history) else []
        self.shown_steps = _steps_shown(self.steps)
        if len(self.shown_steps) < len(self.steps):  # everything below reads the shown steps only
            self.history = self.history[self.history["step"].isin(self.shown_steps)]

    def _wide(self, metric: str, layers: list[str]) -> pd.DataFrame:
        rows = self.history[(self.history["metric"] == metric) & self.history["step"].isin(self.shown_steps)]
        if rows.empty:
            return pd.DataFrame()
        table = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="last", dropna=False)
        return table.reindex(index=[n for n in layers if n in table.index], columns=self.shown_steps)

    def profile(self) -> go.Figure | None:
        summary = self.report.layers.set_index("layer")
        layers, k = _every_kth([n for n in self.leaves if n in summary.index], MAX_LAYERS)
        if not layers:
            return None
        depth = list(range(len(layers)))
        hover = [f"{_label(n)} ({html_text(str(self.types.get(n, '')))})" for n in layers]
        figure = _figure()
        figure.add_scatter(
            name="backpropagated signal (out_grad_norm)", mode="lines+markers",
            x=depth, y=_finite(summary.loc[layers, "out_grad_norm"]), text=hover,
            hovertemplate="%{text}<br>signal %{y:.3e}<extra></extra>",
            line={"color": "#1565c0", "width": 2}, marker={"size": 5})
        if len(self.steps) > 1:
            first = self._wide("out_grad_norm", layers)
            if not first.empty:
                figure.add_scatter(
                    name=f"signal at step {self.steps[0]}", mode="lines",
                    x=depth, y=_finite(first.reindex(layers)[self.shown_steps[0]]), text=hover,
                    hovertemplate="%{text}<br>signal %{y:.3e}<extra></extra>",
                    line={"color": "#90caf9", "width": 1.5, "dash": "dot"})
        figure.add_scatter(
            name="weight-gradient norm (module's own parameters)", mode="markers",
            x=depth, y=_finite(summary.loc[layers, "grad_norm"]), text=hover,
            hovertemplate="%{text}<br>weight grad %{y:.3e}<extra></extra>",
            marker={"color": "#ef6c00", "size": 7, "symbol": "diamond"})
        labelled = len(layers) <= 60
        step = self.steps[-1] if self.steps else 0
        figure.update_layout(
            title_text=f"Gradient flow across depth (step {step})" + (f", every {k}th layer" if k > 1 else ""),
            legend={"orientation": "h", "y": 1.08}, height=460, margin={"t": 80})
        figure.update_xaxes(title_text="layer, input → output", tickmode="array", zeroline=False,
                            tickvals=depth if labelled else None,
                            ticktext=[_label(n) for n in layers] if labelled else None,
                            tickangle=-45, automargin=True)
        figure.update_yaxes(title_text="L2 norm (log scale)", type="log", exponentformat="power")
        return figure

    def heatmap(self, metric: str, layers: list[str], title: str, log: bool, colorscale: str,
                zrange: tuple[float, float] | None = None, colorbar: str = "") -> go.Figure | None:
        layers, k = _every_kth(layers, MAX_LAYERS)
        table = self._wide(metric, layers)
        if table.empty or table.shape[1] < 2:
            return None
        # numpy arrays, not nested lists: plotly validates them in one pass and embeds numbers as
        # base64 typed arrays; NaN (no value, or log of a non-positive one) is a gap in the heatmap
        z = table.to_numpy(dtype=float, copy=True)
        z[~np.isfinite(z)] = np.nan
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(z > 0, np.log10(z), np.nan)
        names = [_label(n) for n in table.index]
        rows = list(range(len(names)))
        text = np.repeat(np.array(names, dtype=object)[:, None], table.shape[1], axis=1)
        zmin, zmax = zrange if zrange is not None else (None, None)
        figure = _figure(go.Heatmap(
            z=z, x=[int(s) for s in table.columns], y=rows, text=text,
            colorscale=colorscale, zmin=zmin, zmax=zmax, colorbar={"title": {"text": colorbar}},
            hovertemplate="%{text}<br>step %{x}<br>" + colorbar + " %{z:.3g}<extra></extra>"))
        note = []
        if k > 1:
            note.append(f"every {k}th layer")
        if len(self.shown_steps) < len(self.steps):
            note.append(f"{len(self.shown_steps)} of {len(self.steps)} logged steps")
        labelled = len(names) <= 50
        figure.update_layout(title_text=title + (f" ({', '.join(note)})" if note else ""),
                             height=max(320, min(900, 120 + 14 * len(names))), margin={"t": 60})
        # steps on a linear axis: the flight recorder's steps after an event sit close together
        # (a category axis gave them the width of ten steps each)
        figure.update_xaxes(title_text="step", type="linear")
        figure.update_yaxes(title_text="layer (input at top)", autorange="reversed", automargin=True,
                            tickvals=rows if labelled else None, ticktext=names if labelled else None)
        return figure

    def bars(self, metric: str, layers: list[str], title: str, percent: bool, log: bool) -> go.Figure | None:
        summary = self.report.layers.set_index("layer")
        layers = [n for n in layers if n in summary.index and pd.notna(summary.loc[n, metric])]
        if not layers:
            return None
        values = _finite(summary.loc[layers, metric])
        figure = _figure(go.Bar(x=[_label(n) for n in layers],
                                  y=[v * 100 if (percent and v is not None) else v for v in values],
                                  marker_color="#6a1b9a"))
        figure.update_layout(title_text=title, height=360)
        figure.update_yaxes(title_text="%" if percent else metric, type="log" if log else "linear")
        figure.update_xaxes(tickangle=-45, automargin=True, type="category")  # names like "3" are not numbers
        return figure

    def timeline(self) -> go.Figure | None:
        """A training run's every-step loss (with the smoothed loss of the trend alarm) and total
        gradient norm (the pulse), one panel each on a shared step axis, with each event (spike,
        rising loss, non-finite value) marked where it fired (its text on hover).
        Long runs are thinned to at most :data:`MAX_PULSE_POINTS` steps, event steps always kept."""
        from plotly.subplots import make_subplots

        pulse = self.report.pulse
        if pulse is None or pulse.empty:
            return None
        events = [e for e in self.report.events if e.get("step") is not None]
        event_steps = {int(e["step"]) for e in events}
        stride = max(1, -(-len(pulse) // MAX_PULSE_POINTS))
        keep = (np.arange(len(pulse)) % stride == 0) | pulse["step"].isin(event_steps).to_numpy()
        shown = pulse[keep]
        steps = shown["step"].astype(int).tolist()
        figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                               subplot_titles=("loss", "gradient norm (all parameters)"))
        figure.update_layout(template="none", height=480,
                             legend={"orientation": "h", "x": 0, "y": -0.18, "xanchor": "left"})
        figure.add_trace(go.Scatter(x=steps, y=_finite(shown["loss"]), mode="lines", name="loss",
                                    line={"color": "#1f77b4"}), row=1, col=1)
        if "loss_smoothed" in shown and shown["loss_smoothed"].notna().any():
            # the loss trend the "loss rising" alarm reads, over the thinned steps
            figure.add_trace(go.Scatter(x=steps, y=_finite(shown["loss_smoothed"]), mode="lines",
                                        name="smoothed loss", line={"color": "#ff7f0e", "width": 1.5}),
                             row=1, col=1)
        figure.add_trace(go.Scatter(x=steps, y=_finite(shown["grad_norm"]), mode="lines", name="gradient norm",
                                    line={"color": "#2ca02c"}), row=2, col=1)
        if events:
            at = pulse.set_index("step")
            marks = [int(e["step"]) for e in events]
            texts = [html_text(str(e.get("text", ""))) for e in events]
            held = [bool(e.get("skipped")) for e in events]  # (at the marked step, the episode's first)
            for row, column in ((1, "loss"), (2, "grad_norm")):
                values = np.array([at[column].get(step, np.nan) for step in marks], dtype=float)
                finite = shown[column].to_numpy(dtype=float)
                finite = finite[np.isfinite(finite) & ((finite > 0) if row == 2 else True)]
                # a non-finite value has no place on the axis: its marker sits at the panel's top;
                # on the gradient norm's log axis a zero sits at its bottom
                top = float(finite.max()) if len(finite) else 1.0
                values = np.where(np.isfinite(values), values, top)
                if row == 2:
                    values = np.where(values > 0, values, float(finite.min()) if len(finite) else 1.0)
                for skipped, name, symbol in ((True, "event, update skipped by the guard", "x"),
                                              (False, "event", "circle-open")):
                    which = [i for i, h in enumerate(held) if h == skipped]
                    if not which:
                        continue
                    figure.add_trace(go.Scatter(
                        x=[marks[i] for i in which], y=_finite(values[which]), mode="markers", name=name,
                        legendgroup=name, showlegend=row == 1, hovertext=[texts[i] for i in which],
                        hoverinfo="text", marker={"color": "#d62728", "size": 10, "symbol": symbol,
                                                  "line": {"width": 2, "color": "#d62728"}},
                    ), row=row, col=1)
        figure.update_yaxes(type="log", row=2, col=1)
        figure.update_xaxes(title_text="step", row=2, col=1)
        if stride > 1:
            figure.update_layout(title=f"every {stride}th step shown of {len(pulse)}, and every event step")
        return figure

    def all(self) -> list[tuple[str, go.Figure | None, str]]:
        """(section title, figure or None, note when None)."""
        activations = [n for n in self.leaves]
        multi = len(self.steps) > 1
        summary = self.report.layers
        module_with_params = list(summary.loc[summary["update_ratio"].notna(), "layer"]) \
            if "update_ratio" in summary else []
        figures = [("Gradient flow", self.profile(), "No backpropagated signal was recorded.")]
        if self.report.pulse is not None:  # a monitored training run: every step's loss and norm
            figures.insert(0, ("Loss and gradient norm, every step", self.timeline(),
                               "No step's loss or gradient norm was recorded."))
        if multi:
            figures.append(("Backpropagated signal over training", self.heatmap(
                "out_grad_norm", self.leaves, "log10 backpropagated signal, layers × steps", True, "Viridis",
                colorbar="log10"), "Fewer than two logged steps."))
            figures.append(("Dead units", self.heatmap(
                "dead_fraction", activations, "Dead ReLU units (fraction), layers × steps", False, "Reds",
                (0.0, 1.0), "dead"), "No ReLU layers were recorded."))
            figures.append(("Saturation", self.heatmap(
                "saturation", activations, "Saturated tanh/sigmoid outputs (fraction), layers × steps", False,
                "Oranges", (0.0, 1.0), "saturated"), "No bounded activations were recorded."))
            figures.append(("Update ratios", self._update_ratio_heatmap(),
                            "No update ratios: they are recorded when the monitor has optimizer=."))
        else:
            figures.append(("Dead units", self.bars("dead_fraction", activations, "Dead ReLU units (%)", True, False),
                            "No ReLU layers were recorded."))
            figures.append(("Saturation", self.bars("saturation", activations, "Saturated outputs (%)", True, False),
                            "No bounded activations were recorded."))
            figures.append(("Update ratios", self.bars("update_ratio", module_with_params,
                                                       "Update ratio ||Δw|| / ||w||", False, True),
                            "No update ratios: a single forward/backward updates nothing (use --steps 2 or more)."))
        return figures

    def _update_ratio_heatmap(self) -> go.Figure | None:
        ratios = self.history[self.history["metric"] == "update_ratio"]
        if ratios.empty:
            return None
        frame = ratios.assign(module=ratios["layer"].map(parameter_owner))
        weights = self.history[self.history["metric"] == "weight_norm"].set_index(["step", "layer"])["value"]
        frame = frame.join(weights.rename("weight"), on=["step", "layer"])
        frame["delta_sq"] = (frame["value"] * frame["weight"]) ** 2
        frame["weight_sq"] = frame["weight"] ** 2
        grouped = frame.groupby(["module", "step"])[["delta_sq", "weight_sq"]].sum(min_count=1)
        combined = np.sqrt(grouped["delta_sq"]) / np.sqrt(grouped["weight_sq"])
        present = set(frame["module"])
        modules = [n for n in self.report.layers["layer"] if n in present]
        history = combined.rename("value").reset_index().rename(columns={"module": "layer"})
        history["metric"] = "update_ratio_module"
        saved, self.history = self.history, history
        try:
            return self.heatmap("update_ratio_module", modules, "log10 update ratio ||Δw|| / ||w|| per module, modules × steps",
                                True, "Cividis", colorbar="log10")
        finally:
            self.history = saved


def _fix_html(fix: str) -> str:
    """Prose lines as paragraphs and indented code lines as code blocks, in their order."""
    return "".join(f"<pre><code>{html_text(text)}</code></pre>" if code else f"<p>{html_text(text)}</p>"
                   for code, text in fix_blocks(fix))


def _verdict_html(report: Report) -> str:
    """The banner: the verdict in its colour, then its reasons, numbers and recipe notes."""
    text = verdict_text(report)
    if text is None:
        return ""
    items = "".join(f"<li>{html_text(line)}</li>" for line in text.details)
    return (f'<div class="verdict" style="background:{VERDICT_COLORS.get(text.label, "#57606a")}">'
            f'<div class="headline"><b>{html_text(text.verdict)}</b> {html_text(text.under)}</div>'
            f"<ul>{items}</ul></div>")


def render_html(report: Report, title: str) -> str:
    """The whole page as a string."""
    meta_bits = [
        f"{html_text(str(report.model.get('class', 'model')))}",
        f"{int(report.model.get('parameters', 0)):,} parameters",
        f"{report.options.get('steps', 0)} logged step(s)",
    ]
    if report.options.get("loss"):
        meta_bits.append(f"loss: {html_text(str(report.options['loss']))}")
    meta_bits.append(f"gradscope {__version__}")
    sections = _sections(_Figures(report).all())
    return _page(title, meta_bits, _verdict_html(report), _findings_html(report),
                 "".join(sections[:1]) + f'<div class="grid">{"".join(sections[1:])}</div>')


def _findings_html(report) -> str:
    """The findings section: counts by severity, then each finding with its layers and fix."""
    counts = {s: sum(f.severity == s for f in report.findings) for s in reversed(SEVERITIES)}
    findings_html = []
    for f in report.findings:
        layers = ", ".join(_label(n) for n in f.layers[:20]) + (f" and {len(f.layers) - 20} more" if len(f.layers) > 20 else "")
        findings_html.append(
            f'<div class="finding" style="border-color:{COLORS[f.severity]}">'
            f'<div class="head"><span class="badge" style="background:{COLORS[f.severity]}">{f.severity}</span>'
            f'{html_text(f.code)} {html_text(f.rule)}</div>'
            f'<div class="layers">layers: {layers}</div>'
            f"<div>{html_text(f.message)}</div>"
            + f"<div><b>Fix:</b></div>{_fix_html(f.fix)}</div>"
        )
    if not report.findings:
        findings_html.append(f'<p class="note">{html_text(report.no_findings_text)}</p>')
    counts_html = "".join(
        f'<span style="color:{COLORS[s]}">{n} {s}{"s" if n != 1 else ""}</span>' for s, n in counts.items())
    return f'<section><h2>Findings</h2><div class="counts">{counts_html}</div>{"".join(findings_html)}</section>'


def _sections(figures: list[tuple[str, go.Figure | None, str]]) -> list[str]:
    """Each (title, figure or None, note) as a section: the figure's div, or the note."""
    sections = []
    for i, (name, figure, empty_note) in enumerate(figures):
        if figure is None:
            sections.append(f'<section><h2>{html_text(name)}</h2><p class="note">{html_text(empty_note)}</p></section>')
            continue
        div = pio.to_html(figure, full_html=False, include_plotlyjs=False, div_id=f"gs-figure-{i}",
                          config={"responsive": True, "displaylogo": False})
        sections.append(f"<section><h2>{html_text(name)}</h2>{div}</section>")
    return sections


def _page(title: str, meta_bits: list[str], banner: str, findings: str, body: str) -> str:
    """The self-contained page: plotly.js inlined once in the head."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gradscope: {html_text(title)}</title>
<style>{_CSS}</style>
<script>{get_plotlyjs()}</script>
</head>
<body>
<header><h1>gradscope: {html_text(title)}</h1><div class="meta">{" · ".join(meta_bits)}</div></header>
{banner}
<main>
{findings}
{body}
</main>
</body>
</html>
"""


def write_html(report: Report, path: str | os.PathLike, title: str) -> Path:
    return write_atomic(path, render_html(report, title))


# ---------------------------------------------------------------------------------------------
# The coordinate check (gradscope.coordcheck)

MAX_PANELS = 12
ROLE_PANELS = ((INPUT, "input layers and embeddings"), (HIDDEN, "hidden layers"), (ATTENTION, "attention logits"),
               (OUTPUT, "model output"), (READOUT, "readout layers"))


def coord_groups(sweep: WidthSweep) -> list[tuple[str, list[str]]]:
    """The panels of the coordinate-check figure: µP's layer roles first (the readout layers only
    where the model's output was not measured), then the other layers by type, in forward order."""
    groups = []
    for role, title in ROLE_PANELS:
        layers = sweep.of_role(role)
        if layers and not (role == READOUT and sweep.of_role(OUTPUT)):
            groups.append((title, layers))
    by_type: dict[str, list[str]] = {}
    for layer in sweep.of_role(OTHER):
        by_type.setdefault(sweep.types[layer], []).append(layer)
    groups += [(type_name, layers) for type_name, layers in by_type.items()]
    return groups[:MAX_PANELS]


def coord_figure(sweep: WidthSweep, metric: str, pick) -> go.Figure | None:
    """One panel per group of layers: ``metric`` against width on log-log axes, one line per step
    (the geometric mean over the group's layers and the seeds); each panel's title gives the slopes
    ``pick(layer, metric)`` of its layers (their range, mean ± spread over seeds)."""
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    table = sweep.table[(sweep.table["metric"] == metric) & (sweep.table["value"] > 0)]
    if table.empty:
        return None
    logs = np.log(table["value"].astype(float)).groupby([table["layer"], table["step"], table["width"]]).mean()
    groups = coord_groups(sweep)
    steps = sorted(int(s) for s in table["step"].unique())
    colors = sample_colorscale("Viridis", [i / max(len(steps) - 1, 1) for i in range(len(steps))])
    titles = []
    for name, layers in groups:
        slopes = [pick(layer, metric) for layer in layers]
        finite = sorted((s for s in slopes if math.isfinite(s.mean)), key=lambda s: s.mean)
        where = ("slope " + (finite[0].text() if len(finite) == 1 else f"{finite[0].mean:+.2f} … {finite[-1].mean:+.2f}")
                 if finite else "no slope")
        titles.append(f"<b>{_label(name)}</b> ({len(layers)})<br>{where}")
    cols = min(4, len(groups))
    rows = math.ceil(len(groups) / cols)
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.07,
                           vertical_spacing=0.5 / rows)
    for g, (name, layers) in enumerate(groups):
        row, col = divmod(g, cols)
        span = [v for layer in layers for v in logs.loc[layer].to_numpy() if np.isfinite(v)] if any(
            layer in logs.index.get_level_values(0) for layer in layers) else []
        if span:  # at least a decade: a flat line must look flat, not fill the panel with noise
            low, high = np.log10(np.exp(min(span))), np.log10(np.exp(max(span)))
            middle, half = (low + high) / 2, max((high - low) / 2 * 1.15, 0.5)
            figure.update_yaxes(range=[middle - half, middle + half], row=row + 1, col=col + 1)
        for i, step in enumerate(steps):
            points = [logs.get((layer, step, width)) for layer in layers for width in sweep.widths]
            values = np.array([np.nan if p is None else p for p in points], dtype=float).reshape(len(layers), -1)
            with np.errstate(all="ignore"):
                y = np.exp(np.nanmean(values, axis=0)) if np.isfinite(values).any() else None
            if y is None:
                continue
            figure.add_scatter(
                x=list(sweep.widths), y=_finite(y), mode="lines+markers", name=f"{step} updates" if step != 1 else "1 update", legendgroup=str(step),
                showlegend=g == 0, line={"color": colors[i], "width": 2}, marker={"size": 5},
                hovertemplate=f"{_label(name)}<br>step {step}<br>width %{{x}}<br>%{{y:.3e}}<extra></extra>",
                row=row + 1, col=col + 1)
    figure.update_layout(template="none", height=80 + 300 * rows, margin={"t": 60, "l": 60, "r": 20},
                         legend={"title": {"text": "after"}}, font={"size": 11})
    figure.update_annotations(font_size=12)
    figure.update_xaxes(type="log", tickvals=list(sweep.widths), ticktext=[str(w) for w in sweep.widths],
                        title_text="width")
    figure.update_yaxes(type="log", exponentformat="power")
    return figure


def _slopes_table_html(sweep: WidthSweep) -> str:
    def cell(mean, spread):
        return "" if not math.isfinite(mean) else f"{mean:+.2f} ± {spread:.2f}"

    rows = "".join(
        f"<tr><td>{_label(r.layer or '(model output)')}</td><td>{html_text(str(r.type))}</td><td>{r.role}</td>"
        f"<td>{r.verdict}</td><td>{cell(r.act_rms_slope, r.act_rms_spread)}</td>"
        f"<td>{cell(r.first_delta_rms_slope, r.first_delta_rms_spread)}</td>"
        f"<td>{cell(r.init_act_rms_slope, r.init_act_rms_spread)}</td>"
        f"<td>{cell(r.signal_rms_slope, r.signal_rms_spread)}</td><td>{cell(r.update_norm_slope, r.update_norm_spread)}</td></tr>"
        for r in sweep.layer_table().itertuples(index=False))
    return ('<table class="slopes"><tr><th>layer</th><th>type</th><th>role</th><th>verdict</th><th>act</th><th>Δ</th>'
            f"<th>init</th><th>signal</th><th>‖Δw‖</th></tr>{rows}</table>")


def render_coordcheck_html(report, title: str) -> str:
    """The coordinate check's page: the findings, the classic figure (activation size against
    width, one panel per layer group, one line per step), the change per update, the slopes."""
    sweep = report.sweep
    meta_bits = [f"widths {', '.join(map(str, sweep.widths))}", f"{len(sweep.seeds)} seeds",
                 f"{sweep.steps} steps of {html_text(sweep.optimizer)}", f"flat: |slope| < {FLAT_SLOPE:g}",
                 f"gradscope {__version__}"]
    sections = _sections([
        ("Activation size against width (RMS of the output entries, per layer group; one line per step)",
         coord_figure(sweep, ACT_RMS, sweep.final), "No activations were measured."),
        ("Change of the output per update against width (RMS of output after − before, same input)",
         coord_figure(sweep, DELTA_RMS, sweep.first), "No update changed an output."),
    ])
    table = ('<section><h2>Slopes against width, mean ± std over seeds</h2><p class="note">act: activation RMS after '
             "the last update; Δ: change of the output by the first update that moves it; init: activation RMS at "
             "step 0; signal: backpropagated gradient RMS; ‖Δw‖: update norm.</p>"
             f"{_slopes_table_html(sweep)}</section>")
    return _page(f"coordcheck {title}", meta_bits, "", sections[0], _findings_html(report) + "".join(sections[1:]) + table)


def write_coordcheck_html(report, path: str | os.PathLike, title: str) -> Path:
    return write_atomic(path, render_coordcheck_html(report, title))
