"""The rising-loss rule: what it detects, its fix, and its bad/good training-run pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import numpy as np

from gradscope.detectors import LOSS_RISING, has_bit
from gradscope.events import QUIET, given_back
from gradscope.records import Records
from gradscope.rules.advice import episodes, rising_fix, spike_events
from gradscope.rules.base import INFO, Violation
from gradscope.rules.example_models import rising_run


def detect(records: Records) -> list[Violation]:
    """What it checks:
        A training loss that climbs back over tens of steps: the monitor's pulse smooths every
        step's loss (an exponential average over 20 steps) and raises "loss rising" while the
        smoothed loss stands above its lowest value by more than 30% of the fall it had made to
        it, and by more than 15 times its own noise (read from the loss's step-to-step
        differences) and 20% of the minimum. A single spike does not count: each loss enters the
        average clipped at 8 noise standard deviations above it. Each episode names its first
        step, the smoothed loss, its minimum, the share of the fall climbed back, and the layer
        whose gradient norm left its band first. A warning while the loss is still rising (an
        alarm in the last 10 steps read); information once the run has come back down, since a
        run that recovered is training.

    Why it matters:
        Runs are more often lost to a slow climb than to one spike: at a learning rate a little
        too high the loss creeps back up after warm-up while every step looks ordinary, so a spike
        detector, whose band follows the climb, stays quiet until the loss is back where it
        started or goes NaN. The steps between the start of the climb and the lost run are the
        time to lower the learning rate or reload a checkpoint.

    Example:
        A pre-LN GPT trained with AdamW at a learning rate of 0.7 after warm-up: the loss falls
        to 3.3, then climbs; "loss rising" is raised about ten steps before the run is lost
        (docs/instability.md).

        >>> import gradscope
        >>> # with gradscope.monitor(model, optimizer=opt) as mon: ...train...
        >>> # [f.message for f in mon.findings() if f.rule == "rising-loss"]

    Fix:
        Lower the learning rate (or warm it up over more steps), and restart from a checkpoint
        taken near the step the smoothed loss was lowest; clip the gradient norm at a threshold
        taken from the measured norms. A loss that rises by design (a KL term or an auxiliary
        loss whose weight is ramped up, a new data mixture) is not a divergence, nor is the rise
        of a surrogate whose value is not the objective (a policy-gradient loss heads for 0 from
        below as the policy settles: REINFORCE on digits raised it while its reward climbed to
        0.97): turn the alarm off with ``monitor(..., detect=gradscope.Detector(trend=0))``, or
        give the detector the quantity to watch, ``mon.observe_loss(-mean_reward)``.
    """
    events = [e for e in spike_events(records) if "loss rising" in e.get("alarms", ())]
    if not events:
        return []
    layers, listed = episodes(events)
    still, last = _still_rising(records)
    message = (f"The training loss climbed back in {len(events)} episode{'s' if len(events) > 1 else ''}: "
               f"{listed}.")
    message += (" It is still rising at the last step read." if still else
                f" It came back down: no rise in the last {QUIET} steps read"
                + (f" (smoothed loss {last:.4g})." if last is not None else "."))
    return [Violation(layers or ["(model)"], message, rising_fix(events, records),
                      {"episodes": len(events), "steps": [e["step"] for e in events], "layers": layers,
                       "given_back": [_given_back(e) for e in events], "still_rising": still},
                      None if still else INFO)]


def _still_rising(records: Records) -> tuple[bool, float | None]:
    """Whether any of the last ``QUIET`` steps of the pulse raised "loss rising", and the last
    smoothed loss."""
    pulse = records.pulse
    if pulse is None or pulse.empty:
        return True, None
    tail = pulse.tail(QUIET)
    bits = tail["alarm"].to_numpy(dtype=float)
    rising = bool(np.any(has_bit(np.nan_to_num(bits), LOSS_RISING)))
    smoothed = tail["loss_smoothed"].to_numpy(dtype=float) if "loss_smoothed" in tail else np.array([])
    smoothed = smoothed[np.isfinite(smoothed)]
    return rising, (float(smoothed[-1]) if len(smoothed) else None)


def _given_back(event: dict) -> float | None:
    share = given_back(*(event.get(k) for k in ("smoothed_loss", "lowest_loss", "fall")))
    return None if share is None else round(share, 3)


def pair(bad: bool) -> dict:
    """A small MLP trained for 400 steps with SGD; in the bad run the learning rate grows 2% a
    step from step 200 (a schedule set the wrong way round), in the good one it stays."""
    return rising_run(growing=bad)
