"""One deployment's keys in the NATS ledger, as one process sees and writes them: the
``Mirror`` of every key (kept by a KV watcher: seats held or free, the other processes
waiting with their tickets, the caps they use) and ``Presence``, what this process
tells the others (its waiter key and ticket, its cap, the deployment's meta).

Keys: ``<dep>.meta``, ``<dep>.s.<seat>`` (a seat held), ``<dep>.w.<ledger>`` (waiting,
with a ticket), ``<dep>.c.<ledger>`` (the cap a live process uses); every one but the
meta lives ``ttl_s`` unless written again.

A seat record may be a *grant*: its releaser wrote it for the waiter whose turn it was
(``"grant": <that ledger's name>``, the grantee's holder fields, sealed like any seat
record). Until the grantee writes its own record over it, the mirror keeps it as a
``Grant``: the seat is held, the grantee out of the line (it is being served); a grant
left alone for the patience (``policy.PATIENCE_S``) counts as a free seat, its grantee
out of the line (it had its turn): see ``nats_grants``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import structlog
from nats.js.kv import KeyValue

from familiar.ledger.base import Holder, Kind
from familiar.ledger.nats_held import UNKNOWN, HeldSeats
from familiar.ledger.nats_kv import KeyWrongLastRevisionError, TtlKeyValue
from familiar.ledger.nats_trust import FleetKey
from familiar.ledger.policy import PATIENCE_S, Waiter

__all__ = ["Grant", "Mirror", "Presence", "free_in", "grant_record", "granted_to", "waiting_line"]

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


@dataclass(frozen=True)
class Grant:
    """A seat record written by its releaser for the waiter ``to`` (a ledger's name), at
    revision ``rev``; ``seen``: when this process saw it (monotonic); ``age``: how old the
    server's stamp said it was then, by this host's clock (``inf`` when unknown)."""

    rev: int
    to: str
    seen: float
    age: float


def grant_record(holder: Holder, to: str) -> bytes:
    """The seat record that hands a seat to the waiter ``to`` (``holder``: its fields, as
    its waiter record gave them), before sealing."""
    return json.dumps({**asdict(holder), "grant": to}, separators=(",", ":")).encode()


def granted_to(data: bytes | None) -> str | None:
    """The ledger a seat record (checked) hands its seat to; ``None``: not a grant."""
    if not data or b'"grant"' not in data:
        return None
    try:
        to = json.loads(data).get("grant")
    except (ValueError, TypeError, AttributeError):
        return None
    return to if isinstance(to, str) and to else None


def _age(created: object) -> float:
    """Seconds since the server stamped an entry (``inf`` when it did not say)."""
    if isinstance(created, datetime):
        return time.time() - created.timestamp()
    return float("inf")


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
        self.who: dict[str, tuple[Holder, bool]] = {}  # waiters: (holder, takes grants)
        self.grants: dict[int, Grant] = {}  # seat -> the grant its record is
        self.promised: dict[str, float] = {}  # a grant this process is writing: to -> since

    def reset(self) -> None:
        self.seats, self.waiters, self.caps, self.touched = {}, {}, {}, {}
        self.who, self.grants, self.promised = {}, {}, {}

    def rev(self, seat: int) -> int:
        return self.seats.get(seat, (0, None))[0]

    def free(self, cap: int, tried: Mapping[int, int]) -> list[int]:
        """The free seats, and those granted to another process that left them alone for
        the patience (its turn went by)."""
        free = free_in(self.seats, cap, tried)
        if not self.grants:
            return free
        stale = [s for s in self._stale() if tried.get(s) != self.rev(s) and s < cap]
        return sorted(free + stale)

    def line(self, ticket: int | None, mine: Kind) -> list[Waiter]:
        """The line as the policy takes it, without the waiters being served (a grant to
        them on its way or in the bucket)."""
        if not self.grants and not self.promised:
            return waiting_line(self.waiters.values(), ticket, mine)
        served = self.served()
        others = [q for name, q in self.waiters.items() if name not in served]
        return waiting_line(others, ticket, mine)

    def named_line(self, ticket: int | None, mine: Kind | None) -> list[Waiter]:
        """``line`` with each waiter's name; this process in it only if it waits
        (``mine``), at its ticket or else the last of its kind."""
        served = self.served()
        line = [(t, Waiter(k, name=n)) for n, (t, k) in self.waiters.items() if n not in served]
        if mine is not None:
            line.append((ticket if ticket is not None else 1 << 62, Waiter(mine, True)))
        return [waiter for _t, waiter in sorted(line, key=lambda q: q[0])]

    def served(self) -> set[str]:
        """The processes a grant is on its way to or in the bucket for (any age)."""
        now = time.monotonic()
        for to, since in list(self.promised.items()):
            if now - since > 1.0:  # the write failed, or its entry never came: forget it
                del self.promised[to]
        return {g.to for g in self.grants.values()} | set(self.promised)

    def grantee(self, name: str, within: float) -> Holder | None:
        """The holder fields of waiter ``name`` if a grant may go to it: it takes grants and
        its waiter key was written within ``within`` seconds (as this process saw it)."""
        who, seen = self.who.get(name), self.touched.get(f"w.{name}")
        if who is None or not who[1] or seen is None or time.monotonic() - seen[0] > within:
            return None
        return who[0]

    def mine(self) -> list[tuple[int, Grant]]:
        """The grants to this process, not yet adopted."""
        if not self.grants:
            return []
        return [
            (seat, g)
            for seat, g in self.grants.items()
            if g.to == self._nonce and self._held.get(f"{self._dep}.s.{seat}") is None
        ]

    def _stale(self) -> list[int]:
        now = time.monotonic()
        return [
            seat
            for seat, g in self.grants.items()
            if g.to != self._nonce and now - g.seen >= PATIENCE_S
        ]

    def stale_in(self) -> float | None:
        """Seconds until the next grant to another process goes stale (``None``: none
        pending; a stale one is a free seat already, with the policy's own timers)."""
        if not self.grants:
            return None
        now = time.monotonic()
        left = [g.seen + PATIENCE_S - now for g in self.grants.values() if g.to != self._nonce]
        left = [t for t in left if t > 0]
        return min(left) if left else None

    def seen(self, seat: int, rev: int, holder: Holder | None, grant: Grant | None = None) -> None:
        old_rev, old = self.seats.get(seat, (0, None))
        if rev > old_rev:
            self.seats[seat] = (rev, holder)
            was = self.grants.pop(seat, None) if self.grants else None
            if grant is not None:
                first = not any(g.to != self._nonce for g in self.grants.values())
                self.grants[seat] = grant
                self.promised.pop(grant.to, None)
                if grant.to == self._nonce or was is not None or first:
                    self._wake()  # adopt it; a grantee back in line; its patience from now
            elif (old is None) != (holder is None) or was is not None:
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
            holder, grant = None, None
            if live:  # a record failing the key check still fills its seat, unbelieved
                data = check("seat", entry.key, entry.value or b"")
                holder = Holder.from_json(data or b"") or UNKNOWN
                to = granted_to(data)
                if to is not None:
                    rev = entry.revision or 0
                    grant = Grant(rev, to, time.monotonic(), _age(entry.created))
            self._mine(entry, live, holder)
            self.seen(int(name), entry.revision or 0, holder, grant)
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
        keep = keep | {"meta", f"w.{self._nonce}", f"c.{self._nonce}"}  # (meta: no TTL)
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
            self.who.pop(name, None)
            if self.waiters.pop(name, None) is not None:
                self._wake()
            return
        try:
            obj = json.loads(data)
            ticket = int(obj.get("ticket") or entry.revision or 0)
            kind: Kind = "batch" if obj.get("kind") == "batch" else "interactive"
        except (ValueError, TypeError, AttributeError, OverflowError):
            return
        holder = Holder.from_json(data)
        if holder is not None:
            self.who[name] = (holder, obj.get("grants") is True)
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
        record = {**record, "grants": True}  # a seat may be handed to it (nats_grants)
        value = self._key.seal("waiter", self._wkey, json.dumps(record).encode())
        try:
            self._wrev = await self._kv.update(self._wkey, value, self._wrev)
        except KeyWrongLastRevisionError as exc:  # ours changed (expired while cut off)
            if exc.actual is None:
                raise
            self._wrev = await self._kv.update(self._wkey, value, exc.actual)
