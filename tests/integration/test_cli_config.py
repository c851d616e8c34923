"""``familiar config show | use | validate`` as a user runs them (a real process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLAUDE = (
    "# Project\r\n\r\nSome notes.\r\nfamiliar: minimal\r\n\r\n```\r\nfamiliar: full\r\n```\r\ntail"
)


def familiar(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "familiar", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )


def test_use_rewrites_only_the_role_line_and_show_reads_it(tmp_path: Path) -> None:
    md = tmp_path / "CLAUDE.md"
    md.write_bytes(CLAUDE.encode())
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)
    done = familiar("config", "use", "Naughty \u00d7 KINDERGARTEN x translator", cwd=sub)
    assert done.returncode == 0, done.stderr
    assert (
        md.read_bytes()
        == CLAUDE.replace(
            "familiar: minimal", "familiar: naughty x kindergarten x translator"
        ).encode()
    )
    shown = familiar("config", "show", "--json", cwd=sub)
    info = json.loads(shown.stdout)
    assert info["roles"] == "naughty x kindergarten x translator"
    assert info["source"] == "CLAUDE.md"
    assert [a["role"] for a in info["assignments"]] == ["naughty", "kindergarten", "translator"]
    assert familiar("config", "validate", cwd=sub).returncode == 0


def test_bad_string_exits_2_with_one_line_and_touches_nothing(tmp_path: Path) -> None:
    md = tmp_path / "CLAUDE.md"
    md.write_bytes(CLAUDE.encode())
    for bad in ("naughty x x translator", "grandpa x translator", "naugty", ""):
        done = familiar("config", "use", bad, cwd=tmp_path)
        assert done.returncode == 2, bad
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert md.read_bytes() == CLAUDE.encode()
    unknown_slot = familiar("config", "use", "naughty@gpu9", cwd=tmp_path)
    assert unknown_slot.returncode == 2 and "gpu9" in unknown_slot.stderr
    assert md.read_bytes() == CLAUDE.encode()


def test_use_adds_the_line_when_missing_and_help_is_clear(tmp_path: Path) -> None:
    (tmp_path / "CLAUDE.md").write_text("# Notes\n")
    assert familiar("config", "use", "full", cwd=tmp_path).returncode == 0
    assert (tmp_path / "CLAUDE.md").read_text() == (
        "# Notes\nfamiliar: grandpa x naughty x kindergarten x translator\n"
    )
    helptext = familiar("--help", cwd=tmp_path).stdout
    for command in ("config", "run", "sessions", "translate", "local", "telemetry"):
        assert command in helptext
    assert familiar("bogus", cwd=tmp_path).returncode == 2
