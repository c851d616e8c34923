"""The one seat policy (``familiar/ledger/policy.py``), table-driven: every scenario runs
through the host ledger's view of the queue (ticket locks in the seats file) and the NATS
ledger's (waiter keys ordered by stream sequence, a mirror of seat keys), into the same
``choose``; both must give the expected seat."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from familiar.ledger.base import Holder, Kind
from familiar.ledger.host_files import free_seats, ticket, ticket_queue
from familiar.ledger.nats_keys import free_in, waiting_line
from familiar.ledger.policy import PATIENCE_S, Turn, Waiter, choose, choose_seat, effective_cap

OTHER = Holder("elsewhere", 7, "familiar translate")


@dataclass(frozen=True)
class Scenario:
    name: str
    cap: int  # this process's parallel
    held: tuple[int, ...]  # seats other processes hold
    ahead: tuple[Kind, ...]  # other waiting processes, in ticket order
    mine: Kind
    expect: int | None
    reserve: int = 0
    queued: bool = False  # this process holds a ticket (behind ``ahead``)
    live_caps: tuple[int, ...] = ()  # the parallel other live processes use


SCENARIOS = [
    Scenario("batch takes the lowest seat below the reserve", 3, (0,), (), "batch", 1, 1),
    Scenario("the reserved seat is out of a batch's reach", 3, (0, 1), (), "batch", None, 1),
    Scenario("a session takes the highest seat", 3, (), (), "interactive", 2, 1),
    Scenario("a newcomer waits behind its kind", 3, (1, 2), ("interactive",), "interactive", None),
    Scenario(
        "two free seats: one for the waiter ahead, one for me", 3, (1,), ("batch",), "batch", 2
    ),
    Scenario("sessions go before waiting batches", 2, (1,), ("batch",), "interactive", 0),
    Scenario("batches wait behind waiting sessions", 3, (1, 2), ("interactive",), "batch", None),
    Scenario(
        "in the queue: the one ahead gets the only seat",
        3,
        (1, 2),
        ("interactive",),
        "interactive",
        None,
        queued=True,
    ),
    Scenario(
        "in the queue: free seats go round it in ticket order",
        3,
        (1,),
        ("interactive",),
        "interactive",
        0,
        queued=True,
    ),
    Scenario(
        "a batch ahead cannot use the reserved seat: the session behind gets it",
        2,
        (0,),
        ("batch",),
        "interactive",
        1,
        reserve=1,
        queued=True,
    ),
    Scenario("the strictest live cap holds", 4, (0, 1), (), "interactive", None, live_caps=(2,)),
    Scenario(
        "under the strictest cap, the top seat", 4, (0,), (), "interactive", 1, live_caps=(2,)
    ),
    Scenario("my own cap is the strictest", 2, (0, 1), (), "interactive", None, live_caps=(4,)),
    Scenario("a dead process's cap is no cap", 2, (0,), (), "batch", 1, live_caps=(0,)),
    Scenario(
        "the strictest cap counts for the waiters ahead too",
        4,
        (0,),
        ("interactive",),
        "interactive",
        None,
        live_caps=(2, 3),
    ),
]


def host_turn(s: Scenario, *, idle_since: float | None = None, now: float = 0.0) -> Turn:
    """What the host ledger asks the policy: tickets are lock offsets by kind and time."""
    others = [ticket(kind, 1_000 + i) for i, kind in enumerate(s.ahead)]
    mine = ticket(s.mine, 1_000 + len(s.ahead)) if s.queued else None
    return choose(
        s.cap,
        s.reserve,
        free_seats(s.cap, s.held),
        ticket_queue(others, mine, s.mine),
        s.mine,
        live_caps=s.live_caps,
        idle_since=idle_since,
        now=now,
    )


def nats_turn(s: Scenario, *, idle_since: float | None = None, now: float = 0.0) -> Turn:
    """What the NATS ledger asks: tickets are stream sequences, seats a mirror of keys."""
    others = [(10 + i, kind) for i, kind in enumerate(s.ahead)]
    ticket_ = 10 + len(s.ahead) if s.queued else None
    mirror: dict[int, tuple[int, Holder | None]] = {seat: (40 + seat, OTHER) for seat in s.held}
    mirror |= {seat: (20, None) for seat in range(s.cap) if seat not in s.held}  # purged
    return choose(
        s.cap,
        s.reserve,
        free_in(mirror, s.cap, {}),
        waiting_line(others, ticket_, s.mine),
        s.mine,
        live_caps=s.live_caps,
        idle_since=idle_since,
        now=now,
    )


@pytest.mark.parametrize("s", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_both_ledgers_get_the_same_answer(s: Scenario) -> None:
    assert host_turn(s).seat == s.expect
    assert nats_turn(s).seat == s.expect


@pytest.mark.parametrize("turn", [host_turn, nats_turn], ids=["host", "nats"])
def test_a_waiter_ahead_that_leaves_a_seat_free_loses_its_turn(turn: object) -> None:
    assert callable(turn)
    s = Scenario("one free seat, one waiter ahead", 2, (1,), ("interactive",), "interactive", None)
    first = turn(s, now=100.0)
    assert first == Turn(None, 100.0)  # the seat is the one ahead's: the patience starts
    early = turn(s, idle_since=first.idle_since, now=100.0 + PATIENCE_S - 0.1)
    assert early == Turn(None, 100.0)
    late = turn(s, idle_since=first.idle_since, now=100.0 + PATIENCE_S)
    assert late == Turn(0)  # it never took it: mine now, and the patience is reset
    full = Scenario("no seat free", 2, (0, 1), ("interactive",), "interactive", None)
    assert turn(full, idle_since=100.0, now=200.0) == Turn(None)  # nothing idles: reset


def test_the_tickets_keep_their_order_across_kinds() -> None:
    host = ticket_queue([ticket("batch", 1), ticket("interactive", 5)], None, "batch")
    nats = waiting_line([(1, "batch"), (5, "interactive")], None, "batch")
    assert host == [Waiter("interactive"), Waiter("batch")]  # the lock offsets sort by kind
    assert nats == [Waiter("batch"), Waiter("interactive")]  # the policy sorts them itself
    assert choose(2, 0, [0], host, "batch").seat is None  # the session ahead gets it
    assert choose(2, 0, [0], nats, "batch").seat is None


def test_the_effective_cap_and_the_old_call() -> None:
    assert effective_cap(4, [2, 3]) == 2
    assert effective_cap(2, [4]) == 2
    assert effective_cap(3) == 3
    assert choose_seat(3, 1, [1, 2], [], "batch") == 1
    assert (
        choose_seat(3, 0, [0, 2], [("interactive", False), ("interactive", True)], "interactive")
        == 0
    )


def test_the_reserve_counts_from_the_strictest_live_cap_and_leaves_batches_one_seat() -> None:
    from familiar.ledger.policy import batch_seats, choose

    assert batch_seats(3, 1) == 2 and batch_seats(2, 1) == 1 and batch_seats(1, 1) == 1
    # this process: cap 3, reserve 1; a live process says 2: one batch seat, one for sessions
    assert choose(3, 1, [0, 1], [], "batch", live_caps=[2]).seat == 0
    assert choose(3, 1, [1], [], "batch", live_caps=[2]).seat is None
    assert choose(3, 1, [1], [], "interactive", live_caps=[2]).seat == 1
    # a live cap of 1 leaves no room for a reserve: batch work still gets the seat
    assert choose(3, 2, [0], [], "batch", live_caps=[1]).seat == 0
