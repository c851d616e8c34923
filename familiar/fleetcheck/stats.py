"""Pure statistics for the bench: percentiles and the mean / p50 / p99 summaries.

Percentiles interpolate linearly between the two nearest ranks (numpy's default, which
``vllm bench serve`` reports), so a table of familiar's agrees with one of vLLM's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values`` (not empty), linear interpolation."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be 0..100, not {p}")
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Mean, median and 99th percentile of one measure, in milliseconds (None: nothing
    was measured, e.g. every request failed)."""

    mean: float | None = None
    p50: float | None = None
    p99: float | None = None

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls()
        ms = [v * 1000.0 for v in values]
        return cls(sum(ms) / len(ms), percentile(ms, 50), percentile(ms, 99))

    def to_json(self) -> dict[str, float | None]:
        return {
            "mean": _round(self.mean),
            "p50": _round(self.p50),
            "p99": _round(self.p99),
        }

    @classmethod
    def from_json(cls, data: Any) -> Summary:
        """Read back what :meth:`to_json` wrote (``ValueError`` when it is not that)."""
        if not isinstance(data, dict):
            raise ValueError("a summary must be an object with mean, p50, p99")
        return cls(*(_number(data.get(k)) for k in ("mean", "p50", "p99")))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    return float(value)
