"""Hostile round 3 on ``familiar batch --nats``: two submitters of the same file and the
same results file at once (each custom id must still be one line, nothing lost)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from tests.integration.test_batch_queue import (
    batch_args,
    chat,
    familiar,
    plain_requests,
    rows,
    worker,
    workspace,
)
from tests.integration.test_queue import finish, stop, until
from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer

nats_server = nats_support.nats_server  # the fixture


async def test_two_submitters_of_one_results_file_never_write_a_line_twice(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 16
    async with FakeOpenAIServer(latency_s=1.0) as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=4)
        plain_requests(ws, n)
        w = await worker(ws, "w", nats_server.url)
        try:
            subs = await asyncio.gather(
                *(familiar(ws, f".home-s{i}", *batch_args(nats_server.url)) for i in (1, 2))
            )
            ends = await asyncio.gather(*(finish(s) for s in subs))
        finally:
            await stop(w)
        codes = sorted(code for code, _out, _err in ends)
        lines = [json.loads(x) for x in (ws / "out.jsonl").read_text().splitlines()]
        ids = [row["custom_id"] for row in lines]
        assert sorted(ids) == sorted(f"r{i}" for i in range(n)), "a line lost or written twice"
        assert codes == [0, 2]  # one did the batch; the other, started with it, refused
        refused = next(err for code, _o, err in ends if code == 2).strip().splitlines()
        assert len(refused) == 1 and "another familiar batch is writing" in refused[0]
        assert all("Traceback" not in err for _c, _o, err in ends)


KEY = "sk-hostile3-0123456789abcdefSECRET"


async def test_a_lying_server_through_the_queue_passes_nothing_off_and_leaks_no_key(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The worker's slot has an API key; the server echoes it in 401/400 errors, cuts
    streams, stops at the length limit, answers empty or with HTML: no
    ok line but a real answer, no key in any file, message or log."""
    n = 12
    async with FakeOpenAIServer(latency_s=0.01) as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        slots = (ws / "slots.toml").read_text()
        (ws / "slots.toml").write_text(
            slots.replace("parallel = 3\n", 'parallel = 3\napi_key_env = "NAUGHTY_KEY"\n', 1)
        )
        plain_requests(ws, n)
        srv.add_faults(
            [
                {"kind": "echo_key", "status": 401},
                {"kind": "echo_key", "status": 400},
                {"kind": "reply", "text": "half an ans", "finish_reason": "length"},
                {"kind": "cut"},
                {"kind": "empty"},
                {"kind": "status", "status": 500},
            ]
        )
        w = await worker(ws, "w", nats_server.url, NAUGHTY_KEY=KEY)
        try:
            code, out, err = await finish(
                await familiar(ws, ".home-s", *batch_args(nats_server.url))
            )
        finally:
            _wcode, werr = await stop(w)
        assert code in (0, 1), err
        assert srv.stats["faults_served"] == 6  # every lie was told
        got = {**rows(ws / "out.jsonl"), **rows(ws / "err.jsonl")}
        assert set(got) == {f"r{i}" for i in range(n)}
        for cid, row in got.items():
            if row["error"] is None:
                content = row["response"]["body"]["choices"][0]["message"]["content"]
                assert content == f"echo: q {cid[1:]}", row  # a real answer, nothing else
        files = [p.read_bytes().decode("utf-8", "replace") for p in ws.rglob("*") if p.is_file()]
        texts = [out, err, werr, *files]
        assert not [t for t in texts if KEY in t], "the API key was written somewhere"
        assert not [t for t in texts if "Traceback" in t]
        assert KEY not in "".join(await _bus_text(nats_server.url))


