"""Replica choice and the wire helpers: pure, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from familiar.errors import (
    BackendConnectError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
)
from familiar.replicas import Replica, ReplicaSet
from familiar.wire import retry_after, retryable


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
