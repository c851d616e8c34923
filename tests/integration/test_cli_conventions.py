"""Command-line conventions against real processes and a real receiver.

``--json`` prints JSON (and only JSON) on stdout for every command that offers it, whatever
the outcome; global options work after the command; ``--version`` and ``--help`` do not
import the HTTP stack (measured in a fresh interpreter, where nothing else imported it).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import familiar
from familiar.cli.main import main
from tests.support.fake_vector import FakeVector

REPO = Path(__file__).resolve().parents[2]

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("openai", "httpx", "httpx2", "aiohttp", "pydantic", "structlog", "rich", "tenacity")
SLOTS = """
[slots.naughty]
url = "http://127.0.0.1:9/v1"
model = "m"
parallel = 2
[slots.translator]
url = "http://127.0.0.1:9/v1"
model = "t"
parallel = 1
"""


@pytest.fixture(autouse=True)
def keep_logging_config() -> Iterator[None]:
    """main() sets structlog up for the whole process: put it back."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def imported_by(code: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter has loaded after running ``code``."""
    probe = (
        "import io, sys, contextlib\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    {code}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().replace("'", '"'))
    return loaded


def test_import_familiar_loads_none_of_the_heavy_packages() -> None:
    assert imported_by("import familiar; familiar.__version__") == []


def test_version_loads_none_of_the_heavy_packages() -> None:
    assert imported_by("from familiar.cli.main import main; main(['--version'])") == []


def test_help_does_not_load_the_http_stack_or_the_logger() -> None:
    loaded = imported_by("from familiar.cli.main import main; main(['--help'])")
    heavy = {"openai", "httpx", "httpx2", "aiohttp", "structlog", "rich", "tenacity"}
    assert not heavy & set(loaded)


def test_a_public_name_still_imports_on_first_use() -> None:
    assert "httpx2" in imported_by("from familiar import SlotClient")  # the HTTP stack


def test_python_m_familiar_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "familiar", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"familiar {familiar.__version__}\n",
        "",
    )


# --- --json -----------------------------------------------------------------------------------


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "slots.toml").write_text(SLOTS)
    (ws / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return ws


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)  # the whole of stdout is one JSON document


def test_config_show_json(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, info = run_json(capsys, "config", "show", "--workspace", str(ws), "--json")
    assert code == 0 and info["roles"] == "naughty x translator"


def test_local_status_json_when_stopped(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, info = run_json(capsys, "local", "status", "--workspace", str(ws), "--json")
    assert (code, info) == (1, {"running": False})
    assert main(["local", "status", "--workspace", str(ws)]) == 1
    assert capsys.readouterr().out == "not running\n"


def test_sessions_and_fleet_json(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, "sessions", "--workspace", str(ws), "--json") == (0, [])
    code, fleet = run_json(capsys, "fleet", "--workspace", str(ws), "--json")
    assert code == 0 and fleet["ledger"]["kind"] and isinstance(fleet["deployments"], list)


def spill(home: Path, events: int) -> None:
    (home / "telemetry").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"event_id": f"e{n}", "event": "chunk.finished"}) for n in range(events)]
    (home / "telemetry" / "spill.jsonl").write_text("\n".join([*lines, "not json"]) + "\n")


def test_telemetry_json_when_vector_is_away(
    ws: Path,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAMILIAR_TELEMETRY_URL", "http://127.0.0.1:9/telemetry")  # refused
    spill(isolated_env, 3)
    code, flushed = run_json(capsys, "telemetry", "flush", "--workspace", str(ws), "--json")
    assert code == 1 and flushed["replayed"] == 0 and flushed["backlog"] == 3
    code, status = run_json(capsys, "telemetry", "status", "--workspace", str(ws), "--json")
    assert code == 0 and status["backlog"] == 3 and status["url"].endswith(":9/telemetry")


async def test_telemetry_flush_json_replays_to_a_receiver(
    ws: Path,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spill(isolated_env, 5)
    async with FakeVector() as vector:
        monkeypatch.setenv("FAMILIAR_TELEMETRY_URL", vector.url)
        argv = ["telemetry", "flush", "--workspace", str(ws), "--json", "-q"]  # -q after it too
        code = await asyncio.to_thread(main, argv)
        out, err = capsys.readouterr()
        assert (code, json.loads(out)) == (0, {"url": vector.url, "replayed": 5, "backlog": 0})
        assert err == ""  # -q: the warning about the corrupt line is not shown
        assert [e["event_id"] for e in vector.events] == [f"e{n}" for n in range(5)]


@pytest.mark.parametrize("action", ["status", "flush"])
def test_telemetry_never_prints_the_receivers_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    action: str,
) -> None:
    monkeypatch.setenv("FAMILIAR_TELEMETRY_URL", "http://familiar:hunter2secret@127.0.0.1:9/t")
    main(["telemetry", action, "--workspace", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    assert "hunter2secret" not in out
    assert json.loads(out)["url"] == "http://127.0.0.1:9/t"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["trnslate", "x"], "did you mean 'translate'?"),
        (["sesions"], "did you mean 'sessions'?"),
        (["config", "shw"], "did you mean 'show'?"),
    ],
)
def test_a_mistyped_command_gets_a_did_you_mean(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_complete_commands(shell: str, tmp_path: Path) -> None:
    script = subprocess.run(
        [sys.executable, "-m", "familiar", "completion", shell],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert "familiar" in script and "_ARGCOMPLETE" in script
    # what the script asks of familiar: completions for "familiar tr"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": "familiar tr",
        "COMP_POINT": "11",
    }
    asked = subprocess.run(
        ["sh", "-c", f"{sys.executable} -m familiar 8>&1 9>/dev/null"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert asked.stdout.split() == ["translate"]
