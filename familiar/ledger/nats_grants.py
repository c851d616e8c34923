"""A seat handed from one process to the next in one hop (the NATS ledger).

Taking a seat another process gave back used to cost three hops: the releaser's purge,
the watcher telling the waiter, the waiter's own write. When the seat policy's line shows
another process waiting whose turn it is and who may use the seat (``policy.deal``: the
same rounds as ``policy.choose``), the releaser instead writes the seat's key as granted
to that process: a conditional write on its own revision, sealed with the fleet key like
every record, naming the grantee by its ledger's name. The grantee's watcher sees the
grant, and its pump hands the seat to its queue at once, with no write of its own on the
way (then it writes its own record over the grant, in the background: the confirmation).

Why the cap holds at every instant: the key is held from the releaser's last request to
the grantee's first (the grant replaces the releaser's record; nobody may take a held
key), and a grant stays the grantee's seat until one of these, whichever is first:

* the grantee confirms it (its own record, renewed from then on like any seat);
* it gives it back or hands it on (nobody waiting any more, an acquirer cancelled);
* nobody renews it (the grantee died or left): the key expires after the TTL;
* the grantee leaves it alone for the patience (``PATIENCE_S``, 2 s, counted from when
  another process saw the grant): that process may take it (a conditional write on the
  grant's revision: one winner), as it takes any seat a waiter ahead leaves idle.

So the grantee uses a grant without a write only while it is surely still its own: the
server stamped it less than ``FRESH_S`` ago (else the grantee confirms first, as a take
would), and its confirmation must land within ``CONFIRM_S`` of the adoption or the seat
is lost (its request cancelled: ``seat_lost``). ``FRESH_S + CONFIRM_S`` stays half a
second short of the patience, for the hosts' clocks. A grant goes only to a process that
said in its waiter record it takes grants, whose waiter key was written within half a
TTL (renewed every third): a process stopped or gone gets no grant, and one that stops
right after gets its grant taken by the next after the patience, or back after the TTL.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from familiar.ledger.base import DeploymentSeats, Kind, Lease
from familiar.ledger.nats_held import HeldSeat, HeldSeats, Seen, Spares
from familiar.ledger.nats_keys import Mirror, Presence, grant_record
from familiar.ledger.policy import PATIENCE_S, deal, effective_cap
from familiar.seats import Seats

__all__ = ["CONFIRM_S", "FRESH_S", "HandOff"]

#: a grant the server stamped less than this long ago is used at once, without a write
FRESH_S = 0.5
#: the grantee's own record must be written over the grant within this long
CONFIRM_S = 1.0
assert FRESH_S + CONFIRM_S + 0.5 <= PATIENCE_S


class HandOff:
    """One deployment's one-hop hand-offs, as one process makes and takes them: the
    spares it releases go to the process whose turn it is (``pass_on``), the grants to
    it are adopted and handed to its queue (``adopt``)."""

    def __init__(
        self,
        dep: DeploymentSeats,
        held: HeldSeats,
        mirror: Mirror,
        spares: Spares,
        me: Presence,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        seen: Seen,
    ) -> None:
        self._dep, self._held, self._mirror, self._spares = dep, held, mirror, spares
        self._me, self._spawn, self._seen = me, spawn, seen
        self._done: dict[int, int] = {}  # seat -> the grant revision already adopted
        self.given = 0  # seats handed on to another process in one hop
        self.adopted = 0  # seats this process had in one hop

    def pass_on(self, mine: Kind | None, *, keep: bool = True) -> None:
        """Every spare to whom the policy gives it: this process's next acquirer (kept,
        when ``keep``), another process's (granted, in one hop), or nobody (given back).
        ``mine``: the kind this process's queue serves next (``None``: nobody waits)."""
        spares = self._spares.seats()
        if not spares:
            return
        dep, mirror = self._dep, self._mirror
        free = mirror.free(dep.cap, {})
        line = mirror.named_line(self._me.ticket, mine)
        dealt = deal(dep.cap, dep.reserve, free + spares, line, live_caps=mirror.caps.values())
        recent = self._held.kv.ttl_s / 2  # waiter keys are renewed every third
        kept = set()
        for seat, waiter in dealt:
            if seat not in spares:
                continue
            if waiter.me:
                if keep:
                    kept.add(seat)
                continue
            holder = mirror.grantee(waiter.name, recent)
            held = self._spares.pop(seat) if holder is not None else None
            if held is not None and holder is not None:
                mirror.promised[waiter.name] = time.monotonic()  # out of the line for now
                self._held.hand_on(held, grant_record(holder, waiter.name))
                self.given += 1
        self._spares.give_back([s for s in spares if s not in kept])  # the rest: back

    async def adopt(self, queue: Seats | None) -> bool:
        """Adopt the grants to this process and hand each to its queue's first acquirer
        that may use it (else on, or back); True when one was adopted."""
        adopted = False
        for seat, grant in self._mirror.mine():
            if self._done.get(seat) == grant.rev:
                continue
            self._done[seat] = grant.rev
            kind: Kind = (queue.wants() if queue is not None else None) or "interactive"
            now, d = time.monotonic(), self._dep
            age, deadline = grant.age + now - grant.seen, now + CONFIRM_S
            held = self._held.adopt(d.id, d.label, seat, grant.rev, kind, self._seen, age)
            fresh = -FRESH_S < age < FRESH_S
            if not fresh and not await self._held.confirm(held, deadline):
                self._held.forget(held)  # too old to trust unwritten, and not ours now
                continue
            adopted = True
            self.adopted += 1
            waiting = len(queue.live()) if queue is not None else 0
            if waiting > 1 and self._me.ticket is not None:
                self._spawn(self._me.join(kind, None))  # to the back of the line (first)
            if fresh:
                self._spawn(self._confirm(held, deadline))
            usable = seat < effective_cap(d.cap, self._mirror.caps.values())
            if queue is None or not usable or not queue.grant(Lease(seat, held)):
                self._spares.add(held)  # nobody here may use it now: kept, on, or back
        if len(self._done) > 4 * self._dep.cap:
            self._done = {s: r for s, r in self._done.items() if s in self._mirror.grants}
        return adopted

    async def decline(self) -> None:
        """On the way out: the grants to this process not adopted are given back (a
        conditional purge on the grant's revision; never raises)."""
        for seat, grant in self._mirror.mine():
            with contextlib.suppress(Exception):
                await self._held.kv.purge(f"{self._dep.id}.s.{seat}", grant.rev)

    async def _confirm(self, held: HeldSeat, deadline: float) -> None:
        """The grantee's own record over a grant it already uses; not in time: lost."""
        if not await self._held.confirm(held, deadline) and not held.released:
            self._held.lose(
                held,
                None,
                f"handed to this process but its own record could not be written within"
                f" {CONFIRM_S:g} s (the server slow or away)",
            )
