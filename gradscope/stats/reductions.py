"""Device-side reductions: pure functions from tensors to small tensors on the same device.

Nothing here reads a value back to the host; every function returns tensors that stay where their
inputs live, so hooks can queue them and the step end can move a whole step in one copy. Tests call
these same functions' results through the monitor and compare them with float64 autograd. Which
activations are tracked, and how each is judged, is the layer vocabulary's (``gradscope.layers``);
the reductions here take plain tensors and bounds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import torch

SATURATION_MARGIN = 0.01
"""A bounded activation's output counts as saturated within this fraction of its largest bound."""


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Reduce half-precision tensors in float32; float32 and float64 in their own precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


_DOT_LIMIT = 1 << 24
"""Above this many elements, sums of squares use the norm kernel's more careful accumulation."""


def sum_of_squares(t: torch.Tensor) -> torch.Tensor | float:
    """Σ t²: a 0-dim tensor on ``t``'s device, or on the CPU a Python float (reading a CPU value
    is no device synchronisation, and the step buffer adds a host number with no tensor op). For
    contiguous float32/float64 CPU tensors a BLAS dot of the tensor with itself, about 1.5x faster
    than the norm kernel there; otherwise the squared L2 norm (half precision reduced in float32).

    A float32 sum overflows once elements pass ~1e19 although every element is finite; on the CPU
    such a sum is redone in float64, so a finite tensor is never reported as non-finite there."""
    t = t.detach()
    if not t.is_cpu:
        return torch.linalg.vector_norm(t, dtype=norm_dtype(t.dtype)).square()
    if t.dtype in (torch.float32, torch.float64) and t.is_contiguous() and 0 < t.numel() <= _DOT_LIMIT:
        flat = t.view(-1)
        result = torch.dot(flat, flat).tolist()
    else:
        result = torch.linalg.vector_norm(t, dtype=norm_dtype(t.dtype)).square().tolist()
    if not math.isfinite(result) and t.dtype != torch.float64:
        result = torch.linalg.vector_norm(t, dtype=torch.float64).square().tolist()
    return result


def sum_of_squares_partial(t: torch.Tensor, on_host: bool | None = None) -> tuple[torch.Tensor | float, bool]:
    """Σ t² as the step buffer takes it: (value, whether the step end squares it). On a GPU the
    L2 norm, one kernel, squared with the step's other partials in float64 at the step end; on
    the CPU :func:`sum_of_squares`, read on the host (``on_host``: that choice, forced)."""
    if t.is_cpu if on_host is None else on_host:
        return sum_of_squares(t), False
    t = t.detach()
    return torch.linalg.vector_norm(t, dtype=norm_dtype(t.dtype)), True


def stored_values(t: torch.Tensor) -> torch.Tensor:
    """The elements a tensor stores: itself, or a sparse gradient's (``nn.Embedding(sparse=True)``)
    values, the only ones that can be non-zero; a complex tensor's as real numbers (its real and
    imaginary parts, a view: the norm of those is the complex norm, Σ|a|², and torch's norms with
    a real ``dtype`` refuse complex input)."""
    t = t.coalesce().values() if t.is_sparse else t
    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


def _one_value_per_element(t: torch.Tensor) -> torch.Tensor:
    """:func:`stored_values`, with a complex tensor's moduli (non-finite where either part is):
    counted as real and imaginary parts, one bad element would count twice."""
    t = t.coalesce().values() if t.is_sparse else t
    return t.abs() if t.is_complex() else t


