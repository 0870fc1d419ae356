"""The depth profile of the backpropagated signal and its trend, shared by the vanishing and
exploding rules.

The trend is measured, not read off the extremes: a robust (Theil–Sen) slope of log10 signal
against position in the forward order, times the number of steps between the ends, must agree with
the difference between the medians of the input-side and output-side quarters of the layers. A
single pooling, normalisation or embedding layer that changes the norm by a large factor moves
neither much; a geometric decay or growth spread over the depth moves both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from gradscope.rules.base import Records, log10

MIN_LAYERS = 4
"""Fewer layers than this in the profile make no depth trend."""

_MAX_PAIRS_POINTS = 1500
"""Theil–Sen over more layers than this uses evenly spaced ones (the slope barely changes)."""


@dataclass(frozen=True)
class SignalProfile:
    layers: list[str]
    """Leaf layers with a finite backpropagated signal, input side first (forward order)."""
    log_signal: np.ndarray
    """log10 of each layer's signal: its median over the recent logged steps."""
    steps: list[int]
    trend: float
    """Theil–Sen change of log10 signal from the input side to the output side."""
    quarters: float
    """Output-side quarter median minus input-side quarter median, in log10."""

    @property
    def rise(self) -> float:
        """Orders of magnitude the signal gains from the input side to the output side (positive:
        vanishing toward the input; negative: exploding toward the input), counted only where the
        trend and the quarter medians agree: the smaller of the two in magnitude, 0 if their signs
        differ."""
        if self.trend * self.quarters <= 0:
            return 0.0
        return float(np.sign(self.trend) * min(abs(self.trend), abs(self.quarters)))

    @property
    def quarter(self) -> int:
        return max(1, len(self.layers) // 4)

    @property
    def input_side(self) -> float:
        return float(10 ** np.median(self.log_signal[: self.quarter]))

    @property
    def output_side(self) -> float:
        return float(10 ** np.median(self.log_signal[-self.quarter:]))

    @property
    def per_layer_factor(self) -> float:
        return float(10 ** (-self.trend / max(1, len(self.layers) - 1)))


def theil_sen_change(y: np.ndarray) -> float:
    """Median pairwise slope of ``y`` against its index, times ``len(y) - 1``."""
    n = len(y)
    if n < 2:
        return 0.0
    x = np.arange(n, dtype=float)
    if n > _MAX_PAIRS_POINTS:
        keep = np.linspace(0, n - 1, _MAX_PAIRS_POINTS).round().astype(int)
        x, y = x[keep], y[keep]
    i, j = np.triu_indices(len(y), k=1)
    return float(np.median((y[j] - y[i]) / (x[j] - x[i])) * (n - 1))


def signal_profile(records: Records) -> SignalProfile | None:
    """The profile over the recent logged steps, or None when fewer than ``MIN_LAYERS`` leaf
    layers carry a finite signal."""
    wide = records.wide("out_grad_norm")
    steps = [s for s in records.recent_steps if s in wide.index]
    layers = [name for name in records.leaves if name in wide.columns]
    if not steps or not layers:
        return None
    values = wide.loc[steps, layers].to_numpy(dtype=float)
    finite = np.isfinite(values)
    logs = np.where(finite, log10(np.where(finite, values, 1.0)), np.nan)
    if not finite.any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # layers with no finite step give NaN
        per_layer = np.nanmedian(logs, axis=0)
    keep = np.isfinite(per_layer)
    kept = [name for name, k in zip(layers, keep) if k]
    y = per_layer[keep]
    if len(kept) < MIN_LAYERS:
        return None
    q = max(1, len(y) // 4)
    return SignalProfile(
        layers=kept, log_signal=y, steps=steps, trend=theil_sen_change(y),
        quarters=float(np.median(y[-q:]) - np.median(y[:q])),
    )
