"""One deployment's seats in the NATS ledger (see ``familiar.ledger.nats``): the mirror
of its keys kept by a KV watcher (``nats_keys.Mirror``), and the pump that asks the seat
policy (``policy.choose``), takes the seats its turn gives this process and hands them to
the process's one queue (``familiar.seats.Seats``); a seat given back goes to the next
process in one hop when the policy says whose turn it is (``nats_grants.HandOff``).
What it uses of the ledger is ``SeatsHost``, and no more."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import structlog

from familiar.ledger.base import DeploymentSeats, Holder, Kind, Lease, wait_event
from familiar.ledger.nats_grants import HandOff
from familiar.ledger.nats_held import HeldSeat, HeldSeats, Spares
from familiar.ledger.nats_keys import Mirror, Presence
from familiar.ledger.nats_kv import TtlKeyValue
from familiar.ledger.nats_trust import FleetKey
from familiar.ledger.policy import PATIENCE_S, Turn, choose
from familiar.seats import Seats

__all__ = ["NatsSeats", "SeatsHost"]

log = structlog.get_logger("familiar.ledger")


class SeatsHost(Protocol):
    """What one deployment's seats use of their ledger (``NatsLedger``), and no more."""

    ttl_s: float
    wait_s: float
    nonce: str
    key: FleetKey
    holder: Holder
    kv: TtlKeyValue
    held: HeldSeats

    @property
    def connected(self) -> bool: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def outage_since(self, failing_since: float | None) -> float | None: ...

    def grace_left(self) -> float: ...

    def warn_outage(self, error: str) -> None: ...

    def clear_warning(self) -> None: ...

    def unavailable(self, error: str) -> Exception: ...

    def reachable(self) -> bool: ...

    def opened(self) -> bool: ...


def fail_overdue(queue: Seats, outage: float, host: SeatsHost, error: str) -> float:
    """Fail the acquirers that waited ``wait_s`` during this outage; the next deadline."""
    now, nearest = time.monotonic(), host.ttl_s
    for acq in queue.live():
        left = max(acq.since, outage) + host.wait_s - now
        if left <= 0:
            queue.fail(acq, host.unavailable(error))
        else:
            nearest = min(nearest, left)
    return nearest


