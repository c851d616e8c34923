"""Pure: the knee of a sweep, and the ``parallel`` it suggests.

Throughput (output tok/s) grows with concurrency while the server has room, then flattens
once it is full; past that point extra requests only wait (time to first token climbs).
The *knee* is the smallest concurrency that already reaches ``share`` (90%) of the peak
throughput measured at any level that passed (``min_pass`` of its requests finished):
more in flight buys at most the last 10% and costs latency. That concurrency is the
suggested ``parallel``.

``ttft_climbs_at`` is the smallest level whose TTFT p99 is more than ``climb`` times the
lowest level's (and at least ``floor_ms`` above it): where requests start to queue.
``saturated`` is False when the knee is the highest level tested: throughput was still
rising there, and a sweep to higher concurrency may find a larger knee.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from familiar.fleetcheck.results import Level


@dataclass(frozen=True)
class Knee:
    suggested: int | None
    peak_tok_per_s: float
    peak_concurrency: int | None
    share: float
    ttft_climbs_at: int | None
    saturated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "suggested_parallel": self.suggested,
            "peak_output_tok_per_s": round(self.peak_tok_per_s, 2),
            "peak_concurrency": self.peak_concurrency,
            "share_of_peak": self.share,
            "ttft_p99_climbs_at": self.ttft_climbs_at,
            "saturated": self.saturated,
        }


def find_knee(
    levels: Sequence[Level],
    *,
    share: float = 0.9,
    min_pass: float = 0.99,
    climb: float = 2.0,
    floor_ms: float = 5.0,
) -> Knee:
    """The knee of ``levels`` (any order; see the module docstring)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], not {share}")
    ordered = sorted(levels, key=lambda lv: lv.concurrency)
    passed = [lv for lv in ordered if lv.ok > 0 and lv.pass_rate >= min_pass]
    climbs = ttft_climbs_at(ordered, climb=climb, floor_ms=floor_ms)
    if not passed:
        return Knee(None, 0.0, None, share, climbs, False)
    peak = max(passed, key=lambda lv: lv.output_tok_per_s)
    target = share * peak.output_tok_per_s
    knee = next(lv for lv in passed if lv.output_tok_per_s >= target)
    top = ordered[-1].concurrency
    return Knee(
        knee.concurrency,
        peak.output_tok_per_s,
        peak.concurrency,
        share,
        climbs,
        saturated=knee.concurrency < top,
    )


def ttft_climbs_at(
    levels: Sequence[Level], *, climb: float = 2.0, floor_ms: float = 5.0
) -> int | None:
    """The smallest concurrency whose TTFT p99 is ``climb`` times the first measured
    level's and ``floor_ms`` above it (None: it never does)."""
    measured = [
        (lv.concurrency, lv.ttft.p99)
        for lv in sorted(levels, key=lambda lv: lv.concurrency)
        if lv.ttft.p99 is not None
    ]
    if not measured:
        return None
    base = measured[0][1]
    for concurrency, p99 in measured[1:]:
        if p99 > base * climb and p99 - base >= floor_ms:
            return concurrency
    return None
