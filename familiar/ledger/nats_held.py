"""The seats this process holds in the NATS ledger: taken with a conditional write (or
adopted: handed to it by their releaser, see ``nats_grants``), renewed before their TTL
runs out, re-asserted after an outage, given back with a conditional purge or handed on
with a conditional write, and found lost when another holder took one while this
process was cut off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from familiar.ledger.base import Holder, Kind
from familiar.ledger.nats_kv import KeyWrongLastRevisionError, TtlKeyValue
from familiar.ledger.nats_trust import FleetKey

__all__ = ["UNKNOWN", "HeldSeat", "HeldSeats", "Seen"]

log = structlog.get_logger("familiar.ledger")
UNKNOWN = Holder("?", 0, "?")

#: what a deployment's mirror is told of a seat: (seat, revision, holder or None = free)
Seen = Callable[[int, int, Holder | None], None]


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class HeldSeat:
    """One seat this process holds (a lease's token)."""

    dep_id: str
    label: str
    seat: int
    rev: int
    value: bytes
    seen: Seen  # the deployment's mirror
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: when the last write that reset its TTL was sent (monotonic): the key is surely
    #: still this process's until this plus the TTL
    written: float = field(default_factory=time.monotonic)
    lost: bool = False
    released: bool = False
    #: resolved when the seat is found expired and taken: its request is cancelled
    lost_future: asyncio.Future[None] = field(default_factory=_future)

    @property
    def key(self) -> str:
        return f"{self.dep_id}.s.{self.seat}"


class HeldSeats:
    """Every seat this process holds, across deployments."""

    def __init__(
        self,
        kv: TtlKeyValue,
        key: FleetKey,
        holder: Holder,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self.kv, self.key, self.holder = kv, key, holder
        self._spawn = spawn
        self._held: dict[str, HeldSeat] = {}
        self._drops: set[asyncio.Task[Any]] = set()
        self.lost_count = 0  # seats found expired and taken while held

    def get(self, key: str) -> HeldSeat | None:
        return self._held.get(key)

    def of(self, dep_id: str) -> list[HeldSeat]:
        """The seats of one deployment this process holds."""
        return [h for h in self._held.values() if h.dep_id == dep_id]

    def all(self) -> list[HeldSeat]:
        return list(self._held.values())

    async def take(
        self, dep_id: str, label: str, seat: int, rev: int, kind: Kind, seen: Seen
    ) -> HeldSeat | None:
        """Seat ``seat`` if its last revision is ``rev`` (one conditional write: the write
        is the grant); ``None`` when another process was quicker."""
        holder = replace(self.holder, kind=kind, since=time.time())
        key = f"{dep_id}.s.{seat}"
        value = self.key.seal("seat", key, holder.to_json())
        sent = time.monotonic()
        try:
            new = await self.kv.update(key, value, rev)
        except KeyWrongLastRevisionError:
            return None
        held = HeldSeat(dep_id, label, seat, new, value, seen, written=sent)
        self._held[held.key] = held
        seen(seat, new, holder)
        return held

    def adopt(
        self, dep_id: str, label: str, seat: int, rev: int, kind: Kind, seen: Seen, age: float
    ) -> HeldSeat:
        """Seat ``seat``, handed to this process by its releaser (a grant at revision
        ``rev``, written ``age`` seconds ago): held from now on, without a write; its
        record becomes this process's own at the next write (:meth:`confirm`)."""
        holder = replace(self.holder, kind=kind, since=time.time())
        key = f"{dep_id}.s.{seat}"
        value = self.key.seal("seat", key, holder.to_json())
        written = time.monotonic() - max(0.0, min(age, self.kv.ttl_s))
        held = HeldSeat(dep_id, label, seat, rev, value, seen, written=written)
        self._held[held.key] = held
        return held

    async def confirm(self, held: HeldSeat, deadline: float) -> bool:
        """Write this process's own record over an adopted seat's grant (a conditional
        write on the grant's revision) before ``deadline`` (monotonic); False when it did
        not land in time or the seat is no longer the grant (taken by another)."""
        async with held.lock:
            if held.released or held.lost:
                return False
            sent = time.monotonic()
            try:
                async with asyncio.timeout(deadline - sent):
                    held.rev = await self.kv.update(held.key, held.value, held.rev)
            except Exception as exc:  # wrong revision, a timeout, the server away
                log.debug("ledger hand-off not confirmed", key=held.key, error=repr(exc))
                return False
            held.written = sent
            held.seen(held.seat, held.rev, Holder.from_json(held.value))
            return True

    def forget(self, held: HeldSeat) -> None:
        """An adopted seat never used nor confirmed: no longer held (its grant's TTL, or
        whoever took it, frees it)."""
        held.released = True
        self._held.pop(held.key, None)

    def hand_on(self, held: HeldSeat, record: bytes) -> None:
        """Give ``held`` to another process: its key written as ``record`` (a grant,
        sealed here) if it is still ours (a conditional write on its revision), in the
        background. The key is held all along; if the write fails, the TTL frees it."""
        if held.released:
            return
        held.released = True
        self._held.pop(held.key, None)
        if held.lost:
            return
        value = self.key.seal("seat", held.key, record)
        task = asyncio.create_task(self._write_grant(held, value))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    async def _write_grant(self, held: HeldSeat, value: bytes) -> None:
        try:
            async with asyncio.timeout(min(1.0, self.kv.op_timeout)), held.lock:
                await self.kv.update(held.key, value, held.rev)
        except Exception as exc:
            log.debug("ledger hand-off failed; the TTL frees it", key=held.key, error=repr(exc))

    async def renew(self, held: HeldSeat) -> None:
        async with held.lock:
            if held.released or held.lost:
                return
            sent = time.monotonic()
            try:
                try:
                    held.rev = await self.kv.update(held.key, held.value, held.rev)
                except KeyWrongLastRevisionError:  # changed behind us: expired meanwhile?
                    held.rev = await self._retake(held)
                held.written = sent
                held.seen(held.seat, held.rev, Holder.from_json(held.value))
            except KeyWrongLastRevisionError as exc:
                self.lose(held, exc.holder)
            except Exception as exc:
                log.debug("ledger renewal failed", key=held.key, error=repr(exc))

    def fresh(self, held: HeldSeat) -> bool:
        """Whether ``held`` is surely still this process's without asking the server: its
        last write is younger than half the TTL (renewals come every third). A process
        paused (SIGSTOP) or cut off past the TTL may have lost it unbeknown to it yet."""
        return not (held.lost or held.released) and (
            time.monotonic() - held.written < self.kv.ttl_s / 2
        )

    def renew_now(self, held: HeldSeat) -> None:
        self._spawn(self.renew(held))

    async def renew_all(self) -> None:
        await asyncio.gather(*(self.renew(h) for h in self.all()))

    def lose(self, held: HeldSeat, other: Holder | None, why: str = "") -> None:
        """``held`` expired and was taken (this process was paused or cut off past the
        TTL, or the seat was purged): the request on it is cancelled at once (the lease's
        lost future) and asks the ledger again; the TTL or its new holder frees the key."""
        if held.lost or held.released:
            return
        held.lost = True
        self.lost_count += 1
        who = f"{other.host} pid {other.pid}" if other and other.pid else "another holder"
        why = why or (
            f"taken by {who} while this process held it (its key expired while this process"
            f" was paused or cut off past the {self.kv.ttl_s:g} s TTL, or was purged)"
        )
        log.warning(
            f"seat {held.seat} of {held.label} was {why}: its request is cancelled and asks"
            " for a seat again (seat_lost)"
        )
        if not held.lost_future.done():
            held.lost_future.set_result(None)

    async def _retake(self, held: HeldSeat) -> int:
        last = await self.kv.last(held.key)
        if last.revision and last.live and last.value != held.value:
            # (our own value: a renewal whose ack was lost)
            data = self.key.check("seat", held.key, last.value)
            raise KeyWrongLastRevisionError(last.revision, Holder.from_json(data or b"") or UNKNOWN)
        return await self.kv.update(held.key, held.value, last.revision)

    async def release(self, held: HeldSeat, *, reachable: bool) -> None:
        """Give ``held`` back: purged now when the server is reachable, else its TTL frees
        it. Never raises; safe in a cancelled task's ``finally``."""
        if held.released:
            return
        held.released = True
        self._held.pop(held.key, None)
        if held.lost or not reachable:
            return  # the TTL frees it
        task = asyncio.create_task(self.drop(held))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)
        await asyncio.shield(task)

    async def drop(self, held: HeldSeat) -> None:
        """Purge a held seat (if it is still ours); never raises, never waits long."""
        held.released = True
        self._held.pop(held.key, None)
        try:
            async with asyncio.timeout(min(1.0, self.kv.op_timeout)), held.lock:
                rev = await self.kv.purge(held.key, held.rev)
            held.seen(held.seat, rev, None)
        except Exception as exc:
            log.debug("ledger release failed; the TTL frees it", key=held.key, error=repr(exc))

    async def drop_all(self) -> None:
        await asyncio.gather(*(self.drop(h) for h in self.all()))

    async def stop(self) -> None:
        for task in self._drops:
            task.cancel()
        if self._drops:
            await asyncio.wait(list(self._drops), timeout=5)


class Spares:
    """Seats this process just released while it may want them again at once: still held
    (and renewed) for a moment, handed to its next acquirer without a round trip when the
    seat policy gives this process the turn, else given back (a conditional purge).

    A spare never breaks a cap (its key is held all along); another process waiting for
    a seat gets it as soon as its waiter key shows in the mirror (the policy's turn) or
    after ``LINGER_S`` at most, whichever comes first."""

    LINGER_S = 0.005

    def __init__(
        self,
        held: HeldSeats,
        reachable: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self._held, self._reachable, self._spawn = held, reachable, spawn
        self._spare: dict[int, HeldSeat] = {}
        self._since = 0.0

    def _prune(self) -> None:
        """Drop the spares lost, released, or not surely ours any more (this process was
        paused or cut off: another may hold the seat now); given back, never handed out."""
        for seat, h in list(self._spare.items()):
            if not self._held.fresh(h):
                del self._spare[seat]
                self._spawn(self._held.release(h, reachable=self._reachable()))

    def __bool__(self) -> bool:
        self._prune()
        return bool(self._spare)

    def add(self, held: HeldSeat) -> None:
        if not self._spare:
            self._since = time.monotonic()
        self._spare[held.seat] = held

    def seats(self) -> list[int]:
        self._prune()
        return sorted(self._spare)

    def pop(self, seat: int) -> HeldSeat | None:
        self._prune()
        return self._spare.pop(seat, None)

    def linger_left(self) -> float:
        return self._since + self.LINGER_S - time.monotonic()

    def give_back(self, seats: Iterable[int] | None = None) -> None:
        """Release every spare (or those of ``seats``), in the background: never blocks
        the caller."""
        if seats is None:
            spares, self._spare = list(self._spare.values()), {}
        else:
            spares = [h for s in seats if (h := self._spare.pop(s, None)) is not None]
        for h in spares:
            self._spawn(self._held.release(h, reachable=self._reachable()))
