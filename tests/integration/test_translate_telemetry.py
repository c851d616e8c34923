"""Honest statuses in a batch's telemetry: never ``pending``; ``batch.end`` always sent."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from familiar.translate import markdown as md
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.fake_vector import FakeVector
from tests.support.scripts import REPO, articles, echo_translated, report, report_rows, translate

FINAL = {"ok", "failed", "error", "skipped", "interrupted"}


@pytest.fixture
async def vector(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeVector]:
    async with FakeVector() as v:
        monkeypatch.setenv("FAMILIAR_TELEMETRY", "on")
        monkeypatch.setenv("FAMILIAR_TELEMETRY_URL", v.url)
        yield v


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        srv.handler = echo_translated
        (tmp_path / "slots.toml").write_text(
            f'[slots.translator]\nurl = "{srv.url}"\nmodel = "m"\nruntime = "vllm"\n'
            "parallel = 2\ntimeout_s = 5\n"
            f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "m"\nparallel = 1\n'
        )
        (tmp_path / "CLAUDE.md").write_text("familiar: naughty x translator\n")
        yield srv


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


async def test_statuses_of_a_batch_with_a_failed_article(
    tmp_path: Path,
    server: FakeOpenAIServer,
    vector: FakeVector,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = articles(tmp_path, 3)
    out = tmp_path / "out"
    (out / "a0.md").mkdir(parents=True)  # this article cannot be written
    assert await translate(tmp_path, str(src), "--out", str(out), "--json") == 1
    rows = report(capsys)
    assert sorted(str(r["status"]) for r in rows) == ["error", "ok", "ok"]
    finished = named(vector.events, "article.finished")
    assert sorted(e["status"] for e in finished) == ["error", "ok", "ok"]
    (end,) = named(vector.events, "batch.end")
    assert end["status"] == "failed" and end["failed"] == 1
    # and a clean batch says ok
    vector.clear()
    assert await translate(tmp_path, str(src), "--out", str(tmp_path / "o2"), "--json") == 0
    capsys.readouterr()
    (end,) = named(vector.events, "batch.end")
    assert end["status"] == "ok" and end["failed"] == 0


async def test_a_bug_is_an_error_then_raised_and_the_batch_still_ends(
    tmp_path: Path,
    server: FakeOpenAIServer,
    vector: FakeVector,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: object, **_kwargs: object) -> str:
        raise ZeroDivisionError("a bug in assembling")

    monkeypatch.setattr(md, "assemble_pieces", broken)  # what a batch writes from
    src = articles(tmp_path, 3)
    with pytest.raises(BaseExceptionGroup) as info:
        await translate(tmp_path, str(src), "--out", str(tmp_path / "o"), "--json")
    assert info.group_contains(ZeroDivisionError)
    rows = report(capsys)  # the report still printed, valid JSON
    assert {str(r["status"]) for r in rows} <= {"error", "interrupted"}
    assert any("ZeroDivisionError" in str(r["error"]) for r in rows)
    finished = named(vector.events, "article.finished")
    assert finished and {e["status"] for e in finished} <= {"error", "interrupted"}
    (end,) = named(vector.events, "batch.end")
    assert end["status"] == "failed"


def _cached(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM chunks_v2").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_an_interrupted_batch_says_so(
    tmp_path: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> None:
        async with FakeVector() as vector, FakeOpenAIServer(latency_s=0.3) as srv:
            (tmp_path / "slots.toml").write_text(
                f'[slots.translator]\nurl = "{srv.url}"\nmodel = "m"\nparallel = 2\n'
                f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "m"\nparallel = 1\n'
            )
            (tmp_path / "CLAUDE.md").write_text("familiar: naughty x translator\n")
            src = articles(tmp_path, 6)
            argv = [sys.executable, "-m", "familiar", "translate", "--workspace", str(tmp_path)]
            argv += ["--to", "en", str(src), "--out", str(tmp_path / "o"), "--json"]
            env = {
                **os.environ,
                "FAMILIAR_HOME": str(isolated_env),
                "FAMILIAR_TELEMETRY": "on",
                "FAMILIAR_TELEMETRY_URL": vector.url,
            }
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            db = isolated_env / "cache" / "chunks.sqlite"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until a few chunks are done
                if _cached(db) >= 3:
                    break
                await asyncio.sleep(0.02)
            assert _cached(db) >= 3
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 130, err.decode()
            assert "familiar: interrupted" in err.decode()
            rows = report_rows(out)  # the partial report, valid JSON
            statuses = [r["status"] for r in rows]
            assert len(rows) == 6 and set(statuses) <= FINAL and "interrupted" in statuses
            await vector.wait_for_events(1)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if named(vector.events, "batch.end"):
                    break
                await asyncio.sleep(0.05)
            (end,) = named(vector.events, "batch.end")
            assert end["status"] == "interrupted"
            finished = named(vector.events, "article.finished")
            assert all(e["status"] in FINAL for e in finished)
            assert "interrupted" in {e["status"] for e in finished}

    asyncio.run(scenario())
