"""The step buffer: where a logged step's device-side partial results meet, and how they reach
the host in one copy.

Hooks queue small tensors (norms, counts, per-unit flags) with the buffer offset they belong to,
and element counts known from shapes alone as host numbers. At the step end the queued tensors of
each device are concatenated and added into that device's preallocated float64 buffer with one
``index_add_``, the host counts are added with one (non-blocking) host-to-device copy, and the
buffer goes to the host in one copy: non-blocking into pinned memory with an event on CUDA, read
when the event has completed (normally at the next step), and a plain copy on the CPU. Because
every component is a sum, one ``all_reduce(SUM)`` of the buffer combines ranks; the factors that
take out a loss scale or duplicate replicated copies come from gradscope.stats.rescale.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from gradscope.stats import PRESENCE, STATISTICS


AS_IS, SQUARE, POSITIVE = 0, 1, 2
"""How the step end transforms a queued partial before summing it: as it is, squared (a norm
queued for its sum of squares), or 1 where above zero or NaN and 0 elsewhere (a unit's largest
output queued for whether it fired)."""


@dataclass
class Entry:
    """One (layer, metric) of the long table and the buffer slots of its state components."""

    layer: str
    metric: str
    slots: dict[str, tuple[int, int]] = field(default_factory=dict)


class Layout:
    """Append-only map from (layer, metric, component) to buffer offsets.

    Entries are created the first time a statistic is seen (normally during the first logged
    step) and never move, so a copy taken when the layout had ``n`` entries can be read later.
    """

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.size = 0
        self._entry_ids: dict[tuple[str, str], int] = {}
        self._offsets: dict[tuple[int, str], int] = {}
        self._plans: dict[tuple[int, int], dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]] = {}

    def entry(self, layer: str, metric: str) -> int:
        key = (layer, metric)
        entry_id = self._entry_ids.get(key)
        if entry_id is None:
            entry_id = len(self.entries)
            self.entries.append(Entry(layer, metric))
            self._entry_ids[key] = entry_id
            self.slot(entry_id, PRESENCE)
        return entry_id

    def find(self, layer: str, metric: str) -> Entry | None:
        """The entry of (layer, metric) if it exists; never allocates."""
        entry_id = self._entry_ids.get((layer, metric))
        return None if entry_id is None else self.entries[entry_id]

    def slot(self, entry_id: int, component: str, size: int = 1) -> int:
        """Offset of ``component`` of entry ``entry_id``, allocating it on first use."""
        key = (entry_id, component)
        offset = self._offsets.get(key)
        if offset is None:
            offset = self.size
            self.size += size
            self._offsets[key] = offset
            self.entries[entry_id].slots[component] = (offset, size)
        return offset

    def compute(self, state: np.ndarray, n_entries: int) -> tuple[np.ndarray, np.ndarray]:
        """(entry ids, values) of the entries recorded in ``state``, a step's summed buffer."""
        ids_out, values_out = [], []
        for metric, (ids, offsets) in self._plan(n_entries, len(state)).items():
            present = state[offsets[PRESENCE]] > 0
            stat = STATISTICS[metric]
            if stat.compute_entry is not None:
                values = np.array([stat.compute_entry(state, self.entries[i].slots) for i in ids])
            else:
                values = stat.compute({c: state[o] for c, o in offsets.items()})
            ids_out.append(ids[present])
            values_out.append(np.asarray(values, dtype=np.float64)[present])
        if not ids_out:
            return np.empty(0, dtype=np.int64), np.empty(0)
        ids_all = np.concatenate(ids_out)
        order = np.argsort(ids_all, kind="stable")
        return ids_all[order], np.concatenate(values_out)[order]

    def _plan(self, n_entries: int, size: int) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Per metric: entry ids and the offsets of each scalar component, for the layout as it
        was when a copy of ``size`` slots and ``n_entries`` entries was taken."""
        plan = self._plans.get((n_entries, size))
        if plan is None:
            by_metric: dict[str, list[int]] = OrderedDict()
            for i, e in enumerate(self.entries[:n_entries]):
                by_metric.setdefault(e.metric, []).append(i)
            plan = {}
            for metric, ids in by_metric.items():
                stat = STATISTICS[metric]
                components = [PRESENCE, *stat.state, *stat.host_state]
                offsets = {
                    c: np.array([self.entries[i].slots.get(c, (0, 0))[0] for i in ids])
                    for c in components
                }
                plan[metric] = (np.array(ids, dtype=np.int64), offsets)
            self._plans = {(n_entries, size): plan}
        return plan


class PendingStep:
    """A logged step's buffer on its way to the host."""

    def __init__(self, step: int, n_entries: int, hosts: list[torch.Tensor], events: list) -> None:
        self.step = step
        self.n_entries = n_entries
        self._hosts = hosts
        self._events = events

    def ready(self) -> bool:
        """True when the copy has landed; never waits."""
        return all(e.query() for e in self._events)

    def state(self) -> np.ndarray:
        """The step's summed buffer on the host, waiting for the copy if it is still in flight."""
        for e in self._events:
            e.synchronize()
        total = self._hosts[0].numpy()  # our own fresh copy, safe to add into
        for h in self._hosts[1:]:
            total += h.numpy()
        return total


