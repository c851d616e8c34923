"""Telemetry cost: the same run with telemetry off, on (receiver up), on (receiver down).

N chat calls at concurrency C through SlotClient against the zero-latency fake server
(own process); with telemetry on, every HTTP attempt emits an ``llm.call`` event that
the sender batches to a Vector-like receiver (own process). Runs are interleaved and
the median is reported. Target: on >= 0.98x off.

    python benchmarks/telemetry.py [--calls 1000] [--concurrency 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

from familiar.client.backend import SlotClient
from familiar.config.slots import Slot
from familiar.telemetry import Telemetry
from tests.support.fake_openai import spawn_fake_server

MSG = [{"role": "user", "content": "x"}]
RECEIVER = """
import asyncio, sys
from tests.support.fake_vector import FakeVector
async def main():
    async with FakeVector(port=int(sys.argv[1])) as v:
        print("LISTENING", flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(url: str, calls: int, conc: int, telemetry: Telemetry | None) -> float:
    slot = Slot(name="bench", url=url, model="m", parallel=conc)
    hooks = [telemetry.hook] if telemetry else []
    async with SlotClient(slot, hooks=hooks) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client.chat(MSG, role="naughty") for _ in range(calls)))
        return time.perf_counter() - start


async def one(
    mode: str, url: str, vector_url: str, home: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """Work time, and the time to close telemetry afterwards (flush or spill)."""
    if mode == "off":
        return await run(url, args.calls, args.concurrency, None), 0.0
    target = vector_url if mode == "on" else f"http://127.0.0.1:{free_port()}/telemetry"
    telemetry = Telemetry(home, url=target, enabled=True)
    async with telemetry:
        took = await run(url, args.calls, args.concurrency, telemetry)
        closing = time.perf_counter()
    return took, time.perf_counter() - closing


def main(args: argparse.Namespace) -> None:
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(port)],
        cwd=_common.REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().startswith("LISTEN")
        asyncio.run(measure(args, f"http://127.0.0.1:{port}/telemetry"))
    finally:
        receiver.terminate()
        receiver.wait(5)


async def measure(args: argparse.Namespace, vector_url: str) -> None:
    with spawn_fake_server() as srv, tempfile.TemporaryDirectory() as tmp:
        modes = ("off", "on", "receiver down")
        await run(srv.url, 100, args.concurrency, None)  # warm-up
        work: dict[str, list[float]] = {m: [] for m in modes}
        close: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in modes:
                took, closing = await one(mode, srv.url, vector_url, Path(tmp) / f"{mode}{r}", args)
                work[mode].append(took)
                close[mode].append(closing)
        base = _common.median(work["off"])
        rows = []
        for mode in modes:
            t = _common.median(work[mode])
            rows.append([mode, args.calls / t, base / t, _common.median(close[mode])])
    print(
        f"telemetry: {args.calls} calls at concurrency {args.concurrency}, one llm.call "
        f"event each, median of {args.rounds} interleaved rounds"
    )
    print(_common.table(["telemetry", "calls/s", "x off", "close s (flush/spill)"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    main(p.parse_args())
