"""Sessions never keep a cut or degenerate answer, and a resume refuses bad records
before it writes anything (issue 20: hostile input, through the whole command)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from familiar.cli.main import main
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.prefix_cache import PrefixCache, PrefixCacheConfig
from tests.support.scripts import write_fleet

PLAN = {
    "goal": "A guide to the Frobnicator",
    "decisions": ["Call it 'the frob'"],
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


def work(text: str) -> str:
    return json.dumps({"output": text, "decisions_kept": [], "notes": ""})


def merged(text: str) -> str:
    return json.dumps({"deliverable": text, "violations": []})


def cut(text: str) -> dict[str, str]:
    """A reply the server stopped at max_tokens, whatever it happens to look like."""
    return {"kind": "reply", "text": text, "finish_reason": "length"}


@pytest.fixture
def fleet(
    tmp_path: Path, planner_and_worker: dict[str, FakeOpenAIServer]
) -> dict[str, FakeOpenAIServer]:
    write_fleet(tmp_path, planner_and_worker, "timeout_s = 5\n")
    return planner_and_worker


async def run(ws: Path, *extra: str) -> int:
    argv = ["run", "--workspace", str(ws), "Write a guide to the Frobnicator", "--json", *extra]
    return int(await asyncio.to_thread(main, argv))


def the_session(home: Path) -> Path:
    (d,) = list((home / "sessions").iterdir())
    return d


async def test_a_plan_cut_at_max_tokens_is_repaired_even_when_it_parses(
    fleet: dict[str, FakeOpenAIServer], tmp_path: Path, isolated_env: Path
) -> None:
    fleet["grandpa"].add_faults([cut(json.dumps(PLAN))])
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged("Set it up, then use it.")])
    fleet["naughty"].add_replies([work("Plug the frob in."), work("Press the frob.")])
    assert await run(tmp_path) == 0
    d = the_session(isolated_env)
    repair = fleet["grandpa"].requests[1]["body"]["messages"][-1]["content"]
    assert "cut off at max_tokens" in repair  # the repair round says why
    assert json.loads((d / "plan.json").read_text())["fallback"] is False


async def test_subtasks_cut_at_max_tokens_are_retried_then_rejected(
    fleet: dict[str, FakeOpenAIServer],
    tmp_path: Path,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet["grandpa"].add_replies([json.dumps(PLAN)])
    # every worker answer parses as the JSON asked for, but the server cut each one
    fleet["naughty"].add_faults([cut(work(f"part {i}")) for i in range(4)])
    assert await run(tmp_path) == 1
    d = the_session(isolated_env)
    state = json.loads((d / "session.json").read_text())
    assert state["status"] == "failed"
    assert set(state["failed"]) == {"s1", "s2"}
    assert all("cut off at max_tokens" in why for why in state["failed"].values())
    assert not (d / "subtasks" / "s1.json").exists()
    rejected = json.loads((d / "subtasks" / "s1.rejected.json").read_text())
    assert len(rejected["checks"]) == 2 and "max_tokens" in rejected["checks"][0]
    assert not (d / "final.md").exists()
    assert "cut off" in capsys.readouterr().err


async def test_a_cut_integration_falls_back_to_a_plain_merge_recorded(
    fleet: dict[str, FakeOpenAIServer], tmp_path: Path, isolated_env: Path
) -> None:
    plan = {"kind": "reply", "text": json.dumps(PLAN)}
    fleet["grandpa"].add_faults([plan, cut(merged("Set")), cut(merged("Set it"))])
    fleet["naughty"].add_replies([work("Plug the frob in."), work("Press the frob.")])
    assert await run(tmp_path) == 0
    d = the_session(isolated_env)
    integration = json.loads((d / "integration.json").read_text())
    assert "cut off at max_tokens" in integration["fallback"]
    assert "Plug the frob in." in integration["deliverable"]
    assert "Press the frob." in integration["deliverable"]
    assert integration["finish_reason"] is None  # no model answer was used


async def test_a_kept_integration_records_its_finish_reason(
    fleet: dict[str, FakeOpenAIServer], tmp_path: Path, isolated_env: Path
) -> None:
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged("Set it up, then use it.")])
    fleet["naughty"].add_replies([work("Plug the frob in."), work("Press the frob.")])
    assert await run(tmp_path) == 0
    d = the_session(isolated_env)
    integration = json.loads((d / "integration.json").read_text())
    assert integration["finish_reason"] == "stop" and integration["fallback"] is None
    s1 = json.loads((d / "subtasks" / "s1.json").read_text())
    assert s1["finish_reason"] == "stop"


@pytest.mark.parametrize("degenerate", ["decisions_kept", "output", "0", " 42. "])
async def test_a_degenerate_worker_answer_is_never_done(
    fleet: dict[str, FakeOpenAIServer],
    tmp_path: Path,
    isolated_env: Path,
    degenerate: str,
) -> None:
    fleet["grandpa"].add_replies([json.dumps(PLAN)])
    fleet["naughty"].add_replies([work(degenerate)] * 4)
    assert await run(tmp_path) == 1
    d = the_session(isolated_env)
    state = json.loads((d / "session.json").read_text())
    assert state["status"] == "failed"
    assert all("the answer is only" in why for why in state["failed"].values())


ROLE_PROMPT = (Path(__file__).resolve().parents[2] / "prompts" / "naughty.md").read_text()


async def test_a_worker_repeating_its_role_prompt_is_refused(
    fleet: dict[str, FakeOpenAIServer], tmp_path: Path, isolated_env: Path
) -> None:
    role_prompt = ROLE_PROMPT
    sentence = max((line.strip() for line in role_prompt.splitlines()), key=len)
    assert len(sentence) > 30
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged("Set it up, then use it.")])
    fleet["naughty"].add_replies([work(sentence), work("Plug the frob in."), work("Press it.")])
    assert await run(tmp_path) == 0
    d = the_session(isolated_env)
    records = [json.loads((d / "subtasks" / f"s{i}.json").read_text()) for i in (1, 2)]
    refused = [r for r in records if r["checks"]]
    assert len(refused) == 1
    assert "role's own instructions" in refused[0]["checks"][0]
    assert sentence not in {r["output"] for r in records}


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("integration.json", {"deliverable": 5}, "no deliverable"),
        ("integration.json", {"deliverable": "x", "violations": "none"}, "corrupt"),
        ("subtasks/s2.json", {"status": 5, "output": None}, "not a word"),
        ("subtasks/s2.json", {"status": "ok", "output": "x", "attempts": "two"}, "corrupt"),
        ("final.ja.json", {"text": ["a"]}, "no text"),
    ],
)
async def test_resume_refuses_a_bad_record_before_writing_anything(
    fleet: dict[str, FakeOpenAIServer],
    tmp_path: Path,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: object,
    says: str,
) -> None:
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged("Set it up, then use it.")])
    fleet["naughty"].add_replies([work("Plug the frob in."), work("Press the frob.")])
    assert await run(tmp_path) == 0
    d = the_session(isolated_env)
    (d / name).write_text(json.dumps(content))
    before = _tree(isolated_env)
    requests = len(fleet["grandpa"].requests) + len(fleet["naughty"].requests)
    capsys.readouterr()
    argv = ["run", "--workspace", str(tmp_path), "--resume", d.name]
    assert await asyncio.to_thread(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and name.split("/")[-1] in err[0]
    assert "Traceback" not in err[0]
    assert _tree(isolated_env) == before  # nothing written, session.json unchanged
    assert len(fleet["grandpa"].requests) + len(fleet["naughty"].requests) == requests


async def test_a_run_ends_with_a_closing_line_and_sessions_lists_and_shows_it(
    fleet: dict[str, FakeOpenAIServer],
    tmp_path: Path,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = fleet["naughty"].prefix_cache = PrefixCache(PrefixCacheConfig(block=4))
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged("Set it up, then use it.")])
    fleet["naughty"].add_replies([work("Plug the frob in."), work("Press the frob.")])
    assert await run(tmp_path) == 0
    err = capsys.readouterr().err.strip().splitlines()
    d = the_session(isolated_env)
    assert err[-1].startswith(f"session {d.name} done in ")
    assert "4 request(s)" in err[-1] and "tokens in" in err[-1] and str(d / "final.md") in err[-1]
    totals = json.loads((d / "session.json").read_text())["totals"]
    assert totals["requests"] == 4
    # the second worker found the first one's prefix (role prompt, goal, decisions) cached
    assert totals["cached_tokens"] == cache.cached_tokens > 0
    assert f"({cache.cached_tokens:,} from the servers' cache)" in err[-1]
    assert main(["sessions", "--workspace", str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["cached_tokens"] == cache.cached_tokens and row["prompt_tokens"] > 0
    # -q: nothing but errors
    fleet["grandpa"].add_replies([json.dumps(PLAN), merged("Again.")])
    fleet["naughty"].add_replies([work("One."), work("Two.")])
    assert (
        await asyncio.to_thread(main, ["-q", "run", "--workspace", str(tmp_path), "Do it again"])
        == 0
    )
    assert "request(s)" not in capsys.readouterr().err
    # a failed one, with a long task: the listing has a header, the whole task and the reason
    long_task = "Write " + "a very long task " * 10
    fleet["grandpa"].add_replies([json.dumps(PLAN)])
    fleet["naughty"].add_replies([work("output")] * 4)
    argv = ["run", "--workspace", str(tmp_path), long_task]
    assert await asyncio.to_thread(main, argv) == 1
    capsys.readouterr()
    assert main(["sessions", "--workspace", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["id", "status", "started", "seconds", "roles", "task / reason"]
    failed = next(line for line in lines if "\tfailed\t" in line)
    assert " ".join(long_task.split()) in failed and "the answer is only the field name" in failed
    assert main(["sessions", "show", "last", "--workspace", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "failed" and [t["id"] for t in shown["subtasks"]] == ["s1", "s2"]
    assert all(t["status"] == "failed" and t["reason"] for t in shown["subtasks"])
    assert main(["sessions", "show", d.name[:6], "--workspace", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"session {d.name}  done" in text and "s1 [hard] ok on naughty" in text
