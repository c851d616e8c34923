"""``familiar batch --nats``: OpenAI Batch JSONL through the work queue, through the whole
commands (``familiar batch`` and ``familiar worker`` processes) against a real nats-server
and the fake OpenAI server: the same lines as a local run, a SIGKILLed worker's group
redelivered, a killed submitter resumed, bad lines, unknown models, auth and the fleet key."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from tests.integration.test_nats_trust import KEY, PASSWORD, auth_server
from tests.integration.test_queue import env, finish, queue_state, stop, until
from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer

nats_server = nats_support.nats_server  # the fixtures
auth = auth_server
Proc = asyncio.subprocess.Process
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def workspace(root: Path, url: str, *, parallel: int = 3, model: str = "big") -> Path:
    """naughty (the batch's slot) and a translator (a worker needs one), one server."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "slots.toml").write_text(
        f'[slots.naughty]\nurl = "{url}"\nmodel = "{model}"\nruntime = "vllm"\n'
        f"parallel = {parallel}\ntimeout_s = 30\n"
        f'[slots.translator]\nurl = "{url}"\nmodel = "tr"\nparallel = 1\n'
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return root


def chat(cid: str, text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "naughty", "messages": [{"role": "user", "content": text}], **body},
    }


def requests(ws: Path, n: int) -> Path:
    """``n`` chat requests, a completion, a schema request, an unknown model, bad lines."""
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}
    lines: list[Any] = [chat(f"r{i}", f"question {i} 質問") for i in range(n)]
    lines[3:3] = [
        "{not json",
        {**chat("who", "hi"), "body": {**chat("who", "hi")["body"], "model": "gpt-9"}},
        {"custom_id": "done?", "method": "POST", "url": "/v1/completions", "body": {}},
        {
            "custom_id": "plain",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "naughty", "prompt": "once upon"},
        },
        chat("json", "give n", response_format=fmt),
    ]
    src = ws / "req.jsonl"
    src.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return src


def rows(path: Path) -> dict[str, dict[str, Any]]:
    got = [json.loads(line) for line in path.read_text().splitlines()]
    out = {r["custom_id"]: r for r in got}
    assert len(out) == len(got), "a custom_id was written twice"
    return out


def masked(path: Path) -> dict[str, str]:
    """Each line with what differs from run to run (the completion's id and time, the
    batch's correlation id) masked, as bytes: the rest must be equal byte for byte."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["response"] is not None:
            row["response"]["request_id"] = "-"
            row["response"]["body"]["id"] = row["response"]["body"]["created"] = "-"
        out[row["custom_id"]] = json.dumps(row, ensure_ascii=False)
    return out


async def familiar(ws: Path, home: str, *args: str, **extra: str) -> Proc:
    """A familiar process on the host of ``ws``: its own home, the host's seat ledger."""
    host = {"FAMILIAR_LEDGER_DIR": str(ws / ".ledger")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "familiar", *args, "--workspace", str(ws)),
        cwd=ws,
        env={**env(ws / home), **host, **extra},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def worker(ws: Path, name: str, url: str, *extra: str, **environ: str) -> Proc:
    return await familiar(
        ws, f".home-{name}", "worker", "--nats", url, "--ack-wait", "2", *extra, **environ
    )


def batch_args(url: str | None, *extra: str) -> tuple[str, ...]:
    queue = ("--nats", url, "--group-size", "4") if url else ()
    return (
        "batch",
        "req.jsonl",
        "--out",
        "out.jsonl",
        "--errors",
        "err.jsonl",
        "--json",
        *queue,
        *extra,
    )


def answer(body: dict[str, Any]) -> str | None:
    return '{"n": 4}' if "give n" in json.dumps(body) else None