def group_by_device_and_dtype(
    tensors: Sequence[torch.Tensor],
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Positions of ``tensors`` grouped by (device, dtype), the grouping foreach kernels need."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups


def foreach_norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """L2 norms of same-device, same-dtype tensors in batched foreach kernels (on the CPU, a norm
    that overflowed float32 is redone in float64, as in :func:`sum_of_squares`)."""
    dense = [stored_values(t) for t in tensors]
    with torch.no_grad():  # gradients of a backward(create_graph=True) require grad themselves
        norms = list(torch._foreach_norm(dense, 2, dtype=norm_dtype(dense[0].dtype)))
        if dense[0].device.type == "cpu" and dense[0].dtype != torch.float64:
            finite = torch.isfinite(torch.stack(norms)).tolist()
            if not all(finite):
                norms = [n.double() if ok else torch.linalg.vector_norm(t, dtype=torch.float64)
                         for n, t, ok in zip(norms, dense, finite)]
    return norms


def foreach_nonfinite_counts(tensors: list[torch.Tensor], one_kernel: bool | None = None) -> list[torch.Tensor]:
    """Number of NaN/Inf elements of each same-device tensor, with no host read.

    ``t * 0`` is 0 where ``t`` is finite and NaN where it is not, so its non-zero count is the
    answer. On CUDA a foreach 0-"norm" counts a whole group in one multi-tensor kernel. On the
    CPU, one tensor at a time is about 4x faster: each temporary reuses the memory the last one
    freed instead of faulting in fresh pages for the whole group (``one_kernel``: that choice,
    forced).
    """
    dense = [_one_value_per_element(t) for t in tensors]
    if one_kernel is None:
        one_kernel = bool(dense) and dense[0].device.type != "cpu"
    with torch.no_grad():
        if not one_kernel:
            return [torch.count_nonzero(t * 0.0) for t in dense]
        # counted in float32: a count in bfloat16 rounds past 256 (999 NaNs read 1000)
        return list(torch._foreach_norm(torch._foreach_mul(dense, 0.0), 0, dtype=torch.float32))


def snapshot(tensors: list[torch.Tensor], into: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Flat copies of same-device, same-dtype tensors, taken in one allocation (``into``, a flat
    tensor of their total size, when given).

    One concatenated copy is about 10x faster on the CPU than a copy per tensor (each of which
    faults in fresh pages); the returned pieces are views into it.
    """
    pieces = [t.detach().reshape(-1) for t in tensors]
    flat = torch.cat(pieces) if into is None else torch.cat(pieces, out=into)
    return list(torch.split(flat, [t.numel() for t in tensors]))


def foreach_delta_norms(before: list[torch.Tensor], after: list[torch.Tensor]) -> list[torch.Tensor]:
    """||after - before|| per pair, consuming ``before`` as scratch space."""
    torch._foreach_sub_(before, after)
    return foreach_norms(before)


_CHANNEL_PRODUCERS = ("Convolution", "BatchNorm", "GroupNorm", "InstanceNorm", "Pool")


def unit_dim(t: torch.Tensor, producer: str | None) -> int:
    """The dimension that indexes units: features (last) for (N, F) and (N, T, F), channels (1)
    for convolutional outputs. A 3-D tensor counts as convolutional when it was produced by a
    convolution, a channel normalisation or a pooling (``producer`` is its ``grad_fn`` name)."""
    if t.dim() >= 4:
        return 1
    if t.dim() == 3 and producer is not None and any(p in producer for p in _CHANNEL_PRODUCERS):
        return 1
    return t.dim() - 1


def unit_maxima(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Per unit along ``dim``, its largest output over samples and positions (NaN where one is):
    a fresh tensor, whatever later happens to ``t`` in place. A unit is alive where its maximum is
    above zero or NaN (one non-finite sample, the non-finite rule's business, must not make every
    unit of the layer look dead); the step buffer takes that flag (``StepBuffer.add_positive``)."""
    t = t.detach()
    if t.dim() <= 1:
        return t.clone()
    return t.amax(dim=[d for d in range(t.dim()) if d != dim])  # amax is NaN where a NaN is


def flat_count(t: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Number of elements of ``t`` at or within ``SATURATION_MARGIN`` of either bound."""
    lo, hi = bounds
    margin = SATURATION_MARGIN * max(abs(lo), abs(hi))
    center, half = (lo + hi) / 2, (hi - lo) / 2
    t = t.detach()
    shifted = t if center == 0 else t - center
    return torch.count_nonzero(shifted.abs() >= half - margin)


def floating_tensors(obj: object, depth: int = 0) -> Iterable[torch.Tensor]:
    """The floating-point tensors of a module's output: a tensor, or tensors nested in tuples,
    lists and mappings (Hugging Face ``ModelOutput`` is a mapping), three levels deep."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj
    elif depth < 3 and isinstance(obj, (tuple, list)):
        for item in obj:
            yield from floating_tensors(item, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for item in obj.values():
            yield from floating_tensors(item, depth + 1)
