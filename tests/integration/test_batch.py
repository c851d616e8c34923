"""``familiar batch``: OpenAI Batch JSONL through the fleet, through the whole command
against the fake server: the cap, the output format, bad lines, schemas, faults, resume
after SIGKILL, a torn last line, duplicate ids refused before anything is sent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main
from tests.support.fake_openai import FakeOpenAIServer, spawn_fake_server

REPO = Path(__file__).resolve().parents[2]


def chat(cid: str, text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "naughty", "messages": [{"role": "user", "content": text}], **body},
    }


def write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def results(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out = {r["custom_id"]: r for r in rows}
    assert len(out) == len(rows), "a custom_id was written twice"
    return out


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(latency_s=0.02) as srv:
        (tmp_path / "slots.toml").write_text(
            f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "big"\nruntime = "vllm"\nparallel = 3\n'
            "timeout_s = 5\n"
        )
        (tmp_path / "CLAUDE.md").write_text("familiar: naughty\n")
        yield srv


async def batch(ws: Path, *args: str) -> int:
    return int(await asyncio.to_thread(main, ["batch", "--workspace", str(ws), *args]))


async def test_every_request_answered_under_the_cap_in_openai_format(
    tmp_path: Path, fake: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "req.jsonl", [chat(f"r{i}", f"question {i}") for i in range(30)])
    out = tmp_path / "res.jsonl"
    assert await batch(tmp_path, str(src), "--out", str(out), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == 30 and report["failed"] == 0 and report["correlation_id"]
    got = results(out)
    assert set(got) == {f"r{i}" for i in range(30)}
    r5 = got["r5"]
    assert r5["error"] is None and r5["id"].startswith("batch_req_")
    assert r5["response"]["status_code"] == 200
    assert r5["response"]["request_id"] == report["correlation_id"]
    body = r5["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "big"
    assert body["choices"][0]["message"]["content"] == "echo: question 5"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert fake.stats["max_in_flight"] == 3


async def test_a_duplicate_custom_id_is_refused_before_anything_is_sent(
    tmp_path: Path, fake: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "req.jsonl", [chat("a", "x"), chat("b", "y"), chat("a", "z")])
    out = tmp_path / "res.jsonl"
    assert await batch(tmp_path, str(src), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'a' is on line 1 and line 3" in err[0]
    assert fake.stats["requests"] == 0 and not out.exists()


async def test_bad_lines_and_unknown_models_are_their_own_error_lines(
    tmp_path: Path, fake: FakeOpenAIServer
) -> None:
    lines: list[Any] = [
        chat("good", "hello"),
        "{not json",
        {"custom_id": "nourl", "method": "POST", "url": "/v1/embeddings", "body": {}},
        {**chat("who", "hi"), "body": {**chat("who", "hi")["body"], "model": "gpt-9"}},
        {**chat("two", "hi"), "body": {**chat("two", "hi")["body"], "n": 2}},
        {
            "custom_id": "plain",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "naughty", "prompt": "once upon"},
        },
    ]
    src = write(tmp_path / "req.jsonl", lines)
    out, errs = tmp_path / "res.jsonl", tmp_path / "err.jsonl"
    assert await batch(tmp_path, str(src), "--out", str(out), "--errors", str(errs)) == 1
    ok, bad = results(out), results(errs)
    assert set(ok) == {"good", "plain"}
    assert ok["plain"]["response"]["body"]["object"] == "text_completion"
    assert ok["plain"]["response"]["body"]["choices"][0]["text"] == "echo: once upon"
    assert bad["line-2"]["error"]["code"] == "invalid_json"
    assert bad["nourl"]["error"]["code"] == "invalid_url"
    assert bad["who"]["error"]["code"] == "model_not_found"
    assert "gpt-9" in bad["who"]["error"]["message"]
    assert "n must be 1" in bad["two"]["error"]["message"]
    assert fake.stats["requests"] == 2


async def test_a_structured_answer_that_breaks_its_schema_is_an_error_line(
    tmp_path: Path, fake: FakeOpenAIServer
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    src = write(
        tmp_path / "req.jsonl",
        [chat("ok", "n please", response_format=fmt), chat("bad", "n wrong", response_format=fmt)],
    )
    fake.handler = lambda body: '{"n": 4}' if "please" in json.dumps(body) else '{"n": "four"}'
    out = tmp_path / "res.jsonl"
    assert await batch(tmp_path, str(src), "--out", str(out)) == 1
    got = results(out)
    assert got["ok"]["error"] is None
    content = got["ok"]["response"]["body"]["choices"][0]["message"]["content"]
    assert json.loads(content) == {"n": 4}
    assert got["bad"]["error"]["code"] == "schema" and got["bad"]["response"] is None
    sent = fake.requests[0]["body"]
    assert sent["response_format"]["json_schema"]["schema"] == schema  # passed through


@pytest.mark.parametrize(
    ("fault", "ok"),
    [
        ({"kind": "status", "status": 500}, True),  # retried, then answered
        ({"kind": "cut", "after": 1}, True),  # no finish_reason: retried
        ({"kind": "reply", "text": "half", "finish_reason": "length"}, False),
    ],
)
async def test_faults_end_as_an_answer_or_an_error_line_never_a_cut_result(
    tmp_path: Path, fake: FakeOpenAIServer, fault: dict[str, Any], ok: bool
) -> None:
    src = write(tmp_path / "req.jsonl", [chat("only", "hello")])
    fake.add_faults([fault])
    out = tmp_path / "res.jsonl"
    assert await batch(tmp_path, str(src), "--out", str(out)) == (0 if ok else 1)
    row = results(out)["only"]
    if ok:
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello"
    else:
        assert row["response"] is None and row["error"]["code"] == "length"


def test_a_killed_batch_resumes_asking_only_for_what_is_missing(tmp_path: Path) -> None:
    n = 60
    src = write(tmp_path / "req.jsonl", [chat(f"r{i}", f"q {i}") for i in range(n)])
    out = tmp_path / "res.jsonl"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAMILIAR_")},
        "FAMILIAR_HOME": str(tmp_path / "home"),
        "FAMILIAR_LEDGER_DIR": str(tmp_path / "ledger"),
        "FAMILIAR_TELEMETRY": "off",
        "PYTHONPATH": str(REPO),
    }
    with spawn_fake_server(latency_s=0.1) as srv:
        (tmp_path / "slots.toml").write_text(
            f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "big"\nruntime = "vllm"\nparallel = 3\n'
        )
        (tmp_path / "CLAUDE.md").write_text("familiar: naughty\n")
        argv = [sys.executable, "-m", "familiar", "batch", "--workspace", str(tmp_path)]
        argv += [str(src), "--out", str(out)]
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and out.read_text().count("\n") >= 15:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = out.read_text().count("\n")
        assert 15 <= before < n
        with out.open("a") as fh:
            fh.write('{"id": "batch_req_x", "custom_id": "r59", "respo')  # torn by the kill
        sent_first = srv.stats()["requests"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        sent_again = srv.stats()["requests"] - sent_first
    got = results(out)
    assert set(got) == {f"r{i}" for i in range(n)}
    assert all(r["error"] is None for r in got.values())
    # only what had no result line was asked again (those in flight at the kill included)
    assert sent_again == n - before
    assert "already" in done.stderr


async def test_force_asks_everything_again(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    src = write(tmp_path / "req.jsonl", [chat(f"r{i}", "x") for i in range(4)])
    out = tmp_path / "res.jsonl"
    assert await batch(tmp_path, str(src), "--out", str(out)) == 0
    assert await batch(tmp_path, str(src), "--out", str(out)) == 0
    assert fake.stats["requests"] == 4  # the rerun had nothing to ask
    assert await batch(tmp_path, str(src), "--out", str(out), "--force") == 0
    assert fake.stats["requests"] == 8 and len(results(out)) == 4


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.jsonl", "--out", "r.jsonl"], "no such file"),
        (["req.jsonl", "--out", "req.jsonl"], "the requests file itself"),
        (["req.jsonl", "--out", "r.jsonl", "--role", "grandpa"], "not active"),
        (["req.jsonl", "--out", "r.jsonl", "--slot", "nope"], "unknown slot"),
        (["empty.jsonl", "--out", "r.jsonl"], "no request lines"),
        (["req.jsonl", "--out", "nodir/r.jsonl"], "does not exist"),
        (["req.jsonl", "--out", "fifo"], "not a regular file"),
        (["req.jsonl", "--out", "r.jsonl", "--errors", "fifo"], "not a regular file"),
    ],
)
async def test_usage_mistakes_are_one_line_exit_2(
    tmp_path: Path,
    fake: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    says: str,
) -> None:
    write(tmp_path / "req.jsonl", [chat("a", "x")])
    (tmp_path / "empty.jsonl").write_text("\n\n")
    os.mkfifo(tmp_path / "fifo")  # opening it would block for ever
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert await batch(tmp_path, *args) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert fake.stats["requests"] == 0


async def test_hostile_lines_are_their_own_error_lines_never_sent(
    tmp_path: Path, fake: FakeOpenAIServer
) -> None:
    deep = json.dumps(chat("deep", "x"))[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    lines: list[Any] = [
        chat("good", "hello"),
        deep,
        {**chat("strs", "x"), "body": {"model": "naughty", "messages": ["hello"]}},
        {**chat("noc", "x"), "body": {"model": "naughty", "messages": [{"role": "user"}]}},
        chat("neg", "x", max_tokens=-5),
        chat("huge", "x", max_tokens=10**30),
        json.dumps(chat("nan", "x"))[:-2] + ', "max_tokens": NaN}}',
        {**chat("x", "x"), "custom_id": 5},
    ]
    src = write(tmp_path / "req.jsonl", lines)
    with src.open("ab") as fh:
        fh.write(b'\xff\xfe{"custom_id": "bom"}\n')
    out = tmp_path / "res.jsonl"
    assert await batch(tmp_path, str(src), "--out", str(out)) == 1
    got = results(out)
    assert got["good"]["error"] is None and fake.stats["requests"] == 1  # only it was sent
    codes = {k: v["error"]["code"] for k, v in got.items() if v["error"]}
    assert codes["line-2"] == "invalid_json" and "nested" in got["line-2"]["error"]["message"]
    for cid in ("strs", "noc", "neg", "huge"):
        assert codes[cid] == "invalid_request", cid
    assert codes["line-7"] == "invalid_json"  # NaN is not JSON
    assert "no string" in got["line-8"]["error"]["message"]
    assert "not UTF-8" in got["line-9"]["error"]["message"]


async def test_a_real_id_that_names_a_bad_line_is_refused_up_front(
    tmp_path: Path, fake: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "req.jsonl", ["garbage", chat("line-1", "x")])
    assert await batch(tmp_path, str(src), "--out", str(tmp_path / "r.jsonl")) == 2
    assert "the name familiar gives bad line 1" in capsys.readouterr().err
    assert fake.stats["requests"] == 0
