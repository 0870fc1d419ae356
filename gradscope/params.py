"""Parameter statistics: the twin of ``hooks.py`` for parameters. At a logged step's optimizer
step it reduces every parameter's gradient (``grad_norm``, ``grad_nonfinite``) and, on weight
steps, its weights (``weight_norm``) and the change the update made (``update_ratio``), with
foreach kernels per (device, dtype) group, into the step buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from gradscope.buffer import Layout, StepBuffer
from gradscope.distributed import is_dtensor, local
from gradscope.layers import parameter_owner
from gradscope.stats import COUNT, DELTA_SQ, PRESENCE, SQ, WEIGHT_SQ
from gradscope.stats.reductions import (
    foreach_delta_norms,
    foreach_nonfinite_counts,
    foreach_norms,
    group_by_device_and_dtype,
    snapshot,
)


@dataclass
class _ParamSlots:
    name: str
    param: nn.Parameter
    sharded: bool
    grad_sq: int
    grad_n: int
    weight_sq: int
    weight_n: int
    nonfinite: int
    nonfinite_n: int


class ParameterStatistics:
    """The parameter statistics of one model, into one step buffer.

    ``updated``: ids of the parameters an optimizer steps (their ``update_ratio`` is recorded).
    """

    def __init__(
        self,
        model: nn.Module,
        layout: Layout,
        buffer: StepBuffer,
        updated: set[int],
    ) -> None:
        self.layout = layout
        self.buffer = buffer
        self._slots: list[_ParamSlots] = []
        self.owner_types: dict[str, str] = {}
        """The type name of the module that owns each parameter."""
        self._updated: set[int] = set()
        self._sharded: set[str] = set()
        self._by_name: dict[str, nn.Parameter] = {}
        self.sync(model, updated)
        self._snapshot: list | None = None
        self._copies: list[torch.Tensor | None] = []
        """The CPU memory of the weight copies, one per (device, dtype) run (:meth:`_copy_space`)."""
        self.observer: Callable[[str, torch.Tensor], None] | None = None
        """Called with (name, gradient) for each gradient of a recorded step (the monitor sets it
        on histogram steps)."""

    def sync(self, model: nn.Module, updated: set[int]) -> None:
        """Follow the model's parameters as they are now (parameters added or replaced since the
        last call get slots; removed ones are no longer read)."""
        known = {(s.name, id(s.param)): s for s in self._slots}
        parameters = list(model.named_parameters())
        self._slots = [known.get((name, id(p))) or self._slots_for(name, p) for name, p in parameters]
        modules = dict(model.named_modules())
        self.owner_types = {name: type(modules[parameter_owner(name)]).__name__ for name, _ in parameters}
        self._updated = {id(p) for _, p in parameters if id(p) in updated}
        self._sharded = {s.name for s in self._slots if s.sharded}
        self._by_name = {s.name: s.param for s in self._slots}

    def holds(self, name: str, param: object) -> bool:
        """Whether ``param`` is already read under ``name``."""
        return self._by_name.get(name) is param

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._slots]

    def layer_rows(self) -> list[dict]:
        """One row per parameter for the monitor's layer table."""
        return [
            {"layer": s.name, "type": self.owner_types[s.name], "kind": "parameter",
             "trainable": s.param.requires_grad}
            for s in self._slots
        ]

    def is_sharded(self, layer: str) -> bool:
        """Whether ``layer`` is a parameter sharded across ranks (FSDP2's DTensor)."""
        return layer in self._sharded

    def _slots_for(self, name: str, param: nn.Parameter) -> _ParamSlots:
        def slot(metric: str, component: str) -> int:
            return self.layout.slot(self.layout.entry(name, metric), component)

        return _ParamSlots(
            name, param, is_dtensor(param),
            slot("grad_norm", SQ), slot("grad_norm", PRESENCE),
            slot("weight_norm", SQ), slot("weight_norm", PRESENCE),
            slot("grad_nonfinite", COUNT), slot("grad_nonfinite", PRESENCE),
        )

    def record(self, with_weights: bool, keep_weights: bool) -> bool:
        """Gradient and NaN/Inf statistics of every parameter that has a gradient; with
        ``with_weights`` also ``weight_norm``, and with ``keep_weights`` a copy of the stepped
        weights for ``update_ratio``, held until :meth:`record_updates` or :meth:`drop`.
        Returns False when no parameter had a gradient."""
        slots = [s for s in self._slots if s.param.grad is not None]
        if not slots:
            return False
        grads = [local(s.param.grad) for s in slots]
        self._snapshot = [] if keep_weights and with_weights and self._updated else None
        for positions in group_by_device_and_dtype(grads).values():
            group = [slots[i] for i in positions]
            group_grads = [grads[i] for i in positions]
            grad_norms = foreach_norms(group_grads)
            counts = _nonfinite_counts(group_grads, grad_norms)
            for weights in _same_dtype_runs(group) if with_weights else ():
                weight_norms = foreach_norms([local(s.param.detach()) for s in weights])
                self.buffer.add_many(tuple(s.weight_sq for s in weights), torch.stack(weight_norms), square=True)
                self.buffer.counts(tuple(s.weight_n for s in weights))
                if self._snapshot is not None:
                    updated = [(s, n) for s, n in zip(weights, weight_norms) if id(s.param) in self._updated]
                    if updated:
                        tensors = [local(s.param) for s, _ in updated]
                        space = self._copy_space(tensors, len(self._snapshot))
                        self._snapshot.append((updated, snapshot(tensors, space)))
            if self.observer is not None:
                for s in group:
                    self.observer(s.name, local(s.param.grad))
            # one partial per group, not one per parameter: big models allocate far fewer objects
            self.buffer.add_many(tuple(s.grad_sq for s in group), torch.stack(grad_norms), square=True)
            self.buffer.counts(tuple(s.grad_n for s in group))
            self.buffer.counts(tuple(s.nonfinite_n for s in group))
            for s, count in zip(group, counts):
                if count is not None:
                    self.buffer.add(s.nonfinite, count)
        return True

    def _copy_space(self, tensors: list[torch.Tensor], run: int) -> torch.Tensor | None:
        """On the CPU, the memory the ``run``-th weight copy of a step goes into, kept from one
        weight step to the next: a fresh copy the size of the model faults in every page of it
        (the allocator gives large blocks back to the system when freed), which cost more than
        the copy itself and slowed the next step's backward too. Elsewhere None: a GPU's
        caching allocator keeps the freed block anyway."""
        first = tensors[0]
        if first.device.type != "cpu":
            return None
        size = sum(t.numel() for t in tensors)
        while len(self._copies) <= run:
            self._copies.append(None)
        space = self._copies[run]
        if space is None or space.numel() != size or space.dtype != first.dtype:
            space = self._copies[run] = torch.empty(size, dtype=first.dtype)
        return space

    @property
    def holds_weights(self) -> bool:
        return self._snapshot is not None

    def record_updates(self) -> None:
        """``update_ratio`` of the weights copied by :meth:`record`, now that the optimizer
        stepped; the copy is released."""
        snapshot_, self._snapshot = self._snapshot, None
        for updated, before in snapshot_ or ():
            deltas = foreach_delta_norms(before, [local(s.param.detach()).reshape(-1) for s, _ in updated])
            for (s, weight_norm), delta in zip(updated, deltas):
                entry = self.layout.entry(s.name, "update_ratio")
                self.buffer.add(self.layout.slot(entry, DELTA_SQ), delta, square=True)
                self.buffer.add(self.layout.slot(entry, WEIGHT_SQ), weight_norm, square=True)
                self.buffer.count(self.layout.slot(entry, PRESENCE))

    def drop(self) -> None:
        """Release the weight copy (the step ended without an update)."""
        self._snapshot = None


def _nonfinite_counts(grads: list[torch.Tensor], norms: list[torch.Tensor]) -> list:
    """NaN/Inf counts per gradient; None stands for a count of 0.

    On the CPU reading a value is not a device synchronisation, so the norms (already computed)
    tell which gradients can hold a NaN or Inf, and only those are counted: a finite norm means
    every element is finite. On a GPU one foreach kernel counts the whole group on the device.
    """
    if grads[0].device.type != "cpu":
        return foreach_nonfinite_counts(grads)
    finite = torch.isfinite(torch.stack(norms)).tolist()
    suspects = [g for g, ok in zip(grads, finite) if not ok]
    counted = iter(foreach_nonfinite_counts(suspects) if suspects else ())
    return [None if ok else next(counted) for ok in finite]


def _same_dtype_runs(group: list[_ParamSlots]) -> list[list[_ParamSlots]]:
    """Split a gradient group by the weights' dtype (normally one run: weights match gradients)."""
    runs: dict[tuple, list[_ParamSlots]] = {}
    for s in group:
        runs.setdefault((s.param.device, s.param.dtype), []).append(s)
    return list(runs.values())
