"""A storm of acquirers on the one queue (``Seats``) in front of each real ledger: mixed
kinds, timeouts cancelling waiters at random moments (some just as their seat is
granted), from two ledger objects standing for two processes. The cap holds throughout,
and afterwards nothing is held, nobody is left in a queue, and every seat can be taken
at once."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from familiar.ledger import HostLedger
from familiar.ledger.base import DeploymentSeats, Holder, Kind, Ledger
from familiar.ledger.nats import NatsLedger
from familiar.seats import Seats
from tests.support import nats as nats_support
from tests.support.nats import NatsServer

nats_server = nats_support.nats_server  # the fixture

DEP = "5eed5eed5eed5eed5eed"
CAP = 3


@contextlib.asynccontextmanager
async def two(kind: str, tmp_path: Path, url: str) -> AsyncIterator[list[Ledger]]:
    if kind == "host":
        made: list[Ledger] = [HostLedger(tmp_path / "L", safety_s=0.5) for _ in range(2)]
    else:
        made = [
            NatsLedger(url, ttl_s=3.0, wait_s=30.0, holder=Holder("h", 2000 + i, f"storm {i}"))
            for i in range(2)
        ]
    async with contextlib.AsyncExitStack() as stack:
        for ledger in made:
            await stack.enter_async_context(ledger)
        yield made


async def storm(deps: list[DeploymentSeats], seconds: float) -> tuple[int, int, int]:
    """Acquirers on both deployments for ``seconds``; (peak held, grants, timeouts)."""
    rng = random.Random(7)
    held = peak = grants = timeouts = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def one(dep: DeploymentSeats) -> None:
        nonlocal held, peak, grants, timeouts
        while loop.time() < end:
            kind: Kind = "interactive" if rng.random() < 0.4 else "batch"
            try:
                async with asyncio.timeout(rng.choice([0.0005, 0.002, 0.01, 0.05, 1.0])):
                    lease = await dep.acquire(kind)
            except TimeoutError:
                timeouts += 1
                continue
            held += 1
            peak = max(peak, held)
            grants += 1
            try:
                await asyncio.sleep(rng.choice([0, 0.001, 0.005]))
            finally:
                held -= 1
                await dep.release(lease)

    await asyncio.gather(*(one(deps[i % 2]) for i in range(12)))
    return peak, grants, timeouts


@pytest.mark.parametrize("ledger_kind", ["host", "nats"])
async def test_a_storm_of_cancelled_acquirers_leaks_nothing(
    ledger_kind: str, tmp_path: Path, nats_server: NatsServer
) -> None:
    async with two(ledger_kind, tmp_path, nats_server.url) as ledgers:
        deps = [ledger.deployment(DEP, "m @ storm", CAP, 1) for ledger in ledgers]
        peak, grants, timeouts = await storm(deps, 4.0)
        assert peak <= CAP, peak
        assert grants > 50 and timeouts > 10, (grants, timeouts)  # both paths were taken
        for dep in deps:
            queue = dep.queue
            assert queue.live() == [] and queue.wants() is None
            assert queue.in_use == 0 and queue.waiting == 0, queue
        # every seat is free again: all of them taken at once, by one process
        async with asyncio.timeout(10):
            leases = [await deps[0].acquire("interactive") for _ in range(CAP)]
        assert sorted(lease.seat for lease in leases) == list(range(CAP))
        for lease in leases:
            await deps[0].release(lease)
        assert isinstance(deps[0].queue, Seats)
