"""What fleet-wide seats cost, and whether they hold: in-process seats vs the host ledger
vs the NATS ledger.

0. The ledger alone: C tasks acquire and release one seat each of a C-seat deployment
   (``Seats`` in front, as SlotClient holds them), no HTTP: acquire+release pairs per
   second and the time they add per call at C in flight. The most stable figure on a
   noisy machine (no server process competes for the cores).
1. Overhead: N chat calls at concurrency C through one SlotClient against the
   zero-latency fake server (its own process), the seats held in-process only, in the
   host ledger, or in NATS JetStream (a real nats-server on loopback). Interleaved
   rounds, median reported; ratio vs in-process seats.
2. Sharing: three processes, each with more work than the cap, share one slot
   (``parallel`` = cap) on a fake server with a fixed latency: the server's max in
   flight (must equal the cap), seat utilisation (sum of request time / cap x wall
   time; target >= 95%) and each process's wait p50/p99 and share of the requests.

    python benchmarks/ledger.py [--calls 2000] [--concurrency 8] [--rounds 5]
        [--cap 4] [--latency 0.05] [--per-process 150] [--ledger host,nats]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import _common  # puts the repo on sys.path

from familiar.client.backend import SlotClient
from familiar.config.slots import Slot
from familiar.ledger import HostLedger, Ledger, deployment_id, deployment_label
from familiar.seats import Seats
from tests.support.fake_openai import spawn_fake_server

MSG = [{"role": "user", "content": "benchmark"}]
WORKER = Path(__file__).with_name("_ledger_worker.py")
Runner = Callable[[int, int], Awaitable[None]]


def make_ledger(kind: str, nats_url: str | None, ledger_dir: Path) -> Ledger | None:
    if kind == "in-process":
        return None
    if kind == "host":
        return HostLedger(ledger_dir)
    from familiar.ledger.nats import NatsLedger

    assert nats_url is not None
    return NatsLedger(nats_url)


def runner(url: str, kind: str, nats_url: str | None, ledger_dir: Path) -> Runner:
    async def run(calls: int, conc: int) -> None:
        slot = Slot(name="bench", url=url, model="m", parallel=conc)
        ledger = make_ledger(kind, nats_url, ledger_dir)
        if ledger is None:
            seats = Seats(conc)
            async with SlotClient(slot, seats=seats) as client:
                await asyncio.gather(*(client.chat(MSG) for _ in range(calls)))
            return
        async with ledger:
            dep = ledger.deployment(
                deployment_id(slot.url, slot.model), deployment_label(slot.url, slot.model), conc
            )
            async with SlotClient(slot, seats=Seats(conc, ledger=dep)) as client:
                await asyncio.gather(*(client.chat(MSG) for _ in range(calls)))

    return run


@asynccontextmanager
async def nats_server(wanted: bool) -> AsyncIterator[str | None]:
    if not wanted:
        yield None
        return
    from tests.support.nats import NatsServer

    with tempfile.TemporaryDirectory() as store:
        server = NatsServer(Path(store))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


async def ledger_alone(args: argparse.Namespace, nats_url: str | None, ledger_dir: Path) -> None:
    rows = []
    for kind in ["in-process", *args.ledger]:
        ledger = make_ledger(kind, nats_url, ledger_dir)
        async with contextlib.AsyncExitStack() as stack:
            dep = None
            if ledger is not None:
                await stack.enter_async_context(ledger)
                dep = ledger.deployment("b" * 20, "benchmark", args.concurrency)
            seats = Seats(args.concurrency, ledger=dep)
            per_task = max(1, args.calls // args.concurrency)

            async def one(n: int, seats: Seats = seats) -> None:
                for _ in range(n):
                    async with seats.hold():
                        await asyncio.sleep(0)

            await asyncio.gather(*(one(min(per_task, 20)) for _ in range(args.concurrency)))
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                await asyncio.gather(*(one(per_task) for _ in range(args.concurrency)))
                times.append(time.perf_counter() - start)
        t = _common.median(times)
        pairs = per_task * args.concurrency
        rows.append([kind, pairs / t, t / pairs * args.concurrency * 1e6])
    print(
        f"\n0. the ledger alone: {args.concurrency} tasks x {per_task} acquire+release of a"
        f" {args.concurrency}-seat deployment, no HTTP, median of {args.rounds} rounds"
    )
    print(_common.table(["seats held", "pairs/s", "us/call at C in flight"], rows))


async def overhead(args: argparse.Namespace, nats_url: str | None, ledger_dir: Path) -> None:
    kinds = ["in-process", *args.ledger]
    rows = []
    with spawn_fake_server(latency_s=0.0) as srv:
        contenders = {k: runner(srv.url, k, nats_url, ledger_dir) for k in kinds}
        for run in contenders.values():  # warm-up: imports, connections, buckets
            await run(min(100, args.calls), args.concurrency)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for name, run in contenders.items():
                start = time.perf_counter()
                await run(args.calls, args.concurrency)
                times[name].append(time.perf_counter() - start)
    base = _common.median(times["in-process"])
    for name, ts in times.items():
        t = _common.median(ts)
        added_us = (t - base) / args.calls * args.concurrency * 1e6
        rows.append([name, args.calls / t, added_us, base / t])
    print(
        f"\n1. overhead: {args.calls} chat calls at concurrency {args.concurrency} through one"
        f" SlotClient, zero-latency fake server, median of {args.rounds} interleaved rounds"
    )
    print(_common.table(["seats held", "req/s", "added us/call", "x in-process"], rows))


def sharing(args: argparse.Namespace, kind: str, nats_url: str | None, ledger_dir: Path) -> None:
    with spawn_fake_server(latency_s=args.latency) as srv:
        start_at = time.time() + 3.0  # every process imported and connected by then
        env = {**os.environ, "FAMILIAR_LEDGER_DIR": str(ledger_dir)}
        cmd = [
            sys.executable,
            str(WORKER),
            "--url",
            srv.url,
            "--cap",
            str(args.cap),
            "--calls",
            str(args.per_process),
            "--ledger",
            kind,
            "--start-at",
            repr(start_at),
        ]
        if nats_url:
            cmd += ["--nats", nats_url]
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True) for _ in range(3)
        ]
        # the last line is the worker's JSON (log lines may come before it)
        outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
        stats = srv.stats()
    t0 = min(o["t_start"] for o in outs)
    t1 = max(o["t_end"] for o in outs)
    busy = sum(sum(o["latency_s"]) for o in outs)
    util = busy / (args.cap * (t1 - t0))
    total = sum(len(o["latency_s"]) for o in outs)
    rows = []
    for i, o in enumerate(outs, 1):
        waits = sorted(o["ledger_wait_s"])
        rows.append(
            [
                f"process {i}",
                len(o["latency_s"]),
                f"{o['t_end'] - t0:.2f}",
                _pct(waits, 50) * 1000,
                _pct(waits, 99) * 1000,
                _pct(sorted(o["wait_s"]), 99) * 1000,
            ]
        )
    print(
        f"\n2. sharing ({kind} ledger): 3 processes x {args.per_process} calls, each with"
        f" {args.cap} in flight locally, one slot of parallel = {args.cap}, server latency"
        f" {args.latency * 1000:.0f} ms"
    )
    print(
        _common.table(
            ["", "requests", "done at s", "ledger wait p50 ms", "p99 ms", "whole wait p99 ms"],
            rows,
        )
    )
    print(
        f"server max in flight {stats['max_in_flight']} (cap {args.cap}); seat utilisation"
        f" {util * 100:.1f}% over {t1 - t0:.2f} s; {total} requests"
    )


def _pct(values: list[float], p: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger_dir = Path(tmp) / "ledger"
        async with nats_server("nats" in args.ledger) as nats_url:
            await ledger_alone(args, nats_url, ledger_dir)
            await overhead(args, nats_url, ledger_dir)
            for kind in args.ledger:
                sharing(args, kind, nats_url, ledger_dir)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cap", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--per-process", type=int, default=150)
    p.add_argument("--ledger", type=lambda s: s.split(","), default=["host", "nats"])
    asyncio.run(main(p.parse_args()))
