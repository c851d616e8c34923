"""Seats: a deployment's concurrency cap, and the one in-process queue in front of it.

``Seats`` bounds how many requests are in flight on one deployment (all of its
replicas together); the request *rate* is a separate throttle in ``backend``. A cap is
not a rate limit.

``Seats`` is this process's only queue of acquirers for a deployment: sessions first,
then first come, first served. It takes its seats from a *source*: its own memory
(``total`` seats, for this process alone), or a ledger's deployment
(``familiar.ledger``), where every familiar process sharing the ledger shares the cap.
A ledger keeps no queue of its own: it decides with the seat policy whether this
process may take a seat now, and hands each seat it takes to :meth:`Seats.grant`.

The wait is measured in two parts: the time during which this process itself held
every seat (``local``), and the rest (waiting for other processes: ``ledger``).
Readers (the live view, telemetry) take a frozen :meth:`Seats.statistics` snapshot, as
trio's ``CapacityLimiter.statistics()`` gives; the counters themselves are read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

Kind = Literal["interactive", "batch"]
KINDS: tuple[Kind, ...] = ("interactive", "batch")

__all__ = [
    "KINDS",
    "Acquirer",
    "Held",
    "Kind",
    "Lease",
    "SeatSource",
    "Seats",
    "SeatsStatistics",
]


@dataclass(frozen=True)
class Lease:
    """One seat held in a source; ``token`` is the source's own (a KV revision...)."""

    seat: int
    token: Any = None


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


@dataclass(eq=False)
class Acquirer:
    """One acquirer waiting in the queue: its kind, the future its seat is set on, and
    since when (monotonic) it waits."""

    kind: Kind
    future: asyncio.Future[Lease]
    since: float


class SeatSource(Protocol):
    """Where a queue's seats come from (a ledger's deployment), and what it is told."""

    def usable(self, kind: Kind) -> int:
        """How many seats (``0 .. n-1``) work of this kind may take."""

    def attach(self, queue: Seats) -> None:
        """``queue`` is this process's queue for the source (one per source)."""

    def try_take(self, kind: Kind) -> Lease | None:
        """A seat now, without waiting, when nobody of this process waits (or None)."""

    def wanted(self) -> None:
        """The queue changed (an acquirer came or left): look again."""

    async def put_back(self, lease: Lease) -> None:
        """A seat this process no longer uses (never raises)."""

    def lost(self, lease: Lease) -> asyncio.Future[None] | None:
        """A future resolved when ``lease`` is found lost (``None``: it cannot be)."""


class _Memory:
    """The seats of a ``Seats`` without a ledger: ``total`` of them, in this process."""

    def __init__(self, total: int) -> None:
        self.free = total
        self.queue: Seats | None = None

    def usable(self, kind: Kind) -> int:
        return 1  # every seat is seat 0: any kind may take it

    def attach(self, queue: Seats) -> None:
        self.queue = queue

    def try_take(self, kind: Kind) -> Lease | None:
        if self.free <= 0:
            return None
        self.free -= 1
        return _ANY

    def wanted(self) -> None:
        queue = self.queue
        while self.free > 0 and queue is not None and queue.grant(_ANY):
            self.free -= 1

    async def put_back(self, lease: Lease) -> None:
        self.free += 1
        self.wanted()

    def lost(self, lease: Lease) -> asyncio.Future[None] | None:
        return None


_ANY = Lease(0)


