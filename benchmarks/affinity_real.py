"""Cache-aware replica choice on the real embedded server: two llama-server replicas of
Gemma 3 270M (``familiar[local]``), affinity vs least outstanding.

Two servers are started as ``familiar local up`` starts one (``LocalServer.command``: its
seats, ``--threads``, ``--cache-ram``, prompt cache on), each on a free port; one slot names
both (``parallel`` = both servers' seats). ``--sessions`` session-like groups start together;
each sends a planner-like request first, then ``--fanout`` worker requests at once, all
sharing a ``--context``-word prefix (its own per session) with their own short question,
under the group's correlation id (the affinity key). Reported per policy: the share of
prompt tokens llama-server served from its cache (``timings.cache_n`` over ``cache_n +
prompt_n``, read by SlotClient as cached tokens) over all requests and over the workers'
requests, TTFT p50/p99 (from the group's start) and the makespan; ``--repeat`` runs per
policy, alternated, each on fresh servers (nothing cached from the run before).

    python benchmarks/affinity_real.py [--sessions 4] [--fanout 3] [--context 1000]
        [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from _common import table
from local_threads import WORDS, server

from familiar.client.backend import CallResult, SlotClient
from familiar.config.slots import Slot
from familiar.context import bound_correlation_id
from familiar.local import LocalServer
from familiar.logs import configure

#: the seats `familiar local up` gives the server (LocalServer's default)
SEATS: int = inspect.signature(LocalServer).parameters["seats"].default


def text(tag: str, n: int) -> str:
    """``n`` words, different for each ``tag`` (no two sessions share a prefix)."""
    seed = sum(map(ord, tag))
    return " ".join(f"{WORDS[(seed + i * 7) % len(WORDS)]}{(seed + i) % 97}" for i in range(n))


async def ask(
    client: SlotClient, context: str, question: str, t0: float
) -> tuple[CallResult, float]:
    r = await client.chat(
        [{"role": "user", "content": f"{context}\n\nQuestion: {question}"}], max_tokens=4
    )
    return r, time.monotonic() - r.latency_s + (r.ttft_s or r.latency_s) - t0


async def session(
    client: SlotClient, s: int, args: argparse.Namespace, t0: float
) -> tuple[list[tuple[CallResult, float]], list[tuple[CallResult, float]]]:
    """The planner-like request, then the workers' requests at once."""
    context = text(f"session{s}", args.context)
    with bound_correlation_id(f"real-session-{s}"):
        plan = [await ask(client, context, "what are the parts of this?", t0)]
        workers = await asyncio.gather(
            *(ask(client, context, f"part {w}: what does it say?", t0) for w in range(args.fanout))
        )
    return plan, list(workers)


def share(results: list[tuple[CallResult, float]]) -> float:
    prompt = sum(r.prompt_tokens or 0 for r, _ in results)
    cached = sum(r.cached_tokens or 0 for r, _ in results)
    return cached / prompt if prompt else 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(policy: str, args: argparse.Namespace, home: Path) -> list[float]:
    async with AsyncExitStack() as stack:
        urls = [
            (await stack.enter_async_context(server(args.threads, "256", home)))[0]
            for _ in range(2)
        ]
        slot = Slot(
            name="workers",
            url=urls,
            model="gemma",
            parallel=2 * SEATS,
            affinity=policy,  # type: ignore[arg-type]
            timeout_s=900,
            stall_timeout_s=600,  # 4 long prompts on one CPU thread: minutes to a first byte
        )
        client = SlotClient(slot)
        try:
            t0 = time.monotonic()
            done = await asyncio.gather(
                *(session(client, s, args, t0) for s in range(args.sessions))
            )
            makespan = time.monotonic() - t0
        finally:
            await client.aclose()
    everything = [x for plan, workers in done for x in (*plan, *workers)]
    workers = [x for _plan, ws in done for x in ws]
    ttfts = [t for _, t in everything]
    return [
        share(everything),
        share(workers),
        statistics.median(ttfts),
        pct(ttfts, 0.99),
        makespan,
    ]


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--fanout", type=int, default=3)
    p.add_argument("--context", type=int, default=1000, help="words of each session's context")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    configure(level="WARNING")
    rows: dict[str, list[list[float]]] = {"session": [], "none": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for policy in rows:
                rows[policy].append(await run(policy, args, Path(tmp)))
    load = os.getloadavg()[0]
    print(
        f"two llama-server replicas ({SEATS} seats each, --threads {args.threads}),"
        f" {args.sessions} sessions x (1 + {args.fanout}) requests, {args.context}-word context"
        f" per session; {args.repeat} runs per policy (min-max), load {load:.1f}"
    )

    def span(values: list[float], fmt: str) -> str:
        lo, hi = min(values), max(values)
        return format(lo, fmt) if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"

    out = []
    for policy, runs in rows.items():
        cols = list(zip(*runs, strict=True))
        out.append(
            [
                "affinity" if policy == "session" else "least outstanding",
                span([100 * v for v in cols[0]], ".0f"),
                span([100 * v for v in cols[1]], ".0f"),
                span(list(cols[2]), ".2f"),
                span(list(cols[3]), ".2f"),
                span(list(cols[4]), ".1f"),
            ]
        )
    print(
        table(
            [
                "policy",
                "cached % all",
                "cached % workers",
                "TTFT p50 s",
                "TTFT p99 s",
                "makespan s",
            ],
            out,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
