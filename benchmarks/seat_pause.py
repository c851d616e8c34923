"""A paused NATS-ledger holder: how long the cap is exceeded, for a TTL and a pause.

Cap 2 on a fake server whose requests last two minutes; holders A and B run one request
each, C waits. A is SIGSTOPped for ``pause`` seconds: when its seat expires (``ttl``
after its last renewal, renewals every ``ttl / 3``) C takes it and the server serves 3.
When A resumes it finds its seat taken and cancels its request. Measured per run: when
the server first saw 3 in flight (after SIGSTOP), and how long after SIGCONT it was back
at 2; the window is the time at 3.

    python benchmarks/seat_pause.py [--ttl 2 5 10] [--pause 1 4 8 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common  # puts the repo on sys.path

from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer


async def holder(url: str, llm: str, ttl: float, home: Path) -> asyncio.subprocess.Process:
    code = (
        "import sys; from tests.support.nats import request_main; "
        "request_main(sys.argv[1], sys.argv[2], 2, float(sys.argv[3]), sys.argv[4])"
    )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-c", code, url, llm, str(ttl), str(home)),
        env={
            **os.environ,
            "FAMILIAR_TELEMETRY": "off",
            "FAMILIAR_LEDGER_DIR": str(home),
            "PYTHONPATH": str(_common.REPO),  # the holders import tests.support from anywhere
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def one(ttl: float, pause: float) -> tuple[float | None, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "store")
        server.start()
        try:
            async with FakeOpenAIServer(latency_s=120, reply_mode="identity") as srv:
                flying = lambda: srv.stats["in_flight"]  # noqa: E731
                procs = []
                for i, want in enumerate((1, 2, 2)):
                    procs.append(await holder(server.url, srv.url, ttl, Path(tmp) / str(i)))
                    while flying() < want:
                        assert all(p.returncode is None for p in procs)
                        await asyncio.sleep(0.01)
                await asyncio.sleep(ttl)  # c waits; a has renewed since
                a = procs[0]
                stopped = time.monotonic()
                os.kill(a.pid, signal.SIGSTOP)
                taken = None
                while time.monotonic() - stopped < pause:
                    if taken is None and flying() == 3:
                        taken = time.monotonic() - stopped
                    await asyncio.sleep(0.005)
                os.kill(a.pid, signal.SIGCONT)
                resumed = time.monotonic()
                while flying() > 2:
                    if time.monotonic() - resumed > 10:
                        break
                    await asyncio.sleep(0.005)
                back = time.monotonic() - resumed
                peak = srv.stats["max_in_flight"]
                for p in procs:
                    p.kill()
                    await p.wait()
                window = (pause - taken + back) if taken is not None else 0.0
                assert taken is None or peak == 3
                return taken, back if taken is not None else 0.0, window
        finally:
            server.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ttl", type=float, nargs="+", default=[2.0, 5.0])
    ap.add_argument("--pause", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    args = ap.parse_args()
    print("| seat_ttl_s | pause | seat taken after | back at cap after SIGCONT | over the cap |")
    print("|---|---|---|---|---|")
    for ttl in args.ttl:
        for pause in args.pause:
            taken, back, window = await one(ttl, pause)
            shown = "never" if taken is None else f"{taken:.2f} s"
            print(f"| {ttl:g} s | {pause:g} s | {shown} | {back * 1000:.0f} ms | {window:.2f} s |")


if __name__ == "__main__":
    asyncio.run(main())
