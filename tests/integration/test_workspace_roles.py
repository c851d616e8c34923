"""A workspace adds a role with a role file and a prompt only: a second fast worker,
``toddler`` (kind worker), takes subtasks through the whole ``familiar run`` command."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import SessionScript

TODDLER_PROMPT = "You are toddler, a second fast worker. Answer briefly."

#: six easy subtasks at once: more than kindergarten's one seat, so toddler takes some
PLAN: dict[str, Any] = {
    "goal": "Six tea facts",
    "decisions": ["Call the drink 'sencha'"],
    "subtasks": [
        {
            "id": f"s{i}",
            "title": f"Fact {i}",
            "instructions": f"Write tea fact {i}",
            "acceptance": "one line",
            "depends_on": [],
            "difficulty": "easy",
        }
        for i in range(1, 7)
    ],
}


def add_toddler(ws: Path) -> None:
    """The only two files a workspace needs for a new role."""
    (ws / "roles").mkdir()
    (ws / "roles" / "toddler.toml").write_text(
        '[role]\nname = "toddler"\nkind = "worker"\n'
        'description = "A second fast worker."\nprompt = "toddler.md"\n'
        'default_slot = "toddler"\n\n[sampling]\ntemperature = 0.5\nmax_tokens = 512\n'
    )
    (ws / "prompts").mkdir()
    (ws / "prompts" / "toddler.md").write_text(TODDLER_PROMPT + "\n")


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[dict[str, FakeOpenAIServer]]:
    servers = {r: FakeOpenAIServer(latency_s=0.05) for r in ("grandpa", "kindergarten", "toddler")}
    for s in servers.values():
        await s.start()
    (tmp_path / "slots.toml").write_text(
        "".join(
            f'[slots.{name}]\nurl = "{s.url}"\nmodel = "{name}-model"\nruntime = "vllm"\n'
            f"parallel = {2 if name == 'toddler' else 1}\ntimeout_s = 5\n\n"
            for name, s in servers.items()
        )
    )
    add_toddler(tmp_path)
    yield servers
    for s in servers.values():
        await s.stop()


def cli(*args: str) -> int:
    return main(list(args))


async def test_a_workspace_role_gets_subtasks_through_familiar_run(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ws = str(tmp_path)
    # the role string names it like a shipped role; `config use` writes it to CLAUDE.md
    roles = "grandpa x kindergarten x toddler"
    assert await asyncio.to_thread(cli, "config", "use", "--workspace", ws, roles) == 0
    assert "familiar: grandpa x kindergarten x toddler" in (tmp_path / "CLAUDE.md").read_text()
    capsys.readouterr()

    outputs = {f"s{i}": f"fact {i}" for i in range(1, 7)}
    script = SessionScript(PLAN, outputs, "SIX FACTS")
    for srv in fleet.values():
        srv.handler = script
    code = await asyncio.to_thread(cli, "run", "--workspace", ws, "Six tea facts", "--json")
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["result"] == "SIX FACTS"

    (d,) = list((isolated_env / "sessions").iterdir())
    records = [json.loads((d / "subtasks" / f"s{i}.json").read_text()) for i in range(1, 7)]
    by_toddler = [r["id"] for r in records if r["role"] == "toddler"]
    assert by_toddler, [r["role"] for r in records]
    assert {r["role"] for r in records} <= {"kindergarten", "toddler"}
    # the toddler slot was asked for work, with the workspace's own prompt
    asked = [r["body"] for r in fleet["toddler"].requests]
    work = [
        b
        for b in asked
        if b.get("response_format", {}).get("json_schema", {}).get("name") == "work"
    ]
    assert len(work) == len(by_toddler)
    assert all(b["messages"][0]["content"].startswith(TODDLER_PROMPT) for b in work)
    # the planner is still the planner-kind role, and plans nowhere else
    state = json.loads((d / "session.json").read_text())
    assert state["planner"] == "grandpa" and state["roles"] == roles
    planned = [
        b
        for b in asked
        if b.get("response_format", {}).get("json_schema", {}).get("name") == "plan"
    ]
    assert planned == []


async def test_a_workspace_worker_alone_plans_and_works(
    tmp_path: Path,
    fleet: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No planner and no shipped worker: the workspace's worker plans, works, integrates."""
    script = SessionScript(PLAN, {f"s{i}": f"fact {i}" for i in range(1, 7)}, "SIX FACTS")
    fleet["toddler"].handler = script
    ws = str(tmp_path)
    code = await asyncio.to_thread(
        cli, "run", "--workspace", ws, "--roles", "toddler", "Six tea facts", "--json"
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["result"] == "SIX FACTS"
    (d,) = list((isolated_env / "sessions").iterdir())
    assert json.loads((d / "session.json").read_text())["planner"] == "toddler"
    assert fleet["grandpa"].requests == [] and fleet["kindergarten"].requests == []
    assert sorted(script.asked) == sorted(["plan", "integration", *(f"s{i}" for i in range(1, 7))])


def test_an_unknown_role_is_still_exit_2_naming_the_workspace_roles(
    tmp_path: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_toddler(tmp_path)
    assert cli("config", "use", "--workspace", str(tmp_path), "naughty x todler") == 2
    err = capsys.readouterr().err
    assert "unknown role 'todler'" in err and "did you mean 'toddler'" in err
    assert "\n" not in err.strip()
