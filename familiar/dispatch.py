"""The dispatcher: bounded work board, one worker task per seat, routing by code.

Work items name the role they prefer. Every pool (a role served by a slot) runs one
worker task per seat of its slot, all inside one ``asyncio.TaskGroup``. A worker
takes its own role's work first; when there is none, it steals from the roles its
role may stand in for (``naughty`` <-> ``kindergarten``), so no worker pool idles
while interchangeable work waits (the policy lives in :mod:`familiar.routing`). The
board is bounded (``submit`` waits for room) and closed explicitly; results keep their
item ids; a failing item reports its error without touching the others unless
``fail_fast`` is set. Readers (a live view, telemetry) take frozen ``statistics()``
snapshots of the board and the pools, as trio's ``CapacityLimiter.statistics()`` gives.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Generic, TypeVar

from familiar.errors import BoardClosed, DispatchError
from familiar.routing import STEALS, takes_from

__all__ = [
    "STEALS",
    "BoardStatistics",
    "Dispatcher",
    "DispatcherStatistics",
    "Handler",
    "ItemResult",
    "Pool",
    "PoolStatistics",
    "WorkBoard",
    "WorkItem",
    "run_all",
]

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkItem(Generic[P]):
    id: str
    role: str
    payload: P


@dataclass(frozen=True)
class Pool:
    """A role served by one slot with ``seats`` worker tasks. ``client`` is opaque here."""

    role: str
    slot: str
    seats: int
    client: Any = None


@dataclass(frozen=True)
class ItemResult(Generic[R]):
    id: str
    role: str
    ran_as: str | None
    slot: str | None
    value: R | None = None
    error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


Handler = Callable[[WorkItem[P], Pool], Awaitable[R]]


@dataclass(frozen=True)
class BoardStatistics:
    """A snapshot of a work board: items queued (in all and per role), workers waiting."""

    maxsize: int
    queued: int
    pending: Mapping[str, int]
    idle: Mapping[str, int]
    closed: bool


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of one pool: items running now, finished, and taken from other roles."""

    role: str
    slot: str
    seats: int
    busy: int
    done: int
    stolen: int


@dataclass(frozen=True)
class DispatcherStatistics:
    board: BoardStatistics
    pools: tuple[PoolStatistics, ...]


class WorkBoard(Generic[P]):
    """A bounded, closable set of per-role FIFO queues with work stealing.

    Every operation costs the same however many tasks wait on it: a ``put`` waiting for
    room waits on its own future, in a FIFO line, and a ``take`` wakes only the first
    of them (a condition's ``notify_all`` woke every waiting ``put`` on every take: one
    32,000-chunk article made each item cost 32,000 wake-ups). Only the workers waiting
    in ``take`` (one per seat) are all woken when work arrives, as routing needs.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("a work board must be bounded (maxsize >= 1)")
        self.maxsize = maxsize
        self._queues: dict[str, deque[WorkItem[P]]] = {}
        self._idle: dict[str, int] = {}  # workers of each role waiting in take()
        self._size = 0
        self._closed = False
        self._putters: deque[asyncio.Future[None]] = deque()  # waiting for room, in order
        self._takers: list[asyncio.Future[None]] = []  # workers waiting for work

    def __len__(self) -> int:
        return self._size

    def pending(self, role: str) -> int:
        return len(self._queues.get(role, ()))

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> BoardStatistics:
        return BoardStatistics(
            maxsize=self.maxsize,
            queued=self._size,
            pending=MappingProxyType({r: len(q) for r, q in self._queues.items() if q}),
            idle=MappingProxyType({r: n for r, n in self._idle.items() if n}),
            closed=self._closed,
        )

    async def put(self, item: WorkItem[P]) -> None:
        while not self._closed and self._size >= self.maxsize:
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(room)
            try:
                await room
            except BaseException:
                if room.cancelled():
                    pass  # left in line, skipped by _wake_putter (no O(n) removal)
                else:
                    self._wake_putter()  # woken, then cancelled: the room goes to the next
                raise
        if self._closed:
            raise BoardClosed("the work board is closed")
        self._queues.setdefault(item.role, deque()).append(item)
        self._size += 1
        self._wake_takers()

    async def take(self, roles: Sequence[str]) -> WorkItem[P] | None:
        """The next item for a worker of ``roles[0]``; None once closed and drained.

        Its own role's work comes first. Work of the other ``roles`` (in order) is
        stolen only while no worker of that role is idle: routing stays deterministic
        (easy work goes to kindergarten while kindergarten has a free worker), and no
        pool idles while interchangeable work waits.
        """
        own, others = roles[0], roles[1:]
        self._idle[own] = self._idle.get(own, 0) + 1
        try:
            while True:
                for role in (own, *others):
                    queue = self._queues.get(role)
                    if queue and (role == own or not self._idle.get(role)):
                        self._size -= 1
                        self._wake_putter()
                        return queue.popleft()
                if self._closed:
                    return None
                work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._takers.append(work)
                try:
                    await work
                finally:
                    if work in self._takers:  # one per worker: a short list
                        self._takers.remove(work)
        finally:
            self._idle[own] -= 1
            if not self._idle[own] and self._queues.get(own):
                self._wake_takers()  # a thief may now take the work this role left

    async def close(self) -> None:
        self._closed = True
        self._wake_takers()
        while self._putters:
            room = self._putters.popleft()
            if not room.done():
                room.set_result(None)

    def _wake_putter(self) -> None:
        """Room for one more: wake the first ``put`` still waiting."""
        while self._putters:
            room = self._putters.popleft()
            if not room.done():
                room.set_result(None)
                return

    def _wake_takers(self) -> None:
        for work in self._takers:
            if not work.done():
                work.set_result(None)


class PoolState:
    """One pool's live counters, changed only by its worker tasks."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._busy = 0
        self._done = 0
        self._stolen = 0

    def started(self, stolen: bool) -> None:
        self._busy += 1
        if stolen:
            self._stolen += 1

    def finished(self) -> None:
        self._busy -= 1
        self._done += 1

    def statistics(self) -> PoolStatistics:
        p = self.pool
        return PoolStatistics(p.role, p.slot, p.seats, self._busy, self._done, self._stolen)


