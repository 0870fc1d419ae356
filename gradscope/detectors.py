"""Spike detectors: pure device functions over a step's pulse (gradscope/pulse.py), run on every
step where the tensors live, so that no step waits for the host.

Each detector sees one vector per step, ``y = [loss, log total gradient norm, log gradient norm of
each parameter]``, and returns the step's alarm bits (a float tensor on the device) and its
z-scores. A detector's state lives in small device tensors; nothing here reads a value back.

- ``zscore`` (default): an exponential moving mean and variance of each series, a spike when the
  loss or the log gradient norm is more than ``threshold`` standard deviations above its mean.
  Spike steps and non-finite values are kept out of the mean, so a spike does not widen its own
  band. The default threshold and window were chosen on measured runs (docs/instability.md).
- ``ratio``: llm-foundry's kill-loss-spike rule: the loss above ``threshold`` (2) times the mean of
  the last ``window`` (100) losses, for ``patience`` (4) steps in a row.
- ``rtol``: Lightning's ``SpikeDetection``: the loss not lower than the last accepted loss and at
  least ``threshold`` (2) times the running mean of the last ``window`` (10) accepted losses away
  from it.

Every detector also raises the non-finite bits: a loss or a total gradient norm that is NaN or Inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gradscope.errors import UsageError, UsageTypeError

LOSS_SPIKE, GRAD_SPIKE, LOSS_NONFINITE, GRAD_NONFINITE = 1, 2, 4, 8
"""Alarm bits of a step (their sum is stored in the pulse ring)."""
NONFINITE = LOSS_NONFINITE | GRAD_NONFINITE
ALARM_NAMES = {LOSS_SPIKE: "loss spike", GRAD_SPIKE: "gradient spike",
               LOSS_NONFINITE: "non-finite loss", GRAD_NONFINITE: "non-finite gradient"}

_DEFAULTS = {
    "zscore": {"threshold": 8.0, "window": 100, "warmup": 50, "patience": 1},
    "ratio": {"threshold": 2.0, "window": 100, "warmup": 100, "patience": 4},
    "rtol": {"threshold": 2.0, "window": 10, "warmup": 1, "patience": 1},
}
KINDS = tuple(_DEFAULTS)


@dataclass(frozen=True)
class Detector:
    """How spikes are detected: ``kind`` (``"zscore"``, ``"ratio"`` or ``"rtol"``) and its
    parameters; those left as None take the kind's defaults.

    ``threshold``: standard deviations (zscore) or the factor over the running mean (ratio, rtol);
    ``window``: the steps the running statistics cover (zscore: the moving average's span);
    ``warmup``: steps seen before the first spike can be raised; ``patience``: steps in a row.

    >>> Detector("zscore").threshold
    8.0
    >>> Detector("ratio", threshold=3).window
    100
    """

    kind: str = "zscore"
    threshold: float | None = None
    window: int | None = None
    warmup: int | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _DEFAULTS:
            raise UsageError(
                f"Expected the detector kind to be one of {', '.join(KINDS)} but got {self.kind!r}; "
                "pass detect='zscore' (the default), or detect=None to turn detection off."
            )
        for name, value in _DEFAULTS[self.kind].items():
            given = getattr(self, name)
            if given is None:
                object.__setattr__(self, name, value)
                continue
            if isinstance(given, bool) or not isinstance(given, (int, float)) or not math.isfinite(given) \
                    or given <= 0 or (name != "threshold" and int(given) != given):
                raise UsageError(
                    f"Expected the detector's `{name}` to be a positive "
                    f"{'number' if name == 'threshold' else 'int'} but got {given!r}; "
                    f"the {self.kind} default is {value}."
                )
            object.__setattr__(self, name, float(given) if name == "threshold" else int(given))

    def state(self, size: int, device: torch.device, xp=None) -> "DetectorState":
        """Running statistics for ``size`` series on ``device``, in the array namespace ``xp``
        (default: numpy on the CPU, torch elsewhere)."""
        return DetectorState(self, size, xp or (np if device.type == "cpu" else torch), device)


def as_detector(detect: object) -> Detector | None:
    """``detect=`` of the monitor as a Detector: a kind name, a Detector, or None/False (off)."""
    if detect is None or detect is False:
        return None
    if isinstance(detect, Detector):
        return detect
    if isinstance(detect, str):
        return Detector(detect)
    raise UsageTypeError(
        f"Expected `detect` to be one of {', '.join(repr(k) for k in KINDS)}, a gradscope.Detector "
        f"or None but got {type(detect).__name__}; pass e.g. detect='zscore'."
    )


class DetectorState:
    """A detector's running statistics for ``size`` series (loss, total gradient norm, each
    parameter). :meth:`update` takes one step.

    The arithmetic is written once for an array namespace ``xp``: torch on a GPU (the tensors
    stay there, nothing is read back), numpy on the CPU, where the device is the host and numpy's
    cost per call on a few numbers is a fraction of torch's (tests check both give the same
    alarms)."""

    def __init__(self, detector: Detector, size: int, xp, device: torch.device | None = None) -> None:
        self.detector = detector
        self.xp = xp
        self._new = (lambda shape, value: torch.full(shape, value, device=device)) if xp is torch \
            else (lambda shape, value: np.full(shape, value))
        self.mean = self._new((size,), 0.0)
        self.var = self._new((size,), 0.0)
        self.streak = self._new((1,), 0.0)
        """Steps in a row the ratio rule held."""
        self.losses = self._new((detector.window if detector.kind != "zscore" else 1,), float("nan"))
        """The last accepted losses (ratio, rtol): a ring, NaN where not yet filled."""
        self.last_loss = self._new((1,), float("inf"))
        self.seen = 0
        """Steps taken so far (a host count: warmup and the moving average's start)."""

    def update(self, y, has_loss: bool = True):
        """(alarm bits as a 1-element float array, z-scores of all series) for this step's ``y``;
        the state moves on. Without ``has_loss`` (no loss arrived this step) ``y[0]`` is NaN and
        raises nothing."""
        xp, d = self.xp, self.detector
        if xp is np and d.kind == "zscore":
            return self._zscore_on_host(y, has_loss)
        finite = xp.isfinite(y)
        alarm = (~finite[1:2]) * float(GRAD_NONFINITE)
        if has_loss:
            alarm = alarm + (~finite[0:1]) * float(LOSS_NONFINITE)
        if d.kind == "zscore":
            z, spikes = self._zscore(y, finite)
        else:
            z = xp.zeros_like(y)
            spikes = self._loss_rule(y[0:1], d.kind == "ratio") * float(LOSS_SPIKE)
        self.seen += 1
        return alarm + spikes, z

    def _zscore(self, y, finite):
        xp, d = self.xp, self.detector
        deviation = y - self.mean
        # zeros_like, not 0 * deviation: 0 * NaN is NaN, and one non-finite step would poison the mean
        z = xp.where(finite, deviation / xp.sqrt(self.var + 1e-24), xp.zeros_like(deviation))
        warm = self.seen >= d.warmup
        spiking = (z[0:2] > d.threshold) & finite[0:2] & warm
        spikes = spiking[0:1] * float(LOSS_SPIKE) + spiking[1:2] * float(GRAD_SPIKE)
        # the first steps average with equal weights, then the moving average takes over
        alpha = max(2.0 / (d.window + 1), 1.0 / (self.seen + 1))
        accept = finite & ~(spiking[0:1] | spiking[1:2])
        moved = xp.where(accept, deviation, xp.zeros_like(deviation))
        self.mean[:] = self.mean + alpha * moved
        # an exponentially weighted variance (West's update), untouched where not accepted
        self.var[:] = xp.where(accept, (1 - alpha) * (self.var + alpha * moved * moved), self.var)
        return (z if warm else 0.0 * z), spikes

    def _zscore_on_host(self, y: np.ndarray, has_loss: bool):
        """:meth:`update` of the z-score detector in numpy, the same arithmetic as :meth:`_zscore`
        in a third of the calls: the two alarm series decided in Python, the running statistics
        moved only when a step is accepted (on the CPU each call costs more than its numbers)."""
        d = self.detector
        deviation = y - self.mean
        finite = np.isfinite(y)
        everywhere = bool(finite.all())
        z = deviation / np.sqrt(self.var + 1e-24)
        if not everywhere:
            z = np.where(finite, z, 0.0)
        warm = self.seen >= d.warmup
        loss_spike = warm and bool(finite[0]) and z[0] > d.threshold
        grad_spike = warm and bool(finite[1]) and z[1] > d.threshold
        alarm = float(GRAD_NONFINITE) * (not finite[1]) + float(LOSS_NONFINITE) * (has_loss and not finite[0]) \
            + float(LOSS_SPIKE) * loss_spike + float(GRAD_SPIKE) * grad_spike
        if not (loss_spike or grad_spike):
            alpha = max(2.0 / (d.window + 1), 1.0 / (self.seen + 1))
            moved = deviation if everywhere else np.where(finite, deviation, 0.0)
            self.mean += alpha * moved
            updated = (1 - alpha) * (self.var + alpha * moved * moved)
            self.var[:] = updated if everywhere else np.where(finite, updated, self.var)
        self.seen += 1
        return np.array([alarm]), (z if warm else 0.0 * z)

    def _loss_rule(self, loss, ratio: bool):
        """ratio (llm-foundry) or rtol (Lightning) on the loss (a 1-element array): 1.0 on a
        spike, else 0.0."""
        xp, d = self.xp, self.detector
        filled = ~xp.isnan(self.losses)
        count = filled.sum()
        # an empty window averages to 0 (count + 1 avoids a division by zero without a branch)
        mean = xp.where(filled, self.losses, 0.0 * self.losses).sum() / (count + (count == 0))
        finite = xp.isfinite(loss)
        warm = self.seen >= d.warmup
        if ratio:
            held = (loss > d.threshold * mean) & finite
            self.streak[:] = xp.where(held, self.streak + 1, 0.0 * self.streak)
            spike = (self.streak >= d.patience) & warm
            accept = finite
        else:
            worse = loss >= self.last_loss
            spike = finite & worse & (abs(loss - mean) >= d.threshold * abs(mean)) & warm
            accept = finite & ~spike
        slot = self.seen % self.losses.shape[0]
        self.losses[slot:slot + 1] = xp.where(accept, loss, self.losses[slot:slot + 1])
        self.last_loss[:] = xp.where(accept, loss, self.last_loss)
        return spike * 1.0


def alarm_names(bits: int) -> list[str]:
    """The names of the alarm bits set in ``bits`` (``["loss spike", "non-finite gradient"]``)."""
    return [name for bit, name in ALARM_NAMES.items() if bits & bit]
