"""Order statistics over small samples, shared by the probes' lag window, the load generator and the benches."""

from __future__ import annotations

from collections.abc import Iterable


def quantile(samples: Iterable[float], q: float) -> float | None:
    """The sample at quantile q (0..1) by nearest rank, or None for no samples."""
    ordered = sorted(samples)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
