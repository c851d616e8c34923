"""Seats: the per-deployment concurrency cap. A cap is not a rate limit.

``Seats`` bounds how many requests are in flight on one deployment (all of its
replicas together); the request *rate* is a separate throttle in ``backend``. Readers
(the live view, telemetry) take a frozen :meth:`Seats.statistics` snapshot, as trio's
``CapacityLimiter.statistics()`` gives; the counters themselves are read-only properties.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class SeatsStatistics:
    """A snapshot of one deployment's seats."""

    total: int
    in_use: int
    waiting: int
    peak: int

    @property
    def free(self) -> int:
        return self.total - self.in_use


class Seats:
    """A FIFO capacity limiter with observable counts (in use, waiting, peak)."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("a deployment needs at least one seat")
        self._total = total
        self._sem = asyncio.Semaphore(total)
        self._in_use = 0
        self._waiting = 0
        self._peak = 0

    @property
    def total(self) -> int:
        return self._total

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def peak(self) -> int:
        return self._peak

    @property
    def free(self) -> int:
        return self._total - self._in_use

    def statistics(self) -> SeatsStatistics:
        return SeatsStatistics(self._total, self._in_use, self._waiting, self._peak)

    async def acquire(self) -> None:
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        self._in_use += 1
        self._peak = max(self._peak, self._in_use)

    def release(self) -> None:
        if self._in_use <= 0:
            raise RuntimeError("Seats.release() without a matching acquire()")
        self._in_use -= 1
        self._sem.release()

    async def __aenter__(self) -> Seats:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Seats(total={self._total}, in_use={self._in_use}, waiting={self._waiting})"
