"""Sessions on the user's workspace, through the whole command: context in (only the
files a subtask needs), files out (paths checked), the user's check as the judge (one
revision round), ``--out`` and ``--apply`` (never over uncommitted work)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import last_user, schema_name, write_fleet

UTIL = 'def slug(text):\n    return text.lower().replace(" ", "-")\n'
README = "# pkg\n\nA tiny package.\n"
CHECK = (
    f"{sys.executable} -c \"import pathlib,sys; t=pathlib.Path('pkg/dates.py').read_text();"
    " ok='fromisoformat' in t; print('pkg/dates.py: ' + ('ok' if ok else 'no parse_iso that"
    " works')); sys.exit(0 if ok else 1)\""
)


def plan(files: Mapping[str, list[str]]) -> dict[str, Any]:
    return {
        "goal": "A date parser with its test",
        "decisions": ["Name the function parse_iso"],
        "subtasks": [
            {
                "id": sid,
                "title": f"Part {sid}",
                "instructions": f"Write part {sid}",
                "acceptance": "",
                "depends_on": [],
                "difficulty": "hard",
                "files": paths,
            }
            for sid, paths in files.items()
        ],
    }


def work(text: str, files: list[dict[str, str]]) -> str:
    return json.dumps({"output": text, "decisions_kept": [], "notes": "", "files": files})


@dataclass
class Script:
    """Answers by what is asked: the plan, each subtask (first answer, then the answer
    after a failed check), the integration."""

    plan: Mapping[str, Any]
    first: Mapping[str, list[dict[str, str]]]
    revised: Mapping[str, list[dict[str, str]]] = field(default_factory=dict)
    merged: list[dict[str, str]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    integration_prompts: list[str] = field(default_factory=list)

    def __call__(self, body: dict[str, Any]) -> str | None:
        name = schema_name(body)
        user = "\n".join(str(m.get("content")) for m in body.get("messages", []))
        if name == "plan":
            self.asked.append("plan")
            return json.dumps(self.plan)
        if name == "work":
            sid = re.search(r"Your subtask \((s\d+)\)", user)
            assert sid is not None
            key = sid.group(1)
            if "The user's check" in user:
                self.asked.append(f"{key}:revise")
                return work(f"fixed {key}", self.revised.get(key, self.first[key]))
            self.asked.append(key)
            return work(f"wrote {key}", self.first[key])
        if name == "integration":
            self.asked.append("integration")
            self.integration_prompts.append(user)
            answer = {"deliverable": "Done: parse_iso.", "violations": [], "files": self.merged}
            return json.dumps(answer)
        return None


@pytest.fixture
def ws(tmp_path: Path, planner_and_worker: dict[str, FakeOpenAIServer]) -> Path:
    write_fleet(tmp_path, planner_and_worker, "timeout_s = 5\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "util.py").write_text(UTIL)
    (tmp_path / "README.md").write_text(README)
    return tmp_path


async def run(ws: Path, *args: str) -> int:
    argv = ["run", "--workspace", str(ws), "Add parse_iso to pkg with a test", "--json", *args]
    cwd = os.getcwd()
    os.chdir(ws)  # --context paths are relative to where the user stands
    try:
        return int(await asyncio.to_thread(main, argv))
    finally:
        os.chdir(cwd)


def session_dir(home: Path) -> Path:
    (d,) = list((home / "sessions").iterdir())
    return d


async def test_a_session_reads_context_writes_files_and_passes_the_check_after_a_revision(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = Script(
        plan({"s1": ["pkg/util.py"], "s2": []}),
        first={
            "s1": [{"path": "pkg/dates.py", "content": "def parse_iso(s):\n    return s\n"}],
            "s2": [{"path": "tests/test_dates.py", "content": "def test_it():\n    pass\n"}],
        },
        revised={
            "s1": [
                {
                    "path": "./pkg//dates.py",
                    "content": "from datetime import datetime\n\n"
                    "def parse_iso(s):\n    return datetime.fromisoformat(s)\n",
                }
            ]
        },
    )
    for srv in planner_and_worker.values():
        srv.handler = script
    out = ws / "out"
    code = await run(ws, "--context", "pkg", "README.md", "--check", CHECK, "--out", str(out))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["status"] == "done"
    assert summary["files"] == ["pkg/dates.py", "tests/test_dates.py"]
    assert "passed" in summary["check"]
    assert "context: 2 file(s)" in captured.err

    d = session_dir(isolated_env)
    context = json.loads((d / "context.json").read_text())
    assert [f["path"] for f in context["files"]] == ["pkg/util.py", "README.md"]
    assert all(f["status"] == "included" and len(f["sha256"]) == 64 for f in context["files"])
    # the planner saw the contents; each worker only the files its subtask named
    requests = planner_and_worker["naughty"].requests + planner_and_worker["grandpa"].requests
    by_name = {}
    for r in requests:
        by_name.setdefault(schema_name(r["body"]), []).append(last_user(r["body"]))
    assert UTIL in by_name["plan"][0] and README in by_name["plan"][0]
    s1 = next(u for u in by_name["work"] if "Your subtask (s1)" in u)
    s2 = next(u for u in by_name["work"] if "Your subtask (s2)" in u)
    assert UTIL in s1 and UTIL not in s2 and README not in s1
    # the check failed once, the subtask that wrote the file it named was revised
    checks = sorted((d / "checks").glob("*.json"))
    runs = [json.loads(p.read_text()) for p in checks]
    assert [r["passed"] for r in runs] == [False, True]
    assert "no parse_iso that works" in runs[0]["tail"] and runs[0]["exit_code"] == 1
    assert "s1:revise" in script.asked and "s2:revise" not in script.asked
    assert "fromisoformat" in (d / "files" / "pkg" / "dates.py").read_text()
    # --out: the result and the tree; the workspace itself untouched
    assert (out / "result.md").read_text() == "Done: parse_iso."
    assert "fromisoformat" in (out / "pkg" / "dates.py").read_text()
    assert (out / "tests" / "test_dates.py").is_file()
    assert not (ws / "pkg" / "dates.py").exists()
    state = json.loads((d / "session.json").read_text())
    assert state["steps"]["files"]["check"]["passed"] is True


async def test_a_check_that_still_fails_fails_the_session_with_its_tail(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = [{"path": "pkg/dates.py", "content": "def parse_iso(s):\n    return s\n"}]
    still_bad = [{"path": "pkg/dates.py", "content": "def parse_iso(s):\n    return 0\n"}]
    script = Script(plan({"s1": ["pkg/util.py"]}), first={"s1": bad}, revised={"s1": still_bad})
    for srv in planner_and_worker.values():
        srv.handler = script
    assert await run(ws, "--context", "pkg", "--check", CHECK) == 1
    assert script.asked.count("s1:revise") == 1
    err = capsys.readouterr().err
    assert "check failed" in err and "no parse_iso that works" in err
    d = session_dir(isolated_env)
    state = json.loads((d / "session.json").read_text())
    assert state["status"] == "failed" and state["error"].startswith("check failed")
    assert len(list((d / "checks").glob("*.json"))) == 2  # once, then after the revision
    assert not (ws / "pkg" / "dates.py").exists()


@pytest.mark.parametrize(
    "path",
    [
        "/etc/evil.py",
        "../outside.py",
        "pkg/../../outside.py",
        ".git/config",
        ".familiar/sessions/x.json",
        "link/escape.py",
        "pkg",
        "C:\\\\x.py",
        "",
    ],
)
async def test_a_path_that_leaves_the_workspace_is_refused_never_written(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    tmp_path_factory: pytest.TempPathFactory,
    path: str,
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (ws / "link").symlink_to(outside, target_is_directory=True)
    (ws / ".git").mkdir()
    evil = [{"path": path, "content": "pwned\n"}]
    script = Script(plan({"s1": []}), first={"s1": evil})
    for srv in planner_and_worker.values():
        srv.handler = script
    out = ws / "out"
    assert await run(ws, "--out", str(out)) == 1
    d = session_dir(isolated_env)
    state = json.loads((d / "session.json").read_text())
    assert state["status"] == "failed"
    (why,) = state["failed"].values()
    assert "path" in why
    assert script.asked.count("s1") == 2  # asked again with the reason, then rejected
    assert not list(outside.iterdir())
    assert not (ws / ".git" / "config").exists()
    assert not (ws.parent / "outside.py").exists()
    assert not out.exists() or not any(out.rglob("*.py"))


def git(ws: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(ws), *args],
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )


async def test_apply_refuses_uncommitted_changes_then_force_writes_and_records_a_diff(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (ws / ".gitignore").write_text("out/\n")
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "init")
    (ws / "pkg" / "util.py").write_text(UTIL + "# my unsaved work\n")  # uncommitted
    new_util = [{"path": "pkg/util.py", "content": "def slug(t):\n    return t\n"}]
    script = Script(plan({"s1": ["pkg/util.py"]}), first={"s1": new_util})
    for srv in planner_and_worker.values():
        srv.handler = script
    assert await run(ws, "--context", "pkg/util.py", "--apply") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "uncommitted or ignored changes in pkg/util.py" in err[-1] and "--force" in err[-1]
    assert (ws / "pkg" / "util.py").read_text() == UTIL + "# my unsaved work\n"
    d = session_dir(isolated_env)
    assert json.loads((d / "session.json").read_text())["status"] == "done"
    # the user decides: apply the recorded session's files with --force
    argv = ["run", "--workspace", str(ws), "--resume", d.name[:8], "--apply", "--force"]
    asked = len(script.asked)
    assert await asyncio.to_thread(main, argv) == 0
    assert len(script.asked) == asked  # nothing asked again
    assert (ws / "pkg" / "util.py").read_text() == "def slug(t):\n    return t\n"
    diff = (d / "apply.diff").read_text()
    assert "-# my unsaved work" in diff and "+++ b/pkg/util.py" in diff


async def test_apply_writes_new_files_into_a_clean_repository(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "init")
    new = [
        {"path": "pkg/dates.py", "content": "X = 1\n"},
        {"path": "pkg/util.py", "content": "Y = 2\n"},  # committed: git can restore it
    ]
    script = Script(plan({"s1": []}), first={"s1": new})
    for srv in planner_and_worker.values():
        srv.handler = script
    assert await run(ws, "--apply") == 0
    assert (ws / "pkg" / "dates.py").read_text() == "X = 1\n"
    assert (ws / "pkg" / "util.py").read_text() == "Y = 2\n"


async def test_workers_of_a_session_share_a_byte_identical_prefix(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    (ws / "pkg" / "big.py").write_text("# shared\n" + "x = 1\n" * 200)
    script = Script(
        plan({"s1": ["pkg/big.py", "pkg/util.py"], "s2": ["pkg/big.py"]}),
        first={"s1": [], "s2": []},
    )
    for srv in planner_and_worker.values():
        srv.handler = script
    assert await run(ws, "--context", "pkg") == 0
    bodies = [r["body"] for r in planner_and_worker["naughty"].requests]
    texts = [json.dumps(b["messages"], ensure_ascii=False) for b in bodies]
    assert len(texts) == 2
    n = next((i for i, (a, b) in enumerate(zip(*texts, strict=False)) if a != b), 0)
    shared = texts[0][:n]
    # system prompt, goal, decisions and the file both need: before anything that differs
    assert "x = 1\\n" * 200 in shared
    assert "Your subtask" not in shared
    assert len(shared) > 0.7 * min(len(t) for t in texts)


async def test_a_workers_request_begins_like_the_planners_as_far_as_their_files_agree(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    # the worker role plans too (no grandpa): one system prompt for the whole session
    (ws / "CLAUDE.md").write_text("familiar: naughty\n")
    (ws / "pkg" / "big.py").write_text("# shared\n" + "x = 1\n" * 200)
    script = Script(
        plan({"s1": ["pkg/big.py", "pkg/util.py"], "s2": ["pkg/big.py"], "s3": []}),
        first={"s1": [], "s2": [], "s3": []},
    )
    for srv in planner_and_worker.values():
        srv.handler = script
    assert await run(ws, "--context", "pkg") == 0
    bodies = [r["body"] for r in planner_and_worker["naughty"].requests]
    texts = {
        schema_name(b) + (re.findall(r"Your subtask \((s\d)\)", last_user(b)) or [""])[0]: (
            json.dumps(b["messages"], ensure_ascii=False)
        )
        for b in bodies
    }
    planner = texts["plan"]
    util = json.dumps(UTIL)[1:-1]
    big = "x = 1\\n" * 200

    def shared(a: str, b: str) -> str:
        return a[: next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), 0)]

    # the planner's request leads with the context's files in its order (pkg/big.py,
    # pkg/util.py): s1 needs both, s2 the first; each worker's request begins with the
    # planner's as far as that, byte for byte (a server's prefix cache serves it)
    assert big in shared(planner, texts["works1"]) and util in shared(planner, texts["works1"])
    assert big in shared(planner, texts["works2"])
    assert "Goal of the whole team" not in shared(planner, texts["works2"])
    # a subtask without files is shown none: its request shares only the system prompt
    assert "x = 1" not in texts["works3"] and "Workspace files" not in texts["works3"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--context", "nope.py"], "no such file"),
        (["--context", "/etc/hostname"], "outside the workspace"),
        (["--context", "*.nothing"], "matches no file"),
        (["--force"], "--force only goes with --apply"),
        (["--context-tokens", "0", "--context", "pkg"], "--context-tokens"),
        (["--check", " "], "--check needs a command"),
        (["--check-timeout", "0", "--check", "true"], "--check-timeout"),
    ],
)
async def test_bad_workspace_arguments_are_one_line_exit_2_nothing_created(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    says: str,
) -> None:
    assert await run(ws, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not (isolated_env / "sessions").exists()
    assert all(s.stats["requests"] == 0 for s in planner_and_worker.values())


async def test_a_task_file_names_its_context_and_a_resume_rereads_a_changed_file(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (ws / "task.md").write_text("---\ncontext:\n  - pkg/util.py\n---\nAdd parse_iso to pkg\n")
    script = Script(plan({"s1": ["pkg/util.py"]}), first={"s1": []})
    for srv in planner_and_worker.values():
        srv.handler = script
    # the integration is interrupted: the first run fails there (a server fault)
    planner_and_worker["grandpa"].add_faults([{"kind": "reply", "text": json.dumps(script.plan)}])
    planner_and_worker["grandpa"].add_faults([{"kind": "status", "status": 400}])
    argv = [
        "run",
        "--workspace",
        str(ws),
        "--task-file",
        str(ws / "task.md"),
        "--out",
        str(ws / "o"),
    ]
    assert await asyncio.to_thread(main, argv) == 1
    d = session_dir(isolated_env)
    assert (d / "task.md").read_text() == "Add parse_iso to pkg\n"  # without its front matter
    recorded = json.loads((d / "context.json").read_text())
    assert [f["path"] for f in recorded["files"]] == ["pkg/util.py"]
    (ws / "pkg" / "util.py").write_text(UTIL + "# changed\n")
    capsys.readouterr()
    asked = len(script.asked)
    argv = ["run", "--workspace", str(ws), "--resume", "last", "--json"]
    assert await asyncio.to_thread(main, argv) == 0
    err = capsys.readouterr().err
    assert "context file pkg/util.py changed since the session started; re-read" in err
    assert script.asked[asked:] == ["integration"]  # finished work is not asked again
    again = json.loads((d / "context.json").read_text())
    assert again["files"][0]["sha256"] != recorded["files"][0]["sha256"]


async def test_out_on_the_workspace_itself_is_refused(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    assert await run(ws, "--out", str(ws)) == 2
    assert not (isolated_env / "sessions").exists()


async def test_two_subtasks_writing_one_path_the_integrator_decides_recorded(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    script = Script(
        plan({"s1": [], "s2": []}),
        first={
            "s1": [{"path": "pkg/api.py", "content": "A = 1\n"}],
            "s2": [{"path": "pkg/api.py", "content": "B = 2\n"}],
        },
        merged=[{"path": "pkg/api.py", "content": "A = 1\nB = 2\n"}],
    )
    for srv in planner_and_worker.values():
        srv.handler = script
    assert await run(ws, "--out", str(ws / "out")) == 0
    (prompt,) = script.integration_prompts
    assert "pkg/api.py (written by s1, s2)" in prompt
    d = session_dir(isolated_env)
    files = json.loads((d / "files.json").read_text())
    assert files["conflicts"] == {"pkg/api.py": ["s1", "s2"]}
    assert files["files"][0]["writer"] == "integrator"
    assert (ws / "out" / "pkg" / "api.py").read_text() == "A = 1\nB = 2\n"
