"""Spike events: what the host makes of a step whose pulse raised an alarm (gradscope/pulse.py).

An event names the step, what was detected (loss spike, gradient spike, non-finite loss or
gradient, loss rising), the numbers (loss, gradient norm, their z-scores; for a rising loss the
smoothed loss, its minimum and the fall made to it), whether the guard skipped the step,
and where the spike began:

- the **layer**: among the parameters whose gradient norm left its own running band in the steps
  up to the detection and stayed out of it, the one that left first; of those that left on the
  same step, the first in backward order (the one nearest the loss). Its band is the detector's
  running mean and standard deviation of its log gradient norm, from the steps before the spike;
- the **micro-batch**, under gradient accumulation: the one after which the accumulated gradient
  norm grew most, and the one with the highest loss;
- the **rank** under DDP/FSDP2: each rank runs its detector on its own loss and gradients, and at
  every logged step the ranks' new detections are gathered on rank 0 (:func:`merge_rank_alarms`):
  an event names every rank that raised it (``ranks``) and, as ``rank``, the one whose loss was
  furthest above its band (the rank whose micro-batch spiked).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from gradscope.detectors import ALARM_NAMES as ALARM_BITS
from gradscope.detectors import GRAD_NONFINITE, GRAD_SPIKE, LOSS_RISING, alarm_names
from gradscope.pulse import (FIRST_PARAMETER, GRAD_NORM, LOSS, LOSS_FALL, LOSS_LOWEST, LOSS_SMOOTHED, MICRO_COUNT,
                             MICRO_GRAD, MICRO_LOSS, Z_GRAD, Z_LOSS)

BAND = 3.0
"""A parameter's gradient norm is out of its band this many running standard deviations above its
running mean (of the log norm)."""

QUIET = 10
"""Steps without an alarm that end an episode."""

LOOK_BACK = 20
"""Steps before a detection searched for the layer whose gradient norm moved first."""


@dataclass(frozen=True)
class SpikeEvent:
    """One detection, as the run directory, the sinks and the rules receive it."""

    step: int
    alarms: list[str]
    loss: float
    grad_norm: float
    z_loss: float
    z_grad: float
    skipped: bool
    layer: str | None = None
    """The parameter whose gradient norm left its band first (None when none did)."""
    layer_left_at: int | None = None
    """The step at which it left its band."""
    layer_ratio: float | None = None
    """Its gradient norm at the detection over its band's centre."""
    micro_batch: int | None = None
    micro_batches: int = 1
    rank: int = 0
    ranks: tuple[int, ...] = ()
    """Under DDP/FSDP2, the ranks whose detector raised this event (gathered on rank 0 at the
    logged steps); empty in a single process."""
    lr: float | None = None
    lr_before: float | None = None
    """The lowest learning rate of the ``LR_LOOKBACK`` steps before the detection (where the
    optimizer's is a plain number): a schedule that raised it (a warm restart, a warm-up) shows
    as ``lr`` ``LR_RISE`` times above it or more."""
    last_step: int | None = None
    """The last step of the episode: alarms of the same family (a rise of the loss apart) on the
    steps that follow, with fewer than ``QUIET`` steps between them, extend the event instead of
    making new ones."""
    alarm_steps: int = 1
    """Steps of the episode that raised an alarm."""
    skipped_steps: int = 0
    """Steps of the episode whose update the guard skipped."""
    smoothed_loss: float | None = None
    """For a rising loss: the smoothed loss at the detection."""
    lowest_loss: float | None = None
    """For a rising loss: the smoothed loss's minimum before it."""
    fall: float | None = None
    """For a rising loss: how far the smoothed loss had fallen to that minimum from its highest."""
    guard: str | None = None
    """The guard at this step: None when not asked for, ``"on"``, or ``"could not act"`` when it
    was asked for but this optimizer's step could not be held back (a closure evaluated inside
    the step; a warning said why)."""

    @property
    def given_back(self) -> float | None:
        """For a rising loss: the share of its fall the smoothed loss climbed back."""
        return given_back(self.smoothed_loss, self.lowest_loss, self.fall)

    @property
    def lr_raised(self) -> bool:
        """Whether the schedule raised the learning rate ``LR_RISE`` times or more in the
        ``LR_LOOKBACK`` steps before the detection."""
        return lr_raised(self.lr, self.lr_before)

    def to_dict(self) -> dict:
        """Plain JSON types; a non-finite number is the string "nan", "inf" or "-inf" (a NaN loss
        is measured, not missing: null means "not applicable")."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not np.isfinite(value):
                out[key] = "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        return out

    @property
    def text(self) -> str:
        """One line: ``step 412: gradient spike (z 9.1, norm 3.2e+01), skipped; began in
        blocks.3.attn.qkv.weight at step 409 (4.1x its band)``."""
        what = ", ".join(self.alarms)
        numbers = []
        if self.alarms and any("loss" in a for a in self.alarms):
            numbers.append(f"loss {self.loss:.4g}" + (f", z {self.z_loss:.3g}" if self.z_loss == self.z_loss and self.z_loss else ""))
        if any("gradient" in a for a in self.alarms):
            numbers.append(f"gradient norm {self.grad_norm:.3g}" + (f", z {self.z_grad:.3g}" if self.z_grad == self.z_grad and self.z_grad else ""))
        if "loss rising" in self.alarms and self.smoothed_loss is not None and self.lowest_loss is not None:
            share = self.given_back
            numbers.append(f"smoothed loss {self.smoothed_loss:.4g}, up from its minimum {self.lowest_loss:.4g}"
                           + (f": {share:.0%} of its fall from {self.lowest_loss + self.fall:.4g} climbed back"
                              if share is not None else ""))
        line = f"step {self.step}: {what} ({'; '.join(numbers)})" if numbers else f"step {self.step}: {what}"
        if self.last_step is not None and self.last_step != self.step:
            line += f", through step {self.last_step} ({self.alarm_steps} steps with an alarm)"
        if self.skipped_steps:
            line += f", {self.skipped_steps} update{'s' if self.skipped_steps > 1 else ''} skipped"
        if self.layer is not None:
            line += f"; began in {self.layer}"
            if self.layer_left_at is not None and self.layer_left_at != self.step:
                line += f" at step {self.layer_left_at}"
            if self.layer_ratio is not None:
                line += f" ({self.layer_ratio:.3g}x its band)"
        if self.lr_raised:
            line += f"; the learning rate rose from {self.lr_before:.3g} to {self.lr:.3g} in the steps before"
        if self.micro_batches > 1 and self.micro_batch is not None:
            line += f"; micro-batch {self.micro_batch} of {self.micro_batches}"
        if len(self.ranks) > 1:
            line += f"; raised on ranks {', '.join(map(str, self.ranks))}, largest loss on rank {self.rank}"
        elif self.rank:
            line += f"; rank {self.rank}"
        return line


def make_event(step: int, bits: int, ring: np.ndarray, window: int, names: list[str],
               band: tuple[np.ndarray, np.ndarray], *, skipped: bool, rank: int, lr: float | None,
               first_step: int) -> SpikeEvent:
    """The event of ``step`` from the pulse ring read on the host (``ring``: ``window`` rows) and
    the detector's band of each parameter; ``names`` in registration (about forward) order;
    ``first_step``: the first step the ring holds."""
    row = ring[step % window]
    layer, left_at, ratio = attribute(step, ring, window, names, band, first_step)
    micro_count = int(row[MICRO_COUNT])
    if micro_count > 1:
        micro = int(row[MICRO_GRAD] if bits & (GRAD_SPIKE | GRAD_NONFINITE) else row[MICRO_LOSS])
    else:
        micro = None
    return SpikeEvent(
        step=step, alarms=alarm_names(bits), loss=float(row[LOSS]), grad_norm=float(row[GRAD_NORM]),
        z_loss=round(float(row[Z_LOSS]), 2), z_grad=round(float(row[Z_GRAD]), 2),
        skipped=skipped, skipped_steps=int(skipped), layer=layer, layer_left_at=left_at, layer_ratio=ratio,
        micro_batch=micro, micro_batches=max(micro_count, 1), rank=rank, lr=lr,
        **(_trend_numbers(row) if bits & LOSS_RISING else {}),
    )


LR_LOOKBACK = 50
"""Steps before a detection whose learning rates :attr:`SpikeEvent.lr_before` reads. A warm
restart's jolt can take tens of steps to show: SGD at lr 0.2 with ``CosineAnnealingWarmRestarts``
(restarts every 176 steps) spiked 33 and 43 steps after its restarts on a digits MLP that trained
to 0.967, which a lookback of 10 steps did not connect to the restart."""
LR_RISE = 1.5
"""A learning rate this many times the lowest of the steps before was raised by the schedule."""


def lr_raised(lr, lr_before) -> bool:
    """``lr`` at least ``LR_RISE`` times ``lr_before`` (both positive numbers)."""
    return isinstance(lr, (int, float)) and isinstance(lr_before, (int, float)) and lr_before > 0 \
        and lr >= LR_RISE * lr_before


NUMBER_FIELDS = tuple(f.name for f in fields(SpikeEvent) if "float" in str(f.type))
"""The event's fields that hold a number (written "nan", "inf", "-inf" when not finite)."""


