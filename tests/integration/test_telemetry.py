"""Telemetry against a loopback receiver that answers like Vector's http_server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from familiar.cli.main import main
from familiar.context import bound_correlation_id
from familiar.telemetry import Telemetry
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.fake_vector import FakeVector
from tests.support.scripts import PLAN, integration, work


async def _slots(tmp_path: Path, key_env: str | None = None) -> FakeOpenAIServer:
    srv = FakeOpenAIServer()
    await srv.start()
    extra = f'api_key_env = "{key_env}"\n' if key_env else ""
    (tmp_path / "slots.toml").write_text(
        "".join(
            f'[slots.{r}]\nurl = "{srv.url}"\nmodel = "m"\nruntime = "vllm"\nparallel = 2\n{extra}'
            for r in ("grandpa", "naughty", "kindergarten", "translator")
        )
    )
    (tmp_path / "CLAUDE.md").write_text("familiar: full\n")
    return srv


def _all_text(root: Path) -> str:
    return "".join(p.read_text() for p in root.rglob("*") if p.is_file())


def _script(srv: FakeOpenAIServer) -> None:
    # one shared server: replies are consumed in request order (plan, s1+s2, s3, merge)
    srv.add_replies([json.dumps(PLAN), work("a"), work("b"), work("c"), integration("done")])


async def test_every_event_of_a_session_carries_its_correlation_id(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAMILIAR_TELEMETRY", "on")
    monkeypatch.setenv("TEST_KEY", "sk-live-secret-0123456789")
    monkeypatch.setenv("FAMILIAR_LOG_LEVEL", "debug")
    async with FakeVector() as vector:
        monkeypatch.setenv("FAMILIAR_TELEMETRY_URL", vector.url)
        srv = await _slots(tmp_path, key_env="TEST_KEY")
        try:
            _script(srv)
            code = await asyncio.to_thread(
                main, ["run", "--workspace", str(tmp_path), "Write a tea guide", "--json"]
            )
        finally:
            await srv.stop()
        captured = capsys.readouterr()
        assert code == 0, captured.err
        sid = json.loads(captured.out)["id"]
        events = vector.events
    names = [e["event"] for e in events]
    assert {e["correlation_id"] for e in events} == {sid}
    assert len({e["event_id"] for e in events}) == len(events)
    for name in (
        "session.start",
        "plan.created",
        "subtask.dispatched",
        "subtask.finished",
        "llm.call",
        "session.end",
    ):
        assert name in names, name
    assert names.count("llm.call") == len(srv.requests)  # one per HTTP attempt
    assert names.count("subtask.finished") == 3
    root = next(e for e in events if e["event"] == "session.start")
    assert all(
        e["parent_span_id"] == root["span_id"]
        for e in events
        if e["event"] in ("plan.created", "session.end")
    )
    # llm.call of a subtask hangs under that subtask's span
    dispatched = {e["span_id"] for e in events if e["event"] == "subtask.dispatched"}
    assert sum(e["parent_span_id"] in dispatched for e in events if e["event"] == "llm.call") == 3
    # the key reached the backend, never telemetry, logs or the session directory
    assert srv.requests[0]["headers"]["authorization"].endswith("0123456789")
    blob = json.dumps(events) + captured.err + captured.out
    blob += await asyncio.to_thread(_all_text, isolated_env)
    assert "sk-live-secret" not in blob and "0123456789" not in blob
    assert "prompt" not in json.dumps([e for e in events if e["event"] == "subtask.finished"])


async def test_receiver_down_spills_then_replays_exactly_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAMILIAR_TELEMETRY", "on")
    async with FakeVector() as vector:
        monkeypatch.setenv("FAMILIAR_TELEMETRY_URL", vector.url)
        await vector.stop()  # Vector is away for the whole run
        srv = await _slots(tmp_path)
        try:
            _script(srv)
            code = await asyncio.to_thread(
                main, ["run", "--workspace", str(tmp_path), "Write a tea guide"]
            )
        finally:
            await srv.stop()
        assert code == 0
        spill = isolated_env / "telemetry" / "spill.jsonl"
        spilled = [json.loads(x) for x in spill.read_text().splitlines()]
        assert len(spilled) >= 10
        capsys.readouterr()
        assert (
            await asyncio.to_thread(
                main, ["telemetry", "status", "--workspace", str(tmp_path), "--json"]
            )
            == 0
        )
        status = json.loads(capsys.readouterr().out)
        assert status["backlog"] == len(spilled) and status["sent"] == 0
        await vector.start()  # Vector is back
        assert (
            await asyncio.to_thread(main, ["telemetry", "flush", "--workspace", str(tmp_path)]) == 0
        )
        assert (
            await asyncio.to_thread(main, ["telemetry", "flush", "--workspace", str(tmp_path)]) == 0
        )  # nothing twice
        received = [e["event_id"] for e in vector.events]
    assert received == [e["event_id"] for e in spilled]  # in order, each once
    assert not spill.exists()


async def test_next_run_replays_the_backlog_first(tmp_path: Path) -> None:
    async with FakeVector() as vector:
        await vector.stop()
        async with Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=0.05) as t:
            with bound_correlation_id("old"):
                for n in range(5):
                    t.emit("chunk.finished", {"chunk": n})
        assert t.backlog() == 5
        await vector.start()
        async with Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=0.05) as t2:
            with bound_correlation_id("new"):
                t2.emit("batch.start")
            await vector.wait_for_events(6)
        assert [e["correlation_id"] for e in vector.events] == ["old"] * 5 + ["new"]
        assert t2.backlog() == 0


async def test_413_splits_then_drops_without_looping(tmp_path: Path) -> None:
    async with FakeVector(max_body_bytes=900) as vector:
        async with Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=0.05) as t:
            for n in range(6):
                t.emit("chunk.finished", {"chunk": n})
            t.emit("chunk.finished", {"chunk": "big", "note": "x" * 2000})
        posts = len(vector.requests)
        stored = [e for e in vector.events if e["event"] == "chunk.finished"]
    assert {e["chunk"] for e in stored} == set(range(6))  # the small ones arrive
    assert t.counts["dropped"] == 1  # the oversized one is dropped and counted
    assert posts < 30  # split and give up, never an endless retry
    assert any(e["event"] == "telemetry.dropped" for e in vector.events) or t.backlog() == 0


async def test_5xx_and_429_are_retried(tmp_path: Path) -> None:
    async with FakeVector() as vector:
        vector.fail_next(503)
        vector.fail_next(429)
        async with Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=0.05) as t:
            t.emit("batch.start")
        assert [e["event"] for e in vector.events] == ["batch.start"]
        assert t.counts["sent"] == 1 and t.backlog() == 0
