"""One-hop hand-offs in the NATS seat ledger (``familiar/ledger/nats_grants.py``), against a
real ``nats-server -js``: a seat given back while another process waits for its turn is
written as granted to that process, which uses it without a write of its own; a grantee
that is gone gives the seat back within the TTL; a forged grant is ignored; and the cap
holds under a hammer of three processes handing seats to each other."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats

from familiar.ledger.base import Holder
from familiar.ledger.nats import NatsLedger
from familiar.ledger.nats_held import HeldSeat
from familiar.ledger.nats_keys import grant_record
from familiar.ledger.nats_trust import FleetKey
from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer

nats_server = nats_support.nats_server  # the fixture
REPO = Path(__file__).resolve().parents[2]
HERE = "tests.integration.test_ledger_onehop"
DEP = "0123456789abcdef0hop"
SECRET = "one-hop-test-fleet-secret-0123456789"


@contextlib.asynccontextmanager
async def ledgers(
    url: str, n: int, *, ttl_s: float, key: FleetKey | None = None
) -> AsyncIterator[list[NatsLedger]]:
    opened = [
        NatsLedger(url, ttl_s=ttl_s, holder=Holder("host", 2000 + i, f"p{i}"), key=key)
        for i in range(n)
    ]
    try:
        for ledger in opened:
            await ledger.open()
        yield opened
    finally:
        await asyncio.gather(*(ledger.close() for ledger in opened))


async def until(check: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not so after {within:g} s"
        await asyncio.sleep(0.02)


async def waiting(ledger: NatsLedger, n: int) -> bool:
    views = await ledger.views()
    return bool(views) and len(views[0].waiting) == n


def seat_writes(ledger: NatsLedger) -> list[tuple[str, float]]:
    """Record every conditional write of ``ledger`` to a seat key: (key, when its ack came)."""
    log: list[tuple[str, float]] = []
    update = ledger.kv.update

    async def recorded(key: str, value: bytes, last: int) -> int:
        rev = await update(key, value, last)
        if ".s." in key:
            log.append((key, time.monotonic()))
        return rev

    ledger.kv.update = recorded  # type: ignore[method-assign]
    return log


# -- in-process ledgers --------------------------------------------------------------------


async def test_a_seat_goes_to_the_waiter_in_one_hop(nats_server: NatsServer) -> None:
    """Cap 1, A holds and B waits: A's release writes the seat as granted to B, and B's
    acquire returns with no write of B's to the seat key before it; B's own record
    replaces the grant right after (the confirmation), and turns alternate."""
    async with ledgers(nats_server.url, 2, ttl_s=4.0) as (a, b):
        da, db = a.deployment(DEP, "m", 1), b.deployment(DEP, "m", 1)
        writes = seat_writes(b)
        for round_ in range(1, 6):
            lease = await da.acquire("interactive")
            waiter = asyncio.create_task(db.acquire("interactive"))
            await until(lambda: waiting(a, 1))
            await asyncio.sleep(0.05)  # A's mirror has B's waiter key
            writes.clear()
            await da.release(lease)
            got = await asyncio.wait_for(waiter, 5)
            had = time.monotonic()
            assert isinstance(got.token, HeldSeat)
            assert [w for w in writes if w[1] <= had] == [], "B wrote before it had the seat"
            assert (da.hand_off.given, db.hand_off.adopted) == (round_, round_)

            async def confirmed() -> bool:
                return bool(writes)

            await until(confirmed)  # B's own record over A's grant, right after
            (view,) = await a.views()
            assert view.holders[0].pid == 2001 and len(writes) == 1 and not got.token.lost
            await db.release(got)


async def test_a_grant_to_a_waiter_that_does_not_act_goes_to_the_next(
    nats_server: NatsServer,
) -> None:
    """The grantee's pump stopped (its waiter key still renewed): the grant is left alone,
    and the next waiter takes it after the patience (2 s) with a write on the grant's
    revision; the stopped one never uses it."""
    async with ledgers(nats_server.url, 3, ttl_s=10.0) as (a, b, c):
        da, db, dc = (x.deployment(DEP, "m", 1) for x in (a, b, c))
        lease = await da.acquire("interactive")
        stuck = asyncio.create_task(db.acquire("interactive"))
        await until(lambda: waiting(a, 1))
        assert db.pump is not None
        db.pump.cancel()
        nxt = asyncio.create_task(dc.acquire("interactive"))
        await until(lambda: waiting(a, 2))
        await asyncio.sleep(0.05)
        await da.release(lease)
        released = time.monotonic()
        got = await asyncio.wait_for(nxt, 10)
        assert da.hand_off.given == 1 and db.hand_off.adopted == 0
        assert 1.5 < time.monotonic() - released < 4.0
        assert not stuck.done()
        await dc.release(got)
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck


def wait_main(url: str, dep: str, ttl: str) -> None:
    """Wait for a seat of a 1-seat deployment (print ``waiting``; never gets it here)."""

    async def run() -> None:
        async with NatsLedger(url, ttl_s=float(ttl)) as ledger:
            print("waiting", flush=True)
            await ledger.deployment(dep, "m", 1).acquire("interactive")
            print("held", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(run())


async def test_a_grant_to_a_process_that_died_comes_back_within_the_ttl(
    nats_server: NatsServer,
) -> None:
    """B waits, then is SIGKILLed: A's release grants the seat to B (its waiter key is
    still live), nobody adopts it, and A has the seat again within the TTL (the grant's
    key expires, or A takes it after the patience), never later."""
    ttl = 4.0
    code = f"import sys; from {HERE} import wait_main; wait_main(*sys.argv[1:])"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-c", code, nats_server.url, DEP, str(ttl)),
        cwd=REPO,
        env={**os.environ, "FAMILIAR_TELEMETRY": "off"},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with ledgers(nats_server.url, 1, ttl_s=ttl) as (a,):
            da = a.deployment(DEP, "m", 1)
            lease = await da.acquire("interactive")
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"waiting"
            await until(lambda: waiting(a, 1))
            await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await da.release(lease)
            released = time.monotonic()

            async def granted() -> bool:
                (view,) = await a.views()
                return 0 in view.holders and view.holders[0].pid == proc.pid

            await until(granted, 2.0)  # the seat is the dead process's now
            assert da.hand_off.given == 1
            again = await asyncio.wait_for(da.acquire("interactive"), ttl + 5)
            assert time.monotonic() - released < ttl + 1.0
            await da.release(again)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_a_forged_grant_is_ignored(nats_server: NatsServer) -> None:
    """With a fleet key, a stranger's unsigned grant naming a waiting process, and a signed
    grant copied under another seat's key, are not adopted: the waiter keeps waiting."""
    key = FleetKey(SECRET.encode())
    nc = await nats.connect(nats_server.url)
    try:
        async with ledgers(nats_server.url, 2, ttl_s=2.0, key=key) as (a, b):
            da, db = a.deployment(DEP, "m", 2), b.deployment(DEP, "m", 2)
            leases = [await da.acquire("interactive") for _ in range(2)]
            waiter = asyncio.create_task(db.acquire("interactive"))
            await until(lambda: waiting(a, 1))
            kv = await nc.jetstream().key_value("familiar_seats")
            record = grant_record(Holder("host", 2001, "p1"), b.nonce)
            await kv.put(f"{DEP}.s.0", record)  # no mac
            copied = key.seal("seat", f"{DEP}.s.0", record)  # signed for seat 0...
            await kv.put(f"{DEP}.s.1", copied)  # ...put under seat 1
            await asyncio.sleep(1.0)
            assert not waiter.done()
            assert db.hand_off.adopted == 0 and not b.held.all()
            assert b.key.rejected["seat"] >= 2
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            for lease in leases:
                await da.release(lease)  # lost to the stranger: never raises
    finally:
        await nc.close()


