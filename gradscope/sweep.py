"""The records of a width sweep (``gradscope.coordcheck``), which the coordinate-check rules read:
per width, seed, step and layer, the size of the layer's output, of its change across an update,
of the backpropagated signal and of the update; with the log-log slope of each against width.

A slope is fitted by least squares per seed (``log value = slope * log width + c``) and reported
as the mean over seeds with their standard deviation (the spread), so that a slope carries an
error bar. A layer is flat in width when ``|slope| < FLAT_SLOPE``, else it grows or shrinks.

>>> import pandas as pd
>>> rows = [(w, s, 0, "fc", ACT_RMS, w ** 0.5 * (1 + s / 10)) for w in (64, 128, 256) for s in (0, 1)]
>>> sweep = WidthSweep(pd.DataFrame(rows, columns=COLUMNS),
...                    pd.DataFrame({"layer": ["fc"], "type": ["Linear"], "role": [HIDDEN], "order": [0]}),
...                    widths=(64, 128, 256), seeds=(0, 1), steps=0, optimizer="Adam lr 0.01", adaptive=True)
>>> slope = sweep.slope("fc", ACT_RMS, 0)
>>> round(slope.mean, 3), round(slope.spread, 3), slope.trend
(0.5, 0.0, 'grows')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

COLUMNS = ["width", "seed", "step", "layer", "metric", "value"]

ACT_RMS = "act_rms"
"""RMS of the layer's output entries, in the forward of a step (step ``t``: after ``t`` updates)."""
DELTA_RMS = "delta_rms"
"""RMS of (output after the update of step ``t`` − output before it), on the same input: the
change of the layer's output that one update causes (µP's Δx)."""
SIGNAL_RMS = "signal_rms"
"""RMS of the loss gradient's entries with respect to the layer's output: the backpropagated signal."""
UPDATE_NORM = "update_norm"
"""‖Δw‖: the L2 norm of the change of the layer's own parameters in the update of step ``t``."""
METRICS = {
    ACT_RMS: "activation RMS",
    DELTA_RMS: "output change per update (RMS)",
    SIGNAL_RMS: "backpropagated signal (RMS)",
    UPDATE_NORM: "update size ||Δw||",
}

INPUT, HIDDEN, READOUT = "input", "hidden", "readout"
ATTENTION, OUTPUT, OTHER = "attention logits", "model output", "other"
"""Layer roles, as µP names them: weights with only the output dimension growing with width
(input layers, embeddings), both (hidden), only the input dimension (readout); the attention
logits of ``F.scaled_dot_product_attention`` calls; the model's output (layer ``""``), and
everything else (activations, norms, weights that do not change with width)."""

FLAT_SLOPE = 0.25
"""Slopes of log size against log width below this in magnitude count as flat. Measured on the
known pairs (docs/coordcheck.md): each finding on a wrong parametrisation rests on a slope of
0.34 to 1.35 in magnitude, while all the rules judge in the µP models is within -0.20 to +0.04
(seed spreads up to 0.15)."""

FLAT, GROWS, SHRINKS, UNKNOWN = "flat", "grows", "shrinks", "n/a"
SEE_OUTPUT = "see output"
"""The verdict of a readout layer when the model's output is measured: that is judged instead."""

TINY = 1e-30


@dataclass(frozen=True)
class Slope:
    """The log-log slope of a quantity against width: mean over seeds, their standard deviation,
    the number of seeds that had a value at every width."""

    mean: float
    spread: float
    seeds: int

    @property
    def trend(self) -> str:
        if not math.isfinite(self.mean):
            return UNKNOWN
        if self.mean >= FLAT_SLOPE:
            return GROWS
        return SHRINKS if self.mean <= -FLAT_SLOPE else FLAT

    def text(self) -> str:
        """``"+1.02 ± 0.03"``."""
        if not math.isfinite(self.mean):
            return "n/a"
        return f"{self.mean:+.2f} ± {self.spread:.2f}"


