"""Cache-aware replica choice: affinity vs least outstanding, on fake servers with a prefix cache.

Each replica is a fake server with its own prefix cache and a prefill cost (time per uncached
prompt token, one server's prefills sharing its compute; tests/support/prefix_cache.py) and
``--capacity`` requests served at once; the slot's ``parallel`` is replicas x capacity.
SlotClient is driven directly.

* shared: ``--groups`` session-like groups start together; each sends ``--fanout`` requests at
  once (its correlation id is the affinity key) sharing a ``--prefix``-token prefix, each with
  its own ``--suffix`` tokens. With ``warm`` (the slot option, familiar/client/warm.py), a group's
  first request goes alone and the rest follow at its first token. Reported: the share of
  prompt tokens served from cache, TTFT p50/p99 (from the group's start: waits for a seat or
  for the warm-up count), makespan.
* uniform: the same groups without a shared prefix (every prompt its own): what affinity costs
  in balance (the goal: makespan within 3% of least outstanding).
* dead: 16 sessions of 2 requests, one replica stopped, 3 requests each again: how many
  sessions changed replica (only the dead replica's should).

    python benchmarks/affinity.py [--replicas 2,4] [--repeat 3] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass

from _common import table

from familiar.client.backend import CallResult, SlotClient
from familiar.client.wire import RetryPolicy
from familiar.config.slots import Slot
from familiar.context import bound_correlation_id
from familiar.logs import configure
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.prefix_cache import PrefixCacheConfig


@dataclass(frozen=True)
class Shape:
    groups: int
    fanout: int
    prefix: int
    suffix: int
    prefill_s_per_token: float
    decode_s: float
    capacity: int


@dataclass
class Run:
    cached_share: float
    ttft_p50: float
    ttft_p99: float
    makespan: float


async def _no_sleep(_s: float) -> None:
    return None


def _words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


async def _servers(stack: AsyncExitStack, n: int, shape: Shape) -> list[FakeOpenAIServer]:
    config = PrefixCacheConfig(prefill_s_per_token=shape.prefill_s_per_token, block=16)
    out = []
    for _ in range(n):
        srv = FakeOpenAIServer(prefix_cache=config, capacity=shape.capacity, ttft_s=0.0)
        srv.configure(latency_s=shape.decode_s)
        out.append(await stack.enter_async_context(srv))
    return out


def _client(
    servers: list[FakeOpenAIServer], affinity: str, capacity: int, warm: bool = False
) -> SlotClient:
    slot = Slot(
        warm=warm,
        name="workers",
        url=[s.url for s in servers],
        model="fake-model",
        parallel=len(servers) * capacity,
        affinity=affinity,  # type: ignore[arg-type]
        timeout_s=600,
    )
    c = SlotClient(slot, retry=RetryPolicy(attempts=4, sleep=_no_sleep))
    if BALANCE_ABS is not None:
        c.replica_set.balance_abs = BALANCE_ABS
    return c


BALANCE_ABS: int | None = None


async def _ask(c: SlotClient, system: str, user: str, t0: float) -> tuple[CallResult, float]:
    r = await c.chat(
        [{"role": "system", "content": system}, {"role": "user", "content": user}], max_tokens=8
    )
    # the first token's time from the group's start: every wait counts (seat, warm-up)
    return r, time.monotonic() - r.latency_s + (r.ttft_s or r.latency_s) - t0


async def _group(
    c: SlotClient, g: int, shape: Shape, shared: bool, t0: float
) -> list[tuple[CallResult, float]]:
    prefix = _words(f"g{g}p", shape.prefix)
    with bound_correlation_id(f"group-{g}"):
        users = [_words(f"g{g}r{i}s", shape.suffix) for i in range(shape.fanout)]
        system = (lambda i: prefix) if shared else (lambda i: _words(f"g{g}r{i}p", shape.prefix))
        return await asyncio.gather(
            *(_ask(c, system(i), users[i], t0) for i in range(shape.fanout))
        )


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def one_run(n: int, shape: Shape, affinity: str, shared: bool, warm: bool) -> Run:
    async with AsyncExitStack() as stack:
        servers = await _servers(stack, n, shape)
        c = await stack.enter_async_context(_client(servers, affinity, shape.capacity, warm))
        t0 = time.monotonic()
        groups = await asyncio.gather(
            *(_group(c, g, shape, shared, t0) for g in range(shape.groups))
        )
        makespan = time.monotonic() - t0
    results = [x for grp in groups for x in grp]
    prompt = sum(r.prompt_tokens or 0 for r, _ in results)
    cached = sum(r.cached_tokens or 0 for r, _ in results)
    ttfts = [t for _, t in results]
    return Run(cached / prompt, _pct(ttfts, 0.5), _pct(ttfts, 0.99), makespan)


def _range(values: list[float], pct: bool = False) -> str:
    lo, hi = min(values), max(values)
    if pct:
        return f"{lo:.0%}" if round(lo, 2) == round(hi, 2) else f"{lo:.0%}-{hi:.0%}"
    return f"{lo:.3f}" if len(values) == 1 else f"{lo:.3f}-{hi:.3f}"


async def dead_replica(shape: Shape, concurrent: bool) -> list[object]:
    """16 sessions on 4 replicas; one replica stops: how many sessions changed replica."""
    async with AsyncExitStack() as stack:
        servers = await _servers(stack, 4, shape)
        c = await stack.enter_async_context(_client(servers, "session", shape.capacity))

        async def rounds(k: int) -> dict[str, set[int]]:
            for srv in servers:
                srv.reset()

            async def one(s: int) -> None:
                with bound_correlation_id(f"s{s}"):
                    for i in range(k):
                        await c.chat([{"role": "user", "content": f"s{s} turn {i}"}], max_tokens=4)

            if concurrent:
                await asyncio.gather(*(one(s) for s in range(16)))
            else:
                for s in range(16):
                    await one(s)
            where: dict[str, set[int]] = {}
            for i, srv in enumerate(servers):
                for req in srv.requests:
                    where.setdefault(req["headers"]["x-correlation-id"], set()).add(i)
            return where

        before = await rounds(2)
        dead = Counter(i for w in before.values() for i in w).most_common(1)[0][0]
        await servers[dead].stop()
        after = await rounds(3)
    on_dead = {cid for cid, w in before.items() if dead in w}
    moved = {cid for cid in before if not (after[cid] - {dead}) <= before[cid]}
    split = sum(len(before[cid]) > 1 for cid in before)
    return [
        "at once" if concurrent else "one by one",
        16,
        len(on_dead),
        len(moved),
        moved <= on_dead,
        split,
    ]


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """A stopped replica's keep-alive connections end cancelled: not worth a traceback."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


