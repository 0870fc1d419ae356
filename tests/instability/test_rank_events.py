"""Rank 0's merge of the other ranks' shared events (gradscope/events.py), as a pure function;
the gather itself runs under torchrun in tests/distributed."""

from __future__ import annotations

import numpy as np

from gradscope.detectors import GRAD_SPIKE, LOSS_RISING, LOSS_SPIKE
from gradscope.events import SHARED_ALARMS, SpikeEvent, merge_rank_alarms, shared_rows


def _event(step, alarms, z_loss=0.0, rank=0, last_step=None):
    return SpikeEvent(step, alarms, 1.0, 5.0, z_loss, 20.0, False, rank=rank, last_step=last_step)


def test_a_shared_event_names_the_rank_with_the_larger_loss_and_a_new_one_is_made():
    mine = [_event(120, ["gradient spike"], z_loss=0.5, last_step=122)]
    theirs = shared_rows([_event(121, ["loss spike", "gradient spike"], z_loss=40.0, rank=1),
                          _event(300, ["loss rising"], rank=1)])
    assert theirs.shape == (SHARED_ALARMS, 5) and (theirs[2:, 0] == -1).all()
    assert theirs[0, 1] == LOSS_SPIKE | GRAD_SPIKE and theirs[1, 1] == LOSS_RISING
    made = []

    def make(step, bits, rank, loss, z_loss, z_grad):
        made.append((step, bits, rank))
        return _event(step, ["loss rising"], z_loss, rank)

    merged, new = merge_rank_alarms(mine, [shared_rows(mine), theirs], make)
    first = merged[0]
    assert first.step == 120 and first.rank == 1 and first.ranks == (0, 1)  # within rank 0's episode
    assert first.alarms == ["loss spike", "gradient spike"] and first.z_loss == 40.0
    assert "raised on ranks 0, 1, largest loss on rank 1" in first.text
    assert made == [(300, LOSS_RISING, 1)] and new == [merged[1]] and merged[1].step == 300


def test_a_smaller_loss_on_the_other_rank_keeps_rank_0_and_unused_rows_are_ignored():
    mine = [_event(50, ["loss spike"], z_loss=30.0)]
    merged, new = merge_rank_alarms(mine, [np.zeros((0, 5)), shared_rows([_event(50, ["loss spike"], 9.0, 1)]),
                                           shared_rows([])], lambda *a: None)
    assert new == [] and merged[0].rank == 0 and merged[0].ranks == (0, 1) and merged[0].z_loss == 30.0
