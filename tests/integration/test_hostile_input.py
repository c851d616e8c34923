"""Hostile inputs through the whole command (issue 20): special files in discovery,
SIGTERM/Ctrl-C within a second, unusable chunk caches, long Retry-After, exit 2 leaving
FAMILIAR_HOME alone, and a killed telemetry replay against a receiver that dedupes like
deploy/vector.toml."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from familiar.telemetry import Telemetry
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.fake_vector import FakeVector
from tests.support.hostile import (
    REPO,
    batch,
    cli,
    no_traceback,
    rows,
    sources,
    workspace,
)
from tests.support.scripts import ARTICLE, report_rows

# -- issue 20.1: discovery takes regular files only ---------------------------------------


async def test_fifo_socket_symlink_loop_and_dangling_link_are_error_rows(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = sources(ws)
        os.mkfifo(src / "f.md")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(src / "s.md"))
        (src / "loop.md").symlink_to("loop.md")
        (src / "gone.md").symlink_to("nowhere.md")
        (ws / "direct.md").symlink_to("direct.md")  # a loop given on the command line
        try:
            code, out, err, took = await cli(
                "translate", "src", "direct.md", "--to", "en", "--out", "out", "--json", cwd=ws
            )
        finally:
            sock.close()
    no_traceback(err)
    assert code == 1, err
    got = rows(out)
    assert got["a0.md"]["status"] == got["a1.md"]["status"] == "ok"
    assert got["f.md"]["error"] == "not a regular file (a FIFO)"
    assert got["s.md"]["error"] == "not a regular file (a socket)"
    assert got["loop.md"]["error"] == got["direct.md"]["error"] == "symlink loop"
    assert got["gone.md"]["error"] == "dangling symlink"
    assert sorted(p.name for p in (ws / "out").iterdir()) == ["a0.md", "a1.md"]
    assert took < 30


async def test_only_a_fifo_is_one_error_row_exit_1_and_nothing_written(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", "http://127.0.0.1:9")
    os.mkfifo(ws / "f.md")
    home = tmp_path / "home"
    code, out, err, took = await cli("translate", "f.md", "--to", "en", cwd=ws)
    no_traceback(err)
    assert code == 1
    (line,) = out.strip().splitlines()
    assert line.startswith("f.md\terror\t") and line.endswith("not a regular file (a FIFO)")
    assert not home.exists() and took < 10


async def test_an_unreadable_directory_is_an_error_row_and_the_rest_is_translated(
    tmp_path: Path,
) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        src = sources(ws)
        locked = src / "locked"
        locked.mkdir()
        (locked / "hidden.md").write_text(ARTICLE, encoding="utf-8")
        locked.chmod(0)
        try:
            code, out, err, _ = await cli(
                "translate", "src", "--to", "en", "--out", "out", "--json", cwd=ws, confined=True
            )
        finally:
            locked.chmod(0o755)
    no_traceback(err)
    assert code == 1, err
    got = rows(out)
    assert got["locked"]["status"] == "error"
    assert got["locked"]["error"] == "cannot list directory: Permission denied"
    assert got["a0.md"]["status"] == got["a1.md"]["status"] == "ok"


@pytest.mark.parametrize("vector", ["off", "hanging"])
@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_sigterm_and_ctrl_c_end_a_batch_within_a_second(
    tmp_path: Path, sig: signal.Signals, expected: int, vector: str
) -> None:
    """Also with telemetry on and a receiver that takes connections and never answers."""

    held: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()
        writer.close()

    sink = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = sink.sockets[0].getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if vector == "hanging":
        env["FAMILIAR_TELEMETRY"] = "on"
        env["FAMILIAR_TELEMETRY_URL"] = f"http://127.0.0.1:{port}/telemetry"
    async with sink, FakeOpenAIServer(latency_s=60, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        sources(ws, 4)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "familiar",
            "translate",
            "src",
            "--to",
            "en",
            "--out",
            "out",
            "--json",
            cwd=ws,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while srv.stats["in_flight"] < 2:
            assert time.monotonic() < deadline and proc.returncode is None
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # the telemetry sender is stuck in a POST by now
        proc.send_signal(sig)
        sent = time.monotonic()
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        took = time.monotonic() - sent
        for writer in held:
            writer.close()
            await writer.wait_closed()
    no_traceback(err.decode())
    assert proc.returncode == expected, err
    assert took < 1.0, took
    statuses = {r["status"] for r in report_rows(out)}
    assert statuses <= {"interrupted", "pending"} and "interrupted" in statuses


# -- issue 20.5: the chunk cache never fails a batch --------------------------------------


def cache_path(ws: Path) -> Path:
    return ws / ".home" / "cache" / "chunks.sqlite"


def cache_warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "chunk cache" in line]


async def test_a_cache_table_without_its_output_column_is_set_aside(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        sources(ws)
        cache_path(ws).parent.mkdir(parents=True)
        db = sqlite3.connect(cache_path(ws))
        db.execute("CREATE TABLE chunks_v2 (key TEXT PRIMARY KEY, model TEXT)")
        db.commit()
        db.close()
        code, out, err, _ = await batch(ws)
        no_traceback(err)
        assert code == 0, err
        assert len(cache_warnings(err)) == 1 and "set aside" in err
        assert {r["status"] for r in report_rows(out)} == {"ok"}
        asked = srv.stats["requests"]
        code, _, err, _ = await batch(ws)  # the fresh cache serves the rerun
        assert code == 0 and not cache_warnings(err) and srv.stats["requests"] == asked
    assert list(cache_path(ws).parent.glob("chunks.sqlite.corrupt-*"))


async def test_a_cache_path_that_is_a_directory_runs_without_a_cache(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        sources(ws)
        cache_path(ws).mkdir(parents=True)
        code, out, err, _ = await batch(ws)
    no_traceback(err)
    assert code == 0, err
    (line,) = cache_warnings(err)
    assert "is a directory" in line and "going on without it" in line
    assert {r["status"] for r in report_rows(out)} == {"ok"}
    assert cache_path(ws).is_dir()  # the user's directory is left alone


async def test_a_cache_locked_too_long_runs_without_a_cache(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        sources(ws)
        cache_path(ws).parent.mkdir(parents=True)
        holder = sqlite3.connect(cache_path(ws), isolation_level=None)
        holder.execute("PRAGMA journal_mode=DELETE")
        holder.execute("BEGIN EXCLUSIVE")
        try:
            code, out, err, took = await batch(ws)
        finally:
            holder.close()
    no_traceback(err)
    assert code == 0, err
    (line,) = cache_warnings(err)
    assert "locked" in line
    assert {r["status"] for r in report_rows(out)} == {"ok"}
    assert took < 20


async def test_a_read_only_cache_directory_runs_without_a_cache(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        sources(ws)
        cache_path(ws).parent.mkdir(parents=True)
        cache_path(ws).parent.chmod(0o555)
        try:
            code, out, err, _ = await batch(ws, confined=True)
        finally:
            cache_path(ws).parent.chmod(0o755)
    no_traceback(err)
    assert code == 0, err
    assert len(cache_warnings(err)) == 1
    assert {r["status"] for r in report_rows(out)} == {"ok"}


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o000, 0o666), (0o077, 0o600)])
async def test_the_cache_file_gets_the_umasks_mode(tmp_path: Path, umask: int, mode: int) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url)
        sources(ws)
        code, _, err, _ = await batch(ws, umask=umask)
    assert code == 0, err
    assert cache_path(ws).stat().st_mode & 0o777 == mode


# -- issue 20.6: Retry-After up to max_retry_after_s --------------------------------------


async def test_a_retry_after_past_the_bound_is_one_warning_and_a_failed_attempt(
    tmp_path: Path,
) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=1)
        sources(ws, 1)
        srv.add_faults([{"kind": "status", "status": 429, "retry_after": 3600}] * 40)
        code, out, err, took = await batch(ws)
    no_traceback(err)
    assert code == 1
    lines = [line for line in err.splitlines() if "Retry-After" in line]
    assert len(lines) == 1 and "3600s" in lines[0] and "max_retry_after_s=120" in lines[0]
    assert took < 30  # not an hour, not even 120 s
    assert {r["status"] for r in report_rows(out)} == {"failed"}


async def test_a_retry_after_within_the_bound_is_waited_and_shown(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=1, extra="max_retry_after_s = 5\n")
        sources(ws, 1)
        srv.add_faults([{"kind": "status", "status": 429, "retry_after": 2}])
        code, out, err, took = await batch(ws)
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "Retry-After" in line]
    assert "waiting 2s as the server asked" in line
    assert took >= 2 and {r["status"] for r in report_rows(out)} == {"ok"}


# -- issue 20.9: a usage error creates nothing under FAMILIAR_HOME ------------------------


@pytest.mark.parametrize(
    ("env", "slot_extra", "expected"),
    [
        ({"FAMILIAR_NATS_URL": "http://x"}, "", "FAMILIAR_NATS_URL"),
        ({"K": "sk-abcdef123456\n"}, 'api_key_env = "K"\n', "surrounding whitespace"),
        ({"K": " sk-abcdef123456"}, 'api_key_env = "K"\n', "surrounding whitespace"),
    ],
)
async def test_a_usage_error_is_exit_2_one_line_and_creates_nothing(
    tmp_path: Path, env: dict[str, str], slot_extra: str, expected: str
) -> None:
    ws = workspace(tmp_path / "ws", "http://127.0.0.1:9", extra=slot_extra)
    sources(ws, 1)
    home = ws / ".home"
    code, out, err, _ = await cli(
        "translate", "src", "--to", "en", cwd=ws, env={**env, "FAMILIAR_HOME": str(home)}
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert "sk-abcdef123456" not in err
    assert not home.exists() and not (ws / "translated-en").exists()


async def test_userinfo_in_an_llm_url_with_api_key_env_is_a_usage_error(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "slots.toml").write_text(
        '[slots.translator]\nurl = "http://alice:hunter2secret@127.0.0.1:9/v1"\n'
        'model = "m"\napi_key_env = "K"\n'
    )
    (ws / "CLAUDE.md").write_text("familiar: translator\n")
    sources(ws, 1)
    code, out, err, _ = await cli("translate", "src", "--to", "en", cwd=ws, env={"K": "sk-x"})
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "carries credentials" in line and "api_key_env" in line
    assert "hunter2secret" not in line and "alice" not in line


# -- issue 20.8: a killed telemetry replay never repeats past the dedupe window -----------


def vector_window() -> int:
    config = tomllib.loads((REPO / "deploy" / "vector.toml").read_text(encoding="utf-8"))
    return int(config["transforms"]["familiar_dedupe"]["cache"]["num_events"])


def test_the_replay_batch_is_far_inside_vectors_dedupe_window(tmp_path: Path) -> None:
    from familiar.telemetry.spill import REPLAY_BATCH_MAX

    assert Telemetry(tmp_path).batch_size <= REPLAY_BATCH_MAX
    assert REPLAY_BATCH_MAX * 10 <= vector_window()


async def test_sigkilled_replays_never_repeat_past_the_dedupe_window(tmp_path: Path) -> None:
    window = vector_window()
    n = 12_000
    spill = tmp_path / "home" / "telemetry" / "spill.jsonl"
    spill.parent.mkdir(parents=True)
    ids = [f"{i:032x}" for i in range(n)]
    spill.write_text(
        "".join(
            json.dumps({"event_id": e, "event": "test.event", "i": i}) + "\n"
            for i, e in enumerate(ids)
        )
    )
    rng = random.Random(20)
    kills = 0
    async with FakeVector(dedupe=window, delay_s=0.01) as vector:
        env = {**os.environ, "PYTHONPATH": str(REPO), "FAMILIAR_TELEMETRY_URL": vector.url}
        for _ in range(40):
            if not spill.exists():
                break
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "familiar",
                "telemetry",
                "flush",
                cwd=tmp_path,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            before = len(vector.arrivals)
            deadline = time.monotonic() + 20
            while len(vector.arrivals) == before and proc.returncode is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            if proc.returncode is None:
                proc.kill()
                kills += 1
            await proc.wait()
        code, _, err, _ = await cli("telemetry", "flush", cwd=tmp_path, env=env)
        assert code == 0, err
    assert kills >= 5
    stored = [e["event_id"] for e in vector.events]
    assert sorted(stored) == ids  # every event once after the dedupe
    last: dict[str, int] = {}
    farthest = 0
    for pos, key in enumerate(vector.arrivals):
        if key in last:
            farthest = max(farthest, pos - last[key])
        last[key] = pos
    assert farthest <= 200 < window  # a repeat is at most one replay batch back
    print(
        f"kills={kills} arrivals={len(vector.arrivals)} repeats={vector.deduplicated}"
        f" farthest={farthest}"
    )


# -- found attacking the above: a loop as --out, a FIFO as --glossary ------------------


@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        (lambda ws: (ws / "loopd").symlink_to("loopd"), ("--out", "loopd"), "loopd: symlink loop"),
        (
            lambda ws: ((ws / "o").mkdir(), (ws / "o" / "a0.md").symlink_to("a0.md")),
            ("--out", "o"),
            "a0.md: symlink loop",
        ),
        (
            lambda ws: os.mkfifo(ws / "g.toml"),
            ("--glossary", "g.toml"),
            "--glossary g.toml: not a regular file (a FIFO)",
        ),
    ],
)
async def test_a_loop_as_output_or_a_fifo_as_glossary_is_exit_2_at_once(
    tmp_path: Path, setup: Callable[[Path], object], args: tuple[str, ...], expected: str
) -> None:
    ws = workspace(tmp_path / "ws", "http://127.0.0.1:9")
    sources(ws, 1)
    setup(ws)
    code, out, err, took = await cli("translate", "src", "--to", "en", *args, cwd=ws, limit=20)
    assert code == 2 and out == "", err
    (line,) = err.strip().splitlines()
    assert expected in line
    assert not (tmp_path / "home").exists() and took < 15