async def test_the_queue_writes_what_a_local_batch_writes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.02) as srv:
        srv.handler = answer
        local, queued = workspace(tmp_path / "local", srv.url), workspace(tmp_path / "q", srv.url)
        requests(local, 30)
        requests(queued, 30)
        code, out, err = await finish(await familiar(local, ".home", *batch_args(None)))
        assert code == 1, err  # the bad lines and the unknown model
        asked_locally = srv.stats["requests"]
        workers = [await worker(queued, f"w{i}", nats_server.url) for i in range(2)]
        try:
            code, out, err = await finish(
                await familiar(queued, ".home-s", *batch_args(nats_server.url))
            )
            assert code == 1, err
        finally:
            werrs = [(await stop(w))[1] for w in workers]
        assert srv.stats["requests"] == 2 * asked_locally  # each request asked once
        assert srv.stats["max_in_flight"] <= 3  # the cap, shared by the two workers
        report = json.loads(out)
        assert report["ok"] == 32 and report["failed"] == 3, report
        assert report["queue"]["submitted"] == 9, report  # 33 requests in groups of 4
        for name in ("out.jsonl", "err.jsonl"):
            assert masked(queued / name) == masked(local / name), name
        ok, bad = rows(queued / "out.jsonl"), rows(queued / "err.jsonl")
        assert {r["response"]["request_id"] for r in ok.values()} == {report["correlation_id"]}
        assert json.loads(ok["json"]["response"]["body"]["choices"][0]["message"]["content"]) == {
            "n": 4
        }
        assert bad["line-4"]["error"]["code"] == "invalid_json"  # never sent to a worker
        assert bad["done?"]["error"]["code"] == "invalid_request"
        assert bad["who"]["error"]["code"] == "model_not_found"
        assert "gpt-9" in bad["who"]["error"]["message"]
        assert "Traceback" not in "".join(werrs) + err
        assert await queue_state(nats_server.url) == (0, 0)


def plain_requests(ws: Path, n: int) -> Path:
    src = ws / "req.jsonl"
    src.write_text("".join(json.dumps(chat(f"r{i}", f"q {i}")) + "\n" for i in range(n)))
    return src


