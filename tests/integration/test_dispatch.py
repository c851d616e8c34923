"""The dispatcher over real SlotClients and loopback servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from familiar.client.backend import CallResult, RetryPolicy, SlotClient
from familiar.config.slots import Slot
from familiar.dispatch import Dispatcher, Pool, WorkItem, run_all
from familiar.errors import BackendHTTPError, DispatchError
from tests.support.fake_openai import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]


def client(url: str, parallel: int, retry: RetryPolicy) -> SlotClient:
    return SlotClient(
        Slot(name=f"s{parallel}", url=url, model="m", parallel=parallel, timeout_s=5), retry=retry
    )


async def chat(item: WorkItem[str], pool: Pool) -> CallResult:
    result: CallResult = await pool.client.chat(
        [{"role": "user", "content": item.payload}], role=pool.role
    )
    return result


async def test_slots_of_3_and_5_seats_are_both_kept_full(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer(latency_s=0.05) as a, FakeOpenAIServer(latency_s=0.05) as b:
        async with client(a.url, 3, fast_retry) as ca, client(b.url, 5, fast_retry) as cb:
            pools = [Pool("naughty", "a", 3, ca), Pool("kindergarten", "b", 5, cb)]
            items = [
                WorkItem(f"i{n}", "naughty" if n % 2 else "kindergarten", f"t{n}")
                for n in range(80)
            ]
            results = await run_all(pools, chat, items)
    assert [r.id for r in results] == [i.id for i in items]  # ids kept, in order
    assert all(r.ok for r in results)
    assert a.stats["max_in_flight"] == 3
    assert b.stats["max_in_flight"] == 5
    assert a.stats["completed"] + b.stats["completed"] == 80


async def test_idle_pool_steals_interchangeable_work(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer(latency_s=0.05) as a, FakeOpenAIServer(latency_s=0.05) as b:
        async with client(a.url, 3, fast_retry) as ca, client(b.url, 5, fast_retry) as cb:
            pools = [Pool("naughty", "a", 3, ca), Pool("kindergarten", "b", 5, cb)]
            items = [WorkItem(f"h{n}", "naughty", "hard") for n in range(40)]
            results = await run_all(pools, chat, items)
    ran_as = {r.ran_as for r in results}
    assert ran_as == {"naughty", "kindergarten"}  # the fast pool took hard work
    assert b.stats["max_in_flight"] == 5 and a.stats["max_in_flight"] == 3
    assert sum(r.ran_as == "kindergarten" for r in results) > 10


async def test_translator_work_is_never_stolen(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer(latency_s=0.02) as a, FakeOpenAIServer() as b:
        async with client(a.url, 1, fast_retry) as ca, client(b.url, 5, fast_retry) as cb:
            pools = [Pool("translator", "a", 1, ca), Pool("kindergarten", "b", 5, cb)]
            items = [WorkItem(f"t{n}", "translator", "x") for n in range(6)]
            results = await run_all(pools, chat, items)
    assert {r.ran_as for r in results} == {"translator"}
    assert b.stats["requests"] == 0


async def test_a_failed_item_does_not_kill_the_others(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer() as srv:
        srv.add_faults([{"kind": "status", "status": 400}])
        async with client(srv.url, 1, fast_retry) as c:
            items = [WorkItem(f"i{n}", "naughty", "x") for n in range(5)]
            results = await run_all([Pool("naughty", "s", 1, c)], chat, items)
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1 and failed[0].id == "i0"
    assert isinstance(failed[0].error, BackendHTTPError)
    assert sum(r.ok for r in results) == 4


async def test_fail_fast_stops_the_run(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer(latency_s=0.05) as srv:
        srv.add_faults([{"kind": "status", "status": 400}])
        async with client(srv.url, 1, fast_retry) as c:
            items = [WorkItem(f"i{n}", "naughty", "x") for n in range(20)]
            with pytest.raises(DispatchError) as err:
                await run_all([Pool("naughty", "s", 1, c)], chat, items, fail_fast=True)
    assert err.value.item_id == "i0"
    assert srv.stats["requests"] < 20


async def test_cancellation_drains_cleanly(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer(latency_s=0.5) as srv:
        async with client(srv.url, 3, fast_retry) as c:
            items = [WorkItem(f"i{n}", "naughty", "x") for n in range(30)]
            task = asyncio.create_task(run_all([Pool("naughty", "s", 3, c)], chat, items))
            await asyncio.sleep(0.2)
            assert srv.stats["in_flight"] == 3
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert not [t for t in others if t.get_name().startswith("worker:")]
            for _ in range(50):  # the server sees the connections close
                if srv.stats["in_flight"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert srv.stats["in_flight"] == 0
            assert c.seats.in_use == 0


async def test_dispatcher_rejects_unroutable_and_duplicate_items() -> None:
    async def handler(item: WorkItem[str], pool: Pool) -> str:
        return item.payload

    async with Dispatcher([Pool("translator", "t", 1)], handler) as d:
        with pytest.raises(ValueError, match="no active pool"):
            await d.submit(WorkItem("a", "naughty", "x"))
        fut = await d.submit(WorkItem("b", "translator", "y"))
        with pytest.raises(ValueError, match="duplicate"):
            await d.submit(WorkItem("b", "translator", "z"))
        assert (await fut).value == "y"


def test_ctrl_c_leaves_nothing_running() -> None:
    """A real process running the dispatcher gets SIGINT mid-run and exits cleanly."""
    script = textwrap.dedent("""
        import asyncio, sys
        from familiar.client.backend import SlotClient
        from familiar.dispatch import Pool, WorkItem, run_all
        from familiar.config.slots import Slot
        from tests.support.fake_openai import FakeOpenAIServer

        async def handler(item, pool):
            return await pool.client.chat([{"role": "user", "content": "x"}])

        async def main():
            async with FakeOpenAIServer(latency_s=30) as srv:
                slot = Slot(name="s", url=srv.url, model="m", parallel=4)
                async with SlotClient(slot) as c:
                    items = [WorkItem(str(n), "naughty", n) for n in range(40)]
                    run = asyncio.create_task(run_all([Pool("naughty", "s", 4, c)],
                                                      handler, items))
                    while srv.stats["in_flight"] < 4:
                        await asyncio.sleep(0.01)
                    print("BUSY", flush=True)
                    try:
                        await run
                    finally:
                        left = [t.get_name() for t in asyncio.all_tasks()
                                if t.get_name().startswith("worker:")]
                        print("LEFT", len(left), "SEATS", c.seats.in_use, flush=True)

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            sys.exit(130)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "BUSY", proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "LEFT 0 SEATS 0" in out
    assert "INTERRUPTED" in out
