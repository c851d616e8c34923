"""Bad input people really give: one line on stderr, exit 2, no traceback, files untouched."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from familiar.cli.main import main

SLOTS = """
[slots.naughty]
url = "http://127.0.0.1:9/v1"
model = "m"
parallel = 2
[slots.kindergarten]
url = "http://127.0.0.1:9/v1"
model = "k"
parallel = 2
[slots.translator]
url = "http://127.0.0.1:9/v1"
model = "t"
parallel = 1
"""

PLAN = {
    "goal": "g",
    "decisions": [],
    "subtasks": [
        {
            "id": "s1",
            "title": "t",
            "instructions": "i",
            "acceptance": "",
            "depends_on": [],
            "difficulty": "easy",
        }
    ],
}


def workspace(tmp: Path, slots: str = SLOTS) -> Path:
    ws = tmp / "ws"
    ws.mkdir()
    (ws / "slots.toml").write_text(slots)
    (ws / "CLAUDE.md").write_text("# ws\n\nfamiliar: naughty x kindergarten x translator\n")
    return ws


def session(home: Path, sid: str = "s-1") -> Path:
    d = home / "sessions" / sid
    (d / "subtasks").mkdir(parents=True)
    (d / "task.md").write_text("Write a guide to the Frobnicator")
    (d / "config.json").write_text(json.dumps({"roles": "naughty x kindergarten"}))
    (d / "session.json").write_text(json.dumps({"id": sid, "status": "failed", "steps": {}}))
    (d / "plan.json").write_text(json.dumps(PLAN))
    (d / "subtasks" / "s1.json").write_text(json.dumps({"id": "s1", "status": "ok", "output": "x"}))
    return d


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else "dir"
    return out


# Each case: prepare (tmp_path, home) -> argv; the whole tmp tree must stay byte-identical.
Case = Callable[[Path, Path], list[str]]


def port_out_of_range(tmp: Path, home: Path) -> list[str]:
    ws = workspace(tmp, SLOTS.replace("127.0.0.1:9/", "127.0.0.1:99999/", 1))
    return ["config", "validate", "--workspace", str(ws)]


def claude_md_is_a_directory_use(tmp: Path, home: Path) -> list[str]:
    ws = workspace(tmp)
    (ws / "CLAUDE.md").unlink()
    (ws / "CLAUDE.md").mkdir()
    return ["config", "use", "standard", "--workspace", str(ws)]


def claude_md_is_a_directory_show(tmp: Path, home: Path) -> list[str]:
    ws = workspace(tmp)
    (ws / "CLAUDE.md").unlink()
    (ws / "CLAUDE.md").mkdir()
    return ["config", "show", "--workspace", str(ws)]


def state_dir_not_writable_run(tmp: Path, home: Path) -> list[str]:
    ws = workspace(tmp)
    (tmp / "blocker").write_text("a file where the state directory should be")
    os.environ["FAMILIAR_HOME"] = str(tmp / "blocker" / "home")
    return ["run", "--workspace", str(ws), "Write a guide to the Frobnicator"]


def state_dir_not_writable_translate(tmp: Path, home: Path) -> list[str]:
    ws = workspace(tmp)
    (ws / "a.md").write_text("# 見出し\n\n本文です。\n")
    (tmp / "blocker").write_text("a file where the state directory should be")
    os.environ["FAMILIAR_HOME"] = str(tmp / "blocker" / "home")
    return ["translate", "--workspace", str(ws), str(ws / "a.md"), "--to", "en", "--out", "o"]


def _resume(corrupt: Callable[[Path], None]) -> Case:
    def case(tmp: Path, home: Path) -> list[str]:
        ws = workspace(tmp)
        d = session(home)
        corrupt(d)
        return ["run", "--workspace", str(ws), "--resume", d.name]

    case.__name__ = corrupt.__name__
    return case


def plan_json_cut(d: Path) -> None:
    (d / "plan.json").write_text('{"goal": "g", "subta')


def plan_json_wrong_shape(d: Path) -> None:
    (d / "plan.json").write_text(json.dumps({"goal": "g", "subtasks": "none"}))


def subtask_json_not_utf8(d: Path) -> None:
    (d / "subtasks" / "s1.json").write_bytes(b'{"id": "s1", "output": "\xff\xfe"}')


def subtask_json_not_object(d: Path) -> None:
    (d / "subtasks" / "s1.json").write_text("[1, 2, 3]")


def session_json_garbage(d: Path) -> None:
    (d / "session.json").write_bytes(b"\x00\x01garbage")


def config_json_cut(d: Path) -> None:
    (d / "config.json").write_text('{"roles": ')


CASES: list[Case] = [
    port_out_of_range,
    claude_md_is_a_directory_use,
    claude_md_is_a_directory_show,
    state_dir_not_writable_run,
    state_dir_not_writable_translate,
    *(
        _resume(c)
        for c in (
            plan_json_cut,
            plan_json_wrong_shape,
            subtask_json_not_utf8,
            subtask_json_not_object,
            session_json_garbage,
            config_json_cut,
        )
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    case: Case,
    tmp_path: Path,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAMILIAR_HOME", os.environ["FAMILIAR_HOME"])  # restored after
    argv = case(tmp_path, isolated_env)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("familiar: error: "), err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_unwritable_claude_md_is_exit_2_and_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace(tmp_path)
    before = (ws / "CLAUDE.md").read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)  # what a read-only mount answers
    assert main(["config", "use", "minimal", "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and "Traceback" not in err
    assert (ws / "CLAUDE.md").read_bytes() == before
    assert sorted(p.name for p in ws.iterdir()) == ["CLAUDE.md", "slots.toml"]


def test_sessions_lists_an_unreadable_session_instead_of_crashing(
    tmp_path: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = workspace(tmp_path)
    good = session(isolated_env, "s-good")
    bad = session(isolated_env, "s-bad")
    (bad / "session.json").write_bytes(b'{"status": "do')
    assert main(["sessions", "--workspace", str(ws), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[good.name]["status"] == "failed"
    assert rows[bad.name]["status"] == "unreadable" and "corrupt" in rows[bad.name]["error"]
    assert main(["sessions", "--workspace", str(ws)]) == 0  # plain lines: not a terminal
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("s-bad\tunreadable\t") for line in lines)
    assert any(line.startswith("s-good\tfailed\t") for line in lines)


def test_config_validate_warns_when_one_deployment_has_two_caps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = workspace(tmp_path, SLOTS.replace('model = "k"', 'model = "m"'))
    assert main(["config", "validate", "--workspace", str(ws)]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err  # one deployment, both caps 2: nothing to warn about
    ws2 = tmp_path / "ws2"
    ws2.mkdir()
    (ws2 / "slots.toml").write_text(
        SLOTS.replace('model = "k"\nparallel = 2', 'model = "m"\nparallel = 5')
    )
    (ws2 / "CLAUDE.md").write_text("familiar: naughty x kindergarten\n")
    assert main(["config", "validate", "--workspace", str(ws2)]) == 0
    err = capsys.readouterr().err
    assert "naughty (parallel 2)" in err and "kindergarten (parallel 5)" in err


def test_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    ws = workspace(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "familiar", "config", "show", "--json", "--workspace", str(ws)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -0`: the reader is gone before familiar writes
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) in (0, 141), err  # 0 if it finished before noticing
    assert b"Traceback" not in err and b"error" not in err
