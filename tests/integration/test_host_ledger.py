"""The host ledger with real files and kernel locks. Several ``HostLedger`` objects in one
test behave like several processes: each opens its own files, so their locks conflict
exactly as two processes' would."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from familiar.config.slots import load_slots_file
from familiar.errors import LedgerSetupError, SlotsFileError
from familiar.ledger import FleetSettings, Holder, HostLedger, Kind, default_dir, make_ledger
from familiar.ledger.host import HostSeats

DEP = "0123456789abcdef0123"


@pytest.fixture
async def ledgers(tmp_path: Path) -> AsyncIterator[list[HostLedger]]:
    """Three ledgers on one directory; the safety-net re-check is slow (5 s), so a test
    that finishes quickly was woken by a doorbell, not by the timer."""
    async with AsyncExitStack() as stack:
        out = [
            await stack.enter_async_context(HostLedger(tmp_path / "L", safety_s=5.0))
            for _ in range(3)
        ]
        yield out


def seats_of(ledger: HostLedger, cap: int = 2, reserve: int = 0) -> HostSeats:
    return ledger.deployment(DEP, "m @ http://x/v1", cap, reserve)


async def test_the_cap_holds_across_ledgers_and_every_one_makes_progress(
    ledgers: list[HostLedger],
) -> None:
    deps = [seats_of(ledger, cap=2) for ledger in ledgers]
    held = 0
    peak = 0
    got = [0, 0, 0]

    async def worker(i: int) -> None:
        nonlocal held, peak
        for _ in range(15):
            lease = await deps[i].acquire("interactive")
            held += 1
            peak = max(peak, held)
            got[i] += 1
            await asyncio.sleep(0.002)
            held -= 1
            await deps[i].release(lease)

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(3) for _ in range(3))), 30)
    assert peak == 2
    assert got == [45, 45, 45]


async def test_a_waiter_is_woken_by_the_release_not_by_a_timer(
    ledgers: list[HostLedger],
) -> None:
    a, b = seats_of(ledgers[0], cap=1), seats_of(ledgers[1], cap=1)
    lease = await a.acquire("interactive")
    waiter = asyncio.create_task(b.acquire("interactive"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    released = time.monotonic()
    await a.release(lease)
    got = await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - released < 1.0  # the safety net is 5 s
    await b.release(got)


async def test_processes_take_turns(ledgers: list[HostLedger]) -> None:
    a, b = seats_of(ledgers[0], cap=1), seats_of(ledgers[1], cap=1)
    first = await a.acquire("interactive")
    order: list[str] = []

    async def want(dep: HostSeats, name: str) -> None:
        lease = await dep.acquire("interactive")
        order.append(name)
        await asyncio.sleep(0.01)
        await dep.release(lease)

    tasks = [asyncio.create_task(want(a, "a")) for _ in range(3)]
    await asyncio.sleep(0.05)
    tasks += [asyncio.create_task(want(b, "b")) for _ in range(3)]
    await asyncio.sleep(0.05)
    await a.release(first)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    # b queued later than a's waiters but still alternates with a: no process runs its
    # whole queue while another waits
    assert order in (["a", "b", "a", "b", "a", "b"], ["b", "a", "b", "a", "b", "a"]), order


async def test_reserve_keeps_seats_for_interactive_work(ledgers: list[HostLedger]) -> None:
    batch, session = seats_of(ledgers[0], 3, 1), seats_of(ledgers[1], 3, 1)
    leases = [await batch.acquire("batch") for _ in range(2)]
    third = asyncio.create_task(batch.acquire("batch"))
    await asyncio.sleep(0.1)
    assert not third.done()  # the reserved seat is out of a batch's reach
    mine = await asyncio.wait_for(session.acquire("interactive"), 1)
    assert mine.seat == 2
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    for lease in leases:
        await batch.release(lease)
    await session.release(mine)


async def test_waiting_sessions_go_before_waiting_batches(ledgers: list[HostLedger]) -> None:
    holder, batch, session = (seats_of(ledger, 1) for ledger in ledgers)
    lease = await holder.acquire("batch")
    order: list[Kind] = []

    async def want(dep: HostSeats, kind: Kind) -> None:
        got = await dep.acquire(kind)
        order.append(kind)
        await dep.release(got)

    b = asyncio.create_task(want(batch, "batch"))
    await asyncio.sleep(0.05)
    s = asyncio.create_task(want(session, "interactive"))
    await asyncio.sleep(0.05)
    await holder.release(lease)
    await asyncio.wait_for(asyncio.gather(b, s), 10)
    assert order == ["interactive", "batch"]


async def test_a_cancelled_waiter_leaves_nothing_behind(ledgers: list[HostLedger]) -> None:
    a, b, c = (seats_of(ledger, 1) for ledger in ledgers)
    lease = await a.acquire("interactive")
    waiter = asyncio.create_task(b.acquire("interactive"))
    await asyncio.sleep(0.05)
    (view,) = await ledgers[2].views()
    assert view.in_use == 1 and len(view.waiting) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    (view,) = await ledgers[2].views()
    assert view.waiting == [] and view.holders[0].pid == os.getpid()
    await a.release(lease)
    # no ticket of the cancelled waiter is left: a newcomer is not kept waiting
    got = await asyncio.wait_for(c.acquire("batch"), 1)
    await c.release(got)
    (view,) = await ledgers[2].views()
    assert view.in_use == 0


async def test_a_closed_ledger_gives_its_seats_back_like_a_dead_process(
    ledgers: list[HostLedger], tmp_path: Path
) -> None:
    a = seats_of(ledgers[0], 2)
    for _ in range(2):
        await a.acquire("interactive")  # never released: the "process" dies holding them
    async with HostLedger(tmp_path / "L", safety_s=0.5) as other:
        b = seats_of(other, 2)
        waiter = asyncio.create_task(b.acquire("interactive"))
        await asyncio.sleep(0.05)
        await ledgers[0].close()  # closing its files drops every lock, as exiting does
        closed = time.monotonic()
        got = await asyncio.wait_for(waiter, 5)  # no bell rings for a dead holder
        assert time.monotonic() - closed < 2.0  # the safety-net re-check finds it
        await b.release(got)


async def test_views_name_cap_reserve_and_holders(ledgers: list[HostLedger]) -> None:
    dep = seats_of(ledgers[0], 4, 1)
    lease = await dep.acquire("batch")
    (view,) = await ledgers[1].views()
    assert (view.cap, view.reserve, view.in_use, view.label) == (4, 1, 1, "m @ http://x/v1")
    holder = view.holders[lease.seat]
    assert holder.pid == os.getpid() and holder.kind == "batch" and holder.since > 0
    await dep.release(lease)
    (view,) = await ledgers[1].views()
    assert view.in_use == 0  # the stale record is ignored: the lock is the truth


async def test_a_ledger_dir_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "L").mkdir()
    monkeypatch.setattr(os, "getuid", lambda: 12345)
    with pytest.raises(LedgerSetupError, match="another user"):
        async with HostLedger(tmp_path / "L"):
            pass


def test_the_ledger_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_ledger().kind == "host"
    monkeypatch.setenv("FAMILIAR_NATS_URL", "http://wrong:4222")
    with pytest.raises(LedgerSetupError, match="FAMILIAR_NATS_URL"):
        make_ledger()
    monkeypatch.setenv("FAMILIAR_NATS_URL", "nats://127.0.0.1:4222")
    ledger = make_ledger(FleetSettings(nats_url="nats://10.0.0.5:4222"))
    assert ledger.kind == "nats" and "127.0.0.1" in ledger.where  # the environment wins


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[fleet]\nnats_url = 'redis://x'\n", "nats_url"),
        ("[fleet]\nnats_url = 'nats://[::1'\n", "nats_url"),
        ("[fleet]\nnats_url = 'nats://h:99999'\n", "nats_url"),
        ("[fleet]\nbogus = 1\n", "bogus"),
        ("[fleet]\nledger_wait_s = 0\n", "ledger_wait_s"),
        ("fleet = 3\n", "must be a table"),
        ("[slots.x]\nreserve = 2\n", "reserve"),
    ],
)
def test_bad_fleet_settings_are_usage_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "slots.toml"
    slot = '[slots.x]\nurl = "http://h/v1"\nmodel = "m"\nparallel = 2\n'
    # top-level keys first (after a table header they would belong to the table)
    text = body.replace("[slots.x]\n", slot) if "[slots.x]" in body else body + slot
    path.write_text(text)
    with pytest.raises(SlotsFileError, match=message):
        load_slots_file(path)


async def test_a_waiter_that_does_not_take_its_turn_loses_it(tmp_path: Path) -> None:
    """A waiter ahead that leaves a free seat alone (stopped with Ctrl-Z, its loop
    blocked) does not keep the deployment idle: after a patience the next one takes it."""
    async with (
        HostLedger(tmp_path / "L", safety_s=0.2) as holder_l,
        HostLedger(tmp_path / "L", safety_s=0.2) as stuck_l,
        HostLedger(tmp_path / "L", safety_s=0.2) as next_l,
    ):
        holder, stuck, nxt = (seats_of(ledger, 1) for ledger in (holder_l, stuck_l, next_l))
        lease = await holder.acquire("interactive")
        stuck_waiter = asyncio.create_task(stuck.acquire("interactive"))
        await asyncio.sleep(0.05)
        stuck.pump = lambda: False  # type: ignore[method-assign]  # it never acts again
        stuck._tick = lambda: None  # type: ignore[method-assign]
        next_waiter = asyncio.create_task(nxt.acquire("interactive"))
        await asyncio.sleep(0.05)
        await holder.release(lease)
        released = time.monotonic()
        got = await asyncio.wait_for(next_waiter, 10)
        assert 1.5 < time.monotonic() - released < 6  # the patience (2 s), then the seat
        await nxt.release(got)
        stuck_waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck_waiter


async def test_the_strictest_parallel_of_live_processes_applies(ledgers: list[HostLedger]) -> None:
    wide, narrow = seats_of(ledgers[0], cap=4), seats_of(ledgers[1], cap=2)
    held = [await wide.acquire("interactive") for _ in range(2)]
    third = asyncio.create_task(wide.acquire("interactive"))
    await asyncio.sleep(0.1)
    assert not third.done()  # 2 in use: the other process's cap of 2 holds for everyone
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    for lease in held:
        await wide.release(lease)
    await ledgers[1].close()  # the strict process is gone: the wider cap is back
    await asyncio.sleep(1.1)  # the caps are read again at most once a second
    more = [await asyncio.wait_for(wide.acquire("interactive"), 2) for _ in range(4)]
    assert len({lease.seat for lease in more}) == 4
    del narrow


async def test_fleet_views_skip_records_familiar_did_not_write(tmp_path: Path) -> None:
    bad = tmp_path / "L" / "feedfacefeedfacefeed"
    bad.mkdir(parents=True)
    (bad / "meta.json").write_text('{"label": "x", "cap": 1e999}')
    other = tmp_path / "L" / "0000000000000000beef"
    other.mkdir()
    (other / "meta.json").write_text('{"label": "y", "cap": -5, "reserve": -9}')
    async with HostLedger(tmp_path / "L") as ledger:
        assert await ledger.views() == []
    assert Holder.from_json('{"host": "h", "pid": 1e999, "command": "c"}') is None


async def test_a_ledger_dir_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "L").write_text("")
    with pytest.raises(LedgerSetupError, match="is not a directory"):
        async with HostLedger(tmp_path / "L"):
            pass


def test_a_relative_ledger_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAMILIAR_LEDGER_DIR", "reldir")
    assert default_dir() == tmp_path / "reldir"
