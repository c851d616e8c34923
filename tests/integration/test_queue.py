"""Batches across hosts: ``familiar translate --nats`` and ``familiar worker`` processes
against a real nats-server and the loopback fake translator (identity replies, so every
output must equal its source byte for byte)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.fake_vector import FakeVector
from tests.support.nats import NatsServer
from tests.support.scripts import ARTICLE, report_rows

nats_server = nats_support.nats_server  # the fixture
MODEL = "general-llm"
Proc = asyncio.subprocess.Process


def workspace(root: Path, url: str, *, parallel: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{url}"\nmodel = "{MODEL}"\nruntime = "vllm"\n'
        f"parallel = {parallel}\ntimeout_s = 60\n"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "m"\nparallel = 1\n'
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return root


def sources(root: Path, n: int, paragraphs: int = 1) -> Path:
    src = root / "src"
    for i in range(n):
        sub = src / ("deep" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        body = ARTICLE.replace("緑茶", f"緑茶{i}")
        extra = "".join(f"\n段落{i}-{k}: お茶は温度が大切です。\n" for k in range(paragraphs))
        (sub / f"a{i}.md").write_text(body + extra, encoding="utf-8")
    return src


def env(home: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FAMILIAR_")}
    telemetry = (
        {"FAMILIAR_TELEMETRY": "off"} if not TELEMETRY else {"FAMILIAR_TELEMETRY_URL": TELEMETRY[0]}
    )
    return {
        **out,
        **telemetry,
        "FAMILIAR_HOME": str(home),
        "FAMILIAR_LEDGER_DIR": str(home / "ledger"),
    }


TELEMETRY: list[str] = []  # where the processes send events (a test sets it)


async def worker(ws: Path, name: str, nats_url: str, *extra: str) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "familiar", "worker", "--workspace", str(ws), "--nats", nats_url),
        *("--ack-wait", "2", *extra),
        cwd=ws,
        env=env(ws / f".home-{name}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def submit(ws: Path, nats_url: str) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "familiar", "translate", "--workspace", str(ws), "src"),
        *("--to", "en", "--out", "out", "--json", "--nats", nats_url),
        cwd=ws,
        env=env(ws / ".home-submit"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: Proc, limit: float = 120) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def stop(proc: Proc) -> tuple[int, str]:
    """SIGTERM a worker: it stops cleanly with 143."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    code, _out, err = await finish(proc, 30)
    return code, err


