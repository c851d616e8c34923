"""Client-side overhead of ``familiar bench``: ms per request at its top concurrency.

N streamed chat requests at concurrency C against the zero-latency fake server (its own
process; every answer exactly --output-tokens pieces, as with ``ignore_eos``), read by:

* a minimal SSE reader: ``client.stream`` + ``aiter_lines`` + ``json.loads`` per event,
  bodies built before the clock starts, nothing timed, nothing kept; once with httpx
  1.x and once with ``familiar.client.wire.HTTP`` (httpx2, the stack SlotClient and the bench
  use);
* ``familiar bench``'s sweep (``Sweep.run([C])``): a synthetic prompt per request, every
  piece timed as it arrives, usage read, finish checked, the level summarised.

Each contender runs in interleaved rounds (A B C A B C ...) and the median round is
reported. ``wall ms/req`` is the wall time per request (the zero-latency server makes the
clients the bottleneck); ``CPU ms/req`` is this process's CPU time per request (the
server runs in another process): the client's cost. The bench's overhead is what it adds
to the minimal reader on the same HTTP stack.

    python benchmarks/bench_overhead.py [--requests 1000] [--concurrency 256] \\
        [--output-tokens 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _common  # puts the repo on sys.path
import httpx

from familiar.client.wire import HTTP
from familiar.fleetcheck.sweep import Sweep, Target, Workload
from tests.support.fake_openai import spawn_fake_server

Runner = Callable[[], Awaitable[None]]


def _target(url: str) -> Target:
    return Target(slot="bench", urls=(url,), model="fake-model", runtime="vllm")


def minimal_reader(http: Any, url: str, work: Workload, concurrency: int) -> Runner:
    target = _target(url)
    n = work.requests_at(concurrency)
    bodies = [work.body(target, i) for i in range(n)]
    headers = {"Content-Type": "application/json"}

    async def run() -> None:
        limits = http.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with http.AsyncClient(limits=limits, timeout=60) as client:
            todo = iter(bodies)

            async def worker() -> None:
                for body in todo:
                    async with client.stream(
                        "POST", f"{url}/chat/completions", content=body, headers=headers
                    ) as response:
                        async for line in response.aiter_lines():
                            if line.startswith("data: ") and line != "data: [DONE]":
                                json.loads(line[6:])

            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(worker())

    return run


def familiar_sweep(url: str, work: Workload, concurrency: int) -> Runner:
    async def run() -> None:
        (level,) = await Sweep(_target(url), work).run([concurrency])
        assert level.ok == work.requests_at(concurrency), level.errors

    return run


async def measure(runner: Runner) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await runner()
    return time.perf_counter() - wall, time.process_time() - cpu


async def main(args: argparse.Namespace) -> None:
    work = Workload(input_tokens=64, output_tokens=args.output_tokens, requests=args.requests)
    c = args.concurrency
    with spawn_fake_server(fill_max_tokens=True) as srv:
        contenders = {
            "minimal SSE reader, httpx 1.x": minimal_reader(httpx, srv.url, work, c),
            f"minimal SSE reader, {HTTP.__name__}": minimal_reader(HTTP, srv.url, work, c),
            f"familiar bench (Sweep, {HTTP.__name__})": familiar_sweep(srv.url, work, c),
        }
        base_name = f"minimal SSE reader, {HTTP.__name__}"
        for runner in contenders.values():  # warm-up: imports, connections
            await runner()
        walls: dict[str, list[float]] = {k: [] for k in contenders}
        cpus: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for name, runner in contenders.items():
                wall, cpu = await measure(runner)
                walls[name].append(wall)
                cpus[name].append(cpu)
    n = args.requests
    base_wall = _common.median(walls[base_name])
    base_cpu = _common.median(cpus[base_name])
    rows = []
    for name in contenders:
        wall, cpu = _common.median(walls[name]), _common.median(cpus[name])
        rows.append(
            [
                name,
                n / wall,
                wall / n * 1000,
                cpu / n * 1000,
                (cpu - base_cpu) / n * 1000,
                wall / base_wall,
            ]
        )
    print(
        f"bench overhead: {n} streamed requests of {args.output_tokens} pieces at concurrency"
        f" {args.concurrency}, median of {args.rounds} interleaved rounds, zero-latency server"
    )
    headers = ["client", "req/s", "wall ms/req", "CPU ms/req", "added CPU ms/req", "x wall"]
    print(f"(added and x: against the {base_name})")
    print(_common.table(headers, rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(p.parse_args()))
