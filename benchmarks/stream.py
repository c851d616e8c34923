"""How fast one process ingests streamed tokens: a minimal httpx SSE reader vs the openai
SDK's stream vs SlotClient (streamed and not).

N chat answers of T tokens each (the fake server, in its own process, streams one chunk
per word of the identity reply), C in flight, zero latency. Interleaved rounds, median
reported; ratio vs the minimal reader. Target: SlotClient stream >= 0.9x.

    python benchmarks/stream.py [--answers 640] [--tokens 200] [--concurrency 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import _common  # puts the repo on sys.path
import openai

from familiar.backend import SlotClient
from familiar.config.slots import Slot
from familiar.wire import HTTP
from tests.support.fake_openai import spawn_fake_server

Runner = Callable[[int, int, list[dict[str, str]]], Awaitable[int]]


async def _fan(n: int, conc: int, one: Callable[[], Awaitable[int]]) -> int:
    sem = asyncio.Semaphore(conc)

    async def guarded() -> int:
        async with sem:
            return await one()

    return sum(await asyncio.gather(*(guarded() for _ in range(n))))


def minimal_sse(url: str) -> Runner:
    async def run(n: int, conc: int, msg: list[dict[str, str]]) -> int:
        limits = HTTP.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with HTTP.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

            async def one() -> int:
                body = {"model": "m", "messages": msg, "stream": True}
                tokens = 0
                async with http.stream("POST", "/chat/completions", json=body) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            chunk = json.loads(line[6:])
                            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                                tokens += 1
                return tokens

            return await _fan(n, conc, one)

    return run


def sdk_stream(url: str) -> Runner:
    async def run(n: int, conc: int, msg: list[dict[str, str]]) -> int:
        limits = HTTP.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with (
            HTTP.AsyncClient(limits=limits, timeout=60) as http,
            openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, http_client=http) as c,
        ):

            async def one() -> int:
                tokens = 0
                stream = await c.chat.completions.create(
                    model="m",
                    messages=msg,  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async with stream:
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            tokens += 1
                return tokens

            return await _fan(n, conc, one)

    return run


def slot_client(url: str, stream: bool) -> Runner:
    async def run(n: int, conc: int, msg: list[dict[str, str]]) -> int:
        slot = Slot(name="bench", url=url, model="m", parallel=conc)
        async with SlotClient(slot, stream=stream) as client:
            results = await asyncio.gather(*(client.chat(msg) for _ in range(n)))
        return sum(r.completion_tokens or 0 for r in results)

    return run


async def main(args: argparse.Namespace) -> None:
    words = " ".join(f"w{i}" for i in range(args.tokens))
    msg = [{"role": "user", "content": words}]
    with spawn_fake_server(latency_s=0.0, reply_mode="identity") as srv:
        contenders: dict[str, Runner] = {
            "minimal httpx SSE reader": minimal_sse(srv.url),
            "openai SDK stream": sdk_stream(srv.url),
            "SlotClient stream": slot_client(srv.url, True),
            "SlotClient non-stream": slot_client(srv.url, False),
        }
        for run in contenders.values():  # warm-up
            await run(min(64, args.answers), args.concurrency, msg)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        tokens: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, run in contenders.items():
                start = time.perf_counter()
                tokens[name] = await run(args.answers, args.concurrency, msg)
                times[name].append(time.perf_counter() - start)
    base = tokens["minimal httpx SSE reader"] / _common.median(times["minimal httpx SSE reader"])
    rows = []
    for name, ts in times.items():
        rate = tokens[name] / _common.median(ts)
        rows.append([name, tokens[name] // args.answers, rate, rate / base])
    print(
        f"stream: {args.answers} answers x {args.tokens} tokens, {args.concurrency} in flight,"
        f" zero-latency fake server, median of {args.rounds} interleaved rounds"
    )
    print(_common.table(["reader", "tokens/answer", "tokens/s", "x minimal"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--answers", type=int, default=640)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(p.parse_args()))
