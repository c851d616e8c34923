"""Replica choice: which replica of a slot takes the next request (pure policy).

A request may carry a placement key: the prefix it shares with other requests (its
affinity key, a session or an article, and its prompt's head; the affinity key alone when
the prompt is short). A :class:`ReplicaSet` remembers where each key went (a bounded
memory), so requests that share a prompt prefix follow the first of them to the replica
whose prefix cache holds it; unless that replica is busier than the least loaded by more
than ``balance_abs`` requests *and* ``balance_rel`` times (SGLang's cache-aware router
uses the same two thresholds), when that one request falls back to least outstanding. A
key seen for the first time has nothing cached anywhere: it goes to the least loaded
replica (so the first requests of eight sessions spread evenly over four replicas, and a
load where no prefix repeats is balanced as least outstanding balances it), ties broken by
rendezvous hashing (each key's own order of the replicas: the same replica for a key
whenever the load is even, across processes too). A replica going away moves only the
keys placed on it.

Without a key, it picks the replica with the fewest outstanding requests among those not
cooling down (round robin among ties); a replica that fails in a way that
says *it* is unwell (connect error, timeout, 5xx) cools down for ``cooldown_s``,
doubling with each failure in a row (at most 16x), and work fails over to the others.
When every replica is cooling down, the one that recovers first is probed. The clock is
injected, so the policy is tested without servers or sleeps (pattern: vllm
production-stack's ``route_request(endpoints, stats, request)``).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from familiar.errors import BackendConnectError, BackendError, BackendHTTPError, BackendTimeout

PLACED = 4096  # keys whose replica is remembered (least recently used forgotten first)


@dataclass
class Replica:
    """One replica URL of a slot and what the policy knows of it."""

    url: str
    label: str  # the URL without userinfo: what records, events and messages show
    client: Any = None  # where and how it is asked: a transport.Target (the SlotClient's)
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
    """Placement by key, else least outstanding, with cooldown and failover over a slot's
    replicas."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        affinity: bool = True,
        balance_abs: int = 2,
        balance_rel: float = 1.5,
        balance_abs_cached: int | None = None,
        remember: int = PLACED,
    ) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one replica")
        self.replicas = list(replicas)
        self.cooldown_s = cooldown_s
        self.affinity = affinity
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        #: the absolute threshold for a request whose prefix is known to be cached at home
        #: (what it saves, a prefill, outweighs a few requests' imbalance)
        self.balance_abs_cached = balance_abs if balance_abs_cached is None else balance_abs_cached
        self._clock = clock
        self._rr = 0
        self.remember = remember
        self._placed: OrderedDict[str, Replica] = OrderedDict()  # key -> where it went

    def pick(self, key: str | None = None, *, cached: bool = False) -> Replica:
        """The replica for the next request (its ``outstanding`` is not changed here):
        where ``key`` went before unless it is too busy (``cached``: the request's prefix
        is known to be there, ``balance_abs_cached`` applies), else the least loaded (a
        new key is placed there)."""
        now = self._clock()
        ready = [r for r in self.replicas if not r.cooling(now)]
        if not ready:  # everyone is cooling down: probe the one that recovers first
            return min(self.replicas, key=lambda r: r.cooldown_until)
        low = min(r.outstanding for r in ready)
        if key is not None and self.affinity and len(self.replicas) > 1:
            home = self._placed.get(key)
            if home is None or home.cooling(now):  # new, or its replica went away
                least = [r for r in ready if r.outstanding == low]
                return self._place(key, max(least, key=lambda r: _weight(key, r.url)))
            self._placed.move_to_end(key)
            busier = home.outstanding - low
            limit = self.balance_abs_cached if cached else self.balance_abs
            if busier <= limit or home.outstanding <= low * self.balance_rel:
                return home
        best = [r for r in ready if r.outstanding == low]
        self._rr += 1
        return best[self._rr % len(best)]

    def placed(self, key: str) -> Replica | None:
        """Where ``key`` was placed (None: nowhere, or forgotten)."""
        return self._placed.get(key)

    def _place(self, key: str, replica: Replica) -> Replica:
        self._placed[key] = replica
        self._placed.move_to_end(key)
        while len(self._placed) > self.remember:
            self._placed.popitem(last=False)
        return replica

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


def _weight(key: str, url: str) -> int:
    """Rendezvous (highest random weight) hashing: each key's replica order is its own,
    and removing a replica moves only the keys that preferred it."""
    return int.from_bytes(hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest())
