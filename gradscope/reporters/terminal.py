"""The terminal report: the verdict (gradscope.reporters.verdict), a depth-ordered layer table
with an inline log10 bar of the backpropagated signal, then the findings with their fixes. Rendered by rich, so colour follows the
terminal (none when piped, none with NO_COLOR). On a terminal the table fits its width; piped (a
CI log, ``| grep``) it takes the width it needs, one layer per line, names never wrapped. Names
and messages are never read as markup, and their control characters are shown as escapes."""

from __future__ import annotations

import math

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from gradscope.layers import leaf_layers, parameter_owner
from gradscope.report import Report
from gradscope.reporters.escape import show_controls
from gradscope.reporters.verdict import verdict_text
from gradscope.rules import SEVERITIES
from gradscope.sweep import FLAT_SLOPE
from gradscope.verdict import AT_RISK, FAILS, TRAINS

STYLES = {"error": "bold red", "warning": "yellow", "info": "cyan"}
VERDICT_STYLES = {TRAINS: "bold green", AT_RISK: "bold yellow", FAILS: "bold red"}
BAR_WIDTH = 20
_EIGHTHS = " ▏▎▍▌▋▊▉"


def log_bar(value: float, low: float, high: float, width: int = BAR_WIDTH) -> str:
    """A bar whose length is log10(value) placed between log10 ``low`` and ``high``."""
    if not (value > 0 and math.isfinite(value)) or not high > low:
        return ""
    span = math.log10(high) - math.log10(low)
    fraction = 1.0 if span == 0 else (math.log10(value) - math.log10(low)) / span
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, part = divmod(max(eighths, 1), 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def number(value: float, percent: bool = False, measured: bool = False) -> str:
    """A table cell: empty for a statistic that does not apply (NaN or None), "nan" for a
    ``measured`` NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan" if measured else ""
    if percent:
        return f"{100 * value:.0f}%"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2e}"


class TerminalReport:
    """``console.print(TerminalReport(report))`` prints the verdict, the layer table and the findings."""

    def __init__(self, report: Report, title: str | None = None, all_layers: bool = False,
                 plain: bool = False) -> None:
        self.report = report
        self.plain = plain
        self.title = title
        self.all_layers = all_layers

    def layer_table(self, width: int = 100, title: bool = True, wrap: bool = True) -> Table:
        """The layer table for ``width`` columns; without ``wrap``, names and types are never
        wrapped (one layer per line, for logs that are grepped) and the table may be wider."""
        layers = self.report.layers
        names = list(layers["layer"]) if self.all_layers else leaf_layers(list(layers["layer"]))
        rows = layers.set_index("layer").loc[names]
        signal = rows["out_grad_norm"].astype(float)
        positive = signal[(signal > 0) & signal.map(math.isfinite)]
        low, high = (float(positive.min()), float(positive.max())) if len(positive) else (0.0, 0.0)
        flagged = {}
        for f in sorted(self.report.findings, key=lambda f: SEVERITIES.index(f.severity)):
            for layer in f.layers:
                flagged[parameter_owner(layer) if layer.endswith((".weight", ".bias")) else layer] = f.severity
        bar_width = max(6, min(BAR_WIDTH, width - 66))
        table = Table(title=Text(show_controls(self.title)) if title and self.title else None, title_justify="left", show_edge=False, pad_edge=False,
                      caption=f"signal: backpropagated gradient norm at the layer's output; bar: its log10 {_range(low, high)}",
                      caption_justify="left")
        table.add_column("layer", overflow="fold", ratio=1, no_wrap=not wrap)
        table.add_column("type", overflow="fold", max_width=18 if wrap else None, no_wrap=not wrap)
        table.add_column("signal", justify="right", no_wrap=True, min_width=8)
        table.add_column("log10", no_wrap=True, min_width=bar_width)
        table.add_column("weight grad", justify="right", no_wrap=True, min_width=8)
        table.add_column("dead", justify="right", no_wrap=True)
        table.add_column("sat", justify="right", no_wrap=True)
        nans = self.report.measured_nans()
        for name, row in rows.iterrows():
            style = STYLES.get(flagged.get(name, ""), "")

            def cell(metric: str, percent: bool = False) -> str:
                return number(row[metric], percent, (name, metric) in nans)

            table.add_row(
                escape(show_controls(name or "(model)")), escape(show_controls(str(row["type"]))), cell("out_grad_norm"),
                Text(log_bar(row["out_grad_norm"], low, high, bar_width), style=style or "green"),
                cell("grad_norm"), cell("dead_fraction", True), cell("saturation", True), style=style,
            )
        return table

    def verdict_lines(self) -> list[RenderableType]:
        """The headline in the verdict's colour, then its reasons, numbers and recipe notes,
        indented (wrapped lines too)."""
        text = verdict_text(self.report)
        if text is None:
            return []
        headline = Text(text.verdict, style=VERDICT_STYLES.get(text.label, "bold"))
        headline.append(" " + show_controls(text.under), style="bold")
        return [headline, *(Padding(Text(show_controls(line)), (0, 0, 0, 2)) for line in text.details), Text("")]

    def finding_lines(self) -> list[tuple[Text, bool]]:
        """The findings as (line, is_code); code lines are printed unwrapped, to copy and paste."""
        complete = self.report.coverage is not None and self.report.coverage.complete
        return finding_lines(self.report.findings, self.report.no_findings_text, complete, self.plain)

    def findings(self) -> Group:
        return Group(*(line for line, _ in self.finding_lines()))

    def print(self, console: Console, table: bool = True) -> None:
        """Print the verdict, the table (unless not ``table``) and the findings, with code lines
        never wrapped or cropped."""
        for line in self.verdict_lines():
            console.print(line)
        if self.title:
            console.print(Text(show_controls(self.title), style="bold"), soft_wrap=True)
        if table:
            _print_table(console, self.layer_table(console.width, title=False, wrap=console.is_terminal))
        for line, code in self.finding_lines():
            console.print(line, soft_wrap=code)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Group(*self.verdict_lines())
        yield self.layer_table(options.max_width)
        yield self.findings()


def finding_lines(findings: list, no_findings_text: str, healthy: bool, plain: bool = False
                  ) -> list[tuple[Text, bool]]:
    """Findings as (line, is_code), then the counts; ``no_findings_text`` (green when ``healthy``)
    where there is none."""
    lines: list[tuple[Text, bool]] = []
    if not findings:
        lines.append((Text(no_findings_text, style="green" if healthy else ""), False))
    for f in findings:
        lines += [
            (Text(""), False),
            (Text(f"{f.severity.upper()} {f.code} {f.rule}", style=STYLES[f.severity]), False),
            (Text(show_controls(f.message)), False),
            (Text("Fix:", style="bold"), False),
        ]
        for line in f.fix.splitlines():
            code = line.startswith("    ")
            lines.append((Text(show_controls(line), style="dim" if code and not plain else ""), code))
    counts = {s: sum(f.severity == s for f in findings) for s in reversed(SEVERITIES)}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items())
    lines += [(Text(""), False), (Text(summary), False)]
    return lines


class CoordTerminalReport:
    """``CoordTerminalReport(report).print(console)``: the coordinate check's per-layer table (the
    verdict and the log-log slopes against width, mean ± spread over seeds), then the findings."""

    def __init__(self, report, title: str | None = None, plain: bool = False) -> None:
        self.report = report
        self.title = title
        self.plain = plain

    def table(self, wrap: bool = True) -> Table:
        sweep = self.report.sweep
        options = self.report.options
        table = Table(show_edge=False, pad_edge=False, caption_justify="left", caption=(
            f"log-log slope against width (widths {', '.join(map(str, sweep.widths))}; mean ± std over "
            f"{len(sweep.seeds)} seeds; {sweep.steps} steps of {options.get('optimizer', sweep.optimizer)}); "
            f"flat: |slope| < {FLAT_SLOPE:g}. act: activation RMS after the last update; Δ: change of the "
            "output by the first update that moves it; init: activation RMS at step 0."))
        table.add_column("layer", overflow="fold", ratio=1, no_wrap=not wrap)
        table.add_column("type", overflow="fold", max_width=18 if wrap else None, no_wrap=not wrap)
        table.add_column("role", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        for heading in ("act", "Δ", "init", "signal", "‖Δw‖"):
            table.add_column(heading, justify="right", no_wrap=True)
        flagged = {layer: f.severity for f in sorted(self.report.findings, key=lambda f: SEVERITIES.index(f.severity))
                   for layer in f.layers}
        for row in sweep.layer_table().itertuples(index=False):
            cells = [_slope(row.act_rms_slope, row.act_rms_spread), _slope(row.first_delta_rms_slope, row.first_delta_rms_spread),
                     _slope(row.init_act_rms_slope, row.init_act_rms_spread),
                     _slope(row.signal_rms_slope, row.signal_rms_spread), _slope(row.update_norm_slope, row.update_norm_spread)]
            table.add_row(escape(show_controls(row.layer or "(model output)")), escape(show_controls(row.type)), row.role,
                          row.verdict, *cells, style=STYLES.get(flagged.get(row.layer, ""), ""))
        return table

    def print(self, console: Console) -> None:
        if self.title:
            console.print(Text(show_controls(self.title), style="bold"), soft_wrap=True)
        _print_table(console, self.table(wrap=console.is_terminal))
        for line, code in finding_lines(self.report.findings, self.report.no_findings_text, True, self.plain):
            console.print(line, soft_wrap=code)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table()
        yield Group(*(line for line, _ in finding_lines(self.report.findings, self.report.no_findings_text, True,
                                                        self.plain)))


def _slope(mean: float, spread: float) -> str:
    if not math.isfinite(mean):
        return ""
    return f"{mean:+.2f}±{spread:.2f}" if math.isfinite(spread) else f"{mean:+.2f}"


def _print_table(console: Console, table: Table) -> None:
    """On a terminal, ``table`` at the console's width; elsewhere at the width it needs, so that a
    row stays one line (a terminal wraps long lines itself, a log file does not)."""
    if console.is_terminal:
        console.print(table)
        return
    needed = Measurement.get(console, console.options.update_width(2**16), table).maximum
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(table)
    finally:
        console.width = width


def _range(low: float, high: float) -> str:
    if not high > 0:
        return "(no finite signal was recorded)"
    return f"from {low:.0e} to {high:.0e}"