def from_json(event: dict) -> dict:
    """An event dict as :meth:`SpikeEvent.to_dict` or ``events.jsonl`` has it, with its non-finite
    numbers as floats again (for arithmetic)."""
    out = dict(event)
    for key in NUMBER_FIELDS:
        if out.get(key) in ("nan", "inf", "-inf"):
            out[key] = float(out[key])
    return out


def given_back(smoothed: float | None, lowest: float | None, fall: float | None) -> float | None:
    """The share of its fall that a smoothed loss climbed back from its minimum (None unknown)."""
    numbers = (smoothed, lowest, fall)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) or not fall:
        return None
    return (smoothed - lowest) / fall


def covers(event, step: int) -> bool:
    """Whether the episode of ``event`` (a SpikeEvent or its dict) runs through ``step``."""
    get = event.get if isinstance(event, dict) else lambda key: getattr(event, key)
    first, last = get("step"), get("last_step")
    return first is not None and first <= step <= (last if last is not None else first)


def _trend_numbers(row: np.ndarray) -> dict:
    values = {"smoothed_loss": row[LOSS_SMOOTHED], "lowest_loss": row[LOSS_LOWEST], "fall": row[LOSS_FALL]}
    return {k: round(float(v), 6) for k, v in values.items() if np.isfinite(v)}