class Dispatcher(Generic[P, R]):
    """Fan work out to pools of workers; ``async with Dispatcher(pools, handler) as d``."""

    def __init__(
        self,
        pools: Sequence[Pool],
        handler: Handler[P, R],
        *,
        maxsize: int | None = None,
        fail_fast: bool = False,
        steals: Mapping[str, tuple[str, ...]] = STEALS,
    ) -> None:
        if not pools:
            raise ValueError("the dispatcher needs at least one pool")
        self._pools = [PoolState(p) for p in pools]
        self._handler = handler
        self._fail_fast = fail_fast
        self._steals = steals
        seats = sum(p.seats for p in pools)
        self.board: WorkBoard[P] = WorkBoard(maxsize or max(2 * seats, 1))
        self._futures: dict[str, asyncio.Future[ItemResult[R]]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._accepts = {p.role for p in pools} | {
            victim for p in pools for victim in steals.get(p.role, ())
        }

    async def __aenter__(self) -> Dispatcher[P, R]:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for state in self._pools:
            for seat in range(state.pool.seats):
                self._tg.create_task(
                    self._worker(state), name=f"worker:{state.pool.role}@{state.pool.slot}#{seat}"
                )
        await asyncio.sleep(0)  # let every worker reach the board: routing sees them idle
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        await self.board.close()
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:  # fail-fast: surface the item's error itself
            failed = group.subgroup(DispatchError)
            if failed is None:
                raise
            first: BaseException = failed
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            for fut in self._futures.values():
                fut.cancel()
            self._futures.clear()

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(
            self.board.statistics(), tuple(s.statistics() for s in self._pools)
        )

    def accepts(self, role: str) -> bool:
        return role in self._accepts

    async def submit(self, item: WorkItem[P]) -> asyncio.Future[ItemResult[R]]:
        """Queue an item (waits while the board is full); its result arrives on the future."""
        if not self.accepts(item.role):
            raise ValueError(f"no active pool can run work for role {item.role!r}")
        if item.id in self._futures:
            raise ValueError(f"duplicate work item id {item.id!r}")
        fut: asyncio.Future[ItemResult[R]] = asyncio.get_running_loop().create_future()
        self._futures[item.id] = fut
        try:
            await self.board.put(item)
        except BaseException:
            self._futures.pop(item.id, None)
            raise
        return fut

    async def _worker(self, state: PoolState) -> None:
        pool = state.pool
        roles = takes_from(pool.role, self._steals)
        while (item := await self.board.take(roles)) is not None:
            fut = self._futures.pop(item.id)
            state.started(stolen=item.role != pool.role)
            started = time.monotonic()
            try:
                value = await self._handler(item, pool)
            except Exception as exc:
                result: ItemResult[R] = ItemResult(
                    item.id,
                    item.role,
                    pool.role,
                    pool.slot,
                    error=exc,
                    started=started,
                    finished=time.monotonic(),
                )
                if not fut.done():
                    fut.set_result(result)
                if self._fail_fast:
                    raise DispatchError(item.id, exc) from exc
            else:
                result = ItemResult(
                    item.id,
                    item.role,
                    pool.role,
                    pool.slot,
                    value=value,
                    started=started,
                    finished=time.monotonic(),
                )
                if not fut.done():
                    fut.set_result(result)
            finally:
                state.finished()


async def run_all(
    pools: Sequence[Pool],
    handler: Handler[P, R],
    items: Iterable[WorkItem[P]],
    *,
    fail_fast: bool = False,
    maxsize: int | None = None,
) -> list[ItemResult[R]]:
    """Run every item through a dispatcher; results in the items' order."""
    async with Dispatcher(pools, handler, fail_fast=fail_fast, maxsize=maxsize) as d:
        futures: list[asyncio.Future[ItemResult[R]]] = []
        for item in items:
            futures.append(await d.submit(item))
        return list(await asyncio.gather(*futures))
