"""Seats: a deployment's concurrency cap, held in the ledger. A cap is not a rate limit.

``Seats`` bounds how many requests are in flight on one deployment (all of its
replicas together); the request *rate* is a separate throttle in ``backend``. Each
acquire first waits its turn in this process (a FIFO of at most ``total`` holders),
then, when a ledger is attached, for a seat in the ledger that every familiar process
shares (``familiar.ledger``): the two waits are measured apart. Readers (the live
view, telemetry) take a frozen :meth:`Seats.statistics` snapshot, as trio's
``CapacityLimiter.statistics()`` gives; the counters themselves are read-only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from familiar.ledger.base import DeploymentSeats, Kind, Lease


@dataclass(frozen=True)
class SeatsStatistics:
    """A snapshot of one deployment's seats, as this process sees them."""

    total: int
    in_use: int
    waiting: int
    peak: int
    ledger_waiting: int = 0

    @property
    def free(self) -> int:
        return self.total - self.in_use


@dataclass(frozen=True)
class Held:
    """One seat held: give it back with :meth:`Seats.release`."""

    lease: Lease | None
    local_wait_s: float
    ledger_wait_s: float

    @property
    def wait_s(self) -> float:
        return self.local_wait_s + self.ledger_wait_s


class Seats:
    """A FIFO capacity limiter with observable counts, optionally backed by a ledger."""

    def __init__(
        self,
        total: int,
        *,
        ledger: DeploymentSeats | None = None,
        kind: Kind = "interactive",
    ) -> None:
        if total < 1:
            raise ValueError("a deployment needs at least one seat")
        self._total = total
        self._sem = asyncio.Semaphore(total)
        self._ledger = ledger
        self._kind: Kind = kind
        self._in_use = 0
        self._waiting = 0
        self._ledger_waiting = 0
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

    @property
    def ledger(self) -> DeploymentSeats | None:
        return self._ledger

    def statistics(self) -> SeatsStatistics:
        return SeatsStatistics(
            self._total, self._in_use, self._waiting, self._peak, self._ledger_waiting
        )

    async def acquire(self) -> Held:
        """Wait for a seat: this process's turn, then the ledger's. Cancellable; nothing
        is held when cancelled."""
        start = time.monotonic()
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        local = time.monotonic()
        lease = None
        if self._ledger is not None:
            self._ledger_waiting += 1
            try:
                lease = await self._ledger.acquire(self._kind)
            except BaseException:
                self._sem.release()
                raise
            finally:
                self._ledger_waiting -= 1
        self._in_use += 1
        self._peak = max(self._peak, self._in_use)
        return Held(lease, local - start, time.monotonic() - local)

    async def release(self, held: Held | None = None) -> None:
        """Give a seat back (to the ledger first). Never raises on a ledger fault."""
        if self._in_use <= 0:
            raise RuntimeError("Seats.release() without a matching acquire()")
        self._in_use -= 1
        try:
            if self._ledger is not None and held is not None and held.lease is not None:
                await self._ledger.release(held.lease)
        finally:
            self._sem.release()

    def hold(self) -> _Hold:
        """``async with seats.hold() as held:`` -- a seat for the block's duration."""
        return _Hold(self)

    async def __aenter__(self) -> Seats:
        if self._ledger is not None:
            raise RuntimeError("a ledger-backed Seats is held with 'async with seats.hold()'")
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    def __repr__(self) -> str:
        return f"Seats(total={self._total}, in_use={self._in_use}, waiting={self._waiting})"


class _Hold:
    def __init__(self, seats: Seats) -> None:
        self._seats = seats
        self._held: Held | None = None

    async def __aenter__(self) -> Held:
        self._held = await self._seats.acquire()
        return self._held

    async def __aexit__(self, *exc: object) -> None:
        held, self._held = self._held, None
        await self._seats.release(held)
