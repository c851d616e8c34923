"""``familiar mcp`` through the SDK's own client over stdio, against the fake server:
tools and schemas, ask_many under the seat cap in order, run_session with progress, tool
errors that leave the server serving, a cancelled call that frees its seats."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from familiar.cli.main import main
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import ARTICLE, PLAN, SessionScript, echo_translated

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(latency_s=0.2) as srv:
        (tmp_path / "slots.toml").write_text(
            f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "m"\nruntime = "vllm"\nparallel = 3\n'
            "timeout_s = 10\n"
            f'[slots.grandpa]\nurl = "{srv.url}"\nmodel = "g"\nruntime = "vllm"\nparallel = 1\n'
            "timeout_s = 10\n"
        )
        (tmp_path / "CLAUDE.md").write_text("familiar: grandpa x naughty\n")
        yield srv


@asynccontextmanager
async def client(ws: Path) -> AsyncIterator[ClientSession]:
    env = {k: v for k, v in os.environ.items() if k.startswith(("FAMILIAR_", "PATH", "HOME"))}
    env["PYTHONPATH"] = str(REPO)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "familiar", "mcp", "--workspace", str(ws)], env=env
    )
    with open(ws / "mcp.stderr", "w") as errlog:  # noqa: ASYNC230 - the SDK wants a file
        async with stdio_client(params, errlog=errlog) as streams, ClientSession(*streams) as s:
            await s.initialize()
            yield s


def data(result: Any) -> Any:
    assert not result.is_error, result.content[0].text
    return json.loads(result.content[0].text)


async def test_tools_are_listed_with_schemas(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    async with client(tmp_path) as s:
        listed = {t.name: t for t in (await s.list_tools()).tools}
    assert set(listed) == {
        "fleet_status",
        "ask",
        "ask_many",
        "run_session",
        "translate",
        "session",
    }
    ask_many = listed["ask_many"].input_schema
    assert ask_many["required"] == ["prompts"]
    assert ask_many["properties"]["prompts"]["type"] == "array"
    assert "seat cap" in (listed["ask_many"].description or "")
    assert "check" in listed["run_session"].input_schema["properties"]


async def test_ask_many_keeps_the_cap_and_the_order(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    prompts = [f"prompt number {i}" for i in range(12)]
    async with client(tmp_path) as s:
        out = data(
            await s.call_tool(
                "ask_many", {"prompts": prompts, "role": "naughty"}, progress_callback=on_progress
            )
        )
        status = data(await s.call_tool("fleet_status", {}))
    assert [a["text"] for a in out["answers"]] == [f"echo: {p}" for p in prompts]
    assert out["ok"] == 12 and all(a["finish_reason"] == "stop" for a in out["answers"])
    assert fake.stats["max_in_flight"] == 3  # parallel = 3, never more
    assert progress and max(progress) == 12
    slots = {r["slot"]: r for r in status["slots"]}
    assert slots["naughty"]["parallel"] == 3 and slots["naughty"]["seats_in_use"] == 0


async def test_errors_are_tool_errors_and_the_server_keeps_serving(
    tmp_path: Path, fake: FakeOpenAIServer
) -> None:
    async with client(tmp_path) as s:
        unknown = await s.call_tool("ask", {"prompt": "hi", "role": "kindergarten"})
        assert unknown.is_error and "not active" in unknown.content[0].text
        bad = await s.call_tool("ask", {"prompt": "hi", "max_tokens": 0})
        assert bad.is_error
        fake.add_faults([{"kind": "status", "status": 400}])
        fault = await s.call_tool("ask", {"prompt": "hi", "role": "naughty"})
        assert fault.is_error and "400" in fault.content[0].text
        fake.add_faults([{"kind": "reply", "text": "cut", "finish_reason": "length"}])
        cut = await s.call_tool("ask", {"prompt": "hi", "role": "naughty"})
        assert cut.is_error and "max_tokens" in cut.content[0].text
        ok = data(await s.call_tool("ask", {"prompt": "still here", "slot": "naughty"}))
        assert ok["text"] == "echo: still here"
        many = data(await s.call_tool("ask_many", {"prompts": ["a", "b"], "role": "naughty"}))
        assert [a["status"] for a in many["answers"]] == ["ok", "ok"]
    assert "Traceback" not in (tmp_path / "mcp.stderr").read_text()


async def test_run_session_reports_progress_and_returns_the_result(
    tmp_path: Path, fake: FakeOpenAIServer, isolated_env: Path
) -> None:
    fake.handler = SessionScript(PLAN, {"s1": "one", "s2": "two", "s3": "three"}, "Merged.")
    messages: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with client(tmp_path) as s:
        out = data(
            await s.call_tool(
                "run_session", {"task": "Write a tea guide"}, progress_callback=on_progress
            )
        )
        again = data(await s.call_tool("session", {"id": out["id"][:8]}))
    assert out["status"] == "done" and out["result"] == "Merged."
    assert messages and any("subtasks" in m for m in messages)
    assert again["status"] == "done" and [t["id"] for t in again["subtasks"]] == ["s1", "s2", "s3"]
    # the same session as the CLI would have made
    assert (isolated_env / "sessions" / out["id"] / "final.md").read_text() == "Merged."


async def test_a_cancelled_call_frees_every_seat(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    fake.add_faults([{"kind": "hang"}] * 3)
    async with client(tmp_path) as s:
        call = asyncio.create_task(
            s.call_tool("ask_many", {"prompts": ["x", "y", "z"], "role": "naughty"})
        )
        for _ in range(100):
            if fake.stats["in_flight"] == 3:
                break
            await asyncio.sleep(0.05)
        assert fake.stats["in_flight"] == 3
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(100):
            if fake.stats["in_flight"] == 0:
                break
            await asyncio.sleep(0.05)
        assert fake.stats["in_flight"] == 0  # the server saw the requests go away
        ok = data(await s.call_tool("ask", {"prompt": "after", "role": "naughty"}))
        assert ok["text"] == "echo: after"


def test_print_config_names_this_workspace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "CLAUDE.md").write_text("familiar: naughty\n")
    assert main(["mcp", "--workspace", str(tmp_path), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("claude mcp add familiar -- ")
    assert str(tmp_path) in out
    entry = json.loads(out[out.index("{") :])
    assert entry["mcpServers"]["familiar"]["args"][:2] == ["-m", "familiar"]


async def test_translate_runs_a_batch_with_the_cli_rules(
    tmp_path: Path, fake: FakeOpenAIServer
) -> None:
    with (tmp_path / "slots.toml").open("a") as fh:
        fh.write(
            f'[slots.translator]\nurl = "{fake.url}"\nmodel = "t"\nruntime = "vllm"\n'
            "parallel = 2\ntimeout_s = 10\n"
        )
    (tmp_path / "CLAUDE.md").write_text("familiar: grandpa x naughty x translator\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.md").write_text(ARTICLE, encoding="utf-8")
    fake.handler = echo_translated
    async with client(tmp_path) as s:
        out = data(await s.call_tool("translate", {"paths": ["src"], "to": "en", "out": "en"}))
        over = await s.call_tool("translate", {"paths": ["src"], "to": "en", "out": "src"})
        bad = await s.call_tool("translate", {"paths": ["src"], "to": "fr"})
        (tmp_path.parent / "outside.md").write_text(ARTICLE, encoding="utf-8")
        (tmp_path / "src" / "link.md").symlink_to(tmp_path.parent / "outside.md")
        escapes = [
            await s.call_tool(
                "translate", {"paths": [str(tmp_path.parent / "outside.md")], "to": "en"}
            ),
            await s.call_tool("translate", {"paths": ["../outside.md"], "to": "en"}),
            await s.call_tool("translate", {"paths": ["src/link.md"], "to": "en"}),
            await s.call_tool("translate", {"paths": ["src/a.md"], "to": "en", "out": "../esc"}),
        ]
        schema = await s.call_tool("ask", {"prompt": "hi", "json_schema": {"type": 5}})
    assert out["exit_code"] == 0
    rows = out["report"]["articles"] if isinstance(out["report"], dict) else out["report"]
    assert [r["status"] for r in rows] == ["ok"]
    assert (tmp_path / "en" / "a.md").is_file()
    assert over.is_error  # never over a source
    assert (tmp_path / "src" / "a.md").read_text(encoding="utf-8") == ARTICLE
    assert bad.is_error and "'en' or 'ja'" in bad.content[0].text
    assert all(e.is_error and "outside the workspace" in e.content[0].text for e in escapes)
    assert not (tmp_path.parent / "esc").exists()
    assert schema.is_error and "not a valid JSON Schema" in schema.content[0].text
