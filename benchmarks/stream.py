"""How fast one process ingests streamed tokens: minimal SSE readers vs SlotClient
(streamed and not).

N chat answers of T tokens each (the fake server, in its own process, streams one chunk
per word of the identity reply), C in flight, zero latency. R interleaved rounds (the
order rotates each round, so no reader always runs after the same one); each reader's
tokens/s is shown as min / median / max over the rounds, and its ratio to the minimal
httpx2 reader (the yardstick of issue 28) is taken within each round (the two ran
seconds apart, under the same load) and shown as min / median; so is its ratio to the
leanest reader on SlotClient's own stack (aiohttp, lines split off raw bytes), where
aiohttp is installed. Target: SlotClient stream >= 0.95x and >= 47k tokens/s.

``--sdk`` adds the openai SDK's own stream (typed chunks), where it is installed.
``--stacks`` adds the same minimal reader on httpx 1.x and aiohttp (those installed) and
a minimal httpx2 reader that splits raw bytes (what SlotClient does): the figures that
chose the HTTP client.

    python benchmarks/stream.py [--answers 320] [--tokens 200] [--concurrency 64]
                                [--rounds 9] [--stacks] [--sdk]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _common  # puts the repo on sys.path

from familiar.client.backend import SlotClient
from familiar.client.wire import HTTP
from familiar.config.slots import Slot
from tests.support.fake_openai import spawn_fake_server

Runner = Callable[[int, int, list[dict[str, str]]], Awaitable[int]]
BASE = "minimal httpx2 SSE reader"  # the yardstick: aiter_lines on httpx2
LEAN = "minimal aiohttp bytes reader"  # SlotClient's own stack, as lean as it gets


async def _fan(n: int, conc: int, one: Callable[[], Awaitable[int]]) -> int:
    sem = asyncio.Semaphore(conc)

    async def guarded() -> int:
        async with sem:
            return await one()

    return sum(await asyncio.gather(*(guarded() for _ in range(n))))


def _count(data: str | bytes, tokens: int) -> int:
    chunk = json.loads(data)
    return (
        tokens + 1 if chunk["choices"] and chunk["choices"][0]["delta"].get("content") else tokens
    )


def minimal_lines(url: str, lib: Any) -> Runner:
    """The SSE reader anyone would write first: ``aiter_lines``, one JSON per data line."""

    async def run(n: int, conc: int, msg: list[dict[str, str]]) -> int:
        limits = lib.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with lib.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

            async def one() -> int:
                body = {"model": "m", "messages": msg, "stream": True}
                tokens = 0
                async with http.stream("POST", "/chat/completions", json=body) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            tokens = _count(line[6:], tokens)
                return tokens

            return await _fan(n, conc, one)

    return run


def minimal_bytes(url: str) -> Runner:
    """httpx2, lines split off the raw bytes (no text decoding of whole lines)."""

    async def run(n: int, conc: int, msg: list[dict[str, str]]) -> int:
        limits = HTTP.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with HTTP.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

            async def one() -> int:
                body = {"model": "m", "messages": msg, "stream": True}
                tokens, rest = 0, b""
                async with http.stream("POST", "/chat/completions", json=body) as resp:
                    async for data in resp.aiter_bytes():
                        lines = (rest + data).split(b"\n")
                        rest = lines.pop()
                        for line in lines:
                            if line.startswith(b"data: ") and line != b"data: [DONE]":
                                tokens = _count(line[6:], tokens)
                return tokens

            return await _fan(n, conc, one)

    return run


def minimal_aiohttp(url: str, split: bool) -> Runner:
    """aiohttp: its own line reader, or (``split``) lines split off whatever is buffered."""
    import aiohttp

    async def run(n: int, conc: int, msg: list[dict[str, str]]) -> int:
        conn = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=conn) as http:

            async def one() -> int:
                body = {"model": "m", "messages": msg, "stream": True}
                tokens, rest = 0, b""
                async with http.post(f"{url}/chat/completions", json=body) as resp:
                    if not split:
                        async for line in resp.content:
                            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                                tokens = _count(line[6:], tokens)
                        return tokens
                    async for data in resp.content.iter_any():
                        lines = (rest + data).split(b"\n")
                        rest = lines.pop()
                        for line in lines:
                            if line.startswith(b"data: ") and line != b"data: [DONE]":
                                tokens = _count(line[6:], tokens)
                return tokens

            return await _fan(n, conc, one)

    return run


def sdk_stream(url: str) -> Runner:
    import openai

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


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def contenders(url: str, stacks: bool, sdk: bool) -> dict[str, Runner]:
    out: dict[str, Runner] = {BASE: minimal_lines(url, HTTP)}
    if _installed("aiohttp"):
        out[LEAN] = minimal_aiohttp(url, split=True)
    if stacks:
        out["minimal httpx2 bytes reader"] = minimal_bytes(url)
        if _installed("httpx") and HTTP.__name__ != "httpx":
            import httpx

            out["minimal httpx SSE reader"] = minimal_lines(url, httpx)
        if _installed("aiohttp"):
            out["minimal aiohttp SSE reader"] = minimal_aiohttp(url, split=False)
    if sdk and _installed("openai"):
        out["openai SDK stream"] = sdk_stream(url)
    out["SlotClient stream"] = slot_client(url, True)
    out["SlotClient non-stream"] = slot_client(url, False)
    return out


async def main(args: argparse.Namespace) -> None:
    words = " ".join(f"w{i}" for i in range(args.tokens))
    msg = [{"role": "user", "content": words}]
    with spawn_fake_server(latency_s=0.0, reply_mode="identity") as srv:
        runners = contenders(srv.url, args.stacks, args.sdk)
        names = list(runners)
        for run in runners.values():  # warm-up
            await run(min(64, args.answers), args.concurrency, msg)
        rates: dict[str, list[float]] = {k: [] for k in names}
        ratios: dict[str, list[float]] = {k: [] for k in names}
        lean: dict[str, list[float]] = {k: [] for k in names}
        tokens: dict[str, int] = {}
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                start = time.perf_counter()
                tokens[name] = await runners[name](args.answers, args.concurrency, msg)
                rates[name].append(tokens[name] / (time.perf_counter() - start))
            for name in names:
                ratios[name].append(rates[name][-1] / rates[BASE][-1])
                lean[name].append(rates[name][-1] / rates.get(LEAN, rates[BASE])[-1])
    rows = []
    for name in names:
        rs, xs = rates[name], ratios[name]
        rows.append(
            [
                name,
                tokens[name] // args.answers,
                min(rs),
                statistics.median(rs),
                max(rs),
                min(xs),
                statistics.median(xs),
                min(lean[name]),
                statistics.median(lean[name]),
            ]
        )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"stream: {args.answers} answers x {args.tokens} tokens, {args.concurrency} in flight,"
        f" zero-latency fake server, {args.rounds} interleaved rounds; load average {load}"
    )
    headers = ["reader", "tokens/answer", "tok/s min", "tok/s median", "tok/s max"]
    headers += ["x minimal min", "x minimal median", "x lean min", "x lean median"]
    print(_common.table(headers, rows))
    print(f"x minimal: to the {BASE}; x lean: to the {LEAN if LEAN in rates else BASE}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--answers", type=int, default=320)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--stacks", action="store_true", help="add httpx, aiohttp, raw-bytes readers")
    p.add_argument("--sdk", action="store_true", help="add the openai SDK's stream (if installed)")
    asyncio.run(main(p.parse_args()))
