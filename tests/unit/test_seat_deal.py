"""The releaser's side of the seat policy (``policy.deal``): a seat handed on in one hop
goes where ``choose`` would have sent it; and the NATS mirror's book of grants (a grant
holds its seat and serves its grantee; left alone for the patience, it is a free seat;
a forged one is no grant). Pure: no server."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import replace

import pytest
from nats.js.kv import KeyValue

from familiar.ledger.base import Holder, Kind
from familiar.ledger.nats_held import HeldSeats
from familiar.ledger.nats_keys import Mirror, grant_record, granted_to
from familiar.ledger.nats_kv import TtlKeyValue
from familiar.ledger.nats_trust import FleetKey
from familiar.ledger.policy import PATIENCE_S, Waiter, choose, deal
from tests.unit.test_seat_policy import SCENARIOS, Scenario

ME, OTHER = "me0000000000000", "other0000000000"
DEP = "dep"
WHO = Holder("elsewhere", 7, "familiar translate")


def line_of(s: Scenario) -> list[Waiter]:
    ahead = [Waiter(kind, name=f"w{i}") for i, kind in enumerate(s.ahead)]
    return [*ahead, Waiter(s.mine, True)]


@pytest.mark.parametrize("s", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_deal_gives_me_the_seat_choose_gives_me(s: Scenario) -> None:
    free = [seat for seat in range(s.cap) if seat not in s.held]
    line = line_of(s)
    dealt = deal(s.cap, s.reserve, free, line, live_caps=s.live_caps)
    mine = next((seat for seat, w in dealt if w.me), None)
    turn = choose(s.cap, s.reserve, free, line, s.mine, live_caps=s.live_caps)
    assert mine == turn.seat
    assert len({seat for seat, _w in dealt}) == len(dealt)  # no seat dealt twice


def test_deal_follows_the_rules() -> None:
    batch, session, me = (
        Waiter("batch", name="b"),
        Waiter("interactive", name="s"),
        Waiter("interactive", True),
    )
    # sessions before batches, whatever the tickets say
    assert deal(2, 0, [0], [batch, session]) == [(0, session)]
    # ticket order within a kind; one seat a round each
    s2 = Waiter("interactive", name="s2")
    assert deal(3, 0, [0, 2], [session, s2, me]) == [(2, session), (0, s2)]
    # the reserve: a batch never gets a reserved seat, a session behind it does
    assert deal(2, 1, [1], [batch, me]) == [(1, me)]
    assert deal(2, 1, [1], [batch]) == []
    # the strictest live cap: a seat above it goes to nobody
    assert deal(4, 0, [3], [session], live_caps=[2]) == []
    assert deal(4, 0, [1, 3], [session], live_caps=[2]) == [(1, session)]
    # more seats than waiters: round again
    assert deal(3, 0, [0, 1, 2], [session, s2]) == [(2, session), (1, s2), (0, session)]


# -- the mirror's grants -------------------------------------------------------------------


def mirror(key: FleetKey | None = None) -> Mirror:
    key = key or FleetKey()
    held = HeldSeats(TtlKeyValue("b", 10.0, 1.0), key, WHO, lambda coro: coro.close())
    return Mirror(DEP, ME, key, lambda: None, held)


def entry(name: str, value: bytes, rev: int, age: float = 0.0) -> KeyValue.Entry:
    stamp = datetime.datetime.fromtimestamp(time.time() - age, datetime.UTC)
    return KeyValue.Entry("b", f"{DEP}.{name}", value, rev, 0, stamp, None)  # type: ignore[arg-type]


def waiter_record(ticket: int, kind: Kind = "interactive", grants: bool = True) -> bytes:
    record = {**json.loads(WHO.to_json()), "kind": kind, "ticket": ticket}
    return json.dumps({**record, "grants": True} if grants else record).encode()


def test_a_grant_record_names_its_grantee() -> None:
    record = grant_record(WHO, OTHER)
    assert granted_to(record) == OTHER
    assert Holder.from_json(record) == WHO  # fleet shows the grantee as the holder
    assert granted_to(WHO.to_json()) is None
    assert granted_to(b'{"grant": 3}') is None
    assert granted_to(b'not json, "grant"') is None


def test_a_grant_holds_its_seat_and_serves_its_grantee() -> None:
    m = mirror()
    m.apply(entry(f"w.{OTHER}", waiter_record(5), 5))
    m.apply(entry("w.third", waiter_record(6), 6))
    assert [w.name for w in m.named_line(None, None)] == [OTHER, "third"]
    assert m.grantee(OTHER, 5.0) == replace(WHO, kind="interactive")
    m.apply(entry("s.0", grant_record(WHO, OTHER), 9, age=0.01))
    assert m.free(2, {}) == [1]  # seat 0 is held by the grant
    assert [w.name for w in m.named_line(None, "batch")] == ["third", ""]  # OTHER is served
    assert m.mine() == [] and m.stale_in() == pytest.approx(PATIENCE_S, abs=0.1)
    # left alone for the patience: a free seat (at the grant's revision), OTHER not back
    m.grants[0] = replace(m.grants[0], seen=m.grants[0].seen - PATIENCE_S)
    assert m.free(2, {}) == [0, 1] and m.rev(0) == 9
    assert m.free(2, {0: 9}) == [1]  # a take failed at that revision: not again
    assert OTHER in m.served()
    # its own record over the grant: held, and OTHER back in the line
    m.apply(entry("s.0", WHO.to_json(), 10))
    assert m.grants == {} and m.free(2, {}) == [1]
    assert [w.name for w in m.named_line(None, None)] == [OTHER, "third"]


def test_grants_to_me_and_who_may_have_one() -> None:
    m = mirror()
    m.apply(entry("s.1", grant_record(WHO, ME), 4, age=0.2))
    ((seat, grant),) = m.mine()
    assert (seat, grant.rev, grant.to) == (1, 4, ME) and 0.1 < grant.age < 0.5
    assert m.free(2, {}) == [0]  # a grant to me is no free seat for me to take
    m.apply(entry(f"w.{OTHER}", waiter_record(5, grants=False), 5))
    assert m.grantee(OTHER, 5.0) is None  # an older familiar: it takes no grant
    m.apply(entry("w.recent", waiter_record(6), 6))
    assert m.grantee("recent", 5.0) is not None
    assert m.grantee("recent", -1.0) is None  # its waiter key not written lately


def test_a_forged_or_copied_grant_is_no_grant() -> None:
    key = FleetKey(b"deal-test-fleet-secret-0123456789")
    m = mirror(key)
    m.apply(entry("s.0", grant_record(WHO, ME), 3))  # unsigned
    copied = key.seal("seat", f"{DEP}.s.0", grant_record(WHO, ME))
    m.apply(entry("s.1", copied, 4))  # signed for seat 0, put under seat 1
    assert m.mine() == [] and m.grants == {}
    assert m.free(2, {}) == []  # both seats stay taken, by an unknown holder
    m.apply(entry("s.0", copied, 5))  # the genuine one
    assert [seat for seat, _g in m.mine()] == [0]
