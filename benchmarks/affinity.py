"""Cache-aware replica choice: affinity vs least outstanding, on fake servers with a prefix cache.

Each replica is a fake server with its own prefix cache and a prefill cost (time per uncached
prompt token, one server's prefills sharing its compute; tests/support/prefix_cache.py) and
``--capacity`` requests served at once; the slot's ``parallel`` is replicas x capacity.
SlotClient is driven directly. Two shapes of ``--groups`` session-like groups starting together
(a group's correlation id is its affinity key), each with ``--fanout`` workers sharing a
``--prefix``-token prefix, each with its own ``--suffix`` tokens:

* workers: the workers start at once, nothing before them (the shape of a batch's article
  chunks; 5/6 of the workers at best find the prefix cached).
* session: a familiar session: the planner's request first (the prefix, as the workspace files
  lead the planner's request and every worker's, then ``--suffix`` tokens of its own), the
  workers once it answered, then the integrator (the workers' outputs: ``--fanout`` x
  ``--suffix`` tokens of its own, no shared prefix). TTFT is the workers', from their release.

With ``warm`` (the slot option, on by default; familiar/client/warm.py), of requests sharing a
prefix that nobody computed yet the first goes alone and the rest follow at its first token.
Reported: the share of the workers' prompt tokens (and of all) served from cache, TTFT p50/p99
(every wait counts: a seat, the warm-up), makespan.

* uniform: the workers shape with no shared prefix (every prompt its own): what affinity costs
  in balance (the goal: makespan within 3% of least outstanding).
* dead: 16 sessions of 2 requests, one replica stopped, 3 requests each again: how many
  sessions changed replica (only the dead replica's should).

The policies run alternately within each repetition (the machine's load drifts), and the
targets table gives each repetition's ratio.

    python benchmarks/affinity.py [--replicas 2,4] [--repeat 3] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass

from _common import median, table

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
    cached_share: float  # the workers' prompt tokens
    ttft_p50: float
    ttft_p99: float
    makespan: float
    cached_all: float  # every prompt token (the session shape's planner and integrator too)


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
    # the first token's time from the workers' release: every wait counts (seat, warm-up)
    return r, time.monotonic() - r.latency_s + (r.ttft_s or r.latency_s) - t0


Asked = tuple[list[tuple[CallResult, float]], list[CallResult]]  # the workers, the others


async def _group(c: SlotClient, g: int, shape: Shape, how: str, t0: float) -> Asked:
    """One group: ``how`` is "workers", "session" or "uniform" (no shared prefix)."""
    prefix = _words(f"g{g}p", shape.prefix)
    with bound_correlation_id(f"group-{g}"):
        others: list[CallResult] = []
        if how == "session":  # the planner's request leads with what the workers share
            others.append((await _ask(c, prefix, _words(f"g{g}plan", shape.suffix), t0))[0])
            t0 = time.monotonic()  # the workers are released now
        users = [_words(f"g{g}r{i}s", shape.suffix) for i in range(shape.fanout)]
        unique = how == "uniform"
        system = (lambda i: _words(f"g{g}r{i}p", shape.prefix)) if unique else (lambda i: prefix)
        workers = await asyncio.gather(
            *(_ask(c, system(i), users[i], t0) for i in range(shape.fanout))
        )
        if how == "session":  # the integrator: the workers' outputs, nothing shared
            merge = _words(f"g{g}merge", shape.fanout * shape.suffix)
            others.append((await _ask(c, _words(f"g{g}int", 64), merge, t0))[0])
        return list(workers), others


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _share(results: list[CallResult]) -> float:
    prompt = sum(r.prompt_tokens or 0 for r in results)
    return sum(r.cached_tokens or 0 for r in results) / prompt


async def one_run(n: int, shape: Shape, affinity: str, how: str, warm: bool) -> Run:
    async with AsyncExitStack() as stack:
        servers = await _servers(stack, n, shape)
        c = await stack.enter_async_context(_client(servers, affinity, shape.capacity, warm))
        t0 = time.monotonic()
        groups = await asyncio.gather(*(_group(c, g, shape, how, t0) for g in range(shape.groups)))
        makespan = time.monotonic() - t0
    workers = [x for grp, _ in groups for x in grp]
    ttfts = [t for _, t in workers]
    everything = [r for r, _ in workers] + [r for _, others in groups for r in others]
    share = _share([r for r, _ in workers])
    return Run(share, _pct(ttfts, 0.5), _pct(ttfts, 0.99), makespan, _share(everything))


def _range(values: list[float], pct: bool = False, ratio: bool = False) -> str:
    lo, hi = min(values), max(values)
    if pct:
        return f"{lo:.0%}" if round(lo, 2) == round(hi, 2) else f"{lo:.0%}-{hi:.0%}"
    if ratio:
        return f"{lo:.2f}" if len(values) == 1 else f"{lo:.2f}-{hi:.2f}"
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


POLICIES = {"session": "affinity", "none": "least outstanding"}
SHAPES = ("workers", "session")


async def paired(n: int, shape: Shape, how: str, warm: bool, repeat: int) -> dict[str, list[Run]]:
    """Each policy ``repeat`` times, alternately (the order swapped every repetition)."""
    runs: dict[str, list[Run]] = {p: [] for p in POLICIES}
    for k in range(repeat):
        for policy in list(POLICIES)[:: 1 if k % 2 == 0 else -1]:
            runs[policy].append(await one_run(n, shape, policy, how, warm))
    return runs


GOALS = {
    "cached_share": (">= 85%", 0.85),
    "ttft_p50": (">= 2x", 2.0),
    "makespan": ("<= 1.03x", 1.03),
}


def _target(n: int, what: str, num: list[Run], den: list[Run] | None, field: str) -> list[object]:
    """A target's row: each repetition's value (a ratio of paired runs when ``den`` is
    given), the value of the medians, the goal, and whether the medians meet it."""
    goal, bound = GOALS[field]
    a = [getattr(r, field) for r in num]
    if den is None:
        return [n, what, _range(a, pct=True), f"{median(a):.0%}", goal, median(a) >= bound]
    b = [getattr(r, field) for r in den]
    each = [x / y for x, y in zip(a, b, strict=True)]
    mid = median(a) / median(b)
    met = mid <= bound if field == "makespan" else mid >= bound
    return [n, what, f"{_range(each, ratio=True)}x", f"{mid:.3f}x", goal, met]


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
        f"{shape.groups} groups x {shape.fanout} workers, prefix {shape.prefix} tokens + "
        f"{shape.suffix} own, prefill {shape.prefill_s_per_token * 1e6:.0f} us/token, decode "
        f"{shape.decode_s * 1000:.0f} ms, {shape.capacity} seats per replica; {repeat} run(s) each"
    )
    rows: list[list[object]] = []
    uniform: list[list[object]] = []
    targets: list[list[object]] = []
    for n in replicas:
        for how in (h for h in SHAPES if h in args.shapes):
            for warm in (False, True):
                runs = await paired(n, shape, how, warm, repeat)
                for policy, name in POLICIES.items():
                    rs = runs[policy]
                    rows.append(
                        [
                            n,
                            how,
                            name,
                            "warm" if warm else "-",
                            _range([r.cached_share for r in rs], pct=True),
                            _range([r.cached_all for r in rs], pct=True),
                            _range([r.ttft_p50 for r in rs]),
                            _range([r.ttft_p99 for r in rs]),
                            _range([r.makespan for r in rs]),
                        ]
                    )
            if warm:  # the defaults (warm on): the targets
                aff, lo = runs["session"], runs["none"]
                targets.append(
                    _target(n, f"{how}: workers' tokens from cache", aff, None, "cached_share")
                )
                targets.append(_target(n, f"{how}: TTFT p50, LO / affinity", lo, aff, "ttft_p50"))
        for warm in (False, True) if "uniform" in args.shapes else ():
            runs = await paired(n, shape, "uniform", warm, repeat)
            for policy, name in POLICIES.items():
                rs = runs[policy]
                uniform.append([n, name, "warm" if warm else "-", _range([r.ttft_p50 for r in rs]),
                                _range([r.makespan for r in rs])])  # fmt: skip
            what = f"uniform{' (warm)' if warm else ''}: makespan, affinity / LO"
            targets.append(_target(n, what, runs["session"], runs["none"], "makespan"))
    head = ["replicas", "shape", "policy", "fan-out", "from cache (workers)", "(all)",
            "TTFT p50 s", "TTFT p99 s", "makespan s"]  # fmt: skip
    if rows:
        print("\nshared prefix")
        print(table(head, rows))
    if uniform:
        print("\nuniform load (no shared prefix)")
        print(table(["replicas", "policy", "fan-out", "TTFT p50 s", "makespan s"], uniform))
    if "dead" in args.shapes:
        print("\na replica dies (4 replicas, affinity)")
        dead = [await dead_replica(shape, concurrent) for concurrent in (False, True)]
        head = ["sessions run", "sessions", "on the dead one", "moved elsewhere", "only those",
                "split (escape)"]  # fmt: skip
        print(table(head, dead))
    if targets:
        print(f"\ntargets (issue 24; LO: least outstanding; {repeat} paired repetitions)")
        head = ["replicas", "target", "each repetition", "of the medians", "goal", "met"]
        print(table(head, targets))


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
    ap.add_argument(
        "--shapes",
        type=lambda v: v.split(","),
        default=["workers", "session", "uniform", "dead"],
        help="what to run, of workers,session,uniform,dead (default: all)",
    )
    ap.add_argument("--balance-abs", type=int, help="the replica set's load escape threshold")
    ap.add_argument("--tiny", action="store_true", help="a smoke run (a few seconds)")
    args = ap.parse_args()
    global BALANCE_ABS
    BALANCE_ABS = args.balance_abs
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
