"""An agent session end to end on the embedded llama-server with Gemma 3 270M.

`naughty x kindergarten x translator`, all bound to the embedded slot (the shipped
slots file): the planner answers under JSON-schema constrained decoding, code routes
hard work to naughty and easy work to kindergarten, the session directory is complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from familiar.cli import main

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
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["status"] == "done" and out["result"].strip()
    d = Path(out["directory"])
    assert d.parent == isolated_env / "sessions"
    for name in (
        "task.md",
        "config.json",
        "plan.json",
        "integration.json",
        "final.md",
        "session.json",
    ):
        assert (d / name).is_file(), name
    plan = json.loads((d / "plan.json").read_text())
    assert not plan["fallback"], "constrained decoding should give a valid plan"
    ids = [s["id"] for s in plan["subtasks"]]
    records = [json.loads((d / "subtasks" / f"{i}.json").read_text()) for i in ids]
    for i in ids:
        assert (d / "subtasks" / f"{i}.prompt.md").read_text().strip()
    assert all(r["status"] == "ok" for r in records)
    assert {r["role"] for r in records} == {"naughty", "kindergarten"}, records
    # routing is code: a subtask ran on its preferred role unless that pool was busy
    for s, r in zip(plan["subtasks"], records, strict=True):
        assert r["preferred_role"] == ("naughty" if s["difficulty"] == "hard" else "kindergarten")
    state = json.loads((d / "session.json").read_text())
    assert state["status"] == "done" and state["planner"] == "naughty"
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