def attribute(step: int, ring: np.ndarray, window: int, names: list[str],
              band: tuple[np.ndarray, np.ndarray], first_step: int
              ) -> tuple[str | None, int | None, float | None]:
    """(parameter, the step it left its band, its norm over the band's centre at ``step``) for the
    parameter whose gradient norm left its band first and stayed out through ``step``."""
    mean, std = band
    if not names or not np.any(std > 0):
        return None, None, None
    steps = [s for s in range(max(first_step, step - LOOK_BACK, step - window + 1), step + 1)]
    norms = np.stack([ring[s % window, FIRST_PARAMETER:FIRST_PARAMETER + len(names)] for s in steps])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.log(norms) - mean) / np.where(std > 0, std, np.inf)
    z = np.where(np.isnan(norms) | np.isinf(norms), np.inf, np.nan_to_num(z, nan=-np.inf))
    out = z > BAND
    # out of the band from some step through the detection, without a gap
    stays = np.flip(np.logical_and.accumulate(np.flip(out, axis=0), axis=0), axis=0)
    if not stays[-1].any():
        return None, None, None
    first_row = int(np.argmax(stays.any(axis=1)))
    candidates = np.flatnonzero(stays[first_row])
    chosen = int(candidates.max())  # backward order: the latest registered runs first
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = float(norms[-1, chosen] / np.exp(mean[chosen]))
    return names[chosen], steps[first_row], (round(ratio, 3) if np.isfinite(ratio) else None)


