"""The depth profile of the backpropagated signal and its trend, shared by the vanishing and
exploding rules.

The trend is measured, not read off the extremes. Four estimates of the change of log10 signal
from the input side to the output side must agree in sign, and the smallest in magnitude counts:
a robust (Theil–Sen) slope against position in the forward order times the number of steps, and
the difference between the medians of the output-side and input-side quarters of the layers, each
on the profile as measured and on the profile with the steps made by normalisation, pooling and
embedding layers taken out. A geometric decay spread over the depth moves all four; a large jump
at one pooling layer moves the adjusted ones not at all; a BatchNorm that undoes what its
convolution did leaves the measured profile flat.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from gradscope.layers import is_pass_through_type
from gradscope.records import Records
from gradscope.rules.base import TINY, log10

MIN_LAYERS = 4
"""Fewer layers than this in the profile (pass-through layers such as Dropout not counted) make no
depth trend."""

_MAX_PAIRS_POINTS = 1500
"""Theil–Sen over more layers than this uses evenly spaced ones (the slope barely changes)."""


@dataclass(frozen=True)
class SignalProfile:
    layers: list[str]
    """Leaf layers with a finite, non-zero backpropagated signal, input side first."""
    log_signal: np.ndarray
    """log10 of each layer's signal: its median over the recent logged steps."""
    steps: list[int]
    trend: float
    """Theil–Sen change of log10 signal from the input side to the output side."""
    quarters: float
    """Output-side minus input-side quarter median, in log10, scaled to the whole depth."""
    adjusted_trend: float
    adjusted_quarters: float
    """The same two with the steps at normalisation, pooling and embedding layers removed."""
    zero_input_side: tuple[str, ...] = ()
    """Leaf layers before the profile's first one (nearer the input) whose signal is exactly 0 on
    the recent steps: left out of the trend (a log of 0), but where a decay ends when it
    underflows."""

    @property
    def rise(self) -> float:
        """Orders of magnitude the signal gains from the input side to the output side (positive:
        vanishing toward the input; negative: exploding toward the input): the smallest in
        magnitude of the four estimates, 0 if their signs differ."""
        return _agreed(self.trend, self.quarters, self.adjusted_trend, self.adjusted_quarters)

    @property
    def measured_rise(self) -> float:
        """``rise`` from the two estimates on the profile as measured, normalisation steps
        included: 0 if their signs differ."""
        return _agreed(self.trend, self.quarters)

    @property
    def largest_step(self) -> float:
        """The largest change of log10 signal between two neighbouring layers, in the direction
        of ``measured_rise`` (orders): how much of the trend one layer makes."""
        steps = np.diff(self.log_signal) * np.sign(self.measured_rise)
        return float(steps.max()) if len(steps) else 0.0

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

    def change_across(self, layers: list[str]) -> float | None:
        """Theil–Sen change of log10 signal across ``layers`` alone (those in the profile, input
        side first): whether the signal falls layer after layer among them, however it steps
        elsewhere. None when fewer than 2 of them are in the profile."""
        index = {name: i for i, name in enumerate(self.layers)}
        at = sorted(index[name] for name in layers if name in index)
        return theil_sen_change(self.log_signal[at]) if len(at) >= 2 else None


def _agreed(*estimates: float) -> float:
    """The smallest in magnitude of ``estimates`` when all share a sign, else 0."""
    values = np.array(estimates)
    if not ((values > 0).all() or (values < 0).all()):
        return 0.0
    return float(np.sign(values[0]) * np.abs(values).min())


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
    wide = records.wide("out_grad_norm", recent=True)
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
    keep = np.isfinite(per_layer) & (per_layer > np.log10(TINY))  # exact zeros: blocked, not a trend
    kept = [name for name, k in zip(layers, keep) if k]
    zero = (values == 0).all(axis=0)
    first = layers.index(kept[0]) if kept else 0
    zero_input_side = tuple(name for name, z in zip(layers[:first], zero[:first]) if z)
    y = per_layer[keep]
    if sum(not is_pass_through_type(records.types.get(name, "")) for name in kept) < MIN_LAYERS:
        return None  # dropout and identity layers repeat their neighbour's signal: they add no depth
    steps_taken = np.diff(y)
    exempt = np.array([_legitimate_jump(records.types.get(name, "")) for name in kept[1:]])
    adjusted = np.concatenate([[y[0]], y[0] + np.cumsum(np.where(exempt, 0.0, steps_taken))])
    return SignalProfile(
        layers=kept, log_signal=y, steps=steps, trend=theil_sen_change(y), quarters=_quarters(y),
        adjusted_trend=theil_sen_change(adjusted), adjusted_quarters=_quarters(adjusted),
        zero_input_side=zero_input_side,
    )


def _quarters(y: np.ndarray) -> float:
    """Output-side minus input-side quarter median, scaled from the distance between the
    quarters' centres (n - q layers) to the whole depth (n - 1), so that both estimates give the
    total change of a steady decay."""
    n, q = len(y), max(1, len(y) // 4)
    return float((np.median(y[-q:]) - np.median(y[:q])) * (n - 1) / (n - q))


def _legitimate_jump(type_name: str) -> bool:
    """Layers whose backward may rescale the signal by a large factor by design (the step between
    the layer before and this one is theirs). PseudoNorm rescales on purpose and is not exempt."""
    if type_name == "PseudoNorm":
        return False
    return any(part in type_name for part in ("Norm", "Pool", "Embedding"))
