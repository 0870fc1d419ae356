"""The factors a step's buffer is multiplied by before its copy, read from what each statistic
declares (``Statistic.loss_scaled`` and ``Statistic.dist_reduce``), never from metric names.

- ``loss_scaled`` components carry the square of the factor the loss was multiplied by before
  ``backward()``: a GradScaler's scale, and under data parallelism 1/world (the global loss is the
  mean of the ranks' losses). They are divided by that factor squared.
- ``REPLICATED`` statistics of a parameter that every rank holds whole are summed over ranks by
  the all-reduce, so they are divided by the world size; a sharded parameter's shards add up.

Everything stays on the device: the factors are device tensors, so no host read.
"""

from __future__ import annotations

from typing import Callable

import torch

from gradscope.buffer import Layout
from gradscope.stats import REPLICATED, STATISTICS

Rescales = list[tuple[list[int], torch.Tensor]]
"""(buffer offsets, device factor) pairs, as ``StepBuffer.finish`` takes them."""


class RescalePlan:
    """The offsets to rescale, cached while the layout does not grow.

    ``sharded(layer)`` tells whether a parameter layer is sharded across ranks (FSDP2)."""

    def __init__(self, layout: Layout, sharded: Callable[[str], bool]) -> None:
        self.layout = layout
        self._sharded = sharded
        self._cached_size = -1
        self._loss_scaled: list[int] = []
        self._replicated: list[int] = []

    def _offsets(self) -> tuple[list[int], list[int]]:
        if self._cached_size != self.layout.size:
            loss_scaled, replicated = [], []
            for entry in self.layout.entries:
                stat = STATISTICS[entry.metric]
                for component in stat.loss_scaled:
                    if component in entry.slots:
                        loss_scaled.append(entry.slots[component][0])
                if stat.dist_reduce == REPLICATED and not self._sharded(entry.layer):
                    replicated += [entry.slots[c][0] for c in stat.state if c in entry.slots]
            self._loss_scaled, self._replicated = loss_scaled, replicated
            self._cached_size = self.layout.size
        return self._loss_scaled, self._replicated

    def rescales(self, loss_scale: torch.Tensor | None, world_size: int, device: torch.device) -> Rescales:
        """The (offsets, factor) pairs for one step: ``loss_scale`` is the step's loss scale (a
        device tensor) or None, ``world_size`` the number of data-parallel ranks."""
        if loss_scale is None and world_size == 1:
            return []
        loss_scaled, replicated = self._offsets()
        scale = (
            loss_scale.detach().to(device=device, dtype=torch.float64) if loss_scale is not None
            else torch.ones((), dtype=torch.float64, device=device)
        )
        if world_size > 1:
            scale = scale * world_size
        rescales: Rescales = [(loss_scaled, scale.reciprocal().square())]
        if world_size > 1:
            rescales.append((replicated, torch.tensor(1.0 / world_size, dtype=torch.float64, device=device)))
        return rescales
