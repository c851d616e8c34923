"""The seat policy: who may take a free seat now. Pure, and the only one: the host ledger
and the NATS ledger both feed it what they see (their free seats, the waiting processes
in ticket order, the caps live processes use) and obey its answer.

The rules, the same on every host:

* **the strictest live cap**: when processes' slots files disagree on ``parallel`` for
  one deployment, the smallest cap any live process uses applies to everyone;
* **reserve**: batch work takes only seats ``0 .. cap-reserve-1``, ``cap`` the strictest
  live one (one seat at least: ``batch_seats``); interactive work
  takes the highest free seat (the reserved ones first, leaving the rest to batches),
  batch work the lowest;
* **sessions before batches**, then **ticket order**: the free seats go round the
  waiting processes, interactive ones first, each kind in ticket order; a process may
  take the seat its own turn gives it (a process not yet queued counts as the last of
  its kind);
* **patience**: a free seat this process could take, left alone by the waiters ahead
  for ``patience_s`` (a waiter stopped with Ctrl-Z, its event loop blocked, a host gone
  whose waiter record has not expired yet), is this process's: seats never sit idle
  behind a waiter that does not act.

``choose`` answers one process ("which seat may I try now?"); ``deal`` answers a
releaser ("who gets the seats free now, this one among them?"): the same round of the
same line, so a seat handed on by its releaser goes where the waiter would have taken it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from familiar.ledger.base import Kind

__all__ = [
    "PATIENCE_S",
    "Turn",
    "Waiter",
    "batch_seats",
    "choose",
    "choose_seat",
    "deal",
    "effective_cap",
]

#: how long a free seat may sit idle behind the waiters ahead before it goes to the next
PATIENCE_S = 2.0


@dataclass(frozen=True)
class Waiter:
    """One waiting process in the queue (this one: ``me``; ``name``: the ledger's name for
    it, when a seat may be handed to it)."""

    kind: Kind
    me: bool = False
    name: str = ""


@dataclass(frozen=True)
class Turn:
    """The policy's answer: the seat to try now (or ``None``), and since when a seat this
    process could take has sat idle behind the waiters ahead (give it back next time)."""

    seat: int | None
    idle_since: float | None = None


def effective_cap(cap: int, live_caps: Iterable[int] = ()) -> int:
    """The cap that applies: the strictest of this process's and the live ones."""
    return min([cap, *(c for c in live_caps if c >= 1)])


def choose(
    cap: int,
    reserve: int,
    free: Iterable[int],
    queue: Sequence[Waiter],
    mine: Kind,
    *,
    live_caps: Iterable[int] = (),
    idle_since: float | None = None,
    now: float = 0.0,
    patience_s: float = PATIENCE_S,
) -> Turn:
    """Who gets a free seat: the seat this process (of kind ``mine``) may try now.

    ``cap``/``reserve`` are this process's; ``free`` the seats nobody holds; ``queue``
    the waiting processes in ticket order (this one marked ``me``, or absent: then it
    counts as the last of its kind); ``live_caps`` the caps the other live processes use;
    ``idle_since``/``now`` carry the patience from one call to the next (see ``Turn``).
    """
    top = effective_cap(cap, live_caps)
    low = batch_seats(top, reserve)  # batch work stays below the reserve
    seats = sorted(s for s in set(free) if 0 <= s < top)
    own = _pick(seats, mine, low)
    if own is None:
        return Turn(None)
    if all(w.me for w in queue):  # nobody else waits: the first round is this one's
        return Turn(own)
    line = list(queue) if any(w.me for w in queue) else [*queue, _ME[mine]]
    for seat, waiter in _rounds(seats, line, low, mine):
        if waiter.me:
            return Turn(seat)
    # the waiters ahead get every seat this process could take: wait, with patience
    since = now if idle_since is None else idle_since
    if now - since >= patience_s:
        return Turn(own)
    return Turn(None, since)


def deal(
    cap: int,
    reserve: int,
    free: Iterable[int],
    queue: Sequence[Waiter],
    *,
    live_caps: Iterable[int] = (),
) -> list[tuple[int, Waiter]]:
    """The free seats as the policy hands them round ``queue`` (ticket order; this process
    in it only if it waits): ``(seat, waiter)`` pairs in the order they are given (the
    same rounds ``choose`` goes through; no patience: the seats are free now)."""
    top = effective_cap(cap, live_caps)
    low = batch_seats(top, reserve)
    seats = sorted(s for s in set(free) if 0 <= s < top)
    return list(_rounds(seats, list(queue), low))


def batch_seats(top: int, reserve: int) -> int:
    """How many seats (``0 .. n-1``) batch work may take under the cap that applies: the
    reserve is counted from the strictest live cap, and like a slot's own (``reserve <
    parallel``) it leaves batch work one seat at least."""
    return top - min(reserve, top - 1)


def _pick(seats: Sequence[int], kind: Kind, low: int) -> int | None:
    """The seat work of ``kind`` takes of ``seats`` (sorted): interactive the highest,
    batch the lowest below the reserve (``low``)."""
    if kind == "interactive":
        return seats[-1] if seats else None
    return next((s for s in seats if s < low), None)


def _rounds(
    seats: list[int], line: list[Waiter], low: int, mine: Kind | None = None
) -> Iterator[tuple[int, Waiter]]:
    """Hand ``seats`` round ``line`` (sessions first, then ticket order), one a round each,
    until none is left or nobody may use the ones left (this process wanting ``mine``)."""
    seats = list(seats)
    line = sorted(line, key=lambda w: w.kind == "batch")  # stable: ticket order within a kind
    given = True
    while seats and given:
        given = False
        for waiter in line:
            seat = _pick(seats, mine if mine and waiter.me else waiter.kind, low)
            if seat is None:
                continue
            yield seat, waiter
            seats.remove(seat)
            given = True


_ME = {kind: Waiter(kind, True) for kind in ("interactive", "batch")}


def choose_seat(
    cap: int, reserve: int, free: Iterable[int], queue: Sequence[tuple[Kind, bool]], mine: Kind
) -> int | None:
    """``choose`` without live caps or patience, the queue as ``(kind, is_me)`` pairs."""
    return choose(cap, reserve, free, [Waiter(k, me) for k, me in queue], mine).seat