def extends(event: SpikeEvent, step: int, bits: int) -> bool:
    """Whether an alarm at ``step`` continues ``event``'s episode: an alarm of the same family
    (spikes of the loss or the gradient norm, either or both; a non-finite value; a rising loss),
    within ``QUIET`` steps of its last one. A diverging run's loss and gradient spikes take turns
    (both, then the loss's, then the gradient's): one episode, not three."""
    last = event.last_step if event.last_step is not None else event.step
    names = alarm_names(bits)
    if "loss rising" in names and "loss rising" not in event.alarms:
        return False  # a rise begins its own event, with the trend's numbers of its step
    return _family(names) == _family(event.alarms) and step - last <= QUIET


def _family(alarms: list[str]) -> str:
    if any("non-finite" in a for a in alarms):
        return "non-finite"
    return "rising" if alarms == ["loss rising"] else "spike"


def extended(event: SpikeEvent, step: int, skipped: bool, bits: int = 0) -> SpikeEvent:
    """``event``'s episode with the alarm at ``step`` (``bits``) in it: a kind of spike it did not
    have yet is added (an episode that began with the loss's spike and goes on with the gradient's)."""
    new = [a for a in alarm_names(bits) if a not in event.alarms]
    return replace(event, last_step=step, alarm_steps=event.alarm_steps + 1,
                   skipped_steps=event.skipped_steps + int(skipped), alarms=[*event.alarms, *new])


SHARED_ALARMS = 8
"""New events a rank shares at each logged step (the earliest, when there are more)."""
SHARED_COLUMNS = 5
"""[step, alarm bits, loss, z of the loss, z of the gradient norm] per shared event."""


def shared_rows(events: list[SpikeEvent]) -> np.ndarray:
    """A rank's new events as the fixed-size float array every rank gathers (``SHARED_ALARMS``
    rows; unused rows have step -1)."""
    rows = np.full((SHARED_ALARMS, SHARED_COLUMNS), -1.0)
    for i, e in enumerate(events[:SHARED_ALARMS]):
        rows[i] = (e.step, sum(b for b, n in ALARM_BITS.items() if n in e.alarms), e.loss, e.z_loss, e.z_grad)
    return rows


def merge_rank_alarms(events: list[SpikeEvent], gathered: list[np.ndarray], make) -> tuple[list[SpikeEvent], list[SpikeEvent]]:
    """Rank 0's events with every other rank's shared rows merged in: (all events by step, the
    new ones). An event of rank 0 that another rank raised too (at its step, or within its
    episode) names both ranks and, as ``rank``, the one with the larger loss z-score, with that
    rank's loss and alarms added; a detection only another rank made becomes an event of its own,
    built by ``make(step, bits, rank, loss, z_loss, z_grad)``."""
    out, new = list(events), []
    for rank, rows in enumerate(gathered):
        if rank == 0:
            continue
        for step, bits, loss, z_loss, z_grad in np.asarray(rows, dtype=float):
            if step < 0 or not np.isfinite(step):
                continue
            step, bits = int(step), int(bits)
            at = next((i for i, e in enumerate(out) if covers(e, step)), None)
            if at is None:
                event = make(step, bits, rank, float(loss), float(z_loss), float(z_grad))
                out.append(event)
                new.append(event)
                continue
            event = out[at]
            ranks = tuple(sorted(set(event.ranks or (event.rank,)) | {rank}))
            names = [n for b, n in ALARM_BITS.items() if n in event.alarms or bits & b]
            larger = np.isfinite(z_loss) and (not np.isfinite(event.z_loss) or z_loss > event.z_loss)
            out[at] = replace(event, ranks=ranks, alarms=names, **(
                {"rank": rank, "loss": float(loss), "z_loss": round(float(z_loss), 2)} if larger else {}))
    out.sort(key=lambda e: e.step)
    return out, new
