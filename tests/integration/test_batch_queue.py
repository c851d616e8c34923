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

from tests.integration.test_queue import env, finish, queue_state, stop, until
from tests.integration.test_nats_trust import KEY, PASSWORD, auth_server
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