# -- three processes hammering -------------------------------------------------------------


async def _hammer(nats_url: str, llm_url: str, cap: int, seconds: float) -> None:
    from familiar.config.slots import Slot
    from familiar.fleet import Fleet

    slot = Slot(name="t", url=(llm_url,), model="m", runtime="vllm", parallel=cap, timeout_s=60)
    ledger = NatsLedger(nats_url, ttl_s=2.0, wait_s=60)
    done = 0
    home = Path(os.environ["HAMMER_HOME"])
    async with Fleet({"t": slot}, home=home, ledger=ledger) as fleet:
        client = fleet["t"]
        print("ready", flush=True)
        end = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < end:
                await client.chat([{"role": "user", "content": "x"}], max_tokens=1)
                done += 1

        async with asyncio.TaskGroup() as tg:
            for _ in range(4):
                tg.create_task(loop())
        (dep,) = ledger.deployments
        print(f"done {done} {dep.hand_off.given} {dep.hand_off.adopted}", flush=True)
        print(f"lost {ledger.seats_lost}", flush=True)


def hammer_main(nats_url: str, llm_url: str, cap: str, seconds: str) -> None:
    asyncio.run(_hammer(nats_url, llm_url, int(cap), float(seconds)))


async def line_with(proc: asyncio.subprocess.Process, word: str, limit: float) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"exited before saying {word!r}"
            if line.startswith(word):
                return line


async def test_three_processes_handing_seats_on_never_exceed_the_cap(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """3 processes, parallel = 2, 4 loops each of 1-token requests (20 ms) for 10 s: the
    seats go from process to process in one hop most of the time, and never 3 in flight,
    and no seat is ever lost."""
    code = f"import sys; from {HERE} import hammer_main; hammer_main(*sys.argv[1:])"
    async with FakeOpenAIServer(latency_s=0.02, reply_mode="identity") as srv:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                *("-c", code, nats_server.url, srv.url, "2", "10"),
                cwd=REPO,
                env={
                    **os.environ,
                    "FAMILIAR_TELEMETRY": "off",
                    "HAMMER_HOME": str(tmp_path / f"h{i}"),
                },
                stdout=asyncio.subprocess.PIPE,
            )
            for i in range(3)
        ]
        try:
            for p in procs:
                await line_with(p, "ready", 30)
            dones = [(await line_with(p, "done", 90)).split()[1:] for p in procs]
            lost = [int((await line_with(p, "lost", 10)).split()[1]) for p in procs]
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                await p.wait()
    counts, given, adopted = ([int(d[i]) for d in dones] for i in range(3))
    print(f"requests {counts}, handed on {given}, adopted {adopted}, stats {srv.stats}")
    assert srv.stats["max_in_flight"] <= 2, srv.stats
    assert min(counts) > 0 and lost == [0, 0, 0], (counts, lost)
    assert sum(adopted) > sum(counts) / 4, (adopted, counts)  # one hop, most of the time
    assert sum(adopted) <= sum(given)