class _DeviceParts:
    """One device's queued partials: 0-dim values (most of them) and vectors, kept as parallel
    lists so that a step with thousands of partials allocates no tuple per partial."""

    __slots__ = ("scalar_offsets", "scalar_modes", "scalars", "vector_offsets", "vector_sizes",
                 "vector_modes", "vectors", "scatter_offsets", "scatter_modes", "scattered")

    def __init__(self) -> None:
        self.scalar_offsets: list[int] = []
        self.scalar_modes: list[int] = []
        self.scalars: list[torch.Tensor] = []
        self.vector_offsets: list[int] = []
        self.vector_sizes: list[int] = []
        self.vector_modes: list[int] = []
        self.vectors: list[torch.Tensor] = []
        self.scatter_offsets: list[tuple[int, ...]] = []
        self.scatter_modes: list[int] = []
        self.scattered: list[torch.Tensor] = []


class StepBuffer:
    """Collects a logged step's partial results and ships them to the host in one copy per device."""

    def __init__(self, layout: Layout, primary_device: torch.device) -> None:
        self.layout = layout
        self.primary_device = primary_device
        self._parts: dict[torch.device, _DeviceParts] = {}
        self._counts: dict[int, float] = {}
        self._on_cpu: dict[int, float] = {}
        """Results of CPU tensors already on the host, summed into the CPU's buffer."""
        self._device_buffers: dict[torch.device, torch.Tensor] = {}
        self._index_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- called from hooks ---------------------------------------------------------------------

    def add(self, offset: int, value: torch.Tensor | float, square: bool = False) -> None:
        """Queue ``value`` (squared at the step end if ``square``) to be summed at ``offset``. A
        Python float is a CPU tensor's result already read (gradscope.stats.reductions): it is
        added on the host, counted as the CPU's."""
        if value.__class__ is float:
            self._on_cpu[offset] = self._on_cpu.get(offset, 0.0) + (value * value if square else value)
            return
        parts = self._parts_on(value.device)
        if value.dim() == 0:
            parts.scalar_offsets.append(offset)
            parts.scalar_modes.append(SQUARE if square else AS_IS)
            parts.scalars.append(value)
        else:
            parts.vector_offsets.append(offset)
            parts.vector_sizes.append(value.numel())
            parts.vector_modes.append(SQUARE if square else AS_IS)
            parts.vectors.append(value)

    def add_positive(self, offset: int, values: torch.Tensor) -> None:
        """Queue, for each element of ``values`` (a 1-D tensor), 1 where it is above zero or NaN
        and 0 elsewhere, summed at ``offset`` onwards: the flags are taken at the step end for the
        whole step at once (a unit's largest output gives whether it fired)."""
        parts = self._parts_on(values.device)
        parts.vector_offsets.append(offset)
        parts.vector_sizes.append(values.numel())
        parts.vector_modes.append(POSITIVE)
        parts.vectors.append(values)

    def add_many(self, offsets: tuple[int, ...], values: torch.Tensor, square: bool = False) -> None:
        """Queue a 1-D ``values`` whose i-th element is summed at ``offsets[i]`` (one partial for a
        whole group of parameters, instead of one per parameter)."""
        parts = self._parts_on(values.device)
        parts.scatter_offsets.append(offsets)
        parts.scatter_modes.append(SQUARE if square else AS_IS)
        parts.scattered.append(values)

    def _parts_on(self, device: torch.device) -> _DeviceParts:
        parts = self._parts.get(device)
        if parts is None:
            parts = self._parts[device] = _DeviceParts()
        return parts

    def counts(self, offsets: tuple[int, ...]) -> None:
        """``count(offset)`` for each of ``offsets``."""
        for offset in offsets:
            self._counts[offset] = self._counts.get(offset, 0.0) + 1.0

    def count(self, offset: int, amount: float = 1.0) -> None:
        """Add a number known on the host (an element or call count) at ``offset``."""
        self._counts[offset] = self._counts.get(offset, 0.0) + amount

    def discard(self) -> None:
        """Drop what the current step queued (the step did not complete)."""
        self._parts.clear()
        self._counts.clear()
        self._on_cpu.clear()

    # -- called at the step end ----------------------------------------------------------------

    def finish(self, step: int, rescales: list[tuple[list[int], torch.Tensor]] | None = None,
               reduce=None) -> PendingStep:
        """Sum the step's partials into the device buffers and start their copy to the host.

        ``rescales``: (offsets, factor) pairs; those slots of every device's buffer are multiplied
        by ``factor`` (a device tensor, so no host read): how a loss scale or duplicate
        data-parallel copies come out. ``reduce(buffer)`` then combines the buffer across
        processes (an all-reduce) before the copy; with it, the buffers of several devices are
        first summed into the primary device's, so that all of the step is reduced.
        """
        size = self.layout.size
        cpu = torch.device("cpu")
        queued = list(self._parts) + ([cpu] if self._on_cpu and cpu not in self._parts else [])
        devices = [d for d in queued if d != self.primary_device] + [self.primary_device]
        buffers = []
        try:
            for device in devices:
                buffer = self._buffer(device, size)
                buffer.zero_()
                self._accumulate(device, buffer)
                if device.type == "cpu" and self._on_cpu:
                    values = np.zeros(size)
                    for offset, value in self._on_cpu.items():
                        values[offset] = value
                    buffer.add_(torch.from_numpy(values))
                for offsets, factor in rescales or ():
                    if offsets:
                        index = self._offsets_tensor(device, offsets)
                        buffer.index_copy_(0, index, buffer.index_select(0, index) * factor.to(buffer))
                buffers.append(buffer)
            primary = buffers[-1]
            if self._counts:
                counts = np.zeros(size)
                for offset, amount in self._counts.items():
                    counts[offset] += amount
                primary.add_(to_device(torch.from_numpy(counts), self.primary_device))
            if reduce is not None:
                for other in buffers[:-1]:
                    primary.add_(other.to(self.primary_device))
                buffers = [primary]
        finally:
            self.discard()
        if reduce is not None:
            reduce(buffers[0])
        hosts, events = [], []
        for buffer in buffers:
            host, event = _copy_to_host(buffer)
            hosts.append(host)
            if event is not None:
                events.append(event)
        return PendingStep(step, len(self.layout.entries), hosts, events)

    def _accumulate(self, device: torch.device, buffer: torch.Tensor) -> None:
        parts = self._parts.get(device)
        if parts is None or not (parts.scalars or parts.vectors or parts.scattered):
            return
        index, square, positive = self._index(device, parts)
        pieces = []
        if parts.scalars:
            pieces.append(torch.stack(parts.scalars).to(torch.float64))
        rest = [v.reshape(-1) for v in parts.vectors] + parts.scattered
        if len(rest) > 1 and len({v.dtype for v in rest}) == 1:  # one cast for all of them
            pieces.append(torch.cat(rest).to(torch.float64))
        else:
            pieces += [v.to(torch.float64) for v in rest]
        values = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        # each transform once for the whole step rather than once per partial in the hooks
        if square is not None:
            values = torch.where(square, values * values, values)
        if positive is not None:
            values = torch.where(positive, (~(values <= 0)).to(values.dtype), values)
        buffer.index_add_(0, index, values)

    def _offsets_tensor(self, device: torch.device, offsets: list[int]) -> torch.Tensor:
        key = (device, "rescale", tuple(offsets))
        index = self._index_cache.get(key)
        if index is None:
            index = self._index_cache[key] = to_device(torch.tensor(offsets), device)
        return index

    def _buffer(self, device: torch.device, size: int) -> torch.Tensor:
        buffer = self._device_buffers.get(device)
        if buffer is None or buffer.numel() != size:
            # the layout grows only while new statistics appear, normally in the first logged step
            buffer = torch.zeros(size, dtype=torch.float64, device=device)
            self._device_buffers[device] = buffer
        return buffer

    def _index(self, device: torch.device, parts: _DeviceParts):
        """Buffer offsets per element of the step's values, and where :data:`SQUARE` and
        :data:`POSITIVE` apply (bool masks, None where no element takes it), cached by layout of
        the partials (the same from one logged step to the next)."""
        key = (device, tuple(parts.scalar_offsets), tuple(parts.scalar_modes),
               tuple(parts.vector_offsets), tuple(parts.vector_sizes), tuple(parts.vector_modes),
               tuple(parts.scatter_offsets), tuple(parts.scatter_modes))
        cached = self._index_cache.get(key)
        if cached is None:
            index = np.concatenate([
                np.asarray(parts.scalar_offsets, dtype=np.int64),
                *[np.arange(o, o + n) for o, n in zip(parts.vector_offsets, parts.vector_sizes)],
                *[np.asarray(o, dtype=np.int64) for o in parts.scatter_offsets],
            ])
            modes = np.concatenate([
                np.asarray(parts.scalar_modes, dtype=np.int8),
                *[np.full(n, m, dtype=np.int8) for n, m in zip(parts.vector_sizes, parts.vector_modes)],
                *[np.full(len(o), m, dtype=np.int8) for o, m in zip(parts.scatter_offsets, parts.scatter_modes)],
            ])
            cached = (
                to_device(torch.from_numpy(index.astype(np.int64)), device),
                *(to_device(torch.from_numpy(modes == mode), device) if (modes == mode).any() else None
                  for mode in (SQUARE, POSITIVE)),
            )
            if len(self._index_cache) > 16:
                self._index_cache.clear()
            self._index_cache[key] = cached
        return cached


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-device without stalling the host: through pinned memory, non-blocking on CUDA."""
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def _copy_to_host(buffer: torch.Tensor) -> tuple[torch.Tensor, object | None]:
    """One copy of ``buffer`` to the host; on CUDA non-blocking into pinned memory plus an event."""
    if buffer.device.type == "cpu":
        return buffer.clone(), None
    if buffer.device.type == "cuda":
        host = torch.empty(buffer.shape, dtype=buffer.dtype, pin_memory=True)
        host.copy_(buffer, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event
    # other accelerators: a plain copy (it waits, which is the one host sync of the logged step)
    return buffer.to("cpu"), None
