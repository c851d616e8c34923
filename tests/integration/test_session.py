"""Agent sessions against loopback OpenAI-compatible servers answering plans and work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from familiar.cli.main import main
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import PLAN, SessionScript, integration, work

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[dict[str, FakeOpenAIServer]]:
    servers = {
        r: FakeOpenAIServer(latency_s=0.02)
        for r in ("grandpa", "naughty", "kindergarten", "translator")
    }
    for s in servers.values():
        await s.start()
    slots = "".join(
        f'[slots.{name}]\nurl = "{s.url}"\nmodel = "{name}-model"\nruntime = "vllm"\n'
        f"parallel = {3 if name == 'naughty' else 5}\ntimeout_s = 5\n\n"
        for name, s in servers.items()
    )
    (tmp_path / "slots.toml").write_text(slots)
    (tmp_path / "CLAUDE.md").write_text("# ws\n\nfamiliar: full\n")
    yield servers
    for s in servers.values():
        await s.stop()


def run_cli(tmp_path: Path, *args: str) -> int:
    return main(["run", "--workspace", str(tmp_path), *args])


def session_dir(home: Path) -> Path:
    (d,) = list((home / "sessions").iterdir())
    return d


async def test_full_session_plans_routes_integrates_and_records(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # replies are a function of the request, so the workers may run in any order
    script = SessionScript(PLAN, {"s1": "steps", "s2": "mistakes", "s3": "summary"}, "THE GUIDE")
    for srv in fleet.values():
        srv.handler = script
    code = await _in_thread(run_cli, tmp_path, "Write a tea guide", "--json")
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["result"] == "THE GUIDE" and out["status"] == "done"
    d = session_dir(isolated_env)
    assert (d / "final.md").read_text() == "THE GUIDE"
    assert json.loads((d / "plan.json").read_text())["decisions"] == PLAN["decisions"]
    recs = {s: json.loads((d / "subtasks" / f"{s}.json").read_text()) for s in ("s1", "s2", "s3")}
    assert recs["s1"]["preferred_role"] == "naughty"
    assert recs["s2"]["preferred_role"] == "kindergarten"
    # constrained prompts: pinned decisions verbatim, dependencies' outputs only
    p3 = (d / "subtasks" / "s3.prompt.md").read_text()
    assert "Call the drink 'sencha'" in p3 and "Use metric units" in p3
    assert recs["s1"]["output"] in p3 and recs["s2"]["output"] in p3
    p1 = (d / "subtasks" / "s1.prompt.md").read_text()
    assert "mistakes" not in p1.split("Outputs of the subtasks")[1]
    # every LLM request carried the session's correlation id
    for srv in fleet.values():
        for req in srv.requests:
            assert req["headers"]["x-correlation-id"] == d.name
    # the planner was asked with JSON-schema constrained decoding
    assert fleet["grandpa"].requests[0]["body"]["response_format"]["type"] == "json_schema"
    state = json.loads((d / "session.json").read_text())
    assert state["status"] == "done" and state["planner"] == "grandpa"
    assert len(state["prompt_versions"]["worker_task.md"]) == 12
    assert sorted(script.asked) == ["integration", "plan", "s1", "s2", "s3"]


async def test_invalid_plan_gets_one_repair_round_then_falls_back(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cyclic = {**PLAN, "subtasks": [{**PLAN["subtasks"][0], "depends_on": ["s1"]}]}
    fleet["grandpa"].add_replies([json.dumps(cyclic), "not json at all"])
    fleet["naughty"].add_replies([work("did it all")])
    code = await _in_thread(run_cli, tmp_path, "Do the thing", "--json")
    assert code == 0
    d = session_dir(isolated_env)
    plan = json.loads((d / "plan.json").read_text())
    assert plan["fallback"] is True and len(plan["subtasks"]) == 1
    assert (
        "JSON" in json.loads((d / "session.json").read_text())["steps"]["plan"]["fallback_reason"]
    )
    assert len(fleet["grandpa"].requests) == 2  # the answer plus one repair round
    assert json.loads(capsys.readouterr().out)["result"] == "did it all"


async def test_violation_triggers_one_bounded_revision(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = [{"subtask_id": "s2", "decision": "Use metric units", "explanation": "used ounces"}]
    fleet["grandpa"].add_replies([json.dumps(PLAN), integration("v1", bad), integration("v2", bad)])
    fleet["naughty"].add_replies([work("x")] * 4)
    fleet["kindergarten"].add_replies([work("y")] * 6)
    code = await _in_thread(run_cli, tmp_path, "Write a tea guide", "--json")
    assert code == 0
    assert json.loads(capsys.readouterr().out)["result"] == "v2"  # no third round
    d = session_dir(isolated_env)
    assert json.loads((d / "subtasks" / "s2.json").read_text())["revision"] is True
    assert "used ounces" in (d / "subtasks" / "s2.prompt.md").read_text()
    assert len(fleet["grandpa"].requests) == 3


async def test_a_refused_revision_keeps_the_first_output(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = [{"subtask_id": "s2", "decision": "Use metric units", "explanation": "used ounces"}]
    fleet["grandpa"].add_replies([json.dumps(PLAN), integration("v1", bad), integration("v2", bad)])
    fleet["naughty"].add_replies([work("x")] * 4)
    # s2 and s3 answer; then both tries of s2's revision are empty answers (refused)
    fleet["kindergarten"].add_replies([work("y"), work("z"), work(""), work("")])
    code = await _in_thread(run_cli, tmp_path, "Write a tea guide", "--json")
    assert code == 0  # the first s2 passed its checks: not lost, the session goes on
    assert json.loads(capsys.readouterr().out)["result"] == "v2"
    d = session_dir(isolated_env)
    record = json.loads((d / "subtasks" / "s2.json").read_text())
    assert record["revision"] is False and record["output"] in ("y", "z")
    saved = json.loads((d / "integration.json").read_text())
    assert saved["revised"] == [] and "s2" in saved["unrevised"]


async def test_translator_renders_other_language_and_failure_exit_code(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one = {"goal": "g", "decisions": [], "subtasks": [PLAN["subtasks"][0]]}
    fleet["grandpa"].add_replies([json.dumps(one)])
    fleet["naughty"].add_replies([work("hello")])
    fleet["translator"].add_replies(["こんにちは"])
    assert await _in_thread(run_cli, tmp_path, "Say hello", "--lang", "ja", "--json") == 0
    assert json.loads(capsys.readouterr().out)["result"] == "こんにちは"
    # a worker that keeps failing: exit code 1, the session is marked failed
    fleet["grandpa"].add_replies([json.dumps(one)])
    fleet["naughty"].add_faults([{"kind": "status", "status": 400}])
    fleet["kindergarten"].add_faults([{"kind": "status", "status": 400}])
    assert await _in_thread(run_cli, tmp_path, "Say hello again") == 1
    assert "failed" in capsys.readouterr().err


async def test_a_translation_cut_at_max_tokens_is_not_the_final_result(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one = {"goal": "g", "decisions": [], "subtasks": [PLAN["subtasks"][0]]}
    fleet["grandpa"].add_replies([json.dumps(one)])
    fleet["naughty"].add_replies([work("hello")])
    fleet["translator"].add_faults([{"kind": "reply", "text": "こん", "finish_reason": "length"}])
    assert await _in_thread(run_cli, tmp_path, "Say hello", "--lang", "ja") == 1
    assert "cut off at max_tokens" in capsys.readouterr().err
    d = session_dir(isolated_env)
    assert not (d / "final.md").exists() and not (d / "final.ja.json").exists()
    assert json.loads((d / "integration.json").read_text())["deliverable"] == "hello"
    assert json.loads((d / "session.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "no task given"),
        (("x", "--roles", "translator"), "worker"),
        (("x", "--roles", "naughty x kindergarten", "--lang", "ja"), "translator"),
        (("x", "--roles", "naughty x"), "dangling"),
        (("--resume", "nope"), "no session"),
        (("--task-file", "/nonexistent/task.md"), "cannot read"),
    ],
)
async def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    args: tuple[str, ...],
    needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await _in_thread(run_cli, tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1


def test_killed_session_resumes_without_reasking_finished_subtasks(
    tmp_path: Path, isolated_env: Path
) -> None:
    """A real process is killed mid-session; --resume asks only for what is missing."""
    import asyncio

    async def scenario() -> None:
        async with (
            FakeOpenAIServer() as planner,
            FakeOpenAIServer() as fast,
            FakeOpenAIServer(latency_s=60) as slow,
        ):
            (tmp_path / "slots.toml").write_text(
                f'[slots.naughty]\nurl = "{slow.url}"\nmodel = "m"\nparallel = 1\n'
                f'[slots.kindergarten]\nurl = "{fast.url}"\nmodel = "m"\nparallel = 2\n'
                f'[slots.grandpa]\nurl = "{planner.url}"\nmodel = "m"\nparallel = 1\n'
                f'[slots.translator]\nurl = "{planner.url}"\nmodel = "m"\nparallel = 1\n'
            )
            (tmp_path / "CLAUDE.md").write_text("familiar: grandpa x naughty x kindergarten\n")
            plan = {**PLAN, "subtasks": PLAN["subtasks"][:2]}  # s1 hard (slow), s2 easy
            planner.add_replies([json.dumps(plan), integration("merged")])
            fast.add_replies([work("easy done")])
            slow.add_replies([work("hard done")])
            env = {**os.environ, "FAMILIAR_HOME": str(isolated_env)}
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "familiar",
                "run",
                "--workspace",
                str(tmp_path),
                "Write a tea guide",
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 20
            sub = isolated_env / "sessions"
            while time.monotonic() < deadline:  # wait: s2 finished, s1 in flight
                done = list(sub.glob("*/subtasks/s2.json"))
                if done and slow.stats["in_flight"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert done, "the easy subtask never finished"
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            d = session_dir(isolated_env)
            assert not (d / "subtasks" / "s1.json").exists()
            slow.configure(latency_s=0.0)
            slow.add_replies([work("hard done")])
            code = await asyncio.to_thread(
                main, ["run", "--workspace", str(tmp_path), "--resume", d.name]
            )
            assert code == 0
            assert fast.stats["requests"] == 1  # s2 was not asked again
            assert (d / "final.md").read_text() == "merged"
            assert json.loads((d / "session.json").read_text())["status"] == "done"

    asyncio.run(scenario())


async def _in_thread(fn: object, *args: object) -> int:
    """Run the (sync, asyncio.run-based) CLI in a thread while the servers keep serving."""
    import asyncio

    return int(await asyncio.to_thread(fn, *args))  # type: ignore[arg-type]
