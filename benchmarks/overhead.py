"""Per-call overhead of SlotClient vs the raw AsyncOpenAI client (vs LiteLLM's Router).

N chat calls at concurrency C against the zero-latency fake server, which runs in its
own process so that it does not share the client's interpreter. Each contender runs
in interleaved rounds (A B C A B C ...) and the median round is reported, so that
a noisy neighbour hurts every contender alike. Target: SlotClient >= 0.95x raw.

    python benchmarks/overhead.py [--calls 1000] [--concurrency 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import _common  # puts the repo on sys.path
import openai

from familiar.client.backend import SlotClient
from familiar.config.slots import Slot
from tests.support.fake_openai import spawn_fake_server

MSG = [{"role": "user", "content": "benchmark"}]
Runner = Callable[[int, int], Awaitable[None]]


async def _fan(calls: int, conc: int, one: Callable[[], Awaitable[object]]) -> None:
    sem = asyncio.Semaphore(conc)

    async def guarded() -> None:
        async with sem:
            await one()

    await asyncio.gather(*(guarded() for _ in range(calls)))


def raw_openai(url: str, stream: bool) -> Runner:
    async def run(calls: int, conc: int) -> None:
        async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as client:

            async def one() -> None:
                if stream:
                    s = await client.chat.completions.create(
                        model="m",
                        messages=MSG,
                        stream=True,  # type: ignore[arg-type]
                        stream_options={"include_usage": True},
                    )
                    async with s:
                        async for _ in s:
                            pass
                else:
                    await client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]

            await _fan(calls, conc, one)

    return run


def slot_client(url: str, stream: bool) -> Runner:
    async def run(calls: int, conc: int) -> None:
        slot = Slot(name="bench", url=url, model="m", parallel=conc)
        async with SlotClient(slot, stream=stream) as client:
            await asyncio.gather(*(client.chat(MSG) for _ in range(calls)))

    return run


def litellm_router(url: str, stream: bool) -> Runner | None:
    try:
        from litellm import Router  # type: ignore[import-not-found]
    except ImportError:
        return None

    async def run(calls: int, conc: int) -> None:
        router = Router(
            model_list=[
                {
                    "model_name": "m",
                    "litellm_params": {
                        "model": "openai/m",
                        "api_base": url,
                        "api_key": "x",
                        "max_parallel_requests": conc,
                    },
                }
            ],
            num_retries=0,
        )

        async def one() -> None:
            if stream:
                resp = await router.acompletion(model="m", messages=MSG, stream=True)
                async for _ in resp:
                    pass
            else:
                await router.acompletion(model="m", messages=MSG)

        await _fan(calls, conc, one)

    return run


async def measure(runner: Runner, calls: int, conc: int) -> float:
    start = time.perf_counter()
    await runner(calls, conc)
    return time.perf_counter() - start


async def main(args: argparse.Namespace) -> None:
    with spawn_fake_server(latency_s=0.0) as srv:
        rows = []
        for stream in (True, False):
            contenders: dict[str, Runner] = {
                "raw AsyncOpenAI": raw_openai(srv.url, stream),
                "SlotClient": slot_client(srv.url, stream),
            }
            lite = litellm_router(srv.url, stream)
            if lite is not None:
                contenders["LiteLLM Router"] = lite
            for runner in contenders.values():  # warm-up: imports, connections
                await runner(min(50, args.calls), args.concurrency)
            times: dict[str, list[float]] = {k: [] for k in contenders}
            for _ in range(args.rounds):
                for name, runner in contenders.items():
                    times[name].append(await measure(runner, args.calls, args.concurrency))
            base = _common.median(times["raw AsyncOpenAI"])
            for name, ts in times.items():
                t = _common.median(ts)
                rps = args.calls / t
                added_ms = (t - base) / args.calls * args.concurrency * 1000
                rows.append(["stream" if stream else "plain", name, rps, added_ms, base / t])
            if lite is None:
                rows.append(
                    [
                        "stream" if stream else "plain",
                        "LiteLLM Router",
                        "n/a",
                        "not installed (pip install 'familiar[bench]')",
                        "-",
                    ]
                )
    print(
        f"overhead: {args.calls} chat calls at concurrency {args.concurrency}, "
        f"median of {args.rounds} interleaved rounds, zero-latency server"
    )
    print(_common.table(["mode", "client", "req/s", "added ms/call", "x raw"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(p.parse_args()))
