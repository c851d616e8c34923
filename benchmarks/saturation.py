"""Saturation: do slots of 3 and 5 seats stay full? Makespan vs the ideal.

Two fixed-latency fake servers (own processes): naughty with 3 seats, kindergarten with
5. N items, half hard (prefer naughty) and half easy, go through the dispatcher. The
ideal makespan is ceil(N / 8) * latency (every seat busy all the time). The same run
without work stealing is shown side by side. Target: within 3% of the ideal.

    python benchmarks/saturation.py [--items 300] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

import _common  # puts the repo on sys.path

from familiar.client.backend import CallResult, SlotClient
from familiar.config.slots import Slot
from familiar.dispatch import Dispatcher, Pool, WorkItem, run_all
from tests.support.fake_openai import spawn_fake_server

MSG = [{"role": "user", "content": "x"}]


async def handler(item: WorkItem[int], pool: Pool) -> CallResult:
    result: CallResult = await pool.client.chat(MSG, role=pool.role)
    return result


async def once(urls: tuple[str, str], items: int, steal: bool) -> tuple[float, float]:
    """Makespan, and the seat-time the requests really took (their summed latency)."""
    hard = Slot(name="naughty", url=urls[0], model="m", parallel=3)
    easy = Slot(name="kindergarten", url=urls[1], model="m", parallel=5)
    async with SlotClient(hard) as ch, SlotClient(easy) as ce:
        pools = [Pool("naughty", "naughty", 3, ch), Pool("kindergarten", "kindergarten", 5, ce)]
        work = [WorkItem(str(n), "naughty" if n % 2 else "kindergarten", n) for n in range(items)]
        start = time.perf_counter()
        if steal:
            results = await run_all(pools, handler, work)
        else:
            async with Dispatcher(pools, handler, steals={}) as d:
                futs = [await d.submit(w) for w in work]
                results = list(await asyncio.gather(*futs))
        took = time.perf_counter() - start
        busy = sum(r.value.latency_s for r in results if r.value is not None)
        return took, busy


async def main(args: argparse.Namespace) -> None:
    with (
        spawn_fake_server(latency_s=args.latency) as a,
        spawn_fake_server(latency_s=args.latency) as b,
    ):
        await once((a.url, b.url), 16, True)  # warm-up
        ideal = math.ceil(args.items / 8) * args.latency
        rows = []
        for steal in (True, False):
            runs = []
            for _ in range(args.rounds):
                a.reset()
                b.reset()
                runs.append(await once((a.url, b.url), args.items, steal))
            took, busy = sorted(runs)[len(runs) // 2]
            per_request = busy / args.items  # latency + HTTP round trip, as measured
            ideal_measured = math.ceil(args.items / 8) * per_request
            seen = (a.stats()["max_in_flight"], b.stats()["max_in_flight"])
            rows.append(
                [
                    "stealing" if steal else "no stealing",
                    took,
                    ideal,
                    took / ideal - 1,
                    ideal_measured,
                    took / ideal_measured - 1,
                    busy / (8 * took),
                    f"{seen[0]}/3",
                    f"{seen[1]}/5",
                ]
            )
    print(
        f"saturation: {args.items} items, latency {args.latency}s, seats 3 + 5, "
        f"median of {args.rounds}"
    )
    print(
        _common.table(
            [
                "dispatch",
                "makespan s",
                "ideal s",
                "over ideal",
                "ideal (measured req) s",
                "over it",
                "seat utilisation",
                "naughty seen",
                "kindergarten seen",
            ],
            rows,
        )
    )
    print(
        "ideal = ceil(items/8) x configured latency; 'measured req' uses the mean request"
        " time seen by the client (latency + HTTP round trip)"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(p.parse_args()))
