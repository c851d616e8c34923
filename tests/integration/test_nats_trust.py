"""Trust across hosts, through the whole commands against a real nats-server: the
config docs/QUEUE.md ships (auth on, familiar's own account), TLS, forged records with
the fleet key set, lost jobs, and workers that stop whatever their connection does."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from familiar.ledger.nats_trust import FleetKey
from familiar.queue.jobs import JobOptions, JobResult, job_id
from familiar.queue.kvcache import KvChunkCache, encode_chunk
from familiar.queue.store import CHUNKS, RESULTS, QueueStore
from familiar.translate.cache import CachedChunk
from tests.integration.test_queue import assert_identical, finish, sources, until, workspace
from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer, make_certs, queue_doc_config
from tests.support.scripts import report_rows

nats_server = nats_support.nats_server  # the fixture
Proc = asyncio.subprocess.Process
PASSWORD = "familiar-pw-4f1c"
KEY = "fleet-key-0123456789abcdef"


def doc_config() -> str:
    """The shipped config, passwords set, its commented watcher user and APPS account on."""
    conf = queue_doc_config().replace('"CHANGE-ME"', f'"{PASSWORD}"')
    conf = conf.replace('store_dir: "/var/lib/nats"', "")  # the test's own (-sd)
    conf = conf.replace("# { user: watcher", "{ user: watcher")
    conf = conf.replace('"CHANGE-ME-TOO"', '"watcher-pw"')
    conf = conf.replace("# APPS {", "APPS {").replace('"CHANGE-ME-THREE"', '"app-pw"')
    return conf


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-auth", config=doc_config())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def env(home: Path, **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FAMILIAR_")}
    return {
        **out,
        "FAMILIAR_TELEMETRY": "off",
        "FAMILIAR_HOME": str(home),
        "FAMILIAR_LEDGER_DIR": str(home / "ledger"),
        **extra,
    }


async def familiar(ws: Path, home: str, *args: str, **extra: str) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "familiar", *args, "--workspace", str(ws)),
        cwd=ws,
        env=env(ws / home, **extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def translate_args(url: str) -> tuple[str, ...]:
    return ("translate", "src", "--to", "en", "--out", "out", "--json", "--nats", url)


async def stop_worker(proc: Proc) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    code, _out, err = await finish(proc, 30)
    assert code == 143, err
    return err


# -- 1. authenticated, limited, encrypted ----------------------------------------------


async def test_the_shipped_config_lets_familiar_in_and_keeps_everyone_else_out(
    tmp_path: Path, auth_server: NatsServer
) -> None:
    good = auth_server.url_as(f"familiar:{PASSWORD}")
    async with FakeOpenAIServer(latency_s=0.01, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = sources(ws, 4)
        # the ledger goes through the same server, with the same credentials
        ledger = {"FAMILIAR_NATS_URL": good, "FAMILIAR_FLEET_KEY": KEY}
        work = await familiar(ws, ".home-w", "worker", "--nats", good, **ledger)
        code, out, err = await finish(await familiar(ws, ".home-s", *translate_args(good)))
        werr = await stop_worker(work)
        assert code == 0, err + werr
        assert_identical(ws, src)
        for text in (out, err, werr):
            assert PASSWORD not in text
        assert srv.stats["max_in_flight"] <= 2

    # no credentials, then a wrong password: one clear line, exit 2, nothing written
    for url in (auth_server.url, auth_server.url_as("familiar:wrong")):
        ws2 = workspace(tmp_path / f"ws-{len(url)}", "http://127.0.0.1:9")
        sources(ws2, 1)
        code, out, err = await finish(await familiar(ws2, ".home", *translate_args(url)), 60)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("familiar: error:"), err
        assert "refused familiar's credentials" in lines[0] and "wrong" not in err
        assert not (ws2 / "out").exists() and "Traceback" not in err

    # a user of familiar's account without its permissions, and a user of another account
    # with every permission in its own: neither can read or write familiar's buckets
    async with QueueStore(good) as store:
        job = next(iter(await store.kv(RESULTS).keys()))
        before = (await store.kv(RESULTS).get(job)).value
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    watcher = await nats.connect(auth_server.url_as("watcher:watcher-pw"), error_cb=on_error)
    app = await nats.connect(auth_server.url_as("app:app-pw"), error_cb=on_error)
    try:
        for nc in (watcher, app):
            js = nc.jetstream(timeout=1.5)
            with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
                await (await js.key_value(RESULTS)).get(job)
            await nc.publish(f"$KV.{RESULTS}.{job}", b'{"forged": true}')
            await nc.publish(f"$KV.{CHUNKS}.x", b"{}")
            await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await watcher.close()
        await app.close()
    assert any("permissions violation" in e.lower() for e in errors), errors  # the watcher's
    async with QueueStore(good) as store:
        assert (await store.kv(RESULTS).get(job)).value == before
        with pytest.raises(Exception):  # noqa: B017 - no key "x": nothing was written
            await store.kv(CHUNKS).get("x")


async def test_tls_with_a_ca_and_a_client_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    conf = (
        "tls {\n"
        f'  cert_file: "{certs["server_pem"]}"\n  key_file: "{certs["server_key"]}"\n'
        f'  ca_file: "{certs["ca_pem"]}"\n  verify: true\n}}\n'
    )
    server = NatsServer(tmp_path / "nats-tls", config=conf, scheme="tls")
    server.start()
    try:
        async with FakeOpenAIServer(latency_s=0.01, reply_mode="identity") as srv:
            ws = workspace(tmp_path / "ws", srv.url)
            src = sources(ws, 2)
            tls = {
                "FAMILIAR_NATS_CA": str(certs["ca_pem"]),
                "FAMILIAR_NATS_CERT": str(certs["client_pem"]),
                "FAMILIAR_NATS_CERT_KEY": str(certs["client_key"]),
            }
            work = await familiar(ws, ".home-w", "worker", "--nats", server.url, **tls)
            proc = await familiar(ws, ".home-s", *translate_args(server.url), **tls)
            code, _out, err = await finish(proc)
            werr = await stop_worker(work)
            assert code == 0, err + werr
            assert_identical(ws, src)
            # without the CA the server's certificate is not trusted: one line, exit 2
            ws2 = workspace(tmp_path / "ws2", srv.url)
            sources(ws2, 1)
            proc = await familiar(ws2, ".home", *translate_args(server.url))
            code, _out, err = await finish(proc, 60)
            assert code == 2, err
            assert err.count("\n") == 1 and "FAMILIAR_NATS_CA" in err, err
            assert not (ws2 / "out").exists()
    finally:
        server.stop()


# -- 2. forged results and chunks -------------------------------------------------------


async def test_a_forged_result_and_a_forged_chunk_are_rejected_and_translated_for_real(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.01, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = sources(ws, 2)
        keyed = {"FAMILIAR_FLEET_KEY": KEY}
        work = await familiar(ws, ".home-w1", "worker", "--nats", nats_server.url, **keyed)
        proc = await familiar(ws, ".home-s", *translate_args(nats_server.url), **keyed)
        code, _out, err = await finish(proc)
        await stop_worker(work)
        assert code == 0, err
        asked = srv.stats["requests"]
        # a bus writer (no key) puts its own text in every result and every chunk
        async with QueueStore(nats_server.url, key=FleetKey()) as store:
            assert len(await store.kv(RESULTS).keys()) == 2
            forged = JobResult({"status": "ok", "chunks": 1}, "FORGED TRANSLATION")
            for key in await store.kv(RESULTS).keys():
                await store.kv(RESULTS).put(key, forged.encode())
            chunk = CachedChunk("FORGED CHUNK", MODEL_NAME, "stop", None, 1, 0)
            for key in await store.kv(CHUNKS).keys():
                await store.kv(CHUNKS).put(key, encode_chunk(chunk))
        (ws / "out").rename(ws / "out-first")
        work = await familiar(ws, ".home-w2", "worker", "--nats", nats_server.url, **keyed)
        proc = await familiar(ws, ".home-s", *translate_args(nats_server.url), **keyed)
        code, _out, err = await finish(proc)
        werr = await stop_worker(work)
        assert code == 0, err + werr
        assert_identical(ws, src)  # nothing forged was written
        assert srv.stats["requests"] >= 2 * asked  # translated again, for real
        assert err.count("fails the FAMILIAR_FLEET_KEY check") == 1, err
        assert werr.count("fails the FAMILIAR_FLEET_KEY check") == 1, werr


MODEL_NAME = "general-llm"


async def test_forged_records_fail_the_check_in_the_store_and_the_cache(
    nats_server: NatsServer,
) -> None:
    key = FleetKey(KEY.encode())
    async with QueueStore(nats_server.url, key=key) as store:
        await store.put_result("j1", JobResult({"status": "ok"}, "real"))
        found = await store.result("j1")
        assert found is not None and found[0].output == "real"
        # the same signed record copied under another job id fails: the key is signed too
        await store.kv(RESULTS).put("j2", (await store.kv(RESULTS).get("j1")).value or b"")
        assert await store.result("j2") is None
        cache = KvChunkCache(store)
        await cache.aput("c1", CachedChunk("real", "m", "stop", None, 1, 0))
        assert (await cache.aget("c1")) is not None
        await store.kv(CHUNKS).put("c1", encode_chunk(CachedChunk("x", "m", "stop", None, 1, 0)))
        assert await cache.aget("c1") is None
        assert key.rejected == {"result": 1, "chunk": 1}


# -- 3. no job waits forever ------------------------------------------------------------


async def test_results_purged_after_a_finished_batch_are_translated_again(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Purged results (or a run killed between purging a failure and publishing it again)
    leave jobs that are neither stored nor queued while their message ids are still in
    the duplicate window: the rerun must publish them again with fresh ids."""
    async with FakeOpenAIServer(latency_s=0.01, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = sources(ws, 3)
        work = await familiar(ws, ".home-w", "worker", "--nats", nats_server.url)
        code, _out, err = await finish(
            await familiar(ws, ".home-s", *translate_args(url := nats_server.url))
        )
        assert code == 0, err
        async with QueueStore(url) as store:
            await store.js.purge_stream(f"KV_{RESULTS}")
        (ws / "out").rename(ws / "out-first")
        started = time.monotonic()
        code, out, err = await finish(await familiar(ws, ".home-s", *translate_args(url)), 60)
        took = time.monotonic() - started
        await stop_worker(work)
        assert code == 0, err  # was: waits forever (the republish a "duplicate")
        assert_identical(ws, src)
        assert all(r["status"] == "ok" for r in report_rows(out))
        print(f"rerun after purge: exit {code}, {took:.2f} s")
        assert took < 30, took


async def test_with_no_worker_the_batch_ends_at_collect_timeout_and_a_rerun_collects(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.01, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        slots = ws / "slots.toml"
        slots.write_text("[fleet]\ncollect_timeout_s = 2\n" + slots.read_text())
        src = sources(ws, 2)
        started = time.monotonic()
        code, out, err = await finish(
            await familiar(ws, ".home-s", *translate_args(nats_server.url)), 60
        )
        assert code == 1, err
        assert time.monotonic() - started < 30
        rows = report_rows(out)
        assert [r["status"] for r in rows] == ["failed", "failed"]
        assert "collect_timeout_s" in rows[0]["error"]
        assert not (ws / "out").exists() or not list((ws / "out").rglob("*.md"))
        work = await familiar(ws, ".home-w", "worker", "--nats", nats_server.url)
        code, _out, err = await finish(
            await familiar(ws, ".home-s", *translate_args(nats_server.url))
        )
        await stop_worker(work)
        assert code == 0, err
        assert_identical(ws, src)


# -- 7. workers always stop -------------------------------------------------------------


async def test_a_worker_whose_server_is_gone_stops_on_sigterm_within_seconds(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=60, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        sources(ws, 2)
        url = nats_server.url
        # a job running on a seat of the NATS ledger, on the same server
        work = await familiar(ws, ".home-w", "worker", "--nats", url, FAMILIAR_NATS_URL=url)
        sub = await familiar(ws, ".home-s", *translate_args(url))
        await until(lambda: srv.stats["in_flight"] > 0, 60)
        nats_server.stop()
        await asyncio.sleep(1.0)
        started = time.monotonic()
        work.send_signal(signal.SIGTERM)
        code, _out, err = await finish(work, 30)
        took = time.monotonic() - started
        sub.kill()
        await sub.wait()
        print(f"worker stopped {took:.2f} s after SIGTERM; stderr: {err[-300:]}")
        assert code == 143, err
        assert took < 10, (took, err)
        assert "Traceback" not in err


async def test_a_token_in_the_url_works_and_is_never_shown(tmp_path: Path) -> None:
    from familiar.errors import QueueSetupError

    token = "tok-9d8e7f6a5b4c"
    server = NatsServer(tmp_path / "nats-tok", config=f'authorization {{ token: "{token}" }}\n')
    server.start()
    try:
        async with QueueStore(server.url_as(token)) as store:
            assert token not in store.where and store.where == server.url
            await store.put_result("j", JobResult({"status": "ok"}, "x"))
            assert await store.result("j") is not None
        with pytest.raises(QueueSetupError, match="refused familiar's credentials") as info:
            async with QueueStore(server.url_as("not-the-token"), wait_s=10):
                pass
        assert "not-the-token" not in str(info.value)
    finally:
        server.stop()


async def test_a_job_whose_text_does_not_match_its_id_is_dropped_untranslated(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    from familiar.queue.jobs import JobMessage
    from familiar.queue.store import SUBJECT

    async with FakeOpenAIServer(latency_s=0.01, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        real = job_id("# 本物\n\nお茶です。\n", JobOptions(to="en"))
        forged = JobMessage(real, "a.md", JobOptions(to="en"), text="# 偽物\n\n嘘です。\n")
        async with QueueStore(nats_server.url) as store:
            await store.js.publish(f"{SUBJECT}.{real}", forged.encode())
            work = await familiar(ws, ".home-w", "worker", "--nats", nats_server.url)
            deadline = time.monotonic() + 60
            while await store.queued(real):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            err = await stop_worker(work)
            assert await store.result(real) is None  # nothing stored under the real id
        assert srv.stats["requests"] == 0, err
        assert "does not match its id" in err


async def test_an_nkey_seed_file_logs_in_and_a_wrong_seed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nacl.signing
    import nkeys

    from familiar.errors import QueueSetupError

    def user_seed(path: Path) -> str:
        raw = bytes(nacl.signing.SigningKey.generate())
        seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER)
        path.write_bytes(seed + b"\n")
        return nkeys.from_seed(seed).public_key.decode()

    public = user_seed(tmp_path / "user.nk")
    user_seed(tmp_path / "other.nk")
    server = NatsServer(
        tmp_path / "nats-nk", config=f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}\n'
    )
    server.start()
    try:
        monkeypatch.setenv("FAMILIAR_NATS_NKEY", str(tmp_path / "user.nk"))
        async with QueueStore(server.url) as store:
            await store.put_result("j", JobResult({"status": "ok"}, "x"))
            assert await store.result("j") is not None
        monkeypatch.setenv("FAMILIAR_NATS_NKEY", str(tmp_path / "other.nk"))
        with pytest.raises(QueueSetupError, match="refused familiar's credentials"):
            async with QueueStore(server.url, wait_s=10):
                pass
    finally:
        server.stop()
