"""Sessions keep only honest answers: copies of prompt examples, SIGTERM, resume records."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from familiar import copycheck
from familiar.cli.main import main
from familiar.translate.formats import FEWSHOT_EXAMPLES
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import write_fleet

REPO = Path(__file__).resolve().parents[2]
PLAN = {
    "goal": "A guide to the Frobnicator",
    "decisions": [],
    "subtasks": [
        {
            "id": "s1",
            "title": "Setup",
            "instructions": "Explain setting up the frob",
            "acceptance": "",
            "depends_on": [],
            "difficulty": "hard",
        },
        {
            "id": "s2",
            "title": "Use",
            "instructions": "Explain using the frob",
            "acceptance": "",
            "depends_on": [],
            "difficulty": "hard",
        },
    ],
}


EXAMPLE_PROMPTS = REPO / "tests" / "support" / "example_prompts"


def example(prompt: str) -> str:
    """The longest answer-like snippet of a prompt's example block (the workspace's
    override of the shipped prompt, which has no examples)."""
    snippets = copycheck.examples((EXAMPLE_PROMPTS / prompt).read_text(encoding="utf-8"))
    assert snippets, prompt
    return max(snippets, key=len)


def work(text: str) -> str:
    return json.dumps({"output": text, "decisions_kept": [], "notes": ""})


def merged(text: str) -> str:
    return json.dumps({"deliverable": text, "violations": []})


@pytest.fixture
def fleet(
    tmp_path: Path, planner_and_worker: dict[str, FakeOpenAIServer]
) -> dict[str, FakeOpenAIServer]:
    write_fleet(tmp_path, planner_and_worker, "timeout_s = 5\n")
    # the workspace overrides the session prompts with versions that carry examples
    shutil.copytree(EXAMPLE_PROMPTS, tmp_path / "prompts")
    return planner_and_worker


async def run(ws: Path) -> int:
    argv = ["run", "--workspace", str(ws), "Write a guide to the Frobnicator", "--json"]
    return int(await asyncio.to_thread(main, argv))


def the_session(home: Path) -> Path:
    (d,) = list((home / "sessions").iterdir())
    return d


def test_prompt_examples_are_not_about_the_demo_task() -> None:
    demo = (REPO / "scripts" / "demo").read_text()
    assert "green tea" in demo  # the demo task this guards against
    texts = [p.read_text() for p in sorted((REPO / "prompts").glob("*.md"))]
    texts += [p.read_text() for p in sorted(EXAMPLE_PROMPTS.glob("*.md"))]
    texts += [f"{a}\n{b}" for pairs in FEWSHOT_EXAMPLES.values() for a, b in pairs]
    for text in texts:
        lowered = text.lower()
        for word in ("green tea", "brew", "boil", "kettle", "tyre", "お茶", "沸か"):
            assert word not in lowered, (word, text[:80])
    shipped = {p.name for p in (REPO / "prompts").glob("*.md") if "<!-- example" in p.read_text()}
    assert shipped == {"plan.md"}  # workers and integration: constrained decoding, no example


async def test_worker_copying_the_example_is_retried_differently_then_kept(
    fleet: dict[str, FakeOpenAIServer], tmp_path: Path, isolated_env: Path
) -> None:
    copy = example("worker_task.md")
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged("Plug it in, then press it.")])
    fleet["naughty"].add_replies([work(copy), work("Plug the frob in."), work("Press it.")])
    assert await run(tmp_path) == 0
    d = the_session(isolated_env)
    s1 = json.loads((d / "subtasks" / "s1.json").read_text())
    assert s1["output"] == "Plug the frob in." and "copied the prompt's example" in s1["checks"][0]
    first, retry = fleet["naughty"].requests[0]["body"], fleet["naughty"].requests[1]["body"]
    assert retry["temperature"] > first["temperature"]  # asked differently
    assert "cannot be used" in retry["messages"][-1]["content"]
    assert "<!--" not in first["messages"][-1]["content"]  # markers never reach the model


async def test_worker_that_keeps_copying_fails_and_is_recorded(
    fleet: dict[str, FakeOpenAIServer], tmp_path: Path, isolated_env: Path
) -> None:
    copy = example("worker_task.md")
    fleet["grandpa"].add_replies([json.dumps(PLAN)])
    fleet["naughty"].add_replies([work(copy), work(copy), work("Press it.")])
    assert await run(tmp_path) == 1
    d = the_session(isolated_env)
    assert not (d / "subtasks" / "s1.json").exists()
    rejected = json.loads((d / "subtasks" / "s1.rejected.json").read_text())
    assert len(rejected["checks"]) == 2
    state = json.loads((d / "session.json").read_text())
    assert "AnswerRejected" in state["failed"]["s1"] and not (d / "final.md").exists()


async def test_integration_copying_the_example_falls_back_to_a_plain_merge(
    fleet: dict[str, FakeOpenAIServer], tmp_path: Path, isolated_env: Path
) -> None:
    copy = example("integrate.md")
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged(copy), merged(copy)])
    fleet["naughty"].add_replies([work("Plug the frob in."), work("Press it.")])
    assert await run(tmp_path) == 0
    d = the_session(isolated_env)
    final = (d / "final.md").read_text()
    assert copy not in final
    assert final == "## Setup\n\nPlug the frob in.\n\n## Use\n\nPress it."
    integration = json.loads((d / "integration.json").read_text())
    assert "copied the prompt's example" in integration["fallback"]
    assert len(integration["checks"]) == 2
    state = json.loads((d / "session.json").read_text())
    assert state["steps"]["integrate"]["fallback"] == integration["fallback"]


async def test_empty_worker_output_is_never_a_finished_subtask(
    fleet: dict[str, FakeOpenAIServer], tmp_path: Path, isolated_env: Path
) -> None:
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged("Plug it in, then press it.")])
    fleet["naughty"].add_replies([work("   "), work("Plug the frob in."), work("Press it.")])
    assert await run(tmp_path) == 0
    s1 = json.loads((the_session(isolated_env) / "subtasks" / "s1.json").read_text())
    assert s1["output"] == "Plug the frob in." and s1["checks"] == ["the answer was empty"]


def test_sigterm_marks_the_session_interrupted_and_exits_143(
    tmp_path: Path, isolated_env: Path
) -> None:
    async def scenario() -> None:
        async with FakeOpenAIServer(latency_s=30) as srv:  # the planner never answers in time
            (tmp_path / "slots.toml").write_text(
                f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "m"\nparallel = 1\n'
            )
            (tmp_path / "CLAUDE.md").write_text("familiar: naughty\n")
            env = {**os.environ, "FAMILIAR_HOME": str(isolated_env)}
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "familiar", "run", "--workspace", str(tmp_path), "Frob"],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until the planner's request is in flight
                if srv.stats["in_flight"] >= 1:
                    break
                await asyncio.sleep(0.02)
            assert srv.stats["in_flight"] == 1
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 10)
            assert proc.returncode == 143, err
            assert b"Traceback" not in err and b"terminated" in err
            assert b"interrupted; resume with: familiar run --workspace " in err
            await asyncio.sleep(0.1)
            assert srv.stats["in_flight"] == 0  # the request was cancelled, not abandoned

    asyncio.run(scenario())
    state = json.loads((the_session(isolated_env) / "session.json").read_text())
    assert state["status"] == "interrupted"
