"""Fleet-wide seats through NATS JetStream: real familiar processes that share nothing on
the host (each its own FAMILIAR_HOME and host-ledger directory) share one cap through a
real nats-server, started here on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from familiar.ledger import deployment_id, deployment_label
from familiar.ledger.nats import NatsLedger
from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer, free_port
from tests.support.scripts import ARTICLE, report_rows

MODEL = "general-llm"
nats_server = nats_support.nats_server  # the fixture


def workspace(root: Path, url: str, *, parallel: int, articles: int = 4, fleet: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "slots.toml").write_text(
        f"{fleet}"
        f'[slots.translator]\nurl = "{url}"\nmodel = "{MODEL}"\nruntime = "vllm"\n'
        f"parallel = {parallel}\ntimeout_s = 60\n"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "m"\nparallel = 1\n'
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    src = root / "src"
    src.mkdir()
    for i in range(articles):
        (src / f"a{i}.md").write_text(ARTICLE.replace("緑茶", f"緑茶{root.name}{i}"), "utf-8")
    return root


async def translate(ws: Path, nats_url: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "FAMILIAR_HOME": str(ws / ".home"),
        "FAMILIAR_LEDGER_DIR": str(ws / ".ledger"),  # no host ledger in common
        "FAMILIAR_NATS_URL": nats_url,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "familiar", "translate", "src", "--to", "en", "--out", "out", "--json"),
        cwd=ws,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, limit: float = 120) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_processes_on_separate_ledger_dirs_share_the_cap_through_nats(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.05, reply_mode="identity") as srv:
        spaces = [workspace(tmp_path / f"w{i}", srv.url, parallel=2) for i in range(3)]
        procs = [await translate(ws, nats_server.url) for ws in spaces]
        for proc in procs:
            code, _out, err = await finish(proc)
            assert code == 0, err
        assert srv.stats["max_in_flight"] == 2, srv.stats  # 6 with per-host ledgers


async def test_two_processes_whose_parallel_disagree_hold_the_smaller_cap_through_nats(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Slots files that say parallel = 2 and parallel = 4 for one deployment, processes
    with nothing in common but the NATS ledger: never more than 2 requests in flight."""
    async with FakeOpenAIServer(latency_s=0.3, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "n", srv.url, parallel=2, articles=16)
        narrow = await translate(ws, nats_server.url)
        deadline = time.monotonic() + 30
        while srv.stats["requests"] < 1:  # the narrow process has said its cap
            assert time.monotonic() < deadline and narrow.returncode is None
            await asyncio.sleep(0.02)
        ws = workspace(tmp_path / "w", srv.url, parallel=4, articles=2)
        wide = await translate(ws, nats_server.url)
        code, _out, err = await finish(wide)
        assert code == 0, err
        assert narrow.returncode is None  # both ran the whole time the wide one did
        assert srv.stats["max_in_flight"] == 2, srv.stats  # 4 with the wide one's cap
        code, _out, err = await finish(narrow)
        assert code == 0, err


async def test_a_sigkilled_holders_seat_comes_back_after_its_ttl(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=30, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "w", srv.url, parallel=1, fleet="[fleet]\nseat_ttl_s = 1\n")
        proc = await translate(ws, nats_server.url)
        try:
            deadline = time.monotonic() + 30
            while srv.stats["in_flight"] < 1:
                assert time.monotonic() < deadline and proc.returncode is None
                await asyncio.sleep(0.05)
            async with NatsLedger(nats_server.url, ttl_s=1.0) as ledger:
                seats = ledger.deployment(
                    deployment_id((srv.url,), MODEL), deployment_label((srv.url,), MODEL), 1
                )
                # a 1 s TTL on a loaded machine: a renewal late by a stall is re-asserted
                # by the holder within a renewal period, so look until it shows (10 s)
                deadline = time.monotonic() + 10
                while True:
                    (view,) = await ledger.views()
                    if view.in_use == 1 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                assert view.in_use == 1 and view.holders[0].pid == proc.pid
                proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                lease = await asyncio.wait_for(seats.acquire("interactive"), 10)
                assert time.monotonic() - killed < 5  # the TTL (1 s) and the marker
                await seats.release(lease)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_nats_stopped_mid_run_and_restarted_keeps_the_cap_and_finishes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.2, reply_mode="identity") as srv:
        spaces = [workspace(tmp_path / f"w{i}", srv.url, parallel=2, articles=6) for i in (0, 1)]
        procs = [await translate(ws, nats_server.url) for ws in spaces]
        deadline = time.monotonic() + 30
        while srv.stats["requests"] < 6:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        nats_server.stop()
        await asyncio.sleep(2.0)
        asked_while_down = srv.stats["requests"]
        await asyncio.to_thread(nats_server.start)
        results = [await finish(p) for p in procs]
        for code, _out, err in results:
            assert code == 0, err
            assert err.count("unreachable") <= 1, err  # one warning per outage, not per request
        assert srv.stats["max_in_flight"] <= 2, srv.stats
        assert srv.stats["requests"] > asked_while_down  # work went on after the restart


async def test_an_unreachable_nats_waits_warns_once_then_fails_naming_the_url(
    tmp_path: Path,
) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "w", srv.url, parallel=2, fleet="[fleet]\nledger_wait_s = 2\n")
        started = time.monotonic()
        code, _out, err = await finish(await translate(ws, url), 60)
        assert code == 1, err
        assert 1.5 < time.monotonic() - started < 30
        lines = [line for line in err.splitlines() if line.strip()]
        assert sum(url in line for line in lines) == 2, err  # one warning, one error
        assert lines[-1].startswith("familiar: error:") and url in lines[-1]
        assert "Traceback" not in err
        assert srv.stats["requests"] == 0  # never a silent per-process cap
        assert not (ws / "out").exists()


async def test_nats_gone_for_good_mid_run_fails_the_batch_within_its_deadline(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.2, reply_mode="identity") as srv:
        fleet = "[fleet]\nledger_wait_s = 2\n"
        ws = workspace(tmp_path / "w", srv.url, parallel=2, articles=8, fleet=fleet)
        proc = await translate(ws, nats_server.url)
        deadline = time.monotonic() + 30
        while srv.stats["requests"] < 3:
            assert time.monotonic() < deadline and proc.returncode is None
            await asyncio.sleep(0.05)
        nats_server.kill()
        killed = time.monotonic()
        code, out, err = await finish(proc, 60)  # it must end by itself, not hang
        assert time.monotonic() - killed < 30
        assert code == 1, err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("familiar: error:") and nats_server.url in last, err
        rows = report_rows(out)  # the report still prints: nothing is silently lost
        assert {r["status"] for r in rows} <= {"ok", "error", "interrupted"}
        assert any(r["status"] != "ok" for r in rows)
