"""An agent session end to end on the embedded llama-server with Gemma 3 270M.

`naughty x kindergarten x translator`, all bound to the embedded slot (the shipped
slots file): the planner answers under JSON-schema constrained decoding, code routes
hard work to naughty and easy work to kindergarten, and every answer familiar keeps was
finished, non-empty and not a copy of a prompt's example. The tiny base model may fail
the work; then the session must say so, with the reasons recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from familiar import copycheck
from familiar.cli.main import main
from familiar.session.prompts import load_prompt

pytestmark = pytest.mark.e2e

TASK = "Write a short guide to brewing green tea: the steps, and the common mistakes."


def test_session_on_embedded_gemma(
    tmp_path: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "CLAUDE.md").write_text("familiar: naughty x kindergarten x translator\n")
    # A workspace role file overrides the shipped one: the planner (naughty, as grandpa
    # is off) decodes greedily, so the plan is reproducible for this pinned model.
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / "naughty.toml").write_text(
        '[role]\nname = "naughty"\nkind = "worker"\nprompt = "naughty.md"\n'
        'default_slot = "naughty"\n[sampling]\ntemperature = 0.0\nmax_tokens = 512\n'
    )
    code = main(["run", "--workspace", str(tmp_path), TASK, "--json"])
    captured = capsys.readouterr()
    # A 270M base model often cannot do the work: familiar must then say so (exit 1, the
    # reasons recorded), never pass a cut, empty or copied answer off as done.
    assert code in (0, 1), captured.err
    assert "Traceback" not in captured.err
    (d,) = (isolated_env / "sessions").iterdir()
    for name in ("task.md", "config.json", "plan.json", "session.json"):
        assert (d / name).is_file(), name
    state = json.loads((d / "session.json").read_text())
    assert state["planner"] == "naughty"
    plan = json.loads((d / "plan.json").read_text())
    if plan["fallback"]:  # constrained decoding gives a valid plan; only a copy is refused
        assert "copies the prompt's example" in state["steps"]["plan"]["fallback_reason"]
    examples = [
        snippet
        for prompt in ("plan.md", "worker_task.md", "integrate.md", "naughty.md", "kindergarten.md")
        for snippet in load_prompt(tmp_path, prompt).examples
    ]
    done = {}
    skipped = {k for k, v in state.get("failed", {}).items() if v.startswith("skipped")}
    for s in plan["subtasks"]:
        if s["id"] not in skipped:  # every subtask that ran has its prompt on disk
            assert (d / "subtasks" / f"{s['id']}.prompt.md").read_text().strip()
        path = d / "subtasks" / f"{s['id']}.json"
        if path.exists():
            r = json.loads(path.read_text())
            assert r["status"] == "ok" and r["output"].strip() and r["finish_reason"] == "stop"
            assert copycheck.copied(r["output"], examples, allowed=TASK) is None
            # routing is code: the preferred role follows the plan's difficulty
            assert r["preferred_role"] == (
                "naughty" if s["difficulty"] == "hard" else "kindergarten"
            )
            assert r["role"] in ("naughty", "kindergarten")
            done[s["id"]] = r
    if code == 0:
        out = json.loads(captured.out)
        assert out["status"] == "done" == state["status"] and out["result"].strip()
        assert len(done) == len(plan["subtasks"])
        assert (d / "final.md").read_text() == out["result"]
        assert copycheck.copied(out["result"], examples, allowed=TASK) is None
        assert (d / "integration.json").is_file()
    else:
        assert state["status"] == "failed" and not (d / "final.md").exists()
        for sid, reason in state["failed"].items():
            assert sid not in done
            assert reason.startswith(("AnswerRejected", "BackendProtocolError", "skipped"))
            if reason.startswith("AnswerRejected"):
                assert (d / "subtasks" / f"{sid}.rejected.json").is_file()
    # the ephemeral server was stopped: nothing left listening for this home
    assert not (isolated_env / "local" / "server.json").exists()
    ps = subprocess.run(
        ["pgrep", "-f", f"llama-server.*{isolated_env}"], capture_output=True, check=False
    )
    assert ps.stdout == b""


def test_local_status_prints_the_address(tmp_path: Path) -> None:
    up = subprocess.run(
        [sys.executable, "-m", "familiar", "local", "up", "--workspace", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert up.returncode == 0, up.stderr
        st = subprocess.run(
            [sys.executable, "-m", "familiar", "local", "status", "--workspace", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert st.returncode == 0
        assert st.stdout.startswith("127.0.0.1:") and "seats 4" in st.stdout
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "familiar", "local", "down", "--workspace", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert down.stdout.strip() == "stopped"
    after = subprocess.run(
        [sys.executable, "-m", "familiar", "local", "status", "--workspace", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert after.returncode == 1 and after.stdout.strip() == "not running"
