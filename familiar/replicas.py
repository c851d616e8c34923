"""Replica choice: which replica of a slot takes the next request (pure policy).

A :class:`ReplicaSet` picks the replica with the fewest outstanding requests among
those not cooling down (round robin among ties); a replica that fails in a way that
says *it* is unwell (connect error, timeout, 5xx) cools down for ``cooldown_s``,
doubling with each failure in a row (at most 16x), and work fails over to the others.
When every replica is cooling down, the one that recovers first is probed. The clock is
injected, so the policy is tested without servers or sleeps (pattern: vllm
production-stack's ``route_request(endpoints, stats, request)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from familiar.errors import BackendConnectError, BackendError, BackendHTTPError, BackendTimeout


@dataclass
class Replica:
    """One replica URL of a slot and what the policy knows of it."""

    url: str
    label: str  # the URL without userinfo: what records, events and messages show
    client: Any = None  # the HTTP client talking to it (owned by the SlotClient)
    outstanding: int = 0
    failures: int = 0
    cooldown_until: float = 0.0

    def cooling(self, now: float) -> bool:
        return self.cooldown_until > now


@dataclass(frozen=True)
class ReplicaStatistics:
    label: str
    outstanding: int
    failures: int
    cooling_s: float


def replica_fault(error: BackendError) -> bool:
    """Errors that say the replica itself is unwell (not the request, not overload)."""
    if isinstance(error, BackendHTTPError):
        return error.status >= 500
    return isinstance(error, BackendConnectError | BackendTimeout)


class ReplicaSet:
    """Least-outstanding choice with cooldown and failover over a slot's replicas."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one replica")
        self.replicas = list(replicas)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._rr = 0

    def pick(self) -> Replica:
        """The replica for the next request (its ``outstanding`` is not changed here)."""
        now = self._clock()
        ready = [r for r in self.replicas if not r.cooling(now)]
        if not ready:  # everyone is cooling down: probe the one that recovers first
            return min(self.replicas, key=lambda r: r.cooldown_until)
        low = min(r.outstanding for r in ready)
        best = [r for r in ready if r.outstanding == low]
        self._rr += 1
        return best[self._rr % len(best)]

    def record(self, replica: Replica, error: BackendError | None) -> float | None:
        """Note an attempt's outcome; returns the cooldown started (seconds), if any."""
        if error is None:
            replica.failures = 0
            replica.cooldown_until = 0.0
            return None
        if len(self.replicas) < 2 or not replica_fault(error):
            return None
        replica.failures += 1
        backoff: float = self.cooldown_s * float(2 ** min(replica.failures - 1, 4))
        replica.cooldown_until = self._clock() + backoff
        return backoff

    def statistics(self) -> list[ReplicaStatistics]:
        now = self._clock()
        return [
            ReplicaStatistics(r.label, r.outstanding, r.failures, max(0.0, r.cooldown_until - now))
            for r in self.replicas
        ]