async def _bus_text(url: str) -> list[str]:
    """Everything stored on the bus (results, jobs left), as text."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        out: list[str] = []
        kv = await js.key_value("familiar_results")
        for key in await kv.keys():
            entry = await kv.get(key)
            out.append((entry.value or b"").decode("utf-8", "replace"))
        return out
    finally:
        await nc.close()


async def test_crlf_huge_and_non_utf8_lines_through_the_queue(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """CRLF endings, a line over the server's payload limit (1 MiB: the object store), a
    non-UTF-8 line, a malformed one: each custom id one line, the bad ones error lines."""
    async with FakeOpenAIServer(latency_s=0.01) as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        huge = json.dumps(chat("huge", "x" * 1_500_000)).encode()
        lines = [
            json.dumps(chat("a", "first")).encode(),
            huge,
            b'{"custom_id": "bad\xff", "method": "POST"}',
            b"{not json",
            json.dumps(chat("b", "last")).encode(),
        ]
        (ws / "req.jsonl").write_bytes(b"".join(line + b"\r\n" for line in lines))
        w = await worker(ws, "w", nats_server.url)
        try:
            code, out, err = await finish(
                await familiar(ws, ".home-s", *batch_args(nats_server.url))
            )
        finally:
            await stop(w)
        assert code == 1, err
        ok, bad = rows(ws / "out.jsonl"), rows(ws / "err.jsonl")
        assert set(ok) == {"a", "huge", "b"}, (ok.keys(), bad.keys(), err)
        assert len(bad) == 2 and "Traceback" not in err
        content = ok["huge"]["response"]["body"]["choices"][0]["message"]["content"]
        assert content.startswith("echo: xxx")
        assert json.loads(out)["queue"]["submitted"] >= 2  # the huge line a group of its own


async def test_a_file_of_only_malformed_lines_through_the_queue_sends_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=0.01) as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        (ws / "req.jsonl").write_bytes(b"{nope\n[1, 2]\n\xff\xfe\n")
        code, out, err = await finish(
            await familiar(ws, ".home-s", *batch_args(nats_server.url)), 60
        )
        assert code == 1, err
        assert len(rows(ws / "err.jsonl")) == 3 and not rows(ws / "out.jsonl")
        assert json.loads(out)["queue"]["submitted"] == 0
        assert srv.stats["requests"] == 0


async def test_ctrl_c_of_the_submitter_then_a_rerun_writes_each_line_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 24
    async with FakeOpenAIServer(latency_s=0.4) as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=2)
        plain_requests(ws, n)
        w = await worker(ws, "w", nats_server.url)
        try:
            sub = await familiar(ws, ".home-s", *batch_args(nats_server.url))
            await until(lambda: srv.stats["requests"] >= 3)
            sub.send_signal(signal.SIGINT)
            code, _out, err = await finish(sub, 30)
            assert code == 130 and "Traceback" not in err, (code, err)
            asked = srv.stats["requests"]
            code, _out, err = await finish(
                await familiar(ws, ".home-s", *batch_args(nats_server.url))
            )
        finally:
            await stop(w)
        assert code == 0, err
        got = rows(ws / "out.jsonl")
        assert set(got) == {f"r{i}" for i in range(n)}
        assert srv.stats["requests"] == n  # the workers went on; nothing asked twice
        assert asked < n


async def test_a_worker_killed_and_restarted_again_and_again_loses_and_doubles_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 20
    async with FakeOpenAIServer(latency_s=0.3) as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=4)
        plain_requests(ws, n)
        sub = await familiar(ws, ".home-s", *batch_args(nats_server.url))
        for i in range(3):
            w = await worker(ws, f"w{i}", nats_server.url)
            seen = srv.stats["requests"]
            await until(lambda seen=seen: srv.stats["requests"] > seen + 2)
            w.send_signal(signal.SIGKILL)
            await w.wait()
        w = await worker(ws, "last", nats_server.url)
        try:
            code, _out, err = await finish(sub, 120)
        finally:
            await stop(w)
        got = {**rows(ws / "out.jsonl"), **rows(ws / "err.jsonl")}
        assert set(got) == {f"r{i}" for i in range(n)}, err
        bad = {k: r["error"] for k, r in got.items() if r["error"] is not None}
        assert code == (1 if bad else 0), (code, bad)
        assert all(e["code"] == "failed" for e in bad.values()), bad  # gave up: a rerun asks
        assert "Traceback" not in err
        assert srv.stats["requests"] > n  # the killed workers' groups were asked again


def _forged_lines(ids: list[str]) -> str:
    return "".join(
        json.dumps(
            {
                "id": f"batch_req_{cid}",
                "custom_id": cid,
                "response": {
                    "status_code": 200,
                    "request_id": "x",
                    "body": {
                        "object": "chat.completion",
                        "choices": [
                            {"index": 0, "message": {"content": "FORGED"}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                    },
                },
                "error": None,
            }
        )
        + "\n"
        for cid in ids
    )


async def test_a_stranger_forging_group_results_with_the_fleet_key_set_is_ignored(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The fleet key set on submitter and workers; a stranger on the bus (no key) puts a
    forged ok result for every group, before the run (ids computed from the file) and as
    each group is published, and announces it on the done subject: no forged line is
    written, every line is the worker's."""
    import nats

    from familiar.queue.groups import GroupOptions, group_id, group_text
    from familiar.queue.jobs import JobResult

    n = 12
    secured = {"FAMILIAR_FLEET_KEY": "hostile3-fleet-key-0123456789abcdef"}
    async with FakeOpenAIServer(latency_s=0.3) as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=2)
        src = plain_requests(ws, n)
        raw = src.read_bytes().splitlines(keepends=True)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        forged: dict[str, str] = {}
        for i in range(0, n, 4):
            ids = [f"r{j}" for j in range(i, i + 4)]
            forged[group_id(group_text(raw[i : i + 4]), GroupOptions())] = _forged_lines(ids)
        worker_proc = await worker(ws, "w", nats_server.url, **secured)
        await asyncio.sleep(1.5)  # the worker made the buckets
        kv = await js.key_value("familiar_results")

        async def forge(job: str) -> None:
            data = JobResult({"status": "ok"}, forged.get(job, "")).encode()
            await kv.put(job, data)
            await nc.publish(f"familiar.queue.done.{job}", b"")

        for job in forged:
            await forge(job)

        async def on_job(msg: nats.aio.msg.Msg) -> None:
            await forge(msg.subject.rsplit(".", 1)[-1])

        await nc.subscribe("familiar.queue.jobs.*", cb=on_job)
        try:
            code, _out, err = await finish(
                await familiar(ws, ".home-s", *batch_args(nats_server.url), **secured), 120
            )
        finally:
            await stop(worker_proc)
            await nc.close()
        text = (ws / "out.jsonl").read_text()
        assert "FORGED" not in text
        assert code == 0, err
        assert "fails the FAMILIAR_FLEET_KEY check" in err  # the forgeries were seen
        assert set(rows(ws / "out.jsonl")) == {f"r{i}" for i in range(n)}
