"""Spike detectors: pure device functions over a step's pulse (gradscope/pulse.py), run on every
step where the tensors live, so that no step waits for the host.

Each detector sees one vector per step, ``y = [loss, log total gradient norm, log gradient norm of
each parameter]``, and returns the step's alarm bits (a float tensor on the device) and its
z-scores. A detector's state lives in small device tensors; nothing here reads a value back.

- ``zscore`` (default): an exponential moving mean and variance of each series, a spike when the
  loss or the log gradient norm is more than ``threshold`` standard deviations above its mean (a
  loss spike also by :data:`SPIKE_FLOOR` of the fall the mean has made, so a converged loss's
  heavy-tailed noise is not a spike).
  Spike steps and non-finite values are kept out of the mean, so a spike does not widen its own
  band. The default threshold and window were chosen on measured runs (docs/instability.md).
- ``ratio``: llm-foundry's kill-loss-spike rule: the loss above ``threshold`` (2) times the mean of
  the last ``window`` (100) losses, for ``patience`` (4) steps in a row.
- ``rtol``: Lightning's ``SpikeDetection``: the loss not lower than the last accepted loss and at
  least ``threshold`` (2) times the running mean of the last ``window`` (10) accepted losses away
  from it.

Every detector also raises the non-finite bits: a loss or a total gradient norm that is NaN or Inf.

Beside the spike rule, ``zscore`` watches the loss's trend (``trend``, on by default; off for the
peers' rules): a run is seldom lost to one spike, more often to a loss that climbs back over tens
of steps, which a moving band follows. The trend is a smoothed loss (an exponential average over
:data:`TREND_SPAN` steps) and its running minimum; the alarm is raised while the smoothed loss is
above its minimum by more than ``trend`` (0.3) of the fall it had made to that minimum from its
highest value, by more than :data:`TREND_NOISE` times its own noise (read from the step-to-step
differences of the loss, which a slow rise hardly moves) and by more than :data:`TREND_RELATIVE`
of the minimum itself. One step's loss enters the
average clipped at :data:`TREND_CLIP` noise standard deviations above it, so that a single spike,
the spike rule's business, does not pass for a rise. The defaults were chosen on measured runs
(docs/instability.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gradscope.errors import UsageError, UsageTypeError

LOSS_SPIKE, GRAD_SPIKE, LOSS_NONFINITE, GRAD_NONFINITE, LOSS_RISING = 1, 2, 4, 8, 16
"""Alarm bits of a step (their sum is stored in the pulse ring)."""
NONFINITE = LOSS_NONFINITE | GRAD_NONFINITE
SKIPPABLE = LOSS_SPIKE | GRAD_SPIKE | NONFINITE
"""The alarms the guard skips an update for: a rising trend is no one bad step to leave out."""
ALARM_NAMES = {LOSS_SPIKE: "loss spike", GRAD_SPIKE: "gradient spike",
               LOSS_NONFINITE: "non-finite loss", GRAD_NONFINITE: "non-finite gradient",
               LOSS_RISING: "loss rising"}

_DEFAULTS = {
    "zscore": {"threshold": 8.0, "window": 100, "warmup": 50, "patience": 1, "trend": 0.3},
    "ratio": {"threshold": 2.0, "window": 100, "warmup": 100, "patience": 4, "trend": 0.0},
    "rtol": {"threshold": 2.0, "window": 10, "warmup": 1, "patience": 1, "trend": 0.0},
}

TREND_SPAN = 20
"""Steps the smoothed loss of the trend averages over (an exponential moving average's span)."""
TREND_START = 10
"""Losses seen before the smoothed loss's minimum is tracked (and a rise can be raised)."""
TREND_NOISE_SPAN = 100
"""Steps the loss's noise (its mean absolute step-to-step difference) averages over."""
TREND_NOISE = 15.0
"""A rise must exceed this many standard deviations of the smoothed loss's noise."""
TREND_RELATIVE = 0.2
"""A rise must also be this share of the smoothed loss's minimum (in absolute value): a wiggle of a
loss that has hardly fallen yet is not a climb."""
TREND_CLIP = 8.0
"""A step's loss enters the smoothed loss clipped at this many noise standard deviations above it."""
_DIFF_CLIP = 4.0
"""A step-to-step difference enters the noise average clipped at this many times the average."""
_HALF_NORMAL = math.sqrt(math.pi) / 2
"""The standard deviation of white noise over the mean absolute difference of two of its steps."""
_TREND_ALPHA = 2.0 / (TREND_SPAN + 1)
_NOISE_ALPHA = 2.0 / (TREND_NOISE_SPAN + 1)
_SMOOTHED_NOISE = _HALF_NORMAL * math.sqrt(_TREND_ALPHA / (2 - _TREND_ALPHA))
"""The smoothed loss's noise standard deviation over the mean absolute difference."""
KINDS = tuple(_DEFAULTS)

EXPLOSION = 100.0
"""zscore, during its warm-up (no band yet): a loss this many times the run's first (finite,
positive) loss is a spike. A run at a learning rate far too high leaves its start within
the warm-up (a char-level GPT at lr 1.0: loss 4.8, then 118 at step 10 and 1,320 at step 14,
non-finite at 21), where only the loss trend could see it, two steps ahead. A hundredfold is no
early wobble: a GAN's generator loss, which climbs as the discriminator learns, goes from 0.7 to
a few units."""

SPIKE_FLOOR = 0.1
"""zscore: a loss spike must also stand above the loss's running mean by this share of the fall
the mean has made from its highest value: near convergence (a mean of 0.002 after a start at 2.3)
the loss's noise is heavy-tailed, and one batch at 0.05 is many standard deviations but no spike
worth a warning."""


@dataclass(frozen=True)
class Detector:
    """How spikes are detected: ``kind`` (``"zscore"``, ``"ratio"`` or ``"rtol"``) and its
    parameters; those left as None take the kind's defaults.

    ``threshold``: standard deviations (zscore) or the factor over the running mean (ratio, rtol);
    ``window``: the steps the running statistics cover (zscore: the moving average's span);
    ``warmup``: steps seen before the first spike can be raised; ``patience``: steps in a row;
    ``trend``: the share of its fall that the smoothed loss must climb back to raise "loss
    rising" (zscore: 0.3; 0 turns it off, the peers' rules have none).

    >>> Detector("zscore").threshold
    8.0
    >>> Detector("ratio", threshold=3).window
    100
    >>> Detector("zscore", trend=0).trend
    0.0
    """

    kind: str = "zscore"
    threshold: float | None = None
    window: int | None = None
    warmup: int | None = None
    patience: int | None = None
    trend: float | None = None

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
            if name == "trend":
                if isinstance(given, bool) or not isinstance(given, (int, float)) or not 0 <= given <= 1:
                    raise UsageError(
                        f"Expected the detector's `trend` to be a share of the loss's fall between 0 "
                        f"and 1 but got {given!r}; the {self.kind} default is {value} (0 turns the "
                        "loss-rising alarm off)."
                    )
                object.__setattr__(self, name, float(given))
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
        on_host = xp is np and detector.kind == "zscore"  # Python floats (:meth:`host_update`)
        self.mean = [0.0] * size if on_host else self._new((size,), 0.0)
        self.var = [0.0] * size if on_host else self._new((size,), 0.0)
        self.streak = self._new((1,), 0.0)
        """Steps in a row the ratio rule held."""
        self.losses = self._new((detector.window if detector.kind != "zscore" else 1,), float("nan"))
        """The last accepted losses (ratio, rtol): a ring, NaN where not yet filled."""
        self.last_loss = self._new((1,), float("inf"))
        self.peak = -math.inf if on_host else self._new((1,), -float("inf"))
        """The highest running mean of the loss so far (zscore's spike floor)."""
        self.first = math.nan if on_host else self._new((1,), float("nan"))
        """The first finite loss (zscore's warm-up explosion)."""
        self.run = [0.0, 0.0] if on_host else self._new((2,), 0.0)
        """Steps in a row the loss and the gradient norm have been above their band (zscore). A
        series above its band for a whole ``window`` of steps in a row (100 by default) has moved
        to a new level (a new task or data mixture): from the next step on it is taken into the
        band, which catches up within a step or two, and the guard stops skipping. Without the cap
        a band that takes in only the steps without an alarm never follows a new level, and the
        guard skips every update after it: the model no longer moves, so the loss stays where it
        jumped. A shorter cap lets a burst of bad batches through: at 10 steps the last updates
        of a 30-batch burst of corrupt inputs killed a ReLU MLP that the guard had kept whole."""
        self.seen = 0
        """Steps taken so far (a host count: warmup and the moving average's start)."""
        self.trend = (TrendState(detector.trend) if xp is np else
                      TrendState(detector.trend, xp, self._new)) if detector.trend else None

    def update(self, y, has_loss: bool = True, noise: float = 1.0):
        """(alarm bits as a 1-element float array, z-scores of all series) for this step's ``y``;
        the state moves on. Without ``has_loss`` (no loss arrived this step) ``y[0]`` is NaN and
        raises nothing. ``noise`` above 1: a step whose values are that many times as spread as
        the band's (a batch far smaller than the run's usual one): the z-score's threshold is
        that many times higher, the ratio and rtol rules and the loss's trend do not read it,
        and nothing of it enters the running statistics (a step that is not counted either); a
        non-finite value raises its alarm as always."""
        xp, d = self.xp, self.detector
        if xp is np and d.kind == "zscore":
            return self._zscore_on_host(y, has_loss, noise)
        quiet = noise > 1.0
        finite = xp.isfinite(y)
        # y[1] is the log gradient norm: -inf is a gradient of exactly 0, finite (kept out of the
        # running statistics, but no alarm)
        alarm = (~(finite[1:2] | (y[1:2] == -float("inf")))) * float(GRAD_NONFINITE)
        if has_loss:
            alarm = alarm + (~finite[0:1]) * float(LOSS_NONFINITE)
        if d.kind == "zscore":
            z, spikes = self._zscore(y, finite, noise)
        elif quiet:
            z, spikes = xp.zeros_like(y), 0.0 * alarm
        else:
            z = xp.zeros_like(y)
            spikes = self._loss_rule(y[0:1], d.kind == "ratio") * float(LOSS_SPIKE)
        if self.trend is not None and has_loss and not quiet:
            rising = self.trend.step(float(y[0])) if self.trend.xp is None else self.trend.update(y[0:1])
            spikes = spikes + rising * float(LOSS_RISING)
        self.seen += not quiet
        return alarm + spikes, z

    def steady(self) -> bool:
        """Whether every later :meth:`update` runs the same arithmetic: past the warm-up, with
        the moving average's weight at its final value (a GPU replays it as one graph)."""
        d = self.detector
        return d.kind == "zscore" and self.seen >= d.warmup and 1.0 / (self.seen + 1) <= 2.0 / (d.window + 1)

    def _zscore(self, y, finite, noise: float = 1.0):
        xp, d = self.xp, self.detector
        quiet = noise > 1.0
        deviation = y - self.mean
        # zeros_like, not 0 * deviation: 0 * NaN is NaN, and one non-finite step would poison the mean
        z = xp.where(finite, deviation / xp.sqrt(self.var + 1e-24), xp.zeros_like(deviation))
        warm = self.seen >= d.warmup
        spiking = (z[0:2] > d.threshold * noise) & finite[0:2] & warm
        fall = xp.where(self.peak > self.mean[0:1], self.peak - self.mean[0:1], self.peak * 0.0)
        spiking[0:1] = spiking[0:1] & (deviation[0:1] > SPIKE_FLOOR * fall)
        if not warm:  # no band yet: only an explosion of the loss
            spiking[0:1] = finite[0:1] & (self.first > 0) & (y[0:1] > EXPLOSION * self.first)
            self.first[:] = xp.where(xp.isnan(self.first) & finite[0:1], y[0:1], self.first)
        if quiet:  # the band does not take the step in, nor do the runs move
            finite = finite & False
        else:
            self.run[:] = xp.where(spiking, self.run + 1, 0.0 * self.run)
        spiking = spiking & (self.run <= d.window)  # a new level: taken into the band
        spikes = spiking[0:1] * float(LOSS_SPIKE) + spiking[1:2] * float(GRAD_SPIKE)
        # the first steps average with equal weights, then the moving average takes over
        alpha = max(2.0 / (d.window + 1), 1.0 / (self.seen + 1))
        accept = finite & ~(spiking[0:1] | spiking[1:2])
        moved = xp.where(accept, deviation, xp.zeros_like(deviation))
        self.mean[:] = self.mean + alpha * moved
        # an exponentially weighted variance (West's update), untouched where not accepted
        self.var[:] = xp.where(accept, (1 - alpha) * (self.var + alpha * moved * moved), self.var)
        self.peak[:] = xp.maximum(self.peak, xp.where(finite[0:1], self.mean[0:1], self.peak))
        return (z if warm else 0.0 * z), spikes

    def _zscore_on_host(self, y: np.ndarray, has_loss: bool, noise: float = 1.0):
        """:meth:`update` of the z-score detector on the host: :meth:`host_update`, its z-scores
        of every series as an array."""
        alarm, z = self._host_update(y.tolist(), has_loss, every_z=True, noise=noise)
        return np.array([alarm]), np.array(z)

    def host_update(self, y: list[float], has_loss: bool = True, noise: float = 1.0) -> tuple[float, float, float]:
        """:meth:`update` of the z-score detector for ``y`` as Python floats: (alarm bits, z of the
        loss, z of the gradient norm). The pulse's every-step path on the CPU."""
        alarm, z = self._host_update(y, has_loss, every_z=False, noise=noise)
        return alarm, z[0], z[1]

    def _host_update(self, y: list[float], has_loss: bool, every_z: bool,
                     noise: float = 1.0) -> tuple[float, list[float]]:
        """The arithmetic of :meth:`_zscore` in Python floats, the two alarm series decided in
        branches and the running statistics moved only on an accepted step: on the CPU a numpy
        call right after a backward pass costs microseconds (its code and data have left the
        caches), a float operation a few tens of nanoseconds. The same numbers as :meth:`_zscore`
        (IEEE double arithmetic in the same order)."""
        d, mean, var = self.detector, self.mean, self.var
        quiet = noise > 1.0
        warm = self.seen >= d.warmup
        z = []
        for i in range(len(y) if every_z else 2):
            value = y[i]
            z.append((value - mean[i]) / math.sqrt(var[i] + 1e-24) if warm and math.isfinite(value) else 0.0)
        loss, grad = y[0], y[1]
        loss_finite, grad_finite = math.isfinite(loss), math.isfinite(grad)
        if warm:  # (no spike floor, and no spike, before an accepted finite loss set the peak)
            loss_spike = loss_finite and z[0] > d.threshold * noise and self.peak > -math.inf \
                and loss - mean[0] > SPIKE_FLOOR * max(self.peak - mean[0], 0.0)
        else:  # no band yet: only an explosion of the loss
            loss_spike = loss_finite and self.first > 0 and loss > EXPLOSION * self.first
            if self.first != self.first and loss_finite:
                self.first = loss
        grad_spike = warm and grad_finite and z[1] > d.threshold * noise
        run = self.run
        if not quiet:  # (a quiet step moves no run)
            run[0] = run[0] + 1 if loss_spike else 0.0
            run[1] = run[1] + 1 if grad_spike else 0.0
        loss_spike = loss_spike and run[0] <= d.window  # a new level: taken into the band
        grad_spike = grad_spike and run[1] <= d.window
        alarm = float(GRAD_NONFINITE) * (not grad_finite and grad != -math.inf) \
            + float(LOSS_NONFINITE) * (has_loss and not loss_finite) \
            + float(LOSS_SPIKE) * loss_spike + float(GRAD_SPIKE) * grad_spike
        if self.trend is not None and has_loss and not quiet and self.trend.step(loss):
            alarm += float(LOSS_RISING)
        if not (loss_spike or grad_spike or quiet):  # (nothing of a quiet step enters the band)
            alpha = max(2.0 / (d.window + 1), 1.0 / (self.seen + 1))
            keep = 1 - alpha
            for i, value in enumerate(y):
                if value - value == 0.0:  # finite (inf - inf and NaN - NaN are NaN)
                    deviation = value - mean[i]
                    mean[i] += alpha * deviation
                    var[i] = keep * (var[i] + alpha * deviation * deviation)
            if loss_finite and mean[0] > self.peak:
                self.peak = mean[0]
        self.seen += not quiet
        return alarm, z

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


class TrendState:
    """The loss's trend (module docstring): a smoothed loss, its running minimum and the fall made
    to it, and the loss's noise. :meth:`step` takes one loss on the host (Python floats: a few
    microseconds); :meth:`update` does the same arithmetic on a 1-element array of ``xp`` (torch on
    a GPU, where nothing may be read back), with every branch a ``where``.

    A loss that falls from 5.0 to 2.1 in 30 steps and then climbs 0.1 a step is rising from the
    climb's 22nd step on (the smoothed loss lags the loss by about ten steps):

    >>> t = TrendState(0.3)
    >>> [t.step(5.0 - 0.1 * i) for i in range(30)].count(True)
    0
    >>> [t.step(2.1 + 0.1 * i) for i in range(30)].index(True)
    21
    """

    def __init__(self, share: float, xp=None, new=None) -> None:
        self.share = share
        self.xp = xp
        values = {"smoothed": 0.0, "highest": -math.inf, "lowest": math.inf, "fall": 0.0, "noise": 0.0,
                  "previous": math.nan, "count": 0.0}
        for name, value in values.items():
            setattr(self, name, value if xp is None else new((1,), value))

    def step(self, loss: float) -> bool:
        """One step's loss (host floats); whether the loss is rising."""
        if not math.isfinite(loss):
            return False  # the non-finite alarm's business; the trend waits for finite values
        count = self.count
        if count >= 1:
            diff = abs(loss - self.previous)
            if count == 1:
                self.noise = diff
            else:
                if self.noise > 0:
                    diff = min(diff, _DIFF_CLIP * self.noise)
                self.noise += max(_NOISE_ALPHA, 1.0 / count) * (diff - self.noise)
            loss_in = min(loss, self.smoothed + TREND_CLIP * _HALF_NORMAL * self.noise) if self.noise > 0 else loss
            self.smoothed += max(_TREND_ALPHA, 1.0 / (count + 1)) * (loss_in - self.smoothed)
        else:
            self.smoothed = loss
        self.previous = loss
        self.count = count + 1
        self.highest = max(self.highest, self.smoothed)
        if count < TREND_START:
            return False
        if self.smoothed < self.lowest:
            self.lowest = self.smoothed
            self.fall = self.highest - self.smoothed
        limit = max(self.share * self.fall, TREND_NOISE * _SMOOTHED_NOISE * self.noise,
                    TREND_RELATIVE * abs(self.lowest))
        return self.smoothed - self.lowest > limit

    def update(self, loss):
        """:meth:`step` on a 1-element array of ``xp``: 1.0 where the loss is rising, else 0.0."""
        xp = self.xp
        ok = xp.isfinite(loss)
        count = self.count
        diff = abs(loss - self.previous)
        clipped = xp.where(self.noise > 0, xp.minimum(diff, _DIFF_CLIP * self.noise), diff)
        weight = xp.maximum(count * 0.0 + _NOISE_ALPHA, 1.0 / xp.maximum(count, count * 0.0 + 1.0))
        noise = xp.where(count >= 2, self.noise + weight * (clipped - self.noise),
                         xp.where(count == 1, diff, self.noise))
        loss_in = xp.where(noise > 0, xp.minimum(loss, self.smoothed + TREND_CLIP * _HALF_NORMAL * noise), loss)
        rate = xp.maximum(count * 0.0 + _TREND_ALPHA, 1.0 / (count + 1))
        smoothed = xp.where(count >= 1, self.smoothed + rate * (loss_in - self.smoothed), loss)
        highest = xp.maximum(self.highest, smoothed)
        started = count >= TREND_START
        lower = started & (smoothed < self.lowest)
        lowest = xp.where(lower, smoothed, self.lowest)
        fall = xp.where(lower, highest - smoothed, self.fall)
        limit = xp.maximum(xp.maximum(self.share * fall, TREND_NOISE * _SMOOTHED_NOISE * noise),
                           TREND_RELATIVE * abs(lowest))
        rising = ok & started & (smoothed - lowest > limit)
        for name, value in (("noise", noise), ("smoothed", smoothed), ("highest", highest),
                            ("lowest", lowest), ("fall", fall), ("previous", loss)):
            getattr(self, name)[:] = xp.where(ok, value, getattr(self, name))
        self.count[:] = count + ok
        return rising * 1.0

    def values(self):
        """(smoothed loss, its running minimum, the fall made to it), NaN before the minimum is
        tracked: floats on the host, 1-element arrays of ``xp`` otherwise."""
        if self.xp is None:
            if self.count <= TREND_START:
                return math.nan, math.nan, math.nan
            return self.smoothed, self.lowest, self.fall
        tracked = self.count > TREND_START
        nan = self.smoothed * math.nan
        return tuple(self.xp.where(tracked, v, nan) for v in (self.smoothed, self.lowest, self.fall))


def has_bit(alarm, bit: int):
    """Whether the alarm bits ``alarm`` (a float array of sums of bits) include ``bit``, without
    leaving the array's device."""
    return (alarm % (2 * bit)) >= bit


def without_gradient_alarms(alarm, where):
    """``alarm`` (a float array of sums of bits, on its device) with the gradient's bits (spike,
    non-finite) cleared where ``where`` holds (a bool array, or a Python bool)."""
    gradient = has_bit(alarm, GRAD_SPIKE) * float(GRAD_SPIKE) + has_bit(alarm, GRAD_NONFINITE) * float(GRAD_NONFINITE)
    return alarm - gradient * where


def skippable(alarm):
    """Where the alarm bits ``alarm`` (a float array of sums of bits, on its device) include one the
    guard skips an update for: the bits of ``SKIPPABLE`` are all those below ``LOSS_RISING``."""
    return alarm % (SKIPPABLE + 1) != 0


def alarm_names(bits: int) -> list[str]:
    """The names of the alarm bits set in ``bits`` (``["loss spike", "non-finite gradient"]``)."""
    return [name for bit, name in ALARM_NAMES.items() if bits & bit]