async def until(check: object, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def assert_identical(ws: Path, src: Path) -> None:
    """Every source has its output, byte for byte (identity translator), nothing else."""
    out = ws / "out"
    written = sorted(p.relative_to(out) for p in out.rglob("*.md"))
    assert written == sorted(p.relative_to(src) for p in src.rglob("*.md"))
    for rel in written:
        assert (out / rel).read_bytes() == (src / rel).read_bytes(), rel


async def test_two_workers_translate_a_batch_byte_for_byte(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.02, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = sources(ws, 8)
        workers = [await worker(ws, f"w{i}", nats_server.url) for i in range(2)]
        try:
            code, out, err = await finish(await submit(ws, nats_server.url))
            assert code == 0, err
            rows = report_rows(out)
            assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}, rows
            assert all(r["out"] and r["chunks"] > 0 for r in rows)
            assert_identical(ws, src)
            chunks = sum(r["chunks"] for r in rows)
            assert srv.stats["requests"] == chunks  # each chunk asked once
        finally:
            for w in workers:
                code, err = await stop(w)
                assert code == 143, err
                assert "Traceback" not in err

        # a rerun collects every result from the store: nothing is asked again
        asked = srv.stats["requests"]
        (ws / "out").rename(ws / "out-1")
        code, out, err = await finish(await submit(ws, nats_server.url))
        assert code == 0, err
        assert {r["status"] for r in report_rows(out)} == {"ok"}
        assert_identical(ws, src)
        assert srv.stats["requests"] == asked


async def queue_state(url: str) -> tuple[int, int]:
    """(jobs left in the stream, jobs the workers' consumer has out unacked)."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream = await js.stream_info("familiar_jobs")
        consumer = await js.consumer_info("familiar_jobs", "familiar_workers")
        return int(stream.state.messages), int(consumer.num_ack_pending)
    finally:
        await nc.close()


async def test_a_sigkilled_workers_jobs_go_to_the_other_worker_without_asking_twice(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with (
        FakeOpenAIServer(latency_s=0.3, reply_mode="identity") as srv_a,
        FakeOpenAIServer(latency_s=0.02, reply_mode="identity") as srv_b,
    ):
        # two hosts: each worker has its own slots file, its own translator
        ws = workspace(tmp_path / "ws", srv_b.url)
        host_a = workspace(tmp_path / "host-a", srv_a.url, parallel=3)
        src = sources(ws, 6, paragraphs=4)
        sub = await submit(ws, nats_server.url)
        a = await worker(host_a, "a", nats_server.url)
        await until(lambda: srv_a.stats["requests"] >= 6 and srv_a.stats["in_flight"] > 0)
        a.send_signal(signal.SIGKILL)
        in_flight_at_kill = srv_a.stats["in_flight"]
        await a.wait()
        b = await worker(ws, "b", nats_server.url)
        try:
            code, out, err = await finish(sub)
            assert code == 0, err
        finally:
            code_b, err_b = await stop(b)
        assert code_b == 143, err_b
        rows = report_rows(out)
        assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}, rows
        assert_identical(ws, src)
        chunks = sum(r["chunks"] for r in rows)
        asked = srv_a.stats["requests"] + srv_b.stats["requests"]
        # A's finished chunks came from the KV cache: only its requests in flight again
        assert asked <= chunks + in_flight_at_kill, (asked, chunks, in_flight_at_kill)
        assert sum(r["from_cache"] for r in rows) > 0
        assert await queue_state(nats_server.url) == (0, 0)


async def test_a_killed_submitter_reruns_and_collects_what_is_done(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.1, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = sources(ws, 8, paragraphs=2)
        workers = [await worker(ws, f"w{i}", nats_server.url) for i in range(2)]
        try:
            first = await submit(ws, nats_server.url)
            await until(lambda: srv.stats["requests"] >= 8)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            code, out, err = await finish(await submit(ws, nats_server.url))
            assert code == 0, err
        finally:
            for w in workers:
                assert (await stop(w))[0] == 143
        rows = report_rows(out)
        assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}, rows
        assert_identical(ws, src)
        assert srv.stats["requests"] == sum(r["chunks"] for r in rows)  # none asked twice
        assert await queue_state(nats_server.url) == (0, 0)


async def test_nats_restarted_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.1, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = sources(ws, 8, paragraphs=3)
        workers = [await worker(ws, f"w{i}", nats_server.url) for i in range(2)]
        try:
            sub = await submit(ws, nats_server.url)
            await until(lambda: srv.stats["requests"] >= 6)
            await asyncio.to_thread(nats_server.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(nats_server.start)
            code, out, err = await finish(sub)
            assert code == 0, err
            assert "Traceback" not in err
        finally:
            for w in workers:
                code_w, err_w = await stop(w)
                assert code_w == 143, err_w
        rows = report_rows(out)
        assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}, rows
        assert_identical(ws, src)
        chunks = sum(r["chunks"] for r in rows)
        assert srv.stats["requests"] <= 2 * chunks
        assert await queue_state(nats_server.url) == (0, 0)


async def test_a_stopped_worker_hands_its_job_back_at_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with (
        FakeOpenAIServer(latency_s=60, reply_mode="identity") as slow,
        FakeOpenAIServer(reply_mode="identity") as fast,
    ):
        ws = workspace(tmp_path / "ws", fast.url)
        host_a = workspace(tmp_path / "host-a", slow.url)
        src = sources(ws, 1)
        sub = await submit(ws, nats_server.url)
        a = await worker(host_a, "a", nats_server.url, "--ack-wait", "60")
        await until(lambda: slow.stats["in_flight"] > 0)
        code_a, err_a = await stop(a)
        assert code_a == 143 and "Traceback" not in err_a, err_a
        stopped = time.monotonic()
        b = await worker(ws, "b", nats_server.url, "--ack-wait", "60")
        try:
            code, _out, err = await finish(sub, 60)
            assert code == 0, err
        finally:
            await stop(b)
        assert time.monotonic() - stopped < 30  # the nak, not the 60 s ack wait
        assert_identical(ws, src)


async def test_a_poison_job_becomes_that_articles_failure(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with (
        FakeOpenAIServer(latency_s=60, reply_mode="identity") as hang,
        FakeOpenAIServer(reply_mode="identity") as fast,
    ):
        ws = workspace(tmp_path / "ws", fast.url)
        host_a = workspace(tmp_path / "host-a", hang.url)
        src = sources(ws, 1)
        sub = await submit(ws, nats_server.url)
        a = await worker(host_a, "a", nats_server.url, "--max-deliver", "2")
        await until(lambda: hang.stats["in_flight"] > 0)
        a.send_signal(signal.SIGKILL)  # the job killed its worker
        await a.wait()
        b = await worker(ws, "b", nats_server.url, "--max-deliver", "2")
        try:
            code, out, err = await finish(sub, 60)
            assert code == 1, err
            (row,) = report_rows(out)
            assert row["status"] == "failed" and "gave up after 1 deliveries" in row["error"]
            assert row["out"] is None and not (ws / "out").exists()
            assert fast.stats["requests"] == 0  # the last delivery is not run again
            # a rerun asks again (a new message id: the duplicate window does not apply)
            code, out, err = await finish(await submit(ws, nats_server.url), 60)
            assert code == 0, err
            assert [r["status"] for r in report_rows(out)] == ["ok"]
            assert_identical(ws, src)
        finally:
            await stop(b)


async def test_workers_events_carry_the_batchs_correlation_id(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with (
        FakeVector() as vector,
        FakeOpenAIServer(reply_mode="identity") as srv,
    ):
        TELEMETRY.append(vector.url)
        try:
            ws = workspace(tmp_path / "ws", srv.url)
            sources(ws, 3)
            w = await worker(ws, "w", nats_server.url)
            code, _out, err = await finish(await submit(ws, nats_server.url))
            assert code == 0, err
            assert (await stop(w))[0] == 143
        finally:
            TELEMETRY.clear()
        (start,) = [e for e in vector.events if e["event"] == "batch.start"]
        jobs = [e for e in vector.events if e["event"] == "queue.job"]
        calls = [e for e in vector.events if e["event"] == "llm.call"]
        assert len(jobs) == 3 and {j["status"] for j in jobs} == {"ok"}
        assert calls and start["correlation_id"]
        assert {e["correlation_id"] for e in jobs + calls} == {start["correlation_id"]}
        assert {e["host"] for e in jobs} and all(j["deliveries"] == 1 for j in jobs)
