"""Where the microseconds of one streamed call go, phase by phase.

One chat answer of T tokens (one SSE event each) from the fake server in its own process,
N calls one after another on a kept-alive connection, for each HTTP client SlotClient can
use (aiohttp, httpx2). Each phase is timed with ``perf_counter_ns`` around the very code
``SlotClient`` runs (``familiar.client.transport``, ``familiar.client.reading``); the
median per call
is shown, and per event where the phase is per event:

* build request: the JSON body and headers
* send -> headers: ``Pipe.post`` until the status line and headers are in
* headers -> first event: until the first body chunk arrives
* read + parse events: the rest of the body, split into events, parsed into the ``Answer``
* of which parsing: the same bytes replayed from memory through the reader (no I/O)
* close + check: the connection back to the pool, ``check_finished``
* SlotClient around it: a whole ``SlotClient.chat`` minus its exchange (``post`` to the
  reply's close), call by call: seat, replica choice, the JSON body, timeouts, error
  mapping, ``check_finished``, the result

``--cprofile`` adds the functions that cost most in C concurrent SlotClient calls.

    python benchmarks/profile_stream.py [--tokens 200] [--calls 200] [--cprofile]
                                        [--concurrency 64] [--answers 320]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import _common  # puts the repo on sys.path

from familiar.client import transport
from familiar.client.backend import SlotClient
from familiar.client.reading import Answer, check_finished, read_events
from familiar.client.transport import Target, dumps
from familiar.client.wire import HTTP
from familiar.config.slots import Slot
from tests.support.fake_openai import spawn_fake_server

#: the stall limit the reader is given (a slot's default)
STALL_S = 60.0

PHASES = [
    "build request",
    "send -> headers",
    "headers -> first event",
    "read + parse events",
    "of which parsing (replayed)",
    "close + check",
    "SlotClient around it",
    "whole SlotClient.chat",
]
PER_EVENT = {"read + parse events", "of which parsing (replayed)"}


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def one_call(
    pipe: transport.Pipe, target: Target, msg: list[dict[str, str]], times: dict[str, list[int]]
) -> tuple[list[bytes], int]:
    ns = time.perf_counter_ns
    t0 = ns()
    payload = {"model": "m", "messages": msg, "stream": True}
    payload["stream_options"] = {"include_usage": True}
    content = dumps(payload).encode()
    headers = target.headers
    t1 = ns()
    reply = await pipe.post(target.chat, headers, content)
    t2 = ns()
    chunks = reply.chunks()
    first = await anext(chunks)
    t3 = ns()
    seen = [first]

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for c in chunks:
            seen.append(c)
            yield c

    acc = Answer()
    ended = await read_events(rest(), "chat", acc, t0 / 1e9, STALL_S)
    t4 = ns()
    await reply.close(ended)
    check_finished(acc, "bench", "r")
    t5 = ns()
    for name, dt in zip(
        [*PHASES[:4], "close + check"], [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4], strict=True
    ):
        times[name].append(dt)
    return seen, acc.chunks


async def profile_pipe(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    msg = [{"role": "user", "content": " ".join(f"w{i}" for i in range(args.tokens))}]
    limits = transport.Limits(4, 5.0, 60.0)
    pipe: transport.Pipe = (
        transport.AiohttpPipe(limits) if name == "aiohttp" else transport.HttpxPipe(limits)
    )
    target = Target.of(pipe, url, None)
    times: dict[str, list[int]] = {p: [] for p in PHASES}
    events = 0
    try:
        for _ in range(5):  # warm: the connection made, the code paths run
            await one_call(pipe, target, msg, {p: [] for p in PHASES})
        for _ in range(args.calls):
            seen, events = await one_call(pipe, target, msg, times)
            t = time.perf_counter_ns()
            await read_events(_replay(seen), "chat", Answer(), 0.0, STALL_S)
            times["of which parsing (replayed)"].append(time.perf_counter_ns() - t)
    finally:
        await pipe.aclose()
    slot = Slot(name="bench", url=url, model="m", parallel=4)
    forced = None if name == "aiohttp" else HTTP.AsyncHTTPTransport()
    async with SlotClient(slot, transport=forced) as client:
        timed = client._pipe = _TimedPipe(client._pipe)
        for _ in range(5):
            await client.chat(msg)
        for _ in range(args.calls):
            t = time.perf_counter_ns()
            await client.chat(msg)
            whole = time.perf_counter_ns() - t
            times["whole SlotClient.chat"].append(whole)
            times["SlotClient around it"].append(whole - timed.exchange_ns)
    med = {p: statistics.median(v) / 1000 for p, v in times.items() if v}
    return {"median_us": med, "events": events}


class _TimedPipe:
    """A SlotClient's pipe, timing its exchange: ``post`` to the reply's ``close``."""

    def __init__(self, pipe: transport.Pipe) -> None:
        self.pipe, self.name, self.exchange_ns, self._t = pipe, pipe.name, 0, 0

    def url(self, url: str) -> Any:
        return self.pipe.url(url)

    async def post(self, url: Any, headers: Any, content: bytes) -> Any:
        self._t = time.perf_counter_ns()
        return _TimedReply(self, await self.pipe.post(url, headers, content))

    def closed(self) -> None:
        self.exchange_ns = time.perf_counter_ns() - self._t

    async def aclose(self) -> None:
        await self.pipe.aclose()


class _TimedReply:
    def __init__(self, pipe: _TimedPipe, reply: Any) -> None:
        self.pipe, self.reply, self.status, self.headers = pipe, reply, reply.status, reply.headers

    def chunks(self) -> AsyncIterator[bytes]:
        chunks: AsyncIterator[bytes] = self.reply.chunks()
        return chunks

    async def body(self) -> bytes:
        content: bytes = await self.reply.body()
        return content

    async def close(self, reuse: bool) -> None:
        await self.reply.close(reuse)
        self.pipe.closed()


async def cprofile_slot_client(url: str, args: argparse.Namespace) -> str:
    msg = [{"role": "user", "content": " ".join(f"w{i}" for i in range(args.tokens))}]
    slot = Slot(name="bench", url=url, model="m", parallel=args.concurrency)
    async with SlotClient(slot) as client:
        await asyncio.gather(*(client.chat(msg) for _ in range(args.concurrency)))
        prof = cProfile.Profile()
        prof.enable()
        await asyncio.gather(*(client.chat(msg) for _ in range(args.answers)))
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


async def main(args: argparse.Namespace) -> None:
    names = ["aiohttp", "httpx2"] if transport.aiohttp is not None else ["httpx2"]
    with spawn_fake_server(latency_s=0.0, reply_mode="identity") as srv:
        results = {n: await profile_pipe(n, srv.url, args) for n in names}
        events = results[names[0]]["events"]
        rows = []
        for phase in PHASES:
            row: list[object] = [phase]
            for n in names:
                us = results[n]["median_us"][phase]
                total = results[n]["median_us"]["whole SlotClient.chat"]
                per = f"{us / events:.2f}" if phase in PER_EVENT else "-"
                row += [us, per, f"{100 * us / total:.0f}%"]
            rows.append(row)
        print(
            f"profile_stream: one streamed chat answer of {events} events"
            f" ({args.tokens} tokens), median of {args.calls} calls one at a time"
        )
        headers = ["phase"]
        for n in names:
            headers += [f"{n} us/call", f"{n} us/event", f"{n} share"]
        print(_common.table(headers, rows))
        for n in names:
            med = results[n]["median_us"]
            rate = events * 1e6 / med["whole SlotClient.chat"]
            print(f"{n}: {rate:.0f} events/s, one call at a time")
        if args.cprofile:
            print(f"\ncProfile: {args.answers} SlotClient calls, {args.concurrency} in flight")
            print(await cprofile_slot_client(srv.url, args))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--answers", type=int, default=320)
    asyncio.run(main(p.parse_args()))
