"""Fleet-wide seats on one host: several real familiar processes, one fake server that
counts requests in flight, and the host ledger between them (no NATS here)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from familiar.ledger import HostLedger, deployment_id, deployment_label
from familiar.seats import Seats
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import ARTICLE

MODEL = "general-llm"


def workspace(root: Path, url: str, *, parallel: int, reserve: int = 0, articles: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{url}"\nmodel = "{MODEL}"\nruntime = "vllm"\n'
        f"parallel = {parallel}\nreserve = {reserve}\ntimeout_s = 30\n"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "m"\nparallel = 1\n'
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    src = root / "src"
    src.mkdir()
    for i in range(articles):  # distinct articles: no chunk is a cache hit
        (src / f"a{i}.md").write_text(ARTICLE.replace("緑茶", f"緑茶{root.name}{i}"), "utf-8")
    return root


async def start(ws: Path, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "FAMILIAR_HOME": str(ws / ".home")}  # nothing shared but the ledger
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "familiar",
        *args,
        cwd=ws,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def translate(ws: Path) -> asyncio.subprocess.Process:
    return await start(ws, "translate", "src", "--to", "en", "--out", "out", "--json")


async def finish(proc: asyncio.subprocess.Process, limit: float = 90) -> tuple[int, str]:
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def cids(srv: FakeOpenAIServer) -> list[str]:
    return [r["headers"].get("x-correlation-id", "") for r in srv.requests]


async def test_three_batches_share_one_cap_and_take_turns(tmp_path: Path) -> None:
    async with FakeOpenAIServer(latency_s=0.05, reply_mode="identity") as srv:
        spaces = [workspace(tmp_path / f"w{i}", srv.url, parallel=2) for i in range(3)]
        procs = [await translate(ws) for ws in spaces]
        results = [await finish(p) for p in procs]
        for code, text in results:
            assert code == 0, text
        stats = srv.stats
        # each process alone would put 2 in flight: 6 without a shared ledger
        assert stats["max_in_flight"] == 2, stats
        for ws in spaces:
            assert len(list((ws / "out").glob("*.md"))) == 4
        # no process starved: every batch was served within the first half of the requests
        order = cids(srv)
        assert len(set(order)) == 3
        assert len(set(order[: len(order) // 2])) == 3, order


async def test_two_processes_whose_parallel_disagree_hold_the_smaller_cap(tmp_path: Path) -> None:
    """Slots files that say parallel = 2 and parallel = 4 for one deployment: while both
    processes run, never more than 2 requests in flight (the strictest live cap)."""
    async with FakeOpenAIServer(latency_s=0.3, reply_mode="identity") as srv:
        narrow = await translate(workspace(tmp_path / "n", srv.url, parallel=2, articles=16))
        deadline = time.monotonic() + 30
        while srv.stats["requests"] < 1:  # the narrow process has said its cap
            assert time.monotonic() < deadline and narrow.returncode is None
            await asyncio.sleep(0.02)
        wide = await translate(workspace(tmp_path / "w", srv.url, parallel=4, articles=2))
        code, text = await finish(wide)
        assert code == 0, text
        assert narrow.returncode is None  # both ran the whole time the wide one did
        assert srv.stats["max_in_flight"] == 2, srv.stats  # 4 with the wide one's cap
        code, text = await finish(narrow)
        assert code == 0, text


async def test_a_sigkilled_holder_gives_its_seat_back_within_two_seconds(tmp_path: Path) -> None:
    async with FakeOpenAIServer(latency_s=30, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "w", srv.url, parallel=1)
        proc = await translate(ws)
        deadline = time.monotonic() + 30
        while srv.stats["in_flight"] < 1:  # the batch holds the only seat
            assert time.monotonic() < deadline and proc.returncode is None
            await asyncio.sleep(0.05)
        async with HostLedger() as ledger:
            seats = ledger.deployment(
                deployment_id((srv.url,), MODEL), deployment_label((srv.url,), MODEL), 1
            )
            views = await ledger.views()
            (view,) = views
            assert view.in_use == 1 and view.holders[0].pid == proc.pid
            assert view.holders[0].kind == "batch"
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            lease = await asyncio.wait_for(seats.acquire("interactive"), 2.0)
            assert time.monotonic() - killed < 2.0
            await seats.release(lease)
        await proc.wait()


async def test_reserved_seat_keeps_a_session_from_waiting_behind_a_batch(tmp_path: Path) -> None:
    async with FakeOpenAIServer(latency_s=0.3, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "w", srv.url, parallel=2, reserve=1)
        proc = await translate(ws)
        deadline = time.monotonic() + 30
        while srv.stats["requests"] < 3:  # the batch is well under way
            assert time.monotonic() < deadline and proc.returncode is None
            await asyncio.sleep(0.05)
        async with HostLedger() as ledger:
            dep = ledger.deployment(
                deployment_id((srv.url,), MODEL), deployment_label((srv.url,), MODEL), 2, 1
            )
            seats = Seats(2, ledger=dep, kind="interactive")
            asked = time.monotonic()
            held = await asyncio.wait_for(seats.acquire(), 5)
            waited = time.monotonic() - asked
            await seats.release(held)
        code, text = await finish(proc)
        assert code == 0, text
        assert srv.stats["max_in_flight"] == 1  # the batch never took the reserved seat
        assert waited < 0.25, waited  # not a whole request's latency behind the batch


async def test_familiar_fleet_shows_cap_holders_and_waiters(tmp_path: Path) -> None:
    async with FakeOpenAIServer(latency_s=30, reply_mode="identity") as srv:
        a = workspace(tmp_path / "a", srv.url, parallel=1)
        b = workspace(tmp_path / "b", srv.url, parallel=1)
        first = await translate(a)
        deadline = time.monotonic() + 30
        while srv.stats["in_flight"] < 1:
            assert time.monotonic() < deadline and first.returncode is None
            await asyncio.sleep(0.05)
        second = await translate(b)
        try:
            while True:  # the second batch queues in the ledger
                shown = await start(a, "fleet", "--json")
                code, text = await finish(shown, 30)
                assert code == 0, text
                data = json.loads(text)
                (dep,) = data["deployments"]
                if dep["waiting"] == 1:
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert data["ledger"]["kind"] == "host"
            assert dep["cap"] == 1 and dep["in_use"] == 1 and dep["slots"] == ["translator"]
            (holder,) = dep["holders"]
            assert holder["pid"] == first.pid and holder["kind"] == "batch"
            assert "translate src --to en" in holder["command"]
            assert dep["waiters"][0]["pid"] == second.pid
            assert srv.stats["in_flight"] == 1
            plain = await start(a, "fleet")
            code, text = await finish(plain, 30)
            assert code == 0 and "in use 1/1" in text and f"pid {first.pid}" in text, text
        finally:
            for p in (first, second):
                p.kill()
                await p.wait()
