"""One bench request: streamed, timed piece by piece, counted only when finished.

A direct HTTP stream, not :class:`familiar.client.backend.SlotClient`: the bench measures the
server past the configured ``parallel`` (SlotClient would hold it to that cap), never
retries (a failure is a result), and times every piece of text as its bytes arrive. The
request asks for ``stream_options.include_usage`` so output tokens are the server's count.

The HTTP client is ``familiar.client.wire.HTTP`` (SlotClient's too where aiohttp is missing):
httpx2 (its connection pool stays cheap at hundreds of connections, where httpx 1.x
spends about 20 ms of CPU per request at concurrency 256 and would cap what a bench can
measure), else httpx. Clients, transports and exceptions all come from that module.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from familiar.client.wire import HTTP
from familiar.fleetcheck.results import Sample

Clock = Callable[[], float]
#: how a kept-alive connection the server closed meanwhile fails, before any answer
_STALE: tuple[type[Exception], ...] = (HTTP.RemoteProtocolError, HTTP.ReadError, HTTP.WriteError)


class SseEvents:
    """Incremental Server-Sent Events reader: feed bytes, get each ``data:`` payload."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        *lines, self._rest = (self._rest + data).split(b"\n")
        return [line[5:].strip() for line in lines if line.startswith(b"data:")]


class _Reading:
    """What a stream said so far."""

    __slots__ = ("choices", "finish", "gaps", "last", "pieces", "prompt", "tokens", "ttft")

    def __init__(self) -> None:
        self.ttft: float | None = None
        self.last = 0.0
        self.gaps: list[float] = []
        self.pieces = 0
        self.choices = 0
        self.finish: str | None = None
        self.tokens: int | None = None
        self.prompt: int | None = None

    def take(self, event: Any, at: float, start: float, chat: bool) -> None:
        if not isinstance(event, dict):
            raise ValueError("an event is not a JSON object")
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.tokens = _int(usage.get("completion_tokens"))
            self.prompt = _int(usage.get("prompt_tokens"))
        choices = event.get("choices")
        if not choices:
            return
        self.choices += 1
        choice = choices[0]
        if chat:
            delta = choice.get("delta") or {}
            piece = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        else:
            piece = choice.get("text")
        if piece:
            self.pieces += 1
            if self.ttft is None:
                self.ttft = at - start
            else:
                self.gaps.append(at - self.last)
            self.last = at
        if choice.get("finish_reason") is not None:
            self.finish = str(choice["finish_reason"])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def measure(
    client: Any,
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    chat: bool = True,
    clock: Clock = time.perf_counter,
) -> Sample:
    """POST ``body`` (a streamed completion request) to ``url`` and time the answer.

    A kept-alive connection that the server closed just as the request went out (it
    fails before any answer) is retried once on a new connection, within the same
    time budget and clock (``Sample.reconnected``); nothing else is retried.
    """
    read = _Reading()
    start = clock()
    error: str | None = None
    reconnected = False
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                answered = False
                try:
                    async with client.stream(
                        "POST", url, content=body, headers=headers
                    ) as response:
                        answered = True
                        if response.status_code != 200:
                            await response.aread()
                            error = f"HTTP {response.status_code}"
                        else:
                            events = SseEvents()
                            async for data in response.aiter_bytes():
                                at = clock()
                                for payload in events.feed(data):
                                    if payload != b"[DONE]":
                                        read.take(json.loads(payload), at, start, chat)
                    break
                except _STALE:
                    if answered or reconnected:
                        raise
                    reconnected = True
    except TimeoutError:
        error = f"timeout ({timeout_s:g} s)"
    except HTTP.TimeoutException:
        error = "stalled (no byte within stall_timeout_s) or connect timeout"
    except HTTP.HTTPError as exc:
        error = f"connection error ({type(exc).__name__})"
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        error = "malformed stream"
    end = clock()
    if error is None:
        if read.finish is None:
            error = "no finish_reason (cut off)" if read.choices else "no choices"
        elif read.pieces == 0:
            error = f"empty answer (finish_reason={read.finish})"
    if error is not None:
        return Sample(ok=False, e2e_s=end - start, error=error, reconnected=reconnected)
    return Sample(
        ok=True,
        e2e_s=end - start,
        ttft_s=read.ttft,
        itl_s=tuple(read.gaps),
        output_tokens=read.tokens if read.tokens is not None else read.pieces,
        prompt_tokens=read.prompt,
        reconnected=reconnected,
    )
