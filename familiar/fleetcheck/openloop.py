"""The bench's open loop (``familiar bench SLOT --rate R``), as ``vllm bench serve
--request-rate R``: requests arrive as a Poisson process of ``R`` requests per second
(exponential gaps of mean ``1/R``, seeded; ``inf``: all at once), whether or not earlier
ones have finished, instead of ``C`` workers each sending the next when one ends.

What the command may put in flight is still capped (vLLM's ``--max-concurrency``): by
default the seats of the deployment the bench holds, else the one ``--concurrency``
given. An arrival that finds the cap reached waits for a request to end; each request is
timed from when it is sent (TTFT, TPOT, ITL and e2e as the closed loop's), so the
*achieved* rate, requests really sent per second, says when the cap or the server held
the arrivals back. One level per rate, each with its warm-up request and ``--repeat``
runs, on one connection pool sized to the cap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from familiar.client.wire import HTTP
from familiar.fleetcheck.request import measure
from familiar.fleetcheck.results import Level, Sample, summarize
from familiar.fleetcheck.sweep import Sweep, done_line

KEYS = ("mean", "p50", "p99")
MAX_RATE = 1e6  # requests/s: past it the arrival times are below the clock's resolution


def parse_rates(text: str) -> list[float]:
    """``"0.5,2,inf"``: request rates per second, each above 0 (``inf``: all at once);
    ascending, each once. ``ValueError`` with the reason."""
    out: set[float] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"empty item in {text!r}")
        try:
            rate = math.inf if part.lower() in ("inf", "infinity") else float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number of requests per second or inf") from None
        if math.isnan(rate) or rate <= 0 or (MAX_RATE < rate < math.inf):
            raise ValueError(f"{part!r}: a rate must be above 0 and at most {MAX_RATE:g}, or inf")
        out.add(rate)
    return sorted(out)


def rate_name(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


class OpenLoop(Sweep):
    """Runs one open-loop level per rate against ``target`` (see the module docstring)."""

    async def run_rates(self, rates: Sequence[float], max_in_flight: int) -> list[Level]:
        if not rates:
            raise ValueError("no request rate to run")
        t = self.target
        async with HTTP.AsyncClient(
            transport=self._transport,
            timeout=HTTP.Timeout(t.stall_s, connect=t.connect_s),
            limits=HTTP.Limits(
                max_connections=max_in_flight, max_keepalive_connections=max_in_flight
            ),
        ) as client:
            return [await self.rate_level(client, rate, max_in_flight) for rate in rates]

    async def rate_level(self, client: Any, rate: float, cap: int) -> Level:
        """A warm-up request (not measured), then ``workload.repeat`` runs of
        ``workload.requests_at(cap)`` Poisson arrivals at ``rate``, at most ``cap`` in
        flight."""
        if self.workload.warmup:
            await self._warmup(client)
        samples: list[Sample] = []
        duration = 0.0
        runs: list[float] = []
        sent_rates: list[float] = []
        peak = 0
        repeat = self.workload.repeat
        for r in range(repeat):
            got, took, sent, most = await self._open_once(client, rate, cap, r, repeat)
            samples.extend(got)
            duration += took
            peak = max(peak, most)
            if len(sent) > 1 and sent[-1] > sent[0]:
                sent_rates.append((len(sent) - 1) / (sent[-1] - sent[0]))
            if repeat > 1:
                runs.append(sum(s.output_tokens for s in got if s.ok) / took if took > 0 else 0.0)
        level = dataclasses.replace(
            summarize(cap, samples, duration, runs),
            rate=rate,
            achieved_rate=sum(sent_rates) / len(sent_rates) if sent_rates else None,
            max_in_flight=peak,
        )
        achieved = "-" if level.achieved_rate is None else f"{level.achieved_rate:.2f}"
        self._progress(f"{done_line(level)}, sent at {achieved} req/s, {peak} in flight at most")
        return level

    async def _open_once(
        self, client: Any, rate: float, cap: int, run: int, repeat: int
    ) -> tuple[list[Sample], float, list[float], int]:
        """One run: (samples, wall time, send times in order, most requests in flight)."""
        n = self.workload.requests_at(cap)
        first = self._next
        self._next += n
        arrivals = random.Random(f"{self.workload.seed}/{rate}/{run}")
        samples: list[Sample] = []
        sent: list[float] = []
        gate = asyncio.Semaphore(cap)
        headers = self.target.headers(self.run_id)
        urls = [u.rstrip("/") + "/chat/completions" for u in self.target.urls]
        of = f" (run {run + 1} of {repeat})" if repeat > 1 else ""
        self._progress(f"rate {rate_name(rate)}/s: {n} requests, at most {cap} in flight{of} ...")
        in_flight = peak = 0
        start = last_note = self._clock()

        async def one(i: int) -> None:
            nonlocal in_flight, peak, last_note
            async with gate:
                in_flight += 1
                peak = max(peak, in_flight)
                sent.append(self._clock())
                try:
                    samples.append(
                        await measure(
                            client,
                            urls[i % len(urls)],
                            self.workload.body(self.target, i),
                            headers=headers,
                            timeout_s=self.target.timeout_s,
                            clock=self._clock,
                        )
                    )
                finally:
                    in_flight -= 1
            now = self._clock()
            if now - last_note >= self._every and len(samples) < n:
                last_note = now
                failed = sum(1 for s in samples if not s.ok)
                self._progress(f"  {len(samples)}/{n} done, {failed} failed")

        async with asyncio.TaskGroup() as group:
            due = start
            for k in range(n):
                if k and not math.isinf(rate):
                    due += arrivals.expovariate(rate)
                    delay = due - self._clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                group.create_task(one(first + k))
        return samples, self._clock() - start, sent, peak


def rate_text(run: Mapping[str, Any], levels: Sequence[Level]) -> str:
    """The per-rate table of an open-loop bench (pure)."""
    from familiar.fleetcheck.report import ms, table

    headers = [
        "rate", "sent/s", "in flight", "ok", "failed", "req/s", "out tok/s",
        "mean", "p50", "p99", "mean", "p50", "p99", "mean", "p50", "p99",
    ]  # fmt: skip
    rows = []
    for lv in levels:
        rows.append(
            [
                rate_name(lv.rate if lv.rate is not None else math.nan),
                "-" if lv.achieved_rate is None else f"{lv.achieved_rate:.2f}",
                f"{lv.max_in_flight}/{lv.concurrency}",
                str(lv.ok),
                str(lv.failed),
                f"{lv.req_per_s:.2f}",
                f"{lv.output_tok_per_s:.1f}",
                *(ms(getattr(s, k)) for s in (lv.ttft, lv.tpot, lv.e2e) for k in KEYS),
            ]
        )
    names = ("TTFT ms", "TPOT ms", "E2E ms")
    groups = [(7 + 3 * g, 9 + 3 * g, name) for g, name in enumerate(names)]
    server = run.get("server") or {}
    version = server.get("version") if isinstance(server, dict) else None
    requests = sum(lv.requests for lv in levels)
    failed = sum(lv.failed for lv in levels)
    took = run.get("duration_s")
    wall = f" in {float(took):.1f} s" if isinstance(took, int | float) else ""
    return "\n".join(
        [
            f"bench {run.get('slot')} (open loop, Poisson arrivals): {run.get('model')}"
            f" ({run.get('runtime')}{' ' + version if version else ''}) at"
            f" {', '.join(run.get('url') or [])}",
            table(headers, rows, groups),
            f"{len(levels)} rate(s), {requests} measured request(s), {failed} failed,"
            f" {sum(lv.output_tokens for lv in levels)} output tokens{wall}; in flight: most"
            " seen / the cap; sent/s below rate: the cap or the server held arrivals back",
        ]
    )