def fit_slopes(widths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least-squares slopes of ``log values`` against ``log widths`` along the last axis; NaN where
    a value is not positive and finite (a zero-initialised layer's output at step 0)."""
    x = np.log(np.asarray(widths, dtype=float))
    x = x - x.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where((values > 0) & np.isfinite(values), np.log(np.maximum(values, TINY)), np.nan)
    return (y * x).sum(axis=-1) / (x * x).sum()


@dataclass(frozen=True)
class WidthSweep:
    """The long table of a width sweep (columns ``COLUMNS``) and its layer table (layer, type,
    role, order), with what was run."""

    table: pd.DataFrame
    layers: pd.DataFrame
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int
    """Updates per run: activations are measured at steps 0..steps, changes at 0..steps-1."""
    optimizer: str
    """The recipe of the runs, as text (``"Adam lr 0.01"``)."""
    adaptive: bool
    """Whether the optimizer divides by a running gradient scale (Adam-like): then µP scales the
    hidden learning rate as 1/width."""

    @cached_property
    def slopes(self) -> pd.DataFrame:
        """One row per layer, metric and step: slope, spread, seeds."""
        if self.table.empty:
            return pd.DataFrame(columns=["layer", "metric", "step", "slope", "spread", "seeds"])
        wide = self.table.pivot_table(index=["layer", "metric", "step", "seed"], columns="width",
                                      values="value", aggfunc="last")
        wide = wide.reindex(columns=list(self.widths))
        per_seed = pd.Series(fit_slopes(np.array(self.widths), wide.to_numpy(dtype=float)), index=wide.index)
        grouped = per_seed.groupby(level=["layer", "metric", "step"])
        frame = pd.DataFrame({"slope": grouped.mean(), "spread": grouped.std(ddof=0),
                              "seeds": grouped.count()}).reset_index()
        return frame

    @cached_property
    def _slope_index(self) -> dict[tuple[str, str, int], Slope]:
        return {(r.layer, r.metric, int(r.step)): Slope(float(r.slope), float(r.spread), int(r.seeds))
                for r in self.slopes.itertuples(index=False)}

    def slope(self, layer: str, metric: str, step: int) -> Slope:
        return self._slope_index.get((layer, metric, step), Slope(float("nan"), float("nan"), 0))

    def last_step(self, metric: str) -> int:
        """The last step at which ``metric`` is measured: ``steps`` for activations (a last forward
        follows the last update), ``steps - 1`` for the signal and what an update does."""
        return self.steps if metric == ACT_RMS else self.steps - 1

    def first(self, layer: str, metric: str) -> Slope:
        """The slope at the first step where it is defined: what an update does is judged on the
        first update that changes the layer (a zero-initialised readout passes no gradient to the
        layers below it in the first step), before the optimisation itself bends the curves."""
        for step in range(self.steps + 1):
            slope = self.slope(layer, metric, step)
            if math.isfinite(slope.mean):
                return slope
        return self.slope(layer, metric, 0)

    def final(self, layer: str, metric: str) -> Slope:
        """The slope at the last step ``metric`` is measured."""
        return self.slope(layer, metric, self.last_step(metric))

    def of_role(self, role: str) -> list[str]:
        """The layers of ``role`` in forward order."""
        return list(self.layers.loc[self.layers["role"] == role].sort_values("order")["layer"])

    @cached_property
    def roles(self) -> dict[str, str]:
        return dict(zip(self.layers["layer"], self.layers["role"]))

    @cached_property
    def types(self) -> dict[str, str]:
        return dict(zip(self.layers["layer"], self.layers["type"]))

    def mean(self, layer: str, metric: str, step: int) -> dict[int, float]:
        """Width → the geometric mean over seeds of ``metric`` (zeros left out)."""
        rows = self.table[(self.table["layer"] == layer) & (self.table["metric"] == metric)
                          & (self.table["step"] == step) & (self.table["value"] > 0)]
        logs = np.log(rows["value"].astype(float)).groupby(rows["width"]).mean()
        return {int(w): float(np.exp(v)) for w, v in logs.items()}

    def layer_table(self) -> pd.DataFrame:
        """One row per layer in forward order: its role, its verdict (the trend of its activation
        size after the last update) and the final slope ± spread of every metric, plus the
        activation's slope at initialisation (step 0)."""
        rows = []
        for layer in self.layers.sort_values("order")["layer"]:
            act = self.final(layer, ACT_RMS)
            verdict = act.trend
            if self.roles[layer] == READOUT and self.of_role(OUTPUT):
                verdict = SEE_OUTPUT  # a multiplier applied after it in the forward is part of the readout
            row = {"layer": layer, "type": self.types[layer], "role": self.roles[layer], "verdict": verdict}
            for metric in METRICS:
                slope = self.final(layer, metric)
                row[f"{metric}_slope"], row[f"{metric}_spread"] = slope.mean, slope.spread
            init, first = self.slope(layer, ACT_RMS, 0), self.first(layer, DELTA_RMS)
            row["init_act_rms_slope"], row["init_act_rms_spread"] = init.mean, init.spread
            row["first_delta_rms_slope"], row["first_delta_rms_spread"] = first.mean, first.spread
            rows.append(row)
        return pd.DataFrame(rows)

    def off(self, layers: list[str], metric: str, at=None) -> dict[str, Slope]:
        """Those of ``layers`` whose slope of ``metric`` is not flat; ``at(layer, metric)`` picks the
        slope (default: :meth:`final`)."""
        found = {}
        for layer in layers:
            slope = (at or self.final)(layer, metric)
            if slope.trend in (GROWS, SHRINKS):
                found[layer] = slope
        return found


def slope_list(found: dict[str, Slope], limit: int = 4) -> str:
    """``"fc: +1.02 ± 0.03; proj: +0.98 ± 0.05"`` and how many more; the slope alone for the
    model's output."""
    if list(found) == [""]:
        return found[""].text()
    items = [f"{layer or '(model output)'}: {slope.text()}" for layer, slope in list(found.items())[:limit]]
    more = len(found) - limit
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")
