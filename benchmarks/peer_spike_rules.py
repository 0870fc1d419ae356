"""The loss-spike rules users have today, reimplemented from their code to run offline on a loss
trace: Lightning's ``SpikeDetection`` and llm-foundry's ``KillLossSpike``.

Each takes the per-step training losses (index = step, 0-based) and returns every step at which
the rule fires. Both tools stop training at their first detection (when told to raise); here they
keep reading the trace so that false alarms on a stable run can be counted, and each keeps its own
state exactly as it would have had it only logged.

>>> lightning_spike_steps([3.0, 2.0, 1.0, 9.0, 0.9])
[3]
>>> foundry_spike_steps([1.0] * 100 + [3.0] * 6)
[104, 105]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


def lightning_spike_steps(losses: Sequence[float], *, window: int = 10, warmup: int = 1,
                          atol: float | None = None, rtol: float | None = 2.0) -> list[int]:
    """Steps where ``lightning.fabric.utilities.spike.SpikeDetection`` (mode="min", finite_only=True,
    the defaults) calls a spike.

    Its ``on_train_batch_end`` at batch ``i >= warmup``: a non-finite loss is a spike; otherwise a loss
    not above the last accepted loss is not; otherwise it is a spike when
    ``|loss - mean| >= atol`` (atol None: always true) and ``|loss - mean| >= rtol * mean``, where
    ``mean`` is the running mean (torchmetrics ``Running(MeanMetric(), window)``) of the last
    ``window`` accepted losses. A loss that is not a spike is accepted: it enters the running mean
    and becomes the last accepted value (which starts at 0.0). Spikes are never accepted.
    """
    accepted: deque[float] = deque(maxlen=window)
    last_accepted = 0.0
    spikes = []
    for step, loss in enumerate(losses):
        loss = float(loss)
        if step >= warmup and _lightning_is_spike(loss, last_accepted, accepted, atol, rtol):
            spikes.append(step)
            continue
        if not math.isnan(loss):
            # MeanMetric's default nan_strategy drops NaNs (only reachable before warmup)
            accepted.append(loss)
        last_accepted = loss
    return spikes


def _lightning_is_spike(loss: float, last_accepted: float, accepted: deque, atol, rtol) -> bool:
    if not math.isfinite(loss):
        return True
    if loss - last_accepted <= 0.0:
        return False
    mean = sum(accepted) / len(accepted) if accepted else math.nan  # MeanMetric of nothing: 0/0
    within_atol = atol is None or abs(loss - mean) >= abs(atol)
    within_rtol = rtol is None or abs(loss - mean) >= abs(rtol * mean)
    return within_atol and within_rtol


def foundry_spike_steps(losses: Sequence[float], *, total_steps: int | None = None, patience: int = 4,
                        outlier_multiplier: float = 2.0, min_window: int = 100,
                        max_loss_cap: float = 10.0, window_fraction: float = 0.05) -> list[int]:
    """Steps where llm-foundry's ``KillLossSpike`` (llmfoundry/callbacks/kill_loss_spike_callback.py,
    defaults, commit 56891fc) raises ``LossSpikeError`` or ``HighLossError``.

    At each batch end, once the window holds ``window`` losses (100, or 5 % of ``total_steps`` when
    larger; the window keeps filling until it reaches that size): a loss ``>= outlier_multiplier``
    times the window's mean is an outlier and increments a counter; a non-outlier resets it; the
    rule fires when the counter exceeds ``patience`` (so the 5th consecutive outlier fires, and
    every one after it). Otherwise the high-loss rule: from batch ``2 * window`` on, fires when at
    least half the window's losses exceed the loss cap (10; the code meant to lower it to the first
    window's maximum compares ``timestamp.batch`` with the window size one batch too late, since
    Composer advances the timestamp before ``BATCH_END``, so the cap stays 10). Every loss, outlier
    or not, then enters the window. A NaN is never an outlier (``nan >= x`` is false) and, once in
    the window, makes its mean NaN, so the spike rule cannot fire for the next ``window`` steps.
    """
    window_size = min_window
    window: deque[float] = deque()
    resized = False
    outliers = 0
    fired = []
    for step, loss in enumerate(losses):
        loss = float(loss)
        timestamp_batch = step + 1  # Composer's state.timestamp.batch at BATCH_END
        if len(window) == window_size:
            if not resized:
                resized = True
                if total_steps is not None:
                    window_size = max(window_size, round(float(total_steps * window_fraction)))
                window = deque(window, maxlen=window_size)
                if window_size > min_window:
                    window.append(loss)
                    continue
            mean = sum(window) / len(window)
            if loss >= mean * outlier_multiplier:
                outliers += 1
                if outliers > patience:
                    fired.append(step)
                    window.append(loss)
                    continue
            else:
                outliers = 0
            if timestamp_batch >= 2 * window_size and sum(v > max_loss_cap for v in window) >= window_size / 2:
                fired.append(step)
        window.append(loss)
    return fired
