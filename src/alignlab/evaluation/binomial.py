"""The Wilson score interval of a proportion (Wilson 1927), shared by the judges' agreement with human labels
(evaluation/probe.py) and the report's pooled rates (report/stats.py): unlike the normal approximation, it stays
inside [0, 1] near 0% and 100%."""

from __future__ import annotations

import math

Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval


def wilson(hits: float, total: float, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of hits / total, clipped to [0, 1] against rounding."""
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)
