"""Nothing cut (issue 27 item 3): every listing command with its stdout a pipe prints
every value whole, on one line, and says its totals (on stderr, so stdout stays one line
per row for scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LONG_URL = "http://127.0.0.1:9/" + "a-rather-long-gateway-path/" * 6 + "v1"
LONG_MODEL = "org/" + "a-model-with-a-very-long-name-" * 4 + "q4_k_m"
LONG_DIR = "articles-" + "with-a-very-long-folder-name-" * 5


def familiar(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "FAMILIAR_HOME": str(ws / "home"),
        "FAMILIAR_LEDGER_DIR": str(ws / "ledger"),
        "FAMILIAR_TELEMETRY": "off",
        "COLUMNS": "80",
    }
    return subprocess.run(
        [sys.executable, "-m", "familiar", *args, "--workspace", str(ws)],
        cwd=ws,
        capture_output=True,  # stdout a pipe: no terminal
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{LONG_URL}"\nmodel = "{LONG_MODEL}"\nparallel = 1\n'
        "timeout_s = 2\nconnect_timeout_s = 1\n"
    )
    (tmp_path / "CLAUDE.md").write_text("familiar: translator\n")
    bench = tmp_path / "home" / "bench"
    bench.mkdir(parents=True)
    level = {
        "concurrency": 1, "ok": 2, "failed": 0, "duration_s": 1.0, "output_tokens": 8,
        "ttft_ms": {"mean": 1, "p50": 1, "p99": 1}, "tpot_ms": {"mean": 1, "p50": 1, "p99": 1},
        "itl_ms": {"mean": 1, "p50": 1, "p99": 1}, "e2e_ms": {"mean": 1, "p50": 1, "p99": 1},
    }  # fmt: skip
    run = {
        "id": "20261207T170000Z-translator-abcd",
        "slot": "translator",
        "model": LONG_MODEL,
        "started_at": "2026-12-07T17:00:00Z",
        "settings": {"input_tokens": 8, "output_tokens": 4, "repeat": 1},
        "server": {"server_parallel": 4},
        "levels": [level],
        "suggested_parallel": 1,
    }
    (bench / f"{run['id']}.json").write_text(json.dumps(run))
    return tmp_path


def lines_with(text: str, value: str) -> list[str]:
    return [line for line in text.splitlines() if value in line]


def assert_nothing_cut(done: subprocess.CompletedProcess[str]) -> None:
    assert "…" not in done.stdout and "..." not in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr


def test_config_show_prints_whole_urls_and_models(ws: Path) -> None:
    done = familiar(ws, "config", "show")
    assert done.returncode == 0, done.stderr
    assert_nothing_cut(done)
    (row,) = lines_with(done.stdout, LONG_URL)
    assert row.split("\t") == ["translator", "translator", LONG_URL, LONG_MODEL, "openai", "1"]
    assert done.stdout.splitlines()[3].split("\t")[:3] == ["role", "slot", "url"]
    assert "familiar: 1 role(s) on 1 slot(s)" in done.stderr


def test_health_prints_the_whole_url_and_error(ws: Path) -> None:
    done = familiar(ws, "health", "--timeout", "2")
    assert done.returncode == 1, done.stderr
    assert_nothing_cut(done)
    assert lines_with(done.stdout, LONG_URL)  # the row, and its note with the error
    assert "1 replica(s) of 1 slot(s): 0 ok, 1 down" in done.stdout


def test_translate_report_prints_whole_paths(ws: Path) -> None:
    missing = ws / LONG_DIR / "an-article-that-is-not-there.md"
    here = ws / "a.md"
    here.write_text("")  # empty: an error row of its own
    done = familiar(ws, "translate", str(missing), str(here), "--to", "en")
    assert done.returncode == 1, done.stderr
    assert_nothing_cut(done)
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert {r[0] for r in rows} == {str(missing), str(here)} and len(rows) == 2
    assert [r[-1] for r in rows if r[0] == str(missing)] == ["no such file"]
    assert "2 articles (2 error)" in done.stderr


def test_bench_list_and_fleet_print_whole_values_and_totals(ws: Path) -> None:
    done = familiar(ws, "bench", "--list")
    assert done.returncode == 0, done.stderr
    assert_nothing_cut(done)
    (row,) = lines_with(done.stdout, LONG_MODEL)
    assert "20261207T170000Z-translator-abcd" in row and "1 (server 4)" in row
    assert "1 saved run in" in done.stdout
    fleet = familiar(ws, "fleet")
    assert fleet.returncode == 0, fleet.stderr
    assert_nothing_cut(fleet)
    assert "0 deployment(s)" in fleet.stdout or "no deployment" in fleet.stdout
    sessions = familiar(ws, "sessions")
    assert sessions.returncode == 0 and "Traceback" not in sessions.stderr
