"""Hostile round 3 on ``familiar batch``: the user's own files as its outputs under
another name (a hard link is the same file; ``resolve()`` does not see it)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from familiar.cli.main import main
from tests.integration.test_queue import until
from tests.support.fake_openai import FakeOpenAIServer


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(latency_s=0.0) as srv:
        (tmp_path / "slots.toml").write_text(
            f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "big"\nruntime = "vllm"\nparallel = 2\n'
            "timeout_s = 5\n"
        )
        (tmp_path / "CLAUDE.md").write_text("familiar: naughty\n")
        yield srv


def _request(cid: str, pad: str = "") -> str:
    body = {"model": "naughty", "messages": [{"role": "user", "content": cid + pad}]}
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--out", "r.jsonl", "--errors", "link.jsonl"],  # errors emptied in place
        ["--out", "link.jsonl", "--force"],  # --force empties --out in place
        ["--out", "r.jsonl", "--errors", "link.jsonl", "--force"],
    ],
)
async def test_a_hard_link_to_the_requests_is_refused_and_the_requests_kept(
    tmp_path: Path,
    fake: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    src = tmp_path / "req.jsonl"
    text = "".join(_request(f"r{i}") + "\n" for i in range(3))
    src.write_text(text)
    os.link(src, tmp_path / "link.jsonl")  # the same file under another name
    argv = ["batch", "--workspace", str(tmp_path), str(src)]
    argv += [str(tmp_path / a) if a.endswith(".jsonl") else a for a in args]
    code = await asyncio.to_thread(main, argv)
    assert src.read_text() == text, "the requests file was overwritten"
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the requests file itself" in err[0]
    assert fake.stats["requests"] == 0


@pytest.mark.parametrize(
    ("args", "content"),
    [
        (["--out", "notes.txt"], "my precious notes\nline two\n"),
        (["--out", "notes.txt"], _request("other") + "\n"),  # another batch's requests
        (["--out", "r.jsonl", "--errors", "notes.txt"], "my precious notes\n"),
    ],
)
async def test_a_file_that_is_not_results_is_never_rewritten(
    tmp_path: Path,
    fake: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    content: str,
) -> None:
    src = tmp_path / "req.jsonl"
    src.write_text(_request("a") + "\n")
    notes = tmp_path / "notes.txt"
    notes.write_text(content)
    argv = ["batch", "--workspace", str(tmp_path), str(src)]
    argv += [str(tmp_path / a) if "." in a else a for a in args]
    code = await asyncio.to_thread(main, argv)
    assert notes.read_text() == content, "the user's file was rewritten"
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a result line" in err[0], err
    assert fake.stats["requests"] == 0


async def test_a_results_file_is_still_resumed(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    src = tmp_path / "req.jsonl"
    src.write_text("".join(_request(f"r{i}") + "\n" for i in range(3)))
    out = tmp_path / "r.jsonl"
    argv = ["batch", "--workspace", str(tmp_path), str(src), "--out", str(out)]
    assert await asyncio.to_thread(main, argv) == 0
    out.write_bytes(out.read_bytes() + b'{"id": "torn')  # a kill mid-write
    assert await asyncio.to_thread(main, argv) == 0
    assert fake.stats["requests"] == 3
    assert len(out.read_text().splitlines()) == 3


async def test_a_users_out_tmp_file_is_not_overwritten_by_a_resume(
    tmp_path: Path, fake: FakeOpenAIServer
) -> None:
    src = tmp_path / "req.jsonl"
    src.write_text(_request("a") + "\n")
    out = tmp_path / "r.jsonl"
    mine = tmp_path / "r.jsonl.tmp"
    mine.write_text("the user's own file\n")
    argv = ["batch", "--workspace", str(tmp_path), str(src), "--out", str(out)]
    assert await asyncio.to_thread(main, argv) == 0
    out.chmod(0o640)
    assert await asyncio.to_thread(main, argv) == 0  # the resume rewrites r.jsonl
    assert mine.read_text() == "the user's own file\n"
    assert len(out.read_text().splitlines()) == 1
    assert out.stat().st_mode & 0o777 == 0o640  # its mode kept


async def test_requests_cut_from_the_file_during_the_batch_are_not_a_success(
    tmp_path: Path, fake: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The requests file truncated while the batch runs: the requests never read are no
    line at all, so the batch must not say exit 0 ('every request answered')."""
    fake.configure(latency_s=0.3)
    src = tmp_path / "req.jsonl"
    pad = "x" * 100_000  # past the reader's buffer and its queue
    src.write_text("".join(_request(f"r{i}", pad) + "\n" for i in range(20)))
    out = tmp_path / "r.jsonl"
    argv = ["batch", "--workspace", str(tmp_path), str(src), "--out", str(out)]
    run = asyncio.create_task(asyncio.to_thread(main, argv))
    await until(lambda: fake.stats["requests"] >= 1)
    src.write_text("")  # the user's editor, another process
    code = await run
    answered = len(out.read_text().splitlines())
    assert answered < 20
    assert code == 1
    assert "changed" in capsys.readouterr().err


async def test_lone_surrogate_escapes_are_error_lines_not_a_traceback(
    tmp_path: Path, fake: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON allows "\\ud800" alone; UTF-8 cannot write it: a custom_id or content holding
    one is that line's error line (named line-<n>), the rest answered."""
    src = tmp_path / "req.jsonl"
    good = _request("pairPAIR")  # a valid pair: an emoji
    lines = [_request("LONE"), _request("c", "LONE2"), good]
    text = "".join(line + "\n" for line in lines)
    text = text.replace("LONE2", "\\udc00").replace("LONE", "\\ud800")
    src.write_text(text.replace("PAIR", "\\ud83d\\ude00"))
    out = tmp_path / "r.jsonl"
    argv = ["batch", "--workspace", str(tmp_path), str(src), "--out", str(out)]
    code = await asyncio.to_thread(main, argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and code == 1, err
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    by = {r["custom_id"]: r for r in rows}
    assert set(by) == {"line-1", "line-2", "pair\U0001f600"}
    assert by["line-1"]["error"]["code"] == "invalid_json"
    assert by["pair\U0001f600"]["error"] is None
    assert fake.stats["requests"] == 1


async def test_an_answer_holding_a_lone_surrogate_is_an_error_line_not_a_crash(
    tmp_path: Path, fake: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lying server puts "\\ud800" alone in its JSON answer: that request's error line;
    the batch goes on (it crashed with a traceback writing the line)."""
    src = tmp_path / "req.jsonl"
    src.write_text("".join(_request(f"r{i}") + "\n" for i in range(3)))
    # every attempt of every request (3 x 4): the client refuses such an answer and asks
    # again, so only an answer that stays malformed is an error line
    fake.add_faults([{"kind": "reply", "text": "bad \ud800 text"}] * 12)
    out = tmp_path / "r.jsonl"
    argv = ["batch", "--workspace", str(tmp_path), str(src), "--out", str(out)]
    code = await asyncio.to_thread(main, argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and code == 1, err
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    bad = [r for r in rows if r["error"] is not None]
    assert len(rows) == 3 and len(bad) == 3, rows
    assert all("lone surrogate" in r["error"]["message"] for r in bad), bad
