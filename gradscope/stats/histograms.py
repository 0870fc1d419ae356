"""Histograms on the device: one row per tensor with its range, moments and bin counts, so a
step's histograms leave the device in one copy."""

from __future__ import annotations

import torch

BINS = 64
"""Equal-width bins between a tensor's finite minimum and maximum."""

HEADER = 5
"""Columns before the bin counts: min, max, count, sum, sum of squares (finite elements)."""


def histogram_row(t: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """float64 row ``[min, max, count, sum, sum_sq, counts...]`` over the finite elements of
    ``t``, computed on ``t``'s device with no host read (the range is applied by rescaling to
    [0, 1] on the device, since ``torch.histc`` takes its bounds as Python numbers)."""
    x = t.detach().reshape(-1).float()
    finite = torch.isfinite(x)
    lo = torch.where(finite, x, torch.full_like(x, float("inf"))).amin()
    hi = torch.where(finite, x, torch.full_like(x, float("-inf"))).amax()
    span = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    scaled = torch.where(finite, (x - lo) / span, torch.full_like(x, -1.0))  # -1: outside, ignored
    counts = torch.histc(scaled, bins=bins, min=0.0, max=1.0)
    kept = torch.where(finite, x, torch.zeros_like(x)).double()
    header = torch.stack([lo.double(), hi.double(), finite.sum().double(), kept.sum(), kept.pow(2).sum()])
    return torch.cat([header, counts.double()])


def bucket_limits(lo: float, hi: float, bins: int = BINS) -> list[float]:
    """Right edges of the bins of a row with range [lo, hi]."""
    width = (hi - lo) / bins
    return [lo + width * (i + 1) for i in range(bins)]


class HistogramCollector:
    """A histogram step's rows, collected on the device from the hooks' observers and sent to the
    sinks that take histograms in one host copy per device."""

    def __init__(self) -> None:
        self.rows: list[tuple[tuple[str, str], torch.Tensor]] = []

    def collect(self, kind: str, name: str, t: torch.Tensor) -> None:
        """``kind`` is "grad" or "activation"; ``name`` the layer."""
        self.rows.append(((kind, name), histogram_row(t)))

    def send(self, step: int, sinks: list) -> None:
        rows, self.rows = self.rows, []
        by_device: dict[torch.device, list] = {}
        for name, row in rows:
            by_device.setdefault(row.device, []).append((name, row))
        for items in by_device.values():
            host = torch.stack([row for _, row in items]).cpu().numpy()
            for sink in sinks:
                if hasattr(sink, "log_histograms"):
                    sink.log_histograms(step, [name for name, _ in items], host)
