"""Replica choice and the wire helpers: pure, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from familiar.client.replicas import Replica, ReplicaSet
from familiar.client.wire import retry_after, retryable
from familiar.errors import (
    BackendConnectError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def three(clock: Clock) -> tuple[ReplicaSet, list[Replica]]:
    reps = [Replica(url=f"http://r{i}/v1", label=f"http://r{i}/v1") for i in range(3)]
    return ReplicaSet(reps, cooldown_s=5.0, clock=clock), reps


def test_least_outstanding_wins_and_ties_rotate() -> None:
    rs, reps = three(Clock())
    reps[0].outstanding, reps[1].outstanding, reps[2].outstanding = 2, 0, 0
    picked = {rs.pick().url for _ in range(4)}
    assert picked == {"http://r1/v1", "http://r2/v1"}


def test_unwell_replica_cools_down_doubling_then_recovers() -> None:
    clock = Clock()
    rs, reps = three(clock)
    err = BackendConnectError("s", "refused")
    assert rs.record(reps[0], err) == 5.0
    assert rs.record(reps[0], err) == 10.0
    assert all(rs.pick() is not reps[0] for _ in range(6))
    clock.now += 10.1
    reps[1].outstanding = reps[2].outstanding = 1
    assert rs.pick() is reps[0]  # cooled down: back in the choice
    assert rs.record(reps[0], None) is None and reps[0].failures == 0


def test_overload_and_bad_requests_do_not_cool_a_replica() -> None:
    rs, reps = three(Clock())
    assert rs.record(reps[0], BackendHTTPError("s", 429)) is None
    assert rs.record(reps[0], BackendHTTPError("s", 400)) is None
    assert rs.record(reps[0], BackendProtocolError("s", "cut")) is None
    assert rs.record(reps[0], BackendTimeout("s", "slow")) == 5.0
    assert rs.record(reps[1], BackendHTTPError("s", 503)) == 5.0


def test_all_cooling_probes_the_first_to_recover() -> None:
    clock = Clock()
    rs, reps = three(clock)
    for i, r in enumerate(reps):
        for _ in range(3 - i):
            rs.record(r, BackendConnectError("s", "down"))
    assert rs.pick() is reps[2]  # one failure: the shortest cooldown
    assert [round(s.cooling_s) for s in rs.statistics()] == [20, 10, 5]


def test_a_single_replica_never_cools_down() -> None:
    rs = ReplicaSet([Replica(url="u", label="u")], clock=Clock())
    assert rs.record(rs.replicas[0], BackendConnectError("s", "down")) is None


def test_retry_after_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 11, 27, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert retry_after({"retry-after": "2.5"}) == 2.5
    assert retry_after({"retry-after": later}, now=lambda: now) == 30.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=lambda: now) == 0.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_retryable_matches_classes() -> None:
    assert retryable(BackendProtocolError("s", "no finish_reason"))
    assert retryable(BackendHTTPError("s", 503)) and retryable(BackendHTTPError("s", 429))
    assert not retryable(BackendHTTPError("s", 401))
    assert not retryable(ValueError("a bug"))


# --- affinity -------------------------------------------------------------------------------


def _set(n: int, **kw: object) -> ReplicaSet:
    return ReplicaSet([Replica(url=f"http://r{i}", label=f"r{i}") for i in range(n)], **kw)  # type: ignore[arg-type]


def test_a_key_keeps_to_one_replica_and_keys_spread_over_all() -> None:
    rs = _set(4)
    homes = {f"session-{k}": rs.pick(f"session-{k}").url for k in range(200)}
    assert all(rs.pick(k).url == url for k, url in homes.items())  # stable
    counts = {u: list(homes.values()).count(u) for u in set(homes.values())}
    assert len(counts) == 4 and min(counts.values()) > 25  # spread, not all on one


def test_a_busy_home_falls_back_to_the_least_loaded_only_past_both_thresholds() -> None:
    rs = _set(2, balance_abs=2, balance_rel=1.5)
    home = rs.pick("k")
    other = next(r for r in rs.replicas if r is not home)
    home.outstanding, other.outstanding = 2, 0
    assert rs.pick("k") is home  # 2 more: within the absolute threshold
    home.outstanding = 3
    assert rs.pick("k") is other  # 3 more than 0: both thresholds passed
    home.outstanding, other.outstanding = 9, 7
    assert rs.pick("k") is home  # 2 more: within the absolute threshold again


def test_a_replica_going_away_moves_only_its_own_keys() -> None:
    clock = [0.0]
    rs = _set(4, clock=lambda: clock[0])
    before = {f"k{i}": rs.pick(f"k{i}") for i in range(300)}
    gone = rs.replicas[1]
    rs.record(gone, BackendConnectError("s", "refused"))  # cooling down now
    after = {k: rs.pick(k) for k in before}
    moved = {k for k in before if before[k] is not after[k]}
    assert moved == {k for k, r in before.items() if r is gone}


def test_without_a_key_or_with_affinity_off_it_is_least_outstanding() -> None:
    rs = _set(2, affinity=False)
    rs.replicas[0].outstanding = 5
    assert rs.pick("k") is rs.replicas[1]
    rs2 = _set(2)
    rs2.replicas[1].outstanding = 1
    assert rs2.pick(None) is rs2.replicas[0]


def test_a_prefix_known_cached_tolerates_more_imbalance_before_leaving_home() -> None:
    reps = [Replica(url=f"http://r{i}/v1", label=f"http://r{i}/v1") for i in range(2)]
    rs = ReplicaSet(reps, clock=Clock(), balance_abs=2, balance_rel=1.0, balance_abs_cached=6)
    home = rs.pick("session-1")
    home.outstanding = 5  # the other has none
    assert rs.pick("session-1") is not home  # cold: too busy, least outstanding instead
    assert rs.pick("session-1", cached=True) is home  # its prefix is there: worth the wait
    home.outstanding = 7
    assert rs.pick("session-1", cached=True) is not home


def test_new_keys_go_to_the_least_loaded_so_sessions_spread_evenly() -> None:
    # eight sessions' first requests at once over four replicas: two each, whatever the hash
    rs = _set(4)
    for k in range(8):
        rs.pick(f"session-{k}").outstanding += 1
    assert [r.outstanding for r in rs.replicas] == [2, 2, 2, 2]
    # their followers go where each session went
    for k in range(8):
        home = rs.placed(f"session-{k}")
        assert home is not None and rs.pick(f"session-{k}") is home


def test_a_key_follows_where_it_went_not_where_it_hashes() -> None:
    rs = _set(2)
    favourite = rs.pick("k")  # an even load: the key's rendezvous favourite
    other = next(r for r in rs.replicas if r is not favourite)
    rs2 = _set(2)
    fav2 = next(r for r in rs2.replicas if r.url == favourite.url)
    fav2.outstanding = 1  # busy: the new key goes to the least loaded instead
    first = rs2.pick("k")
    assert first.url == other.url
    fav2.outstanding = first.outstanding = 0
    assert rs2.pick("k") is first  # and stays there: its prefix is cached there


def test_keys_that_never_repeat_are_balanced_like_least_outstanding() -> None:
    keyed, plain = _set(4), _set(4)
    loads = [3, 1, 4, 1]
    for rs in (keyed, plain):
        for r, n in zip(rs.replicas, loads, strict=True):
            r.outstanding = n
    for i in range(20):  # a prompt each, no prefix shared: each key new
        a, b = keyed.pick(f"prompt-{i}"), plain.pick()
        a.outstanding += 1
        b.outstanding += 1
        if i % 3 == 0:  # some finish
            max(keyed.replicas, key=lambda r: r.outstanding).outstanding -= 1
            max(plain.replicas, key=lambda r: r.outstanding).outstanding -= 1
    assert sorted(r.outstanding for r in keyed.replicas) == sorted(
        r.outstanding for r in plain.replicas
    )
    assert (
        max(r.outstanding for r in keyed.replicas) - min(r.outstanding for r in keyed.replicas) <= 1
    )


def test_the_placement_memory_is_bounded_and_a_forgotten_key_is_placed_again() -> None:
    rs = _set(2, remember=2)
    for k in ("a", "b", "c"):
        rs.pick(k)
    assert rs.placed("a") is None and rs.placed("b") is not None and rs.placed("c") is not None
    rs.replicas[0].outstanding, rs.replicas[1].outstanding = 5, 0
    assert rs.pick("a") is rs.replicas[1]  # new again: the least loaded


def test_a_key_whose_replica_went_away_stays_where_it_moved() -> None:
    clock = [0.0]
    rs = _set(2, clock=lambda: clock[0])
    home = rs.pick("k")
    rs.record(home, BackendConnectError("s", "refused"))  # cooling down
    moved = rs.pick("k")
    assert moved is not home
    clock[0] = 60.0  # the old one is back: the key's prefix is cached where it moved
    assert rs.pick("k") is moved
