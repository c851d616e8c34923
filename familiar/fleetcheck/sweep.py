"""The bench's sweep: per concurrency level, N streamed requests with C in flight.

Each level runs ``C`` worker tasks in one ``TaskGroup`` pulling request numbers from one
shared counter (no queue: nothing waits that is not in flight), so exactly ``C`` requests
are in flight until the last ``C``. Requests go round robin over the slot's replicas.
Prompts are numbered across the whole sweep, so no two requests share a prompt.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from familiar.client.wire import HTTP
from familiar.config.runtimes import RUNTIMES
from familiar.fleetcheck.prompts import synthetic_prompt
from familiar.fleetcheck.request import Clock, measure
from familiar.fleetcheck.results import Level, Sample, summarize

Progress = Callable[[str], None]
#: runtimes that take ``ignore_eos`` (every answer exactly ``max_tokens`` long)
IGNORE_EOS_RUNTIMES = frozenset(n for n, r in RUNTIMES.items() if r.ignore_eos)


@dataclass(frozen=True)
class Target:
    """The deployment under test."""

    slot: str
    urls: tuple[str, ...]
    model: str
    runtime: str
    api_key: str | None = None
    timeout_s: float = 300.0
    stall_s: float = 60.0
    connect_s: float = 10.0

    def headers(self, run_id: str) -> dict[str, str]:
        out = {"Content-Type": "application/json", "X-Correlation-ID": run_id}
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        return out


@dataclass(frozen=True)
class Workload:
    """What every request asks: synthetic prompts of ``input_tokens`` (or ``prompts``,
    cycled), ``output_tokens`` to generate; ``requests`` per level, never fewer than the
    level's concurrency (None: 4 x C, at least 8)."""

    input_tokens: int = 512
    output_tokens: int = 128
    prompts: tuple[str, ...] | None = None
    requests: int | None = None
    seed: int = 0
    #: runs of every level (their samples pooled; the spread of their throughput kept)
    repeat: int = 1
    #: one unmeasured request before every level (caches, connections, lazy loading)
    warmup: bool = True

    def requests_at(self, concurrency: int) -> int:
        if self.requests is not None:
            return max(self.requests, concurrency)  # else the level never has C in flight
        return max(8, 4 * concurrency)

    def prompt(self, index: int) -> str:
        if self.prompts:
            return self.prompts[index % len(self.prompts)]
        return synthetic_prompt(index, self.input_tokens, seed=self.seed)

    def body(self, target: Target, index: int) -> bytes:
        body: dict[str, Any] = {
            "model": target.model,
            "messages": [{"role": "user", "content": self.prompt(index)}],
            "max_tokens": self.output_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if target.runtime in IGNORE_EOS_RUNTIMES:
            body["ignore_eos"] = True
        return json.dumps(body).encode()

    def settings(self) -> dict[str, Any]:
        return {
            "input_tokens": None if self.prompts else self.input_tokens,
            "prompts": len(self.prompts) if self.prompts else None,
            "output_tokens": self.output_tokens,
            "requests_per_level": self.requests,
            "repeat": self.repeat,
            "warmup": self.warmup,
        }


class Sweep:
    """Runs levels one after another against ``target``; ``transport`` (one of
    ``familiar.client.wire.HTTP``'s) is injectable."""

    def __init__(
        self,
        target: Target,
        workload: Workload,
        *,
        run_id: str = "bench",
        transport: Any = None,
        progress: Progress | None = None,
        clock: Clock = time.perf_counter,
        progress_every_s: float = 5.0,
    ) -> None:
        self.target = target
        self.workload = workload
        self.run_id = run_id
        self._transport = transport
        self._progress = progress or (lambda _line: None)
        self._clock = clock
        self._every = progress_every_s
        self._next = 0  # the next prompt number

    async def run(self, levels: Sequence[int]) -> list[Level]:
        if not levels:
            raise ValueError("no concurrency level to run")
        t = self.target
        size = max(levels)
        async with HTTP.AsyncClient(
            transport=self._transport,
            timeout=HTTP.Timeout(t.stall_s, connect=t.connect_s),
            limits=HTTP.Limits(max_connections=size, max_keepalive_connections=size),
        ) as client:
            out = []
            for concurrency in levels:
                level = await self.level(client, concurrency)
                out.append(level)
        return out

    async def level(self, client: Any, concurrency: int) -> Level:
        """One level: a warm-up request (not measured), then ``workload.repeat`` runs of
        ``workload.requests_at(concurrency)`` requests, that many in flight."""
        if self.workload.warmup:
            await self._warmup(client)
        samples: list[Sample] = []
        duration = 0.0
        runs: list[float] = []
        repeat = self.workload.repeat
        for r in range(repeat):
            got, took = await self._run_once(client, concurrency, r, repeat)
            samples.extend(got)
            duration += took
            if repeat > 1:
                runs.append(sum(s.output_tokens for s in got if s.ok) / took if took > 0 else 0.0)
        level = summarize(concurrency, samples, duration, runs)
        self._progress(done_line(level))
        return level

    async def _warmup(self, client: Any) -> None:
        index = self._next
        self._next += 1
        url = self.target.urls[index % len(self.target.urls)].rstrip("/") + "/chat/completions"
        sample = await measure(
            client,
            url,
            self.workload.body(self.target, index),
            headers=self.target.headers(self.run_id),
            timeout_s=self.target.timeout_s,
            clock=self._clock,
        )
        if not sample.ok:
            self._progress(f"warm-up request failed ({sample.error}); measuring anyway")

    async def _run_once(
        self, client: Any, concurrency: int, run: int, repeat: int
    ) -> tuple[list[Sample], float]:
        n = self.workload.requests_at(concurrency)
        first = self._next
        self._next += n
        numbers: Iterator[int] = iter(range(first, first + n))
        samples: list[Sample] = []
        headers = self.target.headers(self.run_id)
        urls = [u.rstrip("/") + "/chat/completions" for u in self.target.urls]
        of = f" (run {run + 1} of {repeat})" if repeat > 1 else ""
        self._progress(f"concurrency {concurrency}: {n} requests{of} ...")
        start = last_note = self._clock()

        async def worker() -> None:
            nonlocal last_note
            for i in numbers:
                body = self.workload.body(self.target, i)
                samples.append(
                    await measure(
                        client,
                        urls[i % len(urls)],
                        body,
                        headers=headers,
                        timeout_s=self.target.timeout_s,
                        clock=self._clock,
                    )
                )
                now = self._clock()
                if now - last_note >= self._every and len(samples) < n:
                    last_note = now
                    failed = sum(1 for s in samples if not s.ok)
                    self._progress(f"  {len(samples)}/{n} done, {failed} failed")

        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, n)):
                group.create_task(worker())
        return samples, self._clock() - start


def done_line(lv: Level) -> str:
    ttft = "-" if lv.ttft.p99 is None else f"{lv.ttft.p99:.0f} ms"
    failed = f", {lv.failed} failed" if lv.failed else ""
    first_error = next(iter(lv.errors), None)
    why = f" ({first_error})" if first_error else ""
    if lv.runs_tok_per_s:
        why += f", runs {min(lv.runs_tok_per_s):.1f} .. {max(lv.runs_tok_per_s):.1f} tok/s"
    return (
        f"  {lv.ok} ok{failed}{why}: {lv.output_tok_per_s:.1f} output tok/s,"
        f" {lv.req_per_s:.2f} req/s, TTFT p99 {ttft}, {lv.duration_s:.1f} s"
    )
