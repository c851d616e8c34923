"""One deployment's seats in the NATS ledger (see ``familiar.ledger.nats``): a mirror of
its keys kept by a KV watcher, a FIFO of this process's acquirers, and the pump that
takes seats in turn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog
from nats.js.kv import KeyValue

from familiar.ledger.base import (
    DeploymentSeats,
    Holder,
    Kind,
    Lease,
    wait_event,
)
from familiar.ledger.nats_rules import choose_seat

if TYPE_CHECKING:
    from familiar.ledger.nats import NatsLedger

log = structlog.get_logger("familiar.ledger")
_UNKNOWN = Holder("?", 0, "?")


class _Conflict(Exception):
    """A conditional write found another last revision (``actual``, when the server says;
    ``holder``, when it is known who holds the key now)."""

    def __init__(self, actual: int | None, holder: Holder | None = None) -> None:
        self.actual = actual
        self.holder = holder


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class _Held:
    seats: _Seats
    seat: int
    rev: int
    value: bytes
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lost: bool = False
    released: bool = False
    #: resolved when the seat is found expired and taken: its request is cancelled
    lost_future: asyncio.Future[None] = field(default_factory=_future)

    @property
    def key(self) -> str:
        return f"{self.seats.id}.s.{self.seat}"


@dataclass(eq=False)
class _Req:
    kind: Kind
    future: asyncio.Future[Lease]
    since: float  # monotonic


class _Seats(DeploymentSeats):
    """One deployment: a mirror of its keys, a FIFO of local acquirers and their pump."""

    def __init__(self, ledger: NatsLedger, dep_id: str, label: str, cap: int, reserve: int):
        super().__init__(dep_id, label, cap, reserve)
        self._ledger = ledger
        self._queue: deque[_Req] = deque()
        self._mirror: dict[int, tuple[int, Holder | None]] = {}  # seat -> (rev, holder|free)
        self._waiters: dict[str, tuple[int, Kind]] = {}  # other ledgers: (ticket, kind)
        self._synced = False
        self._wake = asyncio.Event()
        self._wlock = asyncio.Lock()  # our waiter key's writes
        self._ticket: int | None = None
        self._wrev = 0  # last revision of our waiter key
        self._wkind: Kind = "interactive"
        self._wsince = 0.0  # when this process joined the queue (wall clock)
        self._tried: dict[int, int] = {}  # seat -> mirror revision a take failed at
        self._touched: dict[str, tuple[float, int]] = {}  # "s.3"/"w.x" -> (last seen, rev)
        self._failing_since: float | None = None
        self._error = ""
        self._wkey = f"{dep_id}.w.{ledger.nonce}"
        self.pump: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None

    async def acquire(self, kind: Kind) -> Lease:
        self._ledger.start_seats(self)
        req = _Req(kind, asyncio.get_running_loop().create_future(), time.monotonic())
        self._queue.append(req)
        self._wake.set()
        try:
            return await req.future
        except BaseException:
            with contextlib.suppress(ValueError):
                self._queue.remove(req)
            self._wake.set()
            if req.future.done() and not req.future.cancelled() and not req.future.exception():
                await self.release(req.future.result())
            raise

    async def release(self, lease: Lease) -> None:
        await self._ledger._release(lease)

    def lost(self, lease: Lease) -> asyncio.Future[None] | None:
        return lease.token.lost_future if isinstance(lease.token, _Held) else None

    # -- the mirror -------------------------------------------------------------------

    def seen(self, seat: int, rev: int, holder: Holder | None) -> None:
        old_rev, old = self._mirror.get(seat, (0, None))
        if rev > old_rev:
            self._mirror[seat] = (rev, holder)
            if (old is None) != (holder is None):
                self._wake.set()

    def _apply(self, entry: KeyValue.Entry) -> None:
        _dep, _, rest = entry.key.partition(".")
        what, _, name = rest.partition(".")
        live = entry.operation is None
        if live:
            self._touched[rest] = (time.monotonic(), entry.revision or 0)
        else:
            self._touched.pop(rest, None)
        check = self._ledger.key.check
        if what == "s" and name.isdigit():
            holder = None
            if live:  # a record failing the key check still fills its seat, unbelieved
                data = check("seat", entry.key, entry.value or b"")
                holder = Holder.from_json(data or b"") or _UNKNOWN
            self._mine(entry, live, holder)
            self.seen(int(name), entry.revision or 0, holder)
        elif what == "w" and name != self._ledger.nonce:
            data = check("waiter", entry.key, entry.value or b"") if live else None
            if data is None:  # gone, or not a familiar's (a forged ticket jumps no queue)
                if self._waiters.pop(name, None) is not None:
                    self._wake.set()
                return
            try:
                obj = json.loads(data)
                ticket = int(obj.get("ticket") or entry.revision or 0)
                kind: Kind = "batch" if obj.get("kind") == "batch" else "interactive"
            except (ValueError, TypeError, AttributeError, OverflowError):
                return
            if self._waiters.get(name) != (ticket, kind):
                self._waiters[name] = (ticket, kind)
                self._wake.set()

    def _mine(self, entry: KeyValue.Entry, live: bool, holder: Holder | None) -> None:
        """A change to a seat this process holds, not made by it: taken by another (lost:
        its request is cancelled now), or deleted, purged or expired (re-taken at once,
        unless another process is quicker)."""
        ledger = self._ledger
        held = ledger._held.get(entry.key)
        if held is None or held.lost or held.released or (entry.revision or 0) <= held.rev:
            return
        if live and entry.value != held.value:
            ledger.lose(held, holder)
        elif not live:
            ledger.renew_now(held)

    async def watch_loop(self) -> None:
        """Keep the mirror; restarted (and rebuilt from a snapshot) after each reconnect."""
        while True:
            self._synced = False
            try:
                watcher = await self._ledger.kv.watch(f"{self.id}.>")
            except Exception as exc:
                log.debug("ledger watch failed", deployment=self.id, error=repr(exc))
                self._error = str(exc) or type(exc).__name__
                self._failing_since = self._failing_since or time.monotonic()
                self._wake.set()
                await asyncio.sleep(0.5)
                continue
            self._mirror, self._waiters, self._touched = {}, {}, {}
            self._failing_since = None
            try:
                async for entry in watcher:
                    if entry is None:
                        self._synced = True
                        self._wake.set()
                    else:
                        self._apply(entry)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    # -- the pump: hands seats to local acquirers, first come first served ------------

    async def pump_loop(self) -> None:
        ledger = self._ledger
        await ledger.put_meta(self)
        while True:
            self._wake.clear()
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if not self._queue:
                if self._ticket is not None:
                    await self.leave()
                else:
                    await self._wake.wait()
                continue
            timeout = ledger.ttl_s  # the safety net: nothing is lost if a wake-up is
            outage = ledger.outage_since(self._failing_since)
            if outage is not None:
                timeout = self._fail_overdue(outage)
            if not self._queue or not ledger.connected:
                pass
            elif not self._synced or ledger.grace_left() > 0:
                timeout = min(timeout, max(0.05, ledger.grace_left()))
            else:
                try:
                    progressed = await self._step()
                    if self._failing_since is not None:  # that outage is over
                        self._failing_since, ledger.warned = None, False
                    if progressed:
                        continue
                except Exception as exc:  # a timeout, JetStream gone: an outage, retried
                    log.debug("ledger step failed", deployment=self.id, error=repr(exc))
                    self._error = str(exc) or type(exc).__name__
                    self._failing_since = self._failing_since or time.monotonic()
                    timeout = min(timeout, 1.0)
            if not await wait_event(self._wake, timeout):
                self._tried.clear()

    def _fail_overdue(self, outage: float) -> float:
        """Fail the acquirers that waited ``wait_s`` during this outage; the next deadline."""
        ledger, now = self._ledger, time.monotonic()
        ledger.warn_outage(self._error)
        nearest = ledger.ttl_s
        for req in list(self._queue):
            left = max(req.since, outage) + ledger.wait_s - now
            if left <= 0:
                self._queue.remove(req)
                if not req.future.done():
                    req.future.set_exception(ledger.unavailable(self._error))
            else:
                nearest = min(nearest, left)
        return nearest

    async def _sweep(self) -> bool:
        """Purge keys nobody renewed for three TTLs: the server should have expired them,
        but a server that crashed and came back can keep them for good (seen with
        nats-server 2.15 after a SIGKILL), which would leave seats held and waiters queued
        by processes long gone. True when it purged something."""
        stale = time.monotonic() - 3 * self._ledger.ttl_s
        mine = {f"s.{h.seat}" for h in self._ledger.held_by(self)} | {f"w.{self._ledger.nonce}"}
        purged = False
        for name, (seen, rev) in list(self._touched.items()):
            if seen > stale or name in mine:
                continue
            self._touched.pop(name, None)
            with contextlib.suppress(Exception):
                await self._ledger.purge(f"{self.id}.{name}", rev)
                purged = True
                log.warning(
                    "freed a seat-ledger key nobody renewed (its holder is gone; the server"
                    " kept it past its TTL)",
                    deployment=self.label,
                    key=name,
                )
        return purged

    async def _step(self) -> bool:
        """One try at a seat; ``True`` when something changed (look again at once)."""
        if await self._sweep():
            return True
        reqs = [r for r in self._queue if not r.future.done()]
        mine: Kind = "interactive" if any(r.kind == "interactive" for r in reqs) else "batch"
        free = [
            s
            for s in range(self.cap)
            if self._mirror.get(s, (0, None))[1] is None
            and self._tried.get(s) != self._mirror.get(s, (0, None))[0]
        ]
        queue = [(kind, False, t) for t, kind in self._waiters.values()]
        if self._ticket is not None:
            queue.append((mine, True, self._ticket))
        queue.sort(key=lambda q: q[2])
        seat = choose_seat(self.cap, self.reserve, free, [(k, me) for k, me, _ in queue], mine)
        if seat is None:
            if self._ticket is None or mine != self._wkind:  # join, or say what we wait for
                await self._waiter_write(mine, self._ticket)
                return True
            return False
        rev = self._mirror.get(seat, (0, None))[0]
        held = await self._ledger.take(self, seat, rev, mine)
        if held is None:
            self._tried[seat] = rev
            return True
        ready = [r for r in self._queue if not r.future.done() and self.usable(r.kind) > seat]
        ready.sort(key=lambda r: r.kind != mine)  # sessions first, else first come
        taker = next(iter(ready), None)
        if taker is None:  # cancelled meanwhile
            await self._ledger.drop(held)
            return True
        self._queue.remove(taker)
        taker.future.set_result(Lease(seat, held))
        if self._ticket is not None and len(reqs) > 1:
            await self._waiter_write(mine, None)  # a new ticket: the back of the queue
        return True

    async def _waiter_write(self, kind: Kind, ticket: int | None) -> None:
        """Join the queue or take a new ticket (a write without one, ``ticket=None``)."""
        async with self._wlock:
            self._wsince = self._wsince if ticket else time.time()
            record = asdict(replace(self._ledger.holder, kind=kind, since=self._wsince))
            await self._write_waiter({**record, "ticket": ticket} if ticket else record)
            self._ticket, self._wkind = ticket or self._wrev, kind

    async def leave(self) -> None:
        async with self._wlock:
            if self._ticket is not None:
                self._ticket = None
                with contextlib.suppress(Exception):
                    self._wrev = await self._ledger.purge(self._wkey, self._wrev)

    async def renew_ticket(self) -> None:
        async with self._wlock:
            if self._ticket is not None:
                holder = replace(self._ledger.holder, kind=self._wkind, since=self._wsince)
                record = asdict(holder)
                with contextlib.suppress(Exception):
                    await self._write_waiter({**record, "ticket": self._ticket})

    async def _write_waiter(self, record: dict[str, Any]) -> None:
        value = self._ledger.key.seal("waiter", self._wkey, json.dumps(record).encode())
        try:
            self._wrev = await self._ledger.write(self._wkey, value, self._wrev)
        except _Conflict as exc:  # our own key changed (expired while cut off): rewrite it
            if exc.actual is None:
                raise
            self._wrev = await self._ledger.write(self._wkey, value, exc.actual)

    def waiting(self) -> list[_Req]:
        return list(self._queue)