async def test_a_sigkilled_workers_group_is_redelivered_and_no_line_is_lost_or_doubled(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 24
    async with (
        FakeOpenAIServer(latency_s=0.5, model="slow") as slow,
        FakeOpenAIServer(latency_s=0.02, model="fast") as fast,
    ):
        ws = workspace(tmp_path / "ws", fast.url, model="fast")
        host_a = workspace(tmp_path / "host-a", slow.url, model="slow")
        plain_requests(ws, n)
        sub = await familiar(ws, ".home-s", *batch_args(nats_server.url))
        a = await worker(host_a, "a", nats_server.url)
        await until(lambda: slow.stats["in_flight"] > 0)
        a.send_signal(signal.SIGKILL)  # mid-group: nothing of its groups stored or acked
        await a.wait()
        b = await worker(ws, "b", nats_server.url)
        try:
            code, out, err = await finish(sub)
            assert code == 0, err
        finally:
            code_b, err_b = await stop(b)
        assert code_b == 143, err_b
        got = rows(ws / "out.jsonl")
        assert set(got) == {f"r{i}" for i in range(n)}
        assert all(r["error"] is None for r in got.values())
        assert not (ws / "err.jsonl").read_text()
        assert "redelivered" in err_b  # B ran what A held
        # A finished nothing before it died: every line is B's answer
        assert {r["response"]["body"]["model"] for r in got.values()} == {"fast"}
        assert fast.stats["requests"] == n
        assert json.loads(out)["ok"] == n
        assert await queue_state(nats_server.url) == (0, 0)


async def test_a_killed_submitter_resumes_collecting_what_the_workers_finished(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 80
    async with FakeOpenAIServer(latency_s=0.1) as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=2)
        plain_requests(ws, n)
        out_file = ws / "out.jsonl"
        workers = [await worker(ws, f"w{i}", nats_server.url) for i in range(2)]
        try:
            first = await familiar(ws, ".home-s", *batch_args(nats_server.url))

            def some_written() -> bool:
                return out_file.exists() and out_file.read_text().count("\n") >= 12

            await until(some_written)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            before = out_file.read_text().count("\n")
            assert before < n
            with out_file.open("a") as fh:
                fh.write('{"id": "batch_req_x", "custom_id": "r79", "respo')  # torn by the kill
            code, out, err = await finish(
                await familiar(ws, ".home-s", *batch_args(nats_server.url))
            )
            assert code == 0, err
            report = json.loads(out)
            assert report["already_done"] == before and report["ok"] == n - before, report
            # the groups the killed run left queued or stored were collected, not asked again
            queue = report["queue"]
            assert queue["collected_at_once"] + queue["duplicates"] > 0, queue
            got = rows(out_file)
            assert set(got) == {f"r{i}" for i in range(n)}
            assert all(r["error"] is None for r in got.values())
            assert srv.stats["requests"] <= n + 4, srv.stats  # at most a group cut by the kill
            # --force asks everything again
            asked = srv.stats["requests"]
            forced = await familiar(ws, ".home-s", *batch_args(nats_server.url, "--force"))
            code, out, err = await finish(forced)
            assert code == 0, err
            assert srv.stats["requests"] == asked + n
            assert len(rows(out_file)) == n
        finally:
            for w in workers:
                assert (await stop(w))[0] == 143
        assert await queue_state(nats_server.url) == (0, 0)


async def test_a_group_that_kills_its_workers_is_an_error_line_per_request(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with (
        FakeOpenAIServer(latency_s=60) as hang,
        FakeOpenAIServer() as fast,
    ):
        ws = workspace(tmp_path / "ws", fast.url)
        host_a = workspace(tmp_path / "host-a", hang.url)
        plain_requests(ws, 3)
        sub = await familiar(ws, ".home-s", *batch_args(nats_server.url))
        a = await worker(host_a, "a", nats_server.url, "--max-deliver", "2")
        await until(lambda: hang.stats["in_flight"] > 0)
        a.send_signal(signal.SIGKILL)
        await a.wait()
        b = await worker(ws, "b", nats_server.url, "--max-deliver", "2")
        try:
            code, _out, err = await finish(sub, 60)
            assert code == 1, err
            bad = rows(ws / "err.jsonl")
            assert set(bad) == {"r0", "r1", "r2"} and not (ws / "out.jsonl").read_text()
            assert all("gave up after 1 deliveries" in r["error"]["message"] for r in bad.values())
            assert fast.stats["requests"] == 0  # the last delivery is not run
            # a rerun asks the failed requests again (a fresh message id)
            code, _out, err = await finish(
                await familiar(ws, ".home-s", *batch_args(nats_server.url))
            )
            assert code == 0, err
            assert set(rows(ws / "out.jsonl")) == {"r0", "r1", "r2"}
        finally:
            await stop(b)


async def test_the_shipped_server_config_and_the_fleet_key(
    tmp_path: Path, auth: NatsServer
) -> None:
    good = auth.url_as(f"familiar:{PASSWORD}")
    secured = {"FAMILIAR_NATS_URL": good, "FAMILIAR_FLEET_KEY": KEY}
    async with FakeOpenAIServer(latency_s=0.01) as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=2)
        plain_requests(ws, 10)
        workers = [await worker(ws, f"w{i}", good, **secured) for i in range(2)]
        try:
            code, out, err = await finish(
                await familiar(ws, ".home-s", *batch_args(good), **secured)
            )
        finally:
            werrs = [(await stop(w))[1] for w in workers]
        assert code == 0, err + "".join(werrs)
        assert len(rows(ws / "out.jsonl")) == 10
        assert srv.stats["max_in_flight"] <= 2  # the cap held through the NATS ledger
        for text in (out, err, *werrs, (ws / "out.jsonl").read_text()):
            assert PASSWORD not in text


async def test_a_group_run_twice_writes_its_lines_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Worker A is paused past the ack wait holding its groups: they are redelivered to
    B, and A, resumed, runs them to the end and stores them too. Each line once."""
    n = 24
    async with (
        FakeOpenAIServer(latency_s=0.5, model="slow") as slow,
        FakeOpenAIServer(latency_s=0.2, model="fast") as fast,
    ):
        ws = workspace(tmp_path / "ws", fast.url, parallel=1, model="fast")
        host_a = workspace(tmp_path / "host-a", slow.url, model="slow")
        plain_requests(ws, n)
        sub = await familiar(ws, ".home-s", *batch_args(nats_server.url))
        a = await worker(host_a, "a", nats_server.url)
        b = None
        try:
            await until(lambda: slow.stats["in_flight"] > 0)
            a.send_signal(signal.SIGSTOP)
            b = await worker(ws, "b", nats_server.url)
            await asyncio.sleep(4)  # past A's ack wait: its groups go to B
            a.send_signal(signal.SIGCONT)
            code, out, err = await finish(sub)
            assert code == 0, err
        finally:
            a.send_signal(signal.SIGCONT)
            await stop(a)
            if b is not None:
                await stop(b)
        got = rows(ws / "out.jsonl")
        assert set(got) == {f"r{i}" for i in range(n)}
        assert all(r["error"] is None for r in got.values())
        asked = [r["body"]["messages"][0]["content"] for r in slow.requests + fast.requests]
        assert len(asked) > len(set(asked)) == n  # some requests were asked twice
        assert json.loads(out)["ok"] == n


async def test_the_submitter_keeps_at_most_its_window_out(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    from familiar.batch.run import Counts, KeptLines
    from familiar.queue.group_submit import GroupSubmitter
    from familiar.queue.groups import GroupOptions
    from familiar.queue.store import QueueStore

    n = 40
    async with FakeOpenAIServer(latency_s=0.05) as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = plain_requests(ws, n)
        w = await worker(ws, "w", nats_server.url)
        kept = KeptLines()
        try:
            async with QueueStore(nats_server.url, wait_s=10) as store:
                submitter = GroupSubmitter(
                    store,
                    src,
                    GroupOptions(role="naughty"),
                    kept,
                    Counts(total=n),
                    set(),
                    max_requests=3,
                    window=7,
                )
                counts = await asyncio.wait_for(submitter.run(), 120)
        finally:
            await stop(w)
        assert counts.ok == n and len(kept.lines) == n
        assert submitter.queue.submitted == 14  # 40 requests in groups of 3
        assert 6 <= submitter.queue.most_out <= 7
        assert {json.loads(line)["custom_id"] for line in kept.lines} == {f"r{i}" for i in range(n)}


async def test_usage_mistakes_with_nats_are_one_line_exit_2_and_nothing_queued(
    tmp_path: Path, nats_server: NatsServer, capsys: Any
) -> None:
    from familiar.cli.main import main

    ws = workspace(tmp_path / "ws", "http://127.0.0.1:9")
    src = ws / "req.jsonl"
    src.write_text(json.dumps(chat("a", "x")) + "\n" + json.dumps(chat("a", "y")) + "\n")
    base = ["batch", "--workspace", str(ws), str(src), "--out", str(ws / "o.jsonl")]
    cases = [
        (["--nats", nats_server.url], "'a' is on line 1 and line 2"),
        (["--group-size", "4"], "give --nats URL too"),
    ]
    for extra, says in cases:
        assert await asyncio.to_thread(main, [*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    src.write_text(json.dumps(chat("a", "x")) + "\n")
    for extra, says in [
        (["--nats", "http://127.0.0.1:4222"], "--nats"),
        (["--nats", nats_server.url, "--slot", "nope"], "unknown slot"),
    ]:
        assert await asyncio.to_thread(main, [*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (ws / "o.jsonl").exists()
    import nats

    nc = await nats.connect(nats_server.url)
    try:
        names = [s.config.name for s in await nc.jetstream().streams_info()]
    finally:
        await nc.close()
    assert "familiar_jobs" not in names  # nothing was even set up


async def test_the_workers_calls_carry_the_batchs_correlation_id(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    from tests.integration import test_queue
    from tests.support.fake_vector import FakeVector

    async with FakeVector() as vector, FakeOpenAIServer() as srv:
        test_queue.TELEMETRY.append(vector.url)
        try:
            ws = workspace(tmp_path / "ws", srv.url)
            plain_requests(ws, 6)
            w = await worker(ws, "w", nats_server.url)
            code, out, err = await finish(
                await familiar(ws, ".home-s", *batch_args(nats_server.url))
            )
            assert code == 0, err
            assert (await stop(w))[0] == 143
        finally:
            test_queue.TELEMETRY.clear()
    cid = json.loads(out)["correlation_id"]
    (start,) = [e for e in vector.events if e["event"] == "batch.start"]
    (end,) = [e for e in vector.events if e["event"] == "batch.end"]
    jobs = [e for e in vector.events if e["event"] == "queue.job"]
    calls = [e for e in vector.events if e["event"] == "llm.call"]
    assert start["queue"] is True and end["ok"] == 6 and end["submitted"] == 2
    assert len(jobs) == 2 and {j["kind"] for j in jobs} == {"requests"}
    assert len(calls) == 6
    assert {e["correlation_id"] for e in [start, end, *jobs, *calls]} == {cid}


async def test_nats_restarted_mid_batch_loses_and_doubles_no_line(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 60
    async with FakeOpenAIServer(latency_s=0.1) as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=2)
        plain_requests(ws, n)
        workers = [await worker(ws, f"w{i}", nats_server.url) for i in range(2)]
        try:
            sub = await familiar(ws, ".home-s", *batch_args(nats_server.url))
            await until(lambda: srv.stats["requests"] >= 10)
            await asyncio.to_thread(nats_server.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(nats_server.start)
            code, _out, err = await finish(sub)
            assert code == 0, err
            assert "Traceback" not in err
        finally:
            for w in workers:
                code_w, err_w = await stop(w)
                assert code_w == 143, err_w
        got = rows(ws / "out.jsonl")
        assert set(got) == {f"r{i}" for i in range(n)}
        assert all(r["error"] is None for r in got.values())
        assert srv.stats["requests"] <= 2 * n
        assert await queue_state(nats_server.url) == (0, 0)
