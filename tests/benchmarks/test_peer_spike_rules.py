"""The peer spike rules of benchmarks/peer_spike_rules.py against hand-computed traces, and the
Lightning one against Lightning's own ``SpikeDetection`` where it is installed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peer_spike_rules import foundry_spike_steps, lightning_spike_steps  # noqa: E402


def test_lightning_spike_needs_a_rise_of_twice_the_running_mean():
    # mean of the accepted [4, 3, 2] is 3: 8.9 is 5.9 above it (< 6), 9.1 is 6.1 above (>= 6)
    assert lightning_spike_steps([4.0, 3.0, 2.0, 8.9]) == []
    assert lightning_spike_steps([4.0, 3.0, 2.0, 9.1]) == [3]


def test_lightning_spikes_stay_out_of_the_running_mean():
    # 9.1 is rejected, so 9.0 is judged against the same mean and last value and is a spike too;
    # a loss lower than the last accepted one is never a spike
    assert lightning_spike_steps([4.0, 3.0, 2.0, 9.1, 9.0, 1.0]) == [3, 4]


def test_lightning_non_finite_is_a_spike_after_warmup_only():
    assert lightning_spike_steps([math.nan, 3.0, math.inf, 2.0]) == [2]


def test_foundry_fires_on_the_fifth_consecutive_outlier():
    losses = [1.0] * 100 + [3.0] * 4 + [1.0] + [3.0] * 5
    # the first run of four outliers resets; the second fires at its fifth
    assert foundry_spike_steps(losses) == [109]


def test_foundry_window_is_five_percent_of_a_long_run():
    # with 4000 total steps the window grows to 200 before the rule reads it
    losses = [1.0] * 150 + [3.0] * 10
    assert foundry_spike_steps(losses) == [154, 155, 156, 157, 158, 159]
    assert foundry_spike_steps(losses, total_steps=4000) == []


def test_foundry_nan_silences_the_spike_rule():
    losses = [1.0] * 100 + [math.nan] + [3.0] * 10
    assert foundry_spike_steps(losses) == []


def test_foundry_high_loss_rule_after_two_windows():
    losses = [1.0] * 100 + [11.0] * 100 + [11.0] * 3
    fired = foundry_spike_steps(losses)
    # the spike rule fires from the fifth outlier; once the mean has caught up, from batch 200 the
    # high-loss rule does (half the window above the cap of 10)
    assert fired[0] == 104 and 199 in fired and fired[-1] == 202


def test_lightning_matches_lightning(tmp_path):
    spike = pytest.importorskip("lightning_fabric.utilities.spike")
    pytest.importorskip("torchmetrics")
    import torch

    class Strategy:
        root_device = torch.device("cpu")

        def barrier(self):
            pass

        def reduce_boolean_decision(self, decision, all=True):
            return decision

    class Fabric:
        strategy = Strategy()
        global_rank = 0

    rng = np.random.default_rng(0)
    losses = np.exp(rng.normal(0, 0.6, 300)) * np.linspace(3, 1, 300)
    losses[[50, 120, 121, 200]] *= [5, 8, 8, 0]
    losses[250] = np.nan
    detector = spike.SpikeDetection(exclude_batches_path=tmp_path / "skip.json")
    theirs = []
    for step, loss in enumerate(losses):
        try:
            detector.on_train_batch_end(Fabric(), torch.tensor(loss, dtype=torch.float32), None, step)
        except spike.TrainingSpikeException:
            theirs.append(step)
    assert len(theirs) >= 4
    assert lightning_spike_steps(losses.astype(np.float32)) == theirs