class NatsSeats(DeploymentSeats):
    """One deployment: a mirror of its keys, and the pump that feeds this process's queue."""

    def __init__(self, host: SeatsHost, dep_id: str, label: str, cap: int, reserve: int):
        super().__init__(dep_id, label, cap, reserve)
        self._host = host
        self._wake = asyncio.Event()
        self._mirror = Mirror(dep_id, host.nonce, host.key, self._wake.set, host.held)
        meta = {"id": dep_id, "label": label, "cap": cap, "reserve": reserve}
        self._me = Presence(host.kv, host.key, host.holder, host.nonce, meta)
        self._spares = Spares(host.held, host.reachable, host.spawn)
        self.hand_off = HandOff(
            self, host.held, self._mirror, self._spares, self._me, host.spawn, self.seen
        )
        self._synced = False
        self._tried: dict[int, int] = {}  # seat -> mirror revision a take failed at
        self._idle_since: float | None = None  # a seat left free by the waiters ahead
        self._failing_since: float | None = None
        self._error = ""
        self.pump: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None

    # -- what the queue uses (``familiar.seats.Seats``) --------------------------------

    def wanted(self) -> None:
        self.start()
        self._wake.set()

    async def put_back(self, lease: Lease) -> None:
        held = lease.token
        if not isinstance(held, HeldSeat):
            return
        reachable = self._host.reachable()
        if held.lost or held.released or not reachable or self.pump is None:
            await self._host.held.release(held, reachable=reachable)
            return
        self._spares.add(held)  # the pump gives it to the next acquirer, on, or back
        if self._mirror.waiters:  # another process's turn: at once, not after the pump
            self.hand_off.pass_on(self.attached.wants() if self.attached is not None else None)
        self._wake.set()

    def lost(self, lease: Lease) -> asyncio.Future[None] | None:
        return lease.token.lost_future if isinstance(lease.token, HeldSeat) else None

    def start(self) -> None:
        """Start the watcher and the pump (once)."""
        if not self._host.opened():
            raise RuntimeError("the NATS ledger is not open")
        if self.pump is None:
            self.watch = self._host.spawn(self.watch_loop())
            self.pump = self._host.spawn(self.pump_loop())

    def wake(self) -> None:
        self._wake.set()

    def resync(self) -> None:
        """The connection came back: the mirror is rebuilt before the next take."""
        self._synced = False
        self._wake.set()

    @property
    def live_caps(self) -> list[int]:
        """The caps the other live processes use for this deployment."""
        return list(self._mirror.caps.values())

    async def renew(self) -> None:
        """Renew this process's waiter key and cap key (the held seats renew apart)."""
        if self.pump is not None:  # this process uses the deployment: it said its cap
            await asyncio.gather(self._me.renew_ticket(), self._me.renew_cap())

    async def goodbye(self) -> None:
        await asyncio.gather(self._me.goodbye(), self.hand_off.decline())

    # -- the mirror ---------------------------------------------------------------

    def seen(self, seat: int, rev: int, holder: Holder | None) -> None:
        self._mirror.seen(seat, rev, holder)

    async def watch_loop(self) -> None:
        """Keep the mirror; restarted (and rebuilt from a snapshot) after each reconnect."""
        while True:
            self._synced = False
            try:
                watcher = await self._host.kv.kv.watch(f"{self.id}.>")
            except Exception as exc:
                log.debug("ledger watch failed", deployment=self.id, error=repr(exc))
                self._error = str(exc) or type(exc).__name__
                self._failing_since = self._failing_since or time.monotonic()
                self._wake.set()
                await asyncio.sleep(0.5)
                continue
            self._mirror.reset()
            self._failing_since = None
            try:
                async for entry in watcher:
                    if entry is None:
                        self._synced = True
                        self._wake.set()
                    else:
                        self._mirror.apply(entry)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    # -- the pump: hands seats to local acquirers, first come first served ------------

    async def pump_loop(self) -> None:
        ledger = self._host
        await self._me.announce()
        while True:
            self._wake.clear()
            queue = self.attached
            if self._mirror.grants and self._synced and ledger.connected and self._mirror.mine():
                await self.hand_off.adopt(queue)  # handed to this process: no write
            if queue is None or queue.wants() is None:
                if self._spares:  # released just now: this process may want it again
                    left = self._spares.linger_left()
                    if left > 0 and not self._mirror.waiters and ledger.connected:
                        await wait_event(self._wake, left)
                        continue
                    if ledger.connected:
                        self.hand_off.pass_on(None)  # another process's, or back
                    self._spares.give_back()
                if self._me.ticket is not None:
                    await self._me.leave()
                else:
                    await self._wake.wait()
                continue
            timeout = ledger.ttl_s  # the safety net: nothing is lost if a wake-up is
            outage = ledger.outage_since(self._failing_since)
            if outage is not None:
                ledger.warn_outage(self._error)
                timeout = fail_overdue(queue, outage, ledger, self._error)
            if queue.wants() is None or not ledger.connected:
                self._spares.give_back()
            elif not self._synced or ledger.grace_left() > 0:
                timeout = min(timeout, max(0.05, ledger.grace_left()))
            else:
                try:
                    progressed = await self._step(queue)
                    if self._failing_since is not None:  # that outage is over
                        self._failing_since = None
                        ledger.clear_warning()
                    if progressed:
                        continue
                except Exception as exc:  # a timeout, JetStream gone: an outage, retried
                    log.debug("ledger step failed", deployment=self.id, error=repr(exc))
                    self._error = str(exc) or type(exc).__name__
                    self._failing_since = self._failing_since or time.monotonic()
                    timeout = min(timeout, 1.0)
            if self._idle_since is not None:  # the patience with the waiters ahead
                left = self._idle_since + PATIENCE_S - time.monotonic()
                timeout = min(timeout, max(0.01, left))
            stale = self._mirror.stale_in()  # a grant the next may take (nats_grants)
            if stale is not None:
                timeout = min(timeout, max(0.01, stale))
            if not await wait_event(self._wake, timeout):
                self._tried.clear()

    async def _step(self, queue: Seats) -> bool:
        """One try at seats; ``True`` when something changed (look again at once)."""
        host = self._host
        keep = {f"s.{h.seat}" for h in host.held.of(self.id)}
        if await self._mirror.sweep(host.kv, 3 * host.ttl_s, keep, self.label):
            return True
        waiting = len(queue.live())
        mine = queue.wants()
        if mine is None:
            return False
        spares = self._spares.seats()
        free = self._mirror.free(self.cap, self._tried) + spares
        turn = self._turn(free, mine, self._idle_since)
        self._idle_since, seat = turn.idle_since, turn.seat
        if seat is None:
            self.hand_off.pass_on(mine, keep=False)  # the others' turn (or none may use it)
            if self._me.ticket is None or mine != self._me.kind:  # join, or say what we want
                await self._me.join(mine, self._me.ticket)
                return True
            return False
        seats = [seat]
        while len(seats) < waiting and not self._mirror.waiters:  # nobody else waits
            more = self._turn([s for s in free if s not in seats], mine, None).seat
            if more is None:
                break
            seats.append(more)
        given = False
        for seat in [s for s in seats if s in spares]:  # no round trip: still held
            spare = self._spares.pop(seat)
            if spare is not None:
                given |= self._give(queue, spare)
        taking = [s for s in seats if s not in spares]
        revs = [self._mirror.rev(s) for s in taking]
        take = self._host.held.take
        got = await asyncio.gather(
            *(
                take(self.id, self.label, s, rev, mine, self.seen)
                for s, rev in zip(taking, revs, strict=True)
            )
        )  # each conditional write is itself the grant
        for s, rev, held in zip(taking, revs, got, strict=True):
            if held is None:
                self._tried[s] = rev
            else:
                given |= self._give(queue, held)
        if queue.wants() is not None:  # what is left over, no waiting acquirer may use
            self.hand_off.pass_on(mine, keep=False)
        if given and self._me.ticket is not None and waiting > 1:
            await self._me.join(mine, None)  # a new ticket: the back of the queue
        return True

    def _turn(self, free: list[int], mine: Kind, idle_since: float | None) -> Turn:
        return choose(
            self.cap,
            self.reserve,
            free,
            self._mirror.line(self._me.ticket, mine),
            mine,
            live_caps=self._mirror.caps.values(),
            idle_since=idle_since,
            now=time.monotonic(),
        )

    def _give(self, queue: Seats, held: HeldSeat) -> bool:
        """Hand ``held`` to the queue's first acquirer that may use it (sessions first);
        kept as a spare when there is none (cancelled meanwhile)."""
        if queue.grant(Lease(held.seat, held)):
            return True
        self._spares.add(held)
        return False

    def fail_all(self, error: Exception) -> None:
        """The ledger closes: every acquirer still waiting fails with ``error``."""
        if self.attached is not None:
            self.attached.fail_all(error)
