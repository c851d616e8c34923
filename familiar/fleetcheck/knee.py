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

An honest suggestion never exceeds what the server itself says it runs at once
(``server_parallel``: llama.cpp ``/props`` ``total_slots``): past that, requests only queue
inside the server, so :func:`cap_to_server` lowers it and says so (``capped_at``).
:func:`noise` says when the figures the knee rests on are within the measured spread.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
    #: the server's own capacity the suggestion was lowered to (None: not capped)
    capped_at: int | None = None
    #: why the knee may be noise (empty: no sign of it)
    noise: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "suggested_parallel": self.suggested,
            "peak_output_tok_per_s": round(self.peak_tok_per_s, 2),
            "peak_concurrency": self.peak_concurrency,
            "share_of_peak": self.share,
            "ttft_p99_climbs_at": self.ttft_climbs_at,
            "saturated": self.saturated,
            "capped_at_server_parallel": self.capped_at,
            "noise_warning": self.noise or None,
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


def cap_to_server(knee: Knee, server_parallel: int | None) -> Knee:
    """``knee`` with its suggestion lowered to ``server_parallel`` when it is above it."""
    if knee.suggested is None or server_parallel is None or server_parallel < 1:
        return knee
    if knee.suggested <= server_parallel:
        return knee
    return replace(knee, suggested=server_parallel, capped_at=server_parallel)


def noise(levels: Sequence[Level], knee: Knee, spreads: Mapping[int, float]) -> str:
    """Why the knee of ``levels`` may be noise, or "".

    ``spreads`` maps a concurrency to its throughput spread (max - min output tok/s over
    ``--repeat`` runs). The knee rests on two differences: the knee level's throughput
    above the target (``share`` of the peak), and the target above the level before it.
    When a spread around the knee is larger than the smaller of the two, another run may
    well move the knee. Without repeats: throughput falling as concurrency rises (no
    server serves less with more work offered) is the sign of a noisy host.
    """
    if knee.suggested is None:
        return ""
    by_c = {lv.concurrency: lv for lv in levels}
    order = sorted(by_c)
    at = order.index(knee.suggested) if knee.suggested in by_c else None
    target = knee.share * knee.peak_tok_per_s
    if spreads and at is not None:
        near = [order[i] for i in (at - 1, at) if 0 <= i < len(order)]
        if knee.peak_concurrency is not None:
            near.append(knee.peak_concurrency)
        margins = [by_c[order[at]].output_tok_per_s - target]
        if at > 0:
            margins.append(target - by_c[order[at - 1]].output_tok_per_s)
        margin = max(0.0, min(margins))
        spread = max((spreads.get(c, 0.0) for c in near), default=0.0)
        if spread > margin:
            return (
                f"the spread between runs ({spread:.1f} tok/s) is larger than the difference"
                f" the knee rests on ({margin:.1f} tok/s): the suggestion is within noise"
            )
        return ""
    tok = [by_c[c].output_tok_per_s for c in order if by_c[c].ok]
    falls = any(b < 0.8 * a for a, b in itertools.pairwise(tok))
    if falls:
        return (
            "throughput fell as concurrency rose: the host or server was probably busy with"
            " something else; bench again with --repeat 3 before trusting the suggestion"
        )
    return ""
