"""A paused holder cannot keep running on a lost seat (NATS ledger): a process SIGSTOPped
past the seat TTL finds its seat taken when it resumes and cancels its request at once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from familiar.ledger.nats import NatsLedger
from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer

nats_server = nats_support.nats_server  # the fixture
TTL = 2.0


async def holder(nats_url: str, llm_url: str, home: Path) -> asyncio.subprocess.Process:
    code = (
        "import sys; from tests.support.nats import request_main; "
        "request_main(sys.argv[1], sys.argv[2], 2, float(sys.argv[3]), sys.argv[4])"
    )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-c", code, nats_url, llm_url, str(TTL), str(home)),
        env={**os.environ, "FAMILIAR_TELEMETRY": "off", "FAMILIAR_LEDGER_DIR": str(home)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def until(check: object, limit: float) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < limit, "timed out waiting"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_a_holder_paused_past_the_ttl_cancels_its_request_when_it_resumes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with FakeOpenAIServer(latency_s=60, reply_mode="identity") as srv:
        in_flight = lambda: srv.stats["in_flight"]  # noqa: E731
        a = await holder(nats_server.url, srv.url, tmp_path / "a")
        await until(lambda: in_flight() == 1, 30)
        b = await holder(nats_server.url, srv.url, tmp_path / "b")
        await until(lambda: in_flight() == 2, 30)
        c = await holder(nats_server.url, srv.url, tmp_path / "c")
        await asyncio.sleep(1.0)
        assert in_flight() == 2  # c waits for a seat
        procs = (a, b, c)
        try:
            os.kill(a.pid, signal.SIGSTOP)
            # the paused holder stops renewing: its seat expires after the TTL, c takes it
            # and the server serves 3 on a cap of 2 until a resumes (the window)
            taken = await until(lambda: in_flight() == 3, TTL + 10)
            await asyncio.sleep(TTL + 1.0 - taken if taken < TTL + 1.0 else 0.0)
            os.kill(a.pid, signal.SIGCONT)
            back = await until(lambda: in_flight() == 2, 5)
            assert back < 1.0, back
            await asyncio.sleep(1.0)
            assert in_flight() == 2 and srv.stats["max_in_flight"] == 3
            async with NatsLedger(nats_server.url, ttl_s=TTL) as ledger:  # a asks again
                (view,) = await ledger.views()
                assert a.pid in {w.pid for w in view.waiting}, view
                assert a.pid not in {h.pid for h in view.holders.values()}, view
            print(f"seat taken {taken:.2f} s after SIGSTOP; cancelled {back:.3f} s after SIGCONT")
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
            outs = [await p.communicate() for p in procs]
        said = (outs[0][0] + outs[0][1]).decode()  # (structlog's default: stdout)
        assert said.count("asks for a seat again (seat_lost)") == 1, said
        assert "Traceback" not in said
