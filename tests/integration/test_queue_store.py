"""The queue's JetStream objects against a real nats-server: results (inline and in the
object store), the KV chunk cache shared between workers, an article over the payload
limit travelling through the object store, and an unreachable server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from familiar.cli.main import main
from familiar.queue.jobs import JobResult
from familiar.queue.kvcache import KvChunkCache
from familiar.queue.store import OBJECTS, QueueStore
from familiar.queue.submit import Submitter
from familiar.translate.cache import CachedChunk, ChunkCache
from familiar.translate.chunks import BatchOptions
from familiar.translate.report import ArticleReport
from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer, free_port
from tests.support.scripts import ARTICLE

nats_server = nats_support.nats_server  # the fixture


async def test_results_inline_and_over_the_limit_and_forgotten(nats_server: NatsServer) -> None:
    async with QueueStore(nats_server.url, inline_limit=64) as store:
        assert await store.result("nojob") is None
        small = JobResult.of(ArticleReport(path="", status="ok"), "short")
        await store.put_result("j1", small)
        found = await store.result("j1")
        assert found is not None and found[0] == small and found[1] > 0
        big_text = "長い記事です。" * 100
        await store.put_result("j2", JobResult.of(ArticleReport(path="", status="ok"), big_text))
        found = await store.result("j2")
        assert found is not None
        name = found[0].output_object  # named by its digest, which the result's mac covers
        assert found[0].output is None and name is not None and name.startswith("result.j2.")
        assert await store.output(found[0]) == big_text
        obs = await store.js.object_store(OBJECTS)
        assert (await obs.get(name)).data == big_text.encode()
        await obs.put(name, b"altered")  # a bus writer rewrites the object
        with pytest.raises(ValueError, match="does not match its digest"):
            await store.output(found[0])
        await obs.put(name, big_text.encode())
        await store.forget("j1")
        assert await store.result("j1") is None
    # the buckets and stream outlive the connection, and a restart of the server
    nats_server.stop()
    nats_server.start()
    async with QueueStore(nats_server.url) as store:
        found = await store.result("j2")
        assert found is not None and await store.output(found[0]) == big_text


async def test_the_kv_chunk_cache_is_shared_between_workers(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    chunk = CachedChunk("green tea", "m", "stop", None, 1, 0)
    async with (
        QueueStore(nats_server.url) as one,
        QueueStore(nats_server.url) as two,
    ):
        local_a = ChunkCache(tmp_path / "a.sqlite")
        local_b = ChunkCache(tmp_path / "b.sqlite")
        try:
            a, b = KvChunkCache(one, local_a), KvChunkCache(two, local_b)
            assert await b.aget("k1") is None and b.misses == 1
            await a.aput("k1", chunk)
            assert local_a.get("k1") == chunk and a.puts == 1
            assert await b.aget("k1") == chunk  # through the bucket
            assert local_b.get("k1") == chunk  # and kept locally from then on
            assert await KvChunkCache(two).aget("k1") == chunk  # no local cache at all
        finally:
            local_a.close()
            local_b.close()


def workspace(root: Path, url: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{url}"\nmodel = "general-llm"\nruntime = "vllm"\n'
        "parallel = 2\ntimeout_s = 60\n"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "m"\nparallel = 1\n'
        "[fleet]\nledger_wait_s = 2\n"
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return root


async def test_an_article_over_the_payload_limit_travels_through_the_object_store(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = ws / "src"
        src.mkdir()
        (src / "big.md").write_text(ARTICLE, encoding="utf-8")
        (src / "small.md").write_text("# 短い\n\nお茶。\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAMILIAR_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "familiar", "worker", "--workspace", str(ws), "--nats", nats_server.url),
            env={**env, "FAMILIAR_HOME": str(ws / ".w"), "FAMILIAR_LEDGER_DIR": str(ws / ".l")},
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            files = [(src / "big.md", Path("big.md")), (src / "small.md", Path("small.md"))]
            reports = [ArticleReport(path=str(f)) for f, _ in files]
            opts = BatchOptions(to="en", out_dir=tmp_path / "out")
            limit = len("# 短い\n\nお茶。\n".encode()) + 1  # the small one fits, the big not
            async with QueueStore(nats_server.url, inline_limit=limit) as store:
                sub = Submitter(store, opts)
                await asyncio.wait_for(sub.run(files, reports), 60)
                obs = await store.js.object_store(OBJECTS)
                names = [info.name for info in await obs.list()]
            assert [n for n in names if n.startswith("article.")] == [names[0]]
            assert sub.submitted == 2
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 143, err.decode()
        assert [r.status for r in reports] == ["ok", "ok"]
        for name in ("big.md", "small.md"):
            assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()


def test_an_unreachable_queue_fails_naming_the_url_without_writing(
    tmp_path: Path, capsys: object
) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    ws = workspace(tmp_path, "http://127.0.0.1:9")
    (ws / "src").mkdir()
    (ws / "src" / "a.md").write_text(ARTICLE, encoding="utf-8")
    started = time.monotonic()
    argv = ["translate", "--workspace", str(ws), str(ws / "src"), "--to", "en"]
    code = main([*argv, "--out", str(tmp_path / "out"), "--nats", url])
    assert code == 1
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    last = err.strip().splitlines()[-1]
    assert last.startswith("familiar: error: the work queue at") and url in last
    assert "Traceback" not in err


def test_a_bad_nats_url_is_a_usage_error(tmp_path: Path, capsys: object) -> None:
    ws = workspace(tmp_path, "http://127.0.0.1:9")
    (ws / "a.md").write_text(ARTICLE, encoding="utf-8")
    argv = ["translate", "--workspace", str(ws), str(ws / "a.md"), "--to", "en"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--nats", "http://x:1"]) == 2
    assert main(["worker", "--workspace", str(ws), "--nats", "localhost:4222"]) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert err.count("familiar: error: --nats:") == 2, err
