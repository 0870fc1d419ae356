"""The statistics gradscope records, as one table.

Each statistic declares its *state*: named components that the device side sums into the step
buffer (``dist_reduce_fx="sum"`` in torchmetrics' terms), so that summing the buffers of several
micro-batches, calls or ranks, element by element, gives the state of the whole step. The host side
turns a step's state into one value per layer with ``compute``. The names in ``STATISTICS`` are a
contract: the long table's ``metric`` column, the run directory and the rules all use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

PARAMETER = "parameter"
MODULE = "module"
ACTIVATION = "activation"
MODEL = "model"

# State components, named once: what a statistic sums into the step buffer.
PRESENCE = "n"
"""Every entry has this host component: how many contributions it got; 0 means not recorded."""
SQ = "sq"
"""A sum of squares."""
NUMEL = "numel"
"""An element count, known on the host from shapes."""
FLAT = "flat"
"""A count of saturated elements."""
COUNT = "count"
"""A count of NaN/Inf elements."""
DELTA_SQ = "delta_sq"
"""Sum of squares of a parameter's change across the optimizer step."""
WEIGHT_SQ = "weight_sq"
"""Sum of squares of a parameter before the optimizer step."""
FOUND_INF = "found_inf"
"""A GradScaler's found-Inf flags, summed over devices."""

# How a statistic's device state combines across data-parallel ranks (torchmetrics'
# ``dist_reduce_fx``): the buffer is always all-reduced with SUM, then rescaled by what these say.
SUM = "sum"
"""Each rank holds its own part of the step (its micro-batch): the parts add up."""
REPLICATED = "replicated"
"""Each rank holds the same value for a replicated parameter (DDP's averaged gradient): the sum
over ranks is divided by the world size. A sharded parameter's shards (FSDP2) add up as SUM."""


@dataclass(frozen=True)
class Statistic:
    """One recorded quantity.

    ``state`` names the scalar components summed on the device; ``host_state`` names those counted
    on the host from shapes alone (element counts), also summed. ``loss_scaled`` names the
    components that carry the square of the factor the loss was multiplied by before
    ``backward()`` as they are captured: a GradScaler's scale, and under data parallelism the
    1/world of the global (mean) loss; the step end divides it out. Parameter gradients are read
    after the scaler unscaled them and after DDP averaged them, so theirs carry none.
    ``dist_reduce`` says how the device state combines across ranks (``SUM`` or ``REPLICATED``).
    ``compute`` maps arrays of component sums (one entry per layer) to the values. A statistic
    whose state is not a fixed set of scalars (one flag per unit and call site) sets
    ``compute_entry`` instead: from the step's buffer and one entry's slots to its value.
    """

    name: str
    scope: str
    state: tuple[str, ...]
    host_state: tuple[str, ...]
    loss_scaled: tuple[str, ...]
    compute: Callable[[dict[str, np.ndarray]], np.ndarray] | None
    doc: str
    compute_entry: Callable[[np.ndarray, dict[str, tuple[int, int]]], float] | None = None
    dist_reduce: str = SUM


def _sqrt_of(component: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    return lambda s: np.sqrt(s[component])


def _ratio_of_norms(s: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(s[DELTA_SQ]) / np.sqrt(s[WEIGHT_SQ])
    # a parameter at exactly zero that did not move has ratio 0, not NaN
    return np.where((s[DELTA_SQ] == 0) & (s[WEIGHT_SQ] == 0), 0.0, ratio)


def _rms(s: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(s[SQ] / s[NUMEL])


def _fraction(s: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return s[FLAT] / s[NUMEL]


def site_components(site: int, units: int) -> tuple[str, str]:
    """Names of the per-unit alive counts and the call count of one activation call site."""
    return f"alive@{site}:{units}", f"calls@{site}:{units}"


def _dead_fraction(state: np.ndarray, slots: dict[str, tuple[int, int]]) -> float:
    """Units that never fired over units, across the call sites that ran in the step."""
    dead = units = 0
    for component, (offset, size) in slots.items():
        if component.startswith("alive@"):
            calls_offset, _ = slots["calls@" + component[len("alive@"):]]
            if state[calls_offset] > 0:
                dead += int(np.count_nonzero(state[offset:offset + size] == 0))
                units += size
    return dead / units if units else float("nan")


STATISTICS: dict[str, Statistic] = {
    s.name: s
    for s in (
        Statistic(
            "grad_norm", PARAMETER, (SQ,), (), (), _sqrt_of(SQ),
            "L2 norm of the parameter's accumulated gradient at the optimizer step.",
            dist_reduce=REPLICATED,
        ),
        Statistic(
            "weight_norm", PARAMETER, (SQ,), (), (), _sqrt_of(SQ),
            "L2 norm of the parameter before the optimizer step.",
            dist_reduce=REPLICATED,
        ),
        Statistic(
            "update_ratio", PARAMETER, (DELTA_SQ, WEIGHT_SQ), (), (), _ratio_of_norms,
            "||w_after - w_before|| / ||w_before|| across the optimizer step (needs optimizer=).",
            dist_reduce=REPLICATED,
        ),
        Statistic(
            "grad_nonfinite", PARAMETER, (COUNT,), (), (), lambda s: s[COUNT],
            "Number of NaN or Inf elements in the parameter's gradient.",
            dist_reduce=REPLICATED,
        ),
        Statistic(
            "out_grad_norm", MODULE, (SQ,), (), (SQ,), _sqrt_of(SQ),
            "L2 norm of the loss gradient with respect to the module's output: the "
            "backpropagated signal. Several outputs or calls add up as squares.",
        ),
        Statistic(
            "act_rms", MODULE, (SQ,), (NUMEL,), (), _rms,
            "Root mean square of the module's floating-point outputs (the forward signal).",
        ),
        Statistic(
            "saturation", ACTIVATION, (FLAT,), (NUMEL,), (), _fraction,
            "Fraction of a bounded activation's outputs at or within 1% of its bounds.",
        ),
        Statistic(
            "amp_skipped", MODEL, (FOUND_INF,), (), (), lambda s: np.minimum(s[FOUND_INF], 1.0),
            "1 when the GradScaler (monitor(..., scaler=)) skipped the step for Inf/NaN gradients, "
            "else 0; recorded on the model (layer \"\") only with a scaler.",
        ),
        Statistic(
            "dead_fraction", ACTIVATION, (), (), (), None,
            "Fraction of a ReLU/ReLU6 layer's units that were never above zero for any sample "
            "of the logged step.",
            compute_entry=_dead_fraction,
        ),
    )
}
