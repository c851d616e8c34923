"""Hostile inputs and faults through the whole command (issues 19 and 20): special files in
discovery, unusable chunk caches, long Retry-After, exit 2 leaving FAMILIAR_HOME alone,
secrets in every form, `familiar fleet`'s truth, `familiar health` on ledger seats, and a
killed telemetry replay against a receiver that dedupes like deploy/vector.toml."""

from __future__ import annotations

import asyncio
import base64
import ctypes
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from familiar.telemetry import Telemetry
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.fake_vector import FakeVector
from tests.support.scripts import ARTICLE

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
Result = tuple[int, str, str, float]  # exit code, stdout, stderr, seconds


def workspace(root: Path, url: str, *, parallel: int = 2, extra: str = "") -> Path:
    """A workspace: translator + naughty on one deployment (same URL and model)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{url}"\nmodel = "general-llm"\nruntime = "vllm"\n'
        f"parallel = {parallel}\ntimeout_s = 30\n{extra}"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "general-llm"\nruntime = "vllm"\n'
        f"parallel = {parallel}\n"
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return root


def sources(root: Path, n: int = 2) -> Path:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (src / f"a{i}.md").write_text(ARTICLE.replace("緑茶", f"緑茶{i}"), encoding="utf-8")
    return src


def preexec(confined: bool, umask: int | None) -> Callable[[], None] | None:
    """What the child runs before exec: the umask, and for root (``confined``) dropping
    the capabilities that override file permissions, so that mode bits hold for it too."""
    if not confined and umask is None:
        return None

    def pre() -> None:
        if umask is not None:
            os.umask(umask)
        if confined and os.getuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
                if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return pre


async def cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    drop: Sequence[str] = (),
    confined: bool = False,
    umask: int | None = None,
    limit: float = 60,
) -> Result:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for key in drop:
        full.pop(key, None)
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "familiar",
        *args,
        cwd=cwd,
        env=full,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec(confined, umask),
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - start


def rows(stdout: str) -> dict[str, dict[str, object]]:
    return {Path(str(r["path"])).name: r for r in json.loads(stdout)}


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err


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
    statuses = {r["status"] for r in json.loads(out)}
    assert statuses <= {"interrupted", "pending"} and "interrupted" in statuses


# -- issue 20.5: the chunk cache never fails a batch --------------------------------------


def cache_path(ws: Path) -> Path:
    return ws / ".home" / "cache" / "chunks.sqlite"


async def batch(ws: Path, confined: bool = False, umask: int | None = None) -> Result:
    env = {"FAMILIAR_HOME": str(ws / ".home"), "FAMILIAR_LEDGER_DIR": str(ws / ".ledger")}
    return await cli(
        "translate",
        "src",
        "--to",
        "en",
        "--out",
        "out",
        "--json",
        cwd=ws,
        env=env,
        confined=confined,
        umask=umask,
    )


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
        assert {r["status"] for r in json.loads(out)} == {"ok"}
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
    assert {r["status"] for r in json.loads(out)} == {"ok"}
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
    assert {r["status"] for r in json.loads(out)} == {"ok"}
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
    assert {r["status"] for r in json.loads(out)} == {"ok"}


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
    assert {r["status"] for r in json.loads(out)} == {"failed"}


async def test_a_retry_after_within_the_bound_is_waited_and_shown(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=1, extra="max_retry_after_s = 5\n")
        sources(ws, 1)
        srv.add_faults([{"kind": "status", "status": 429, "retry_after": 2}])
        code, out, err, took = await batch(ws)
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "Retry-After" in line]
    assert "waiting 2s as the server asked" in line
    assert took >= 2 and {r["status"] for r in json.loads(out)} == {"ok"}


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


# -- issue 19.6: every secret form masked -------------------------------------------------


async def test_url_credentials_never_show_even_in_their_basic_auth_form(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        url = srv.url.replace("http://", "http://alice:hunter2secret@")
        ws = workspace(tmp_path / "ws", url, parallel=1)
        sources(ws, 1)
        srv.add_faults([{"kind": "echo_key", "status": 401}] * 10)
        code, out, err, _ = await batch(ws)
        sent = [r["headers"].get("authorization", "") for r in srv.requests]
    assert code == 1
    basic = base64.b64encode(b"alice:hunter2secret").decode()
    assert any(basic in h for h in sent)  # the server really got Basic credentials
    written = [
        p.read_bytes().decode("utf-8", "replace")
        for p in ws.rglob("*")
        if p.is_file() and p.name != "slots.toml"  # the test's own file holds the URL
    ]
    for text in [out, err, *written]:
        assert "hunter2secret" not in text and basic not in text and basic.rstrip("=") not in text
    assert "401" in out


async def test_a_token_in_a_url_never_reaches_holder_records_or_fleet(tmp_path: Path) -> None:
    token = "s3cr3tT0kenValue"
    async with FakeOpenAIServer(latency_s=30, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=1)
        sources(ws, 1)
        env = {"FAMILIAR_HOME": str(ws / ".home")}
        # a path on the command line that names a token URL (its row says no such file)
        args = ("translate", "src", f"nats://{token}@10.0.0.1:4222", "--to", "en", "--out", "o")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "familiar",
            *args,
            cwd=ws,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while srv.stats["in_flight"] < 1:
                assert time.monotonic() < deadline and proc.returncode is None
                await asyncio.sleep(0.05)
            _, text, err1, _ = await cli("fleet", cwd=ws, env=env)
            _, js, err2, _ = await cli("fleet", "--json", cwd=ws, env=env)
            records = b"".join(p.read_bytes() for p in (tmp_path / "ledger").rglob("holders"))
        finally:
            proc.kill()
            await proc.wait()
    assert f"pid {proc.pid}" in text and "nats://10.0.0.1:4222" in text
    for shown in (text, js, err1, err2, records.decode("utf-8", "replace")):
        assert token not in shown


# -- issue 19.8: `familiar fleet` shows the truth -----------------------------------------

HOLD = """
import asyncio, sys
from familiar.ledger import HostLedger
async def main():
    cap, keep, take = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    async with HostLedger() as ledger:
        dep = ledger.deployment("d" * 20, "m @ http://gpu:8000", cap)
        leases = [await dep.acquire("interactive") for _ in range(take)]
        for lease in leases:
            if lease.seat != keep:
                await dep.release(lease)
        print([l.seat for l in leases if l.seat == keep], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


async def test_fleet_shows_every_holder_and_the_strictest_live_cap(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []
    # seats are taken from the top; each process keeps one: 3, then 1, then 0. The kernel
    # lists locks by owner in the order the owners came, so F_OFD_GETLK over all the seats
    # answers seat 3 first (the old scan went on from 4 and saw one holder of three)
    for cap, keep, take in ((5, 3, 4), (5, 1, 4), (4, 0, 2)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HOLD,
            str(cap),
            str(keep),
            str(take),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == f"[{keep}]".encode()
        procs.append(proc)
    try:
        ws = workspace(tmp_path / "ws", "http://127.0.0.1:9")
        code, out, err, _ = await cli("fleet", "--json", cwd=ws)
        code2, text, _, _ = await cli("fleet", cwd=ws)
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            await proc.wait()
    assert code == code2 == 0, err
    (dep,) = json.loads(out)["deployments"]
    assert {h["seat"]: h["pid"] for h in dep["holders"]} == {
        3: procs[0].pid,
        1: procs[1].pid,
        0: procs[2].pid,
    }
    assert dep["in_use"] == 3 and dep["cap"] == 4 and dep["caps_disagree"] is True
    assert dep["live_caps"] == [4, 5, 5]
    assert "in use 3/4" in text
    assert "live processes disagree on parallel (4, 5, 5): the strictest, 4, applies" in text


async def test_a_squatted_default_ledger_directory_is_passed_over(tmp_path: Path) -> None:
    squat_tmp = tmp_path / "tmp"
    squat = squat_tmp / f"familiar-{os.getuid()}"
    squat.mkdir(parents=True)
    if os.getuid() == 0:
        os.chown(squat, NOBODY, NOBODY)  # another user's directory
    else:
        squat.rmdir()
        squat.symlink_to(tmp_path)  # another user's symlink
    ws = workspace(tmp_path / "ws", "http://127.0.0.1:9")
    home = tmp_path / "user-home"
    home.mkdir()
    base = {"TMPDIR": str(squat_tmp), "HOME": str(home)}
    drop = ["FAMILIAR_LEDGER_DIR", "XDG_RUNTIME_DIR", "XDG_STATE_HOME"]
    code, out, err, _ = await cli("fleet", "--json", cwd=ws, env=base, drop=drop)
    assert code == 0, err
    assert json.loads(out)["ledger"]["where"] == str(home / ".local/state/familiar/ledger")
    # no usable home either: the next name in the temporary directory, never a dead end
    (tmp_path / "not-a-dir").write_text("")
    base["HOME"] = str(tmp_path / "not-a-dir")
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws2 = workspace(tmp_path / "ws2", srv.url)
        sources(ws2, 1)
        code, out, err, _ = await cli(
            "translate", "src", "--to", "en", "--out", "out", cwd=ws2, env=base, drop=drop
        )
        assert code == 0, err
        code, out, err, _ = await cli("fleet", "--json", cwd=ws2, env=base, drop=drop)
    assert code == 0, err
    assert json.loads(out)["ledger"]["where"] == f"{squat}-2"


# -- issue 19.5: `familiar health` takes seats --------------------------------------------


async def test_health_during_a_batch_holding_every_seat_never_exceeds_the_cap(
    tmp_path: Path,
) -> None:
    async with FakeOpenAIServer(latency_s=0.5, reply_mode="identity", model="general-llm") as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=2)
        sources(ws, 6)
        env = {"FAMILIAR_HOME": str(ws / ".home")}
        job = asyncio.create_task(
            cli("translate", "src", "--to", "en", "--out", "out", cwd=ws, env=env)
        )
        deadline = time.monotonic() + 30
        while srv.stats["in_flight"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        code, out, err, _ = await cli("health", "--json", "--timeout", "20", cwd=ws, env=env)
        bcode, _, berr, _ = await job
        probes = [
            r
            for r in srv.requests
            if r["body"].get("messages", [{}])[-1].get("content") == ("Reply with OK.")
        ]
    assert bcode == 0, berr
    assert code == 0, out + err
    assert srv.stats["max_in_flight"] == 2  # the batch's 2; the probe waited its turn
    assert len(probes) == 1  # two slot names, one deployment: one probe
    report = json.loads(out)
    assert [r["slot"] for r in report["slots"]] == ["naughty", "translator"] or [
        r["slot"] for r in report["slots"]
    ] == ["translator", "naughty"]
    assert all(r["ok"] for r in report["slots"])


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
