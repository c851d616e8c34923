"""Seats: the per-deployment concurrency cap. A cap is not a rate limit.

``Seats`` bounds how many requests are in flight on one deployment (all of its
replicas together); the request *rate* is a separate throttle in ``backend``. Both
expose counts so that telemetry and the live view can show them.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Seats:
    """A FIFO capacity limiter with observable counts (in use, waiting, peak)."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("a deployment needs at least one seat")
        self.total = total
        self._sem = asyncio.Semaphore(total)
        self.in_use = 0
        self.waiting = 0
        self.peak = 0

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError("Seats.release() without a matching acquire()")
        self.in_use -= 1
        self._sem.release()

    @property
    def free(self) -> int:
        return self.total - self.in_use

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
        return f"Seats(total={self.total}, in_use={self.in_use}, waiting={self.waiting})"