async def main_async(args: argparse.Namespace) -> None:
    configure(level="error")  # the dead replica's cool-down warnings are expected
    asyncio.get_running_loop().set_exception_handler(_quiet)
    if args.tiny:
        shape = Shape(2, 3, 400, 20, 25e-6, 0.01, 4)
        replicas, repeat = [2], 1
    else:
        shape = Shape(
            args.groups, args.fanout, args.prefix, args.suffix, args.prefill, args.decode, 8
        )
        replicas, repeat = [int(x) for x in args.replicas.split(",")], args.repeat
    print(
        f"{shape.groups} groups x {shape.fanout} requests, prefix {shape.prefix} tokens + "
        f"{shape.suffix} own, prefill {shape.prefill_s_per_token * 1e6:.0f} us/token, decode "
        f"{shape.decode_s * 1000:.0f} ms, {shape.capacity} seats per replica; {repeat} run(s) each"
    )
    rows: list[list[object]] = []
    uniform: list[list[object]] = []
    for n in replicas:
        for warm in (False, True):
            for policy in ("session", "none"):
                runs = [await one_run(n, shape, policy, True, warm) for _ in range(repeat)]
                rows.append(
                    [
                        n,
                        "affinity" if policy == "session" else "least outstanding",
                        "warm" if warm else "-",
                        _range([r.cached_share for r in runs], pct=True),
                        _range([r.ttft_p50 for r in runs]),
                        _range([r.ttft_p99 for r in runs]),
                        _range([r.makespan for r in runs]),
                    ]
                )
        for policy in ("session", "none"):
            runs = [await one_run(n, shape, policy, False, False) for _ in range(repeat)]
            uniform.append(
                [
                    n,
                    "affinity" if policy == "session" else "least outstanding",
                    _range([r.ttft_p50 for r in runs]),
                    _range([r.makespan for r in runs]),
                ]
            )
    head = ["replicas", "policy", "fan-out", "from cache", "TTFT p50 s", "TTFT p99 s", "makespan s"]
    print("\nshared prefix")
    print(table(head, rows))
    print("\nuniform load (no shared prefix)")
    print(table(["replicas", "policy", "TTFT p50 s", "makespan s"], uniform))
    print("\na replica dies (4 replicas, affinity)")
    dead = [await dead_replica(shape, concurrent) for concurrent in (False, True)]
    head = [
        "sessions run",
        "sessions",
        "on the dead one",
        "moved elsewhere",
        "only those",
        "split (escape)",
    ]
    print(table(head, dead))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", default="2,4")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--fanout", type=int, default=6)
    ap.add_argument("--prefix", type=int, default=8000, help="shared prefix, tokens")
    ap.add_argument("--suffix", type=int, default=200, help="each request's own tokens")
    ap.add_argument("--prefill", type=float, default=25e-6, help="seconds per uncached token")
    ap.add_argument("--decode", type=float, default=0.05, help="seconds after the first token")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--balance-abs", type=int, help="the replica set's load escape threshold")
    ap.add_argument("--tiny", action="store_true", help="a smoke run (a few seconds)")
    args = ap.parse_args()
    global BALANCE_ABS
    BALANCE_ABS = args.balance_abs
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
