"""One deployment's keys in the NATS ledger, as one process sees and writes them: the
``Mirror`` of every key (kept by a KV watcher: seats held or free, the other processes
waiting with their tickets, the caps they use) and ``Presence``, what this process
tells the others (its waiter key and ticket, its cap, the deployment's meta).

Keys: ``<dep>.meta``, ``<dep>.s.<seat>`` (a seat held), ``<dep>.w.<ledger>`` (waiting,
with a ticket), ``<dep>.c.<ledger>`` (the cap a live process uses); every one but the
meta lives ``ttl_s`` unless written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, replace
from typing import Any

import structlog
from nats.js.kv import KeyValue

from familiar.ledger.base import Holder, Kind
from familiar.ledger.nats_held import UNKNOWN, HeldSeats
from familiar.ledger.nats_kv import KeyWrongLastRevisionError, TtlKeyValue
from familiar.ledger.nats_trust import FleetKey
from familiar.ledger.policy import Waiter

__all__ = ["Mirror", "Presence", "free_in", "waiting_line"]

log = structlog.get_logger("familiar.ledger")


def free_in(
    mirror: Mapping[int, tuple[int, Holder | None]], cap: int, tried: Mapping[int, int]
) -> list[int]:
    """The free seats of a mirror (``seat -> (revision, holder or None)``), without those
    a take just failed on at their current revision (``tried``)."""
    return [
        seat
        for seat in range(cap)
        if mirror.get(seat, (0, None))[1] is None
        and tried.get(seat) != mirror.get(seat, (0, None))[0]
    ]


def waiting_line(
    others: Iterable[tuple[int, Kind]], ticket: int | None, mine: Kind
) -> list[Waiter]:
    """The waiting processes in ticket order (the stream sequence of their waiter key's
    write, the same on every host), as the seat policy takes them: the others'
    ``(ticket, kind)`` and this process's own ``ticket`` (for ``mine``), if any."""
    line = [(t, Waiter(kind)) for t, kind in others]
    if ticket is not None:
        line.append((ticket, Waiter(mine, True)))
    return [waiter for _t, waiter in sorted(line, key=lambda q: q[0])]


def _cap_of(data: bytes | None) -> int | None:
    """The cap in another process's ``c.<ledger>`` record (``None``: gone or not ours)."""
    if data is None:
        return None
    try:
        cap = int(json.loads(data)["cap"])
    except (ValueError, TypeError, KeyError, OverflowError):
        return None
    return cap if 1 <= cap <= 4096 else None


class Mirror:
    """Every key of one deployment as its watcher last said; ``wake`` on any change that
    can give a seat; a change to a seat this process holds goes to ``held`` (lost, or
    re-taken after an expiry)."""

    def __init__(
        self, dep_id: str, nonce: str, key: FleetKey, wake: Callable[[], None], held: HeldSeats
    ) -> None:
        self._dep, self._nonce, self._key, self._wake, self._held = dep_id, nonce, key, wake, held
        self.seats: dict[int, tuple[int, Holder | None]] = {}  # seat -> (rev, holder|free)
        self.waiters: dict[str, tuple[int, Kind]] = {}  # other ledgers: (ticket, kind)
        self.caps: dict[str, int] = {}  # other ledgers: the cap (parallel) each one uses
        self.touched: dict[str, tuple[float, int]] = {}  # "s.3"/"w.x" -> (last seen, rev)

    def reset(self) -> None:
        self.seats, self.waiters, self.caps, self.touched = {}, {}, {}, {}

    def rev(self, seat: int) -> int:
        return self.seats.get(seat, (0, None))[0]

    def free(self, cap: int, tried: Mapping[int, int]) -> list[int]:
        return free_in(self.seats, cap, tried)

    def line(self, ticket: int | None, mine: Kind) -> list[Waiter]:
        return waiting_line(self.waiters.values(), ticket, mine)

    def seen(self, seat: int, rev: int, holder: Holder | None) -> None:
        old_rev, old = self.seats.get(seat, (0, None))
        if rev > old_rev:
            self.seats[seat] = (rev, holder)
            if (old is None) != (holder is None):
                self._wake()

    def apply(self, entry: KeyValue.Entry) -> None:
        _dep, _, rest = entry.key.partition(".")
        what, _, name = rest.partition(".")
        live = entry.operation is None
        if live:
            self.touched[rest] = (time.monotonic(), entry.revision or 0)
        else:
            self.touched.pop(rest, None)
        check = self._key.check
        if what == "s" and name.isdigit():
            holder = None
            if live:  # a record failing the key check still fills its seat, unbelieved
                data = check("seat", entry.key, entry.value or b"")
                holder = Holder.from_json(data or b"") or UNKNOWN
            self._mine(entry, live, holder)
            self.seen(int(name), entry.revision or 0, holder)
        elif what == "c" and name != self._nonce:
            cap = _cap_of(check("cap", entry.key, entry.value or b"") if live else None)
            if self.caps.get(name) != cap:
                if cap is None:
                    self.caps.pop(name, None)
                else:
                    self.caps[name] = cap
                self._wake()
        elif what == "w" and name != self._nonce:
            self._waiter(
                entry, name, check("waiter", entry.key, entry.value or b"") if live else None
            )

    def _mine(self, entry: KeyValue.Entry, live: bool, holder: Holder | None) -> None:
        """A change to a seat this process holds, not made by it: taken by another (lost:
        its request is cancelled now), or deleted, purged or expired (re-taken at once,
        unless another process is quicker)."""
        held = self._held.get(entry.key)
        if held is None or held.lost or held.released or (entry.revision or 0) <= held.rev:
            return
        if live and entry.value != held.value:
            self._held.lose(held, holder)
        elif not live:
            self._held.renew_now(held)

    async def sweep(self, kv: TtlKeyValue, stale_s: float, keep: set[str], label: str) -> bool:
        """Purge keys nobody renewed for ``stale_s`` (three TTLs) but this process's own
        (``keep``: its seats) and the meta: the server should have expired them, but a
        server that crashed and came back can keep them for good (seen with nats-server
        2.15 after a SIGKILL), which would leave seats held and waiters queued by
        processes long gone. True when it purged something."""
        stale = time.monotonic() - stale_s
        keep = keep | {f"w.{self._nonce}", f"c.{self._nonce}"}
        purged = False
        for name, (seen, rev) in list(self.touched.items()):
            if seen > stale or name in keep:
                continue
            self.touched.pop(name, None)
            with contextlib.suppress(Exception):
                await kv.purge(f"{self._dep}.{name}", rev)
                purged = True
                log.warning(
                    "freed a seat-ledger key nobody renewed (its holder is gone; the server"
                    " kept it past its TTL)",
                    deployment=label,
                    key=name,
                )
        return purged

    def _waiter(self, entry: KeyValue.Entry, name: str, data: bytes | None) -> None:
        if data is None:  # gone, or not a familiar's (a forged ticket jumps no queue)
            if self.waiters.pop(name, None) is not None:
                self._wake()
            return
        try:
            obj = json.loads(data)
            ticket = int(obj.get("ticket") or entry.revision or 0)
            kind: Kind = "batch" if obj.get("kind") == "batch" else "interactive"
        except (ValueError, TypeError, AttributeError, OverflowError):
            return
        if self.waiters.get(name) != (ticket, kind):
            self.waiters[name] = (ticket, kind)
            self._wake()