class Seats:
    """A capacity limiter with observable counts: this process's one queue of
    acquirers for a deployment, in front of its own memory or a ledger's deployment."""

    def __init__(
        self,
        total: int,
        *,
        ledger: SeatSource | None = None,
        kind: Kind = "interactive",
    ) -> None:
        if total < 1:
            raise ValueError("a deployment needs at least one seat")
        self._total = total
        self._ledger = ledger
        self._source: SeatSource = ledger if ledger is not None else _Memory(total)
        self._kind: Kind = kind
        self._lines: dict[Kind, deque[Acquirer]] = {k: deque() for k in KINDS}
        self._in_use = 0
        self._waiting = 0
        self._peak = 0
        self._full_s = 0.0  # seconds this process held every seat, before _full_since
        self._full_since: float | None = None
        self._source.attach(self)

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
    def ledger(self) -> SeatSource | None:
        return self._ledger

    def statistics(self) -> SeatsStatistics:
        others = self._waiting if self._ledger is not None and self._in_use < self._total else 0
        return SeatsStatistics(self._total, self._in_use, self._waiting, self._peak, others)

    # -- acquire / release -----------------------------------------------------------

    async def acquire(self, kind: Kind | None = None) -> Held:
        """Wait for a seat (``kind``: this queue's own by default). Cancellable; nothing
        is held when cancelled."""
        kind = kind or self._kind
        if not self._lines["interactive"] and not self._lines["batch"]:
            lease = self._source.try_take(kind)
            if lease is not None:
                self._took()
                return Held(lease, 0.0, 0.0)
        start = time.monotonic()
        full = self._full_clock(start)
        acq = Acquirer(kind, asyncio.get_running_loop().create_future(), start)
        line = self._lines[kind]
        line.append(acq)
        self._waiting += 1
        try:
            self._source.wanted()
            lease = await acq.future
        except BaseException:
            with contextlib.suppress(ValueError):
                line.remove(acq)
            fut = acq.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                await self._source.put_back(fut.result())  # granted as we were cancelled
            else:
                with contextlib.suppress(Exception):
                    self._source.wanted()  # one fewer: the source looks again
            raise
        finally:
            self._waiting -= 1
        now = time.monotonic()
        waited = now - start
        local = waited if self._ledger is None else min(waited, self._full_clock(now) - full)
        self._took()
        return Held(lease, local, waited - local)

    async def release(self, held: Held | None = None) -> None:
        """Give a seat back (to the ledger first). Never raises on a ledger fault."""
        if self._in_use <= 0:
            raise RuntimeError("Seats.release() without a matching acquire()")
        lease = held.lease if held is not None else None
        if lease is None:
            if self._ledger is not None:
                raise RuntimeError("a ledger-backed Seats is released with what acquire() gave")
            lease = _ANY
        self._in_use -= 1
        if self._full_since is not None and self._in_use < self._total:
            self._full_s += time.monotonic() - self._full_since
            self._full_since = None
        await self._source.put_back(lease)

    def _took(self) -> None:
        self._in_use += 1
        if self._in_use > self._peak:
            self._peak = self._in_use
        if self._in_use >= self._total and self._full_since is None:
            self._full_since = time.monotonic()

    def _full_clock(self, now: float) -> float:
        """Seconds so far during which this process held every seat."""
        since = self._full_since
        return self._full_s + (now - since if since is not None else 0.0)

    # -- what a source uses: the acquirers, sessions first, then first come ------------

    def wants(self) -> Kind | None:
        """The kind served next (sessions first); ``None`` when nobody waits."""
        for kind in KINDS:
            line = self._lines[kind]
            while line and line[0].future.done():
                line.popleft()
            if line:
                return kind
        return None

    def live(self) -> list[Acquirer]:
        """The acquirers still waiting, in the order they are served."""
        return [a for k in KINDS for a in self._lines[k] if not a.future.done()]

    def kinds(self) -> set[Kind]:
        """The kinds still waiting."""
        return {k for k in KINDS if any(not a.future.done() for a in self._lines[k])}

    def grant(self, lease: Lease) -> bool:
        """Hand ``lease`` to the first acquirer that may use its seat (sessions first);
        False when none may (the source keeps or gives back the seat)."""
        for kind in KINDS:
            line = self._lines[kind]
            while line and line[0].future.done():
                line.popleft()
            if line and self._source.usable(kind) > lease.seat:
                line.popleft().future.set_result(lease)
                return True
        return False

    def fail(self, acquirer: Acquirer, error: BaseException) -> None:
        """``acquirer`` stops waiting with ``error``."""
        with contextlib.suppress(ValueError):
            self._lines[acquirer.kind].remove(acquirer)
        if not acquirer.future.done():
            acquirer.future.set_exception(error)

    def fail_all(self, error: BaseException | None = None) -> None:
        """Every acquirer stops waiting: with ``error``, or cancelled when ``None``."""
        for kind in KINDS:
            line = self._lines[kind]
            while line:
                fut = line.popleft().future
                if fut.done():
                    continue
                if error is None:
                    fut.cancel()
                else:
                    fut.set_exception(error)

    # -- the context managers ----------------------------------------------------------

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
