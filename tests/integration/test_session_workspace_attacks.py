"""What a hostile tester found in workspace sessions, through the whole command: the
user's files are never changed without --apply (nor over uncommitted or ignored work),
recorded paths are checked again, undo records work, the check stays in its copy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import schema_name, write_fleet

PLAN = {
    "goal": "Files",
    "decisions": [],
    "subtasks": [
        {
            "id": "s1",
            "title": "Write",
            "instructions": "Write the files",
            "acceptance": "",
            "depends_on": [],
            "difficulty": "hard",
        }
    ],
}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def answers(files: list[dict[str, str]]) -> Any:
    def handler(body: Mapping[str, Any]) -> str | None:
        name = schema_name(body)
        if name == "plan":
            return json.dumps(PLAN)
        if name == "work":
            return json.dumps(
                {"output": "wrote them", "decisions_kept": [], "notes": "", "files": files}
            )
        if name == "integration":
            return json.dumps({"deliverable": "done", "violations": [], "files": []})
        return None

    return handler


def git(where: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(where), *args],
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
    )


@pytest.fixture
def ws(tmp_path: Path, planner_and_worker: dict[str, FakeOpenAIServer]) -> Path:
    write_fleet(tmp_path, planner_and_worker, "timeout_s = 5\n")
    return tmp_path


def script(servers: dict[str, FakeOpenAIServer], files: list[dict[str, str]]) -> None:
    for srv in servers.values():
        srv.handler = answers(files)


async def run(ws: Path, *args: str) -> int:
    argv = ["run", "--workspace", str(ws), "Write the files", *args]
    return int(await asyncio.to_thread(main, argv))


async def resume(ws: Path, *args: str) -> int:
    return int(
        await asyncio.to_thread(main, ["run", "--workspace", str(ws), "--resume", "last", *args])
    )


def the_session(home: Path) -> Path:
    (d,) = list((home / "sessions").iterdir())
    return d


async def test_apply_in_a_subdirectory_of_a_repository_sees_uncommitted_and_ignored_files(
    tmp_path: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    repo = tmp_path / "repo"
    ws = repo / "proj"
    ws.mkdir(parents=True)
    write_fleet(ws, planner_and_worker, "timeout_s = 5\n")
    (ws / "CLAUDE.md").write_text((tmp_path / "CLAUDE.md").read_text())
    (ws / "notes.txt").write_text("committed\n")
    (ws / "local.cfg").write_text("mine\n")
    (repo / ".gitignore").write_text("local.cfg\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    (ws / "notes.txt").write_text("my unsaved work\n")
    script(planner_and_worker, [{"path": "notes.txt", "content": "model\n"}])
    assert await run(ws, "--apply") == 2
    assert (ws / "notes.txt").read_text() == "my unsaved work\n"
    git(repo, "checkout", "--", "proj/notes.txt")
    for srv in planner_and_worker.values():
        srv.handler = answers([{"path": "local.cfg", "content": "model\n"}])
    assert await run(ws, "--apply") == 2  # ignored: git could not bring it back
    assert (ws / "local.cfg").read_text() == "mine\n"


async def test_a_check_never_reaches_the_workspace_through_an_absolute_link(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    (ws / "src").mkdir()
    (ws / "src" / "mod.py").write_text("REAL = 1\n")
    (ws / "fixtures").mkdir()
    (ws / "fixtures" / "data.json").write_text("{}\n")
    (ws / "lib").symlink_to(ws / "src", target_is_directory=True)  # absolute, inside
    (ws / "testdata").symlink_to(ws / "fixtures", target_is_directory=True)
    os.mkfifo(ws / "pipe")  # a special file never stops the copy
    script(planner_and_worker, [{"path": "lib/mod.py", "content": "MODEL = 1\n"}])
    check = "rm -f testdata/* && grep -q MODEL lib/mod.py"
    assert await run(ws, "--check", check) == 0
    assert (ws / "src" / "mod.py").read_text() == "REAL = 1\n"
    assert (ws / "fixtures" / "data.json").exists()


async def test_recorded_paths_are_checked_again_before_apply(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    script(planner_and_worker, [{"path": "new.py", "content": "X = 1\n"}])
    assert await run(ws, "--out", str(ws / "out")) == 0
    d = the_session(isolated_env)
    record = json.loads((d / "subtasks" / "s1.json").read_text())
    record["files"].append({"path": "../escaped.txt", "content": "pwned\n"})
    (d / "subtasks" / "s1.json").write_text(json.dumps(record))
    (d / "integration.json").unlink()  # so the merge runs again from the records
    assert await resume(ws, "--apply") == 2
    assert not (ws.parent / "escaped.txt").exists() and not (ws / "new.py").exists()


async def test_a_session_resumes_only_in_its_own_workspace(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    script(planner_and_worker, [{"path": "from_a.py", "content": "A = 1\n"}])
    assert await run(ws, "--out", str(ws / "out")) == 0
    other = tmp_path_factory.mktemp("b")
    (other / "CLAUDE.md").write_text((ws / "CLAUDE.md").read_text())
    (other / "slots.toml").write_text((ws / "slots.toml").read_text())
    assert await resume(other, "--apply") == 2
    assert not (other / "from_a.py").exists()
    argv = ["run", "--workspace", str(ws), "--resume", "../../etc"]
    assert await asyncio.to_thread(main, argv) == 2


async def test_apply_diffs_undo_exactly_and_every_apply_keeps_its_own(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    (ws / "crlf.txt").write_bytes(b"one\r\ntwo\r\n")
    (ws / "plain.txt").write_text("old\n")
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "init")
    files = [
        {"path": "crlf.txt", "content": "one\r\nTWO\r\n"},
        {"path": "plain.txt", "content": "new, no final newline"},
        {"path": "fresh.txt", "content": "also none"},
    ]
    script(planner_and_worker, files)
    assert await run(ws, "--apply", "--out", str(ws / "out")) == 0
    assert (ws / "crlf.txt").read_bytes() == b"one\r\nTWO\r\n"  # CR kept end to end
    assert (ws / "out" / "crlf.txt").read_bytes() == b"one\r\nTWO\r\n"
    d = the_session(isolated_env)
    assert await resume(ws, "--apply", "--force") == 0  # nothing changes: a second record
    assert (d / "apply.diff").stat().st_size > 0 and (d / "apply-2.diff").exists()
    git(ws, "apply", "-R", str(d / "apply.diff"))
    assert (ws / "crlf.txt").read_bytes() == b"one\r\ntwo\r\n"
    assert (ws / "plain.txt").read_text() == "old\n"
    assert not (ws / "fresh.txt").exists()


async def test_apply_refuses_read_only_files_and_checks_everything_before_writing(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    (ws / "ro.txt").write_text("keep\n")
    (ws / "ro.txt").chmod(0o444)
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "init")
    files = [{"path": "a_first.py", "content": "A\n"}, {"path": "ro.txt", "content": "x\n"}]
    script(planner_and_worker, files)
    assert await run(ws, "--apply") == 2
    assert not (ws / "a_first.py").exists() and (ws / "ro.txt").read_text() == "keep\n"


async def test_the_fleets_key_never_reaches_a_model_through_the_check(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_KEY", "zq9-SECRETVALUE-777abc")
    text = (
        (ws / "slots.toml")
        .read_text()
        .replace("timeout_s = 5\n", 'timeout_s = 5\napi_key_env = "FLEET_KEY"\n')
    )
    (ws / "slots.toml").write_text(text)
    script(planner_and_worker, [{"path": "a.py", "content": "A\n"}])
    assert await run(ws, "--check", "env; echo a.py broken; exit 1") == 1
    d = the_session(isolated_env)
    for path in d.rglob("*"):
        if path.is_file():
            assert "SECRETVALUE" not in path.read_text(errors="replace"), path
    for srv in planner_and_worker.values():
        assert "SECRETVALUE" not in json.dumps([r["body"] for r in srv.requests])


async def test_a_check_that_leaves_a_background_child_is_judged_by_its_exit(
    ws: Path, planner_and_worker: dict[str, FakeOpenAIServer], isolated_env: Path
) -> None:
    script(planner_and_worker, [{"path": "a.py", "content": "A\n"}])
    assert (
        await run(ws, "--check", "sleep 30 & echo tests passed; exit 0", "--check-timeout", "20")
        == 0
    )
    d = the_session(isolated_env)
    (record,) = [json.loads(p.read_text()) for p in (d / "checks").glob("*.json")]
    assert record["passed"] is True and record["duration_s"] < 15
    assert "tests passed" in record["tail"]


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (("session.json", "workspace", {"files": True, "check": 5}), "workspace record"),
        (("session.json", "workspace", {"files": True, "check_timeout_s": -1}), "workspace record"),
        (("context.json", "files", [5, {"path": 7}]), "context record"),
        (("context.json", "budget", "x"), "context record"),
    ],
)
async def test_corrupt_workspace_records_are_one_line_exit_2_nothing_changed(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
    edit: tuple[str, str, Any],
    says: str,
) -> None:
    (ws / "a.py").write_text("A = 1\n")
    script(planner_and_worker, [{"path": "b.py", "content": "B\n"}])
    assert await run(ws, "--context", str(ws / "a.py"), "--out", str(ws / "out")) == 0
    d = the_session(isolated_env)
    name, key, value = edit
    record = json.loads((d / name).read_text())
    record[key] = value
    (d / name).write_text(json.dumps(record))
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert await resume(ws) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


async def test_context_before_the_task_and_an_unwritable_out_found_first(
    ws: Path,
    planner_and_worker: dict[str, FakeOpenAIServer],
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (ws / "a.py").write_text("A = 1\n")
    script(planner_and_worker, [])
    argv = ["run", "--workspace", str(ws), "--context", str(ws / "a.py"), "Add parse_iso"]
    assert await asyncio.to_thread(main, argv) == 0
    assert (the_session(isolated_env) / "task.md").read_text() == "Add parse_iso"
    # a mistyped path is never taken for the task
    argv = ["run", "--workspace", str(ws), "--context", str(ws / "a.py"), str(ws / "typo.py")]
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 2
    assert "no task given" in capsys.readouterr().err
    (ws / "afile").write_text("x")
    assert await run(ws, "--out", str(ws / "afile" / "out")) == 2
    assert "not a directory" in capsys.readouterr().err
