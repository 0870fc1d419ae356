"""Per-layer summary of a history: one row per module or activation layer in forward order, with
the module's own parameters combined. What reports show next to the findings."""

from __future__ import annotations

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = [
    "layer", "type", "kind", "order", "out_grad_norm", "grad_norm", "dead_fraction", "saturation",
    "act_rms", "update_ratio", "grad_nonfinite",
]


def layer_summary(history: pd.DataFrame, layers: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """The statistics of ``step`` per layer (default: each metric at the last logged step that
    recorded it).

    ``grad_norm`` is √Σ of the squared gradient norms of the module's own parameters (not its
    children's), ``update_ratio`` is √Σ‖Δw‖² / √Σ‖w‖² over them, ``grad_nonfinite`` their sum.
    """
    modules = layers[layers["kind"] != "parameter"].sort_values("order")
    if history.empty:
        return modules.reindex(columns=SUMMARY_COLUMNS).reset_index(drop=True)
    if step is None:
        # each metric at the last step that recorded it (weights are recorded less often)
        last = history.groupby("metric")["step"].transform("max")
        at = history[history["step"] == last]
    else:
        at = history[history["step"] == step]
    values = at.pivot_table(index="layer", columns="metric", values="value", aggfunc="last", dropna=False)

    def column(metric: str) -> pd.Series:
        return values[metric] if metric in values.columns else pd.Series(dtype=float)

    owner = pd.Series({name: name.rpartition(".")[0] for name in layers.loc[layers["kind"] == "parameter", "layer"]})
    grad, weight, ratio, nonfinite = (
        column(m).reindex(owner.index) for m in ("grad_norm", "weight_norm", "update_ratio", "grad_nonfinite")
    )
    recorded = at.groupby("metric")["layer"].agg(set).to_dict()

    def measured_nan(values: pd.Series, metric: str) -> pd.Series:
        return values.isna() & values.index.isin(recorded.get(metric, set()))

    per_module = pd.DataFrame({
        "owner": owner, "grad_sq": grad ** 2, "delta_sq": (ratio * weight) ** 2,
        "weight_sq": weight ** 2, "nonfinite": nonfinite,
        # a parameter whose statistic was recorded as NaN makes its module's combined value NaN
        # (a sum that skipped it would show the bias's finite norm for a NaN weight gradient)
        "grad_nan": measured_nan(grad, "grad_norm"),
        "ratio_nan": measured_nan(ratio, "update_ratio") | measured_nan(weight, "weight_norm"),
    })
    grouped = per_module.groupby("owner")
    combined = pd.DataFrame({
        "grad_norm": np.sqrt(grouped["grad_sq"].sum(min_count=1)).mask(grouped["grad_nan"].any()),
        "update_ratio": (np.sqrt(grouped["delta_sq"].sum(min_count=1)) / np.sqrt(grouped["weight_sq"].sum(min_count=1)))
        .mask(grouped["ratio_nan"].any()),
        "grad_nonfinite": grouped["nonfinite"].sum(min_count=1),
    })
    frame = modules[["layer", "type", "kind", "order"]].copy()
    for metric in ("out_grad_norm", "dead_fraction", "saturation", "act_rms"):
        frame[metric] = frame["layer"].map(column(metric))
    for metric in ("grad_norm", "update_ratio", "grad_nonfinite"):
        frame[metric] = frame["layer"].map(combined[metric]) if not combined.empty else np.nan
    frame["order"] = np.arange(len(frame))
    frame = frame[SUMMARY_COLUMNS].reset_index(drop=True)
    # which cells were measured: a NaN there is a measured NaN, elsewhere "does not apply"
    measured = {m: frame["layer"].isin(recorded.get(m, set())).tolist()
                for m in ("out_grad_norm", "dead_fraction", "saturation", "act_rms")}
    for metric in ("grad_norm", "update_ratio", "grad_nonfinite"):
        owners = set(owner[owner.index.isin(recorded.get(metric, set()))])
        measured[metric] = frame["layer"].isin(owners).tolist()
    frame.attrs["measured"] = Measured(measured)
    return frame


class Measured(dict):
    """Per metric, which layers' cells were measured (a list of flags in row order). pandas
    deep-copies a frame's ``attrs`` on every operation, which took seconds per report on models of
    thousands of layers; this table is never changed after it is made, so copies share it."""

    def __deepcopy__(self, memo) -> "Measured":
        return self