class Presence:
    """What this process tells the others about one deployment: its place in the queue
    (the waiter key; its ticket is the stream sequence of a write without one), the cap
    it uses, and the deployment's meta."""

    def __init__(
        self, kv: TtlKeyValue, key: FleetKey, holder: Holder, nonce: str, meta: dict[str, Any]
    ) -> None:
        self._kv, self._key, self._holder, self._meta = kv, key, holder, meta
        dep = str(meta["id"])
        self._mkey, self._wkey, self._ckey = f"{dep}.meta", f"{dep}.w.{nonce}", f"{dep}.c.{nonce}"
        self._lock = asyncio.Lock()  # our waiter key's writes
        self.ticket: int | None = None
        self.kind: Kind = "interactive"
        self._wrev = 0  # last revision of our waiter key
        self._wsince = 0.0  # when this process joined the queue (wall clock)
        self._crev = 0  # last revision of our cap key

    async def announce(self) -> None:
        """The deployment's meta (for ``fleet``) and this process's cap (for the
        strictest-cap rule), before its first take; the cap key is renewed with the
        seats and purged on the way out."""
        meta = {k: self._meta[k] for k in ("label", "cap", "reserve")}
        data = self._key.seal("meta", self._mkey, json.dumps(meta).encode())
        try:
            await self._kv.put(self._mkey, data, ttl=False)
        except Exception as exc:
            log.debug("ledger meta not written", key=self._mkey, error=repr(exc))
        await self.renew_cap()

    async def renew_cap(self) -> None:
        record = json.dumps({"cap": self._meta["cap"]}).encode()
        with contextlib.suppress(Exception):
            self._crev = await self._kv.put(self._ckey, self._key.seal("cap", self._ckey, record))

    async def join(self, kind: Kind, ticket: int | None) -> None:
        """Join the queue or take a new ticket (a write without one, ``ticket=None``)."""
        async with self._lock:
            self._wsince = self._wsince if ticket else time.time()
            record = asdict(replace(self._holder, kind=kind, since=self._wsince))
            await self._write({**record, "ticket": ticket} if ticket else record)
            self.ticket, self.kind = ticket or self._wrev, kind

    async def leave(self) -> None:
        async with self._lock:
            if self.ticket is not None:
                self.ticket = None
                with contextlib.suppress(Exception):
                    self._wrev = await self._kv.purge(self._wkey, self._wrev)

    async def renew_ticket(self) -> None:
        async with self._lock:
            if self.ticket is not None:
                record = asdict(replace(self._holder, kind=self.kind, since=self._wsince))
                with contextlib.suppress(Exception):
                    await self._write({**record, "ticket": self.ticket})

    async def goodbye(self) -> None:
        """Leave the queue and take this process's cap away (never raises)."""
        await self.leave()
        if self._crev:
            with contextlib.suppress(Exception):
                await self._kv.purge(self._ckey, self._crev)

    async def _write(self, record: dict[str, Any]) -> None:
        value = self._key.seal("waiter", self._wkey, json.dumps(record).encode())
        try:
            self._wrev = await self._kv.update(self._wkey, value, self._wrev)
        except KeyWrongLastRevisionError as exc:  # ours changed (expired while cut off)
            if exc.actual is None:
                raise
            self._wrev = await self._kv.update(self._wkey, value, exc.actual)
