"""Telemetry to Vector: events with correlation ids, never blocking the work.

``Telemetry.emit()`` is synchronous and never awaits: the event goes into a bounded
in-memory buffer (or, when that is full, straight to the spill file). A background
task POSTs batches as one compact JSON array to Vector's ``http_server`` source,
flushing by size and by interval, with tenacity retries on connect errors, 5xx and
429. A 400 or 413 answer splits the batch; a single event still refused is dropped
and counted, never retried forever. When Vector is away, batches go to a JSONL spill
file under ``FAMILIAR_HOME/telemetry``, replayed in order, once, as soon as Vector
answers again (this run, the next, or ``familiar telemetry flush``). On close: flush
within a deadline, spill the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from familiar.backend import CallEvent
from familiar.context import correlation_id
from familiar.logs import mask
from familiar.store import read_json, write_json_atomic, write_text_atomic

log = structlog.get_logger("familiar.telemetry")

DEFAULT_URL = "http://127.0.0.1:8687/telemetry"
SERVICE = "familiar"
_HOST = socket.gethostname()
current_span: ContextVar[str | None] = ContextVar("familiar_span", default=None)


_VERSION: list[str] = []


def _version() -> str:
    if not _VERSION:
        from familiar import __version__

        _VERSION.append(__version__)
    return _VERSION[0]


def new_id() -> str:
    return uuid.uuid4().hex


def new_span_id() -> str:
    return f"{random.getrandbits(64):016x}"


def make_event(
    name: str,
    fields: Mapping[str, Any] | None = None,
    *,
    span_id: str | None = None,
    parent_span_id: str | None = None,
) -> dict[str, Any]:
    """One event: the common fields, then ``fields`` (secrets masked in strings)."""
    event: dict[str, Any] = {
        "event_id": new_id(),
        "ts": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "event": name,
        "correlation_id": correlation_id.get(),
        "span_id": span_id or new_span_id(),
        "parent_span_id": parent_span_id if parent_span_id is not None else current_span.get(),
        "service": SERVICE,
        "version": _version(),
        "host": _HOST,
    }
    for key, value in (fields or {}).items():
        event[key] = mask(value) if isinstance(value, str) else value
    return event


def llm_call_fields(e: CallEvent) -> dict[str, Any]:
    """A CallEvent in telemetry's vocabulary (OpenTelemetry GenAI names where they exist)."""
    return {
        "role": e.role,
        "slot": e.slot,
        "replica": e.replica,
        "runtime": e.runtime,
        "gen_ai.operation.name": "chat" if e.kind == "chat" else "text_completion",
        "gen_ai.request.model": e.model,
        "status": e.status,
        "error.type": e.error_type,
        "http.response.status_code": e.http_status,
        "latency_ms": round(e.latency_s * 1000, 2),
        "ttft_ms": None if e.ttft_s is None else round(e.ttft_s * 1000, 2),
        "queue_wait_ms": round(e.queue_wait_s * 1000, 2),
        "gen_ai.usage.input_tokens": e.prompt_tokens,
        "gen_ai.usage.output_tokens": e.completion_tokens,
        "gen_ai.response.finish_reasons": [e.finish_reason] if e.finish_reason else [],
        "attempt": e.attempt,
        "seats_in_use": e.seats_in_use,
        "seats_total": e.seats_total,
    }


class TelemetryUnavailable(Exception):
    """Vector is away or overloaded: try again later."""


_Retryable = TelemetryUnavailable


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


class Telemetry:
    """The sender. ``async with Telemetry(home) as t: t.emit("session.start", {...})``."""

    def __init__(
        self,
        home: Path,
        *,
        url: str | None = None,
        enabled: bool | None = None,
        content: bool = False,
        buffer_size: int = 10_000,
        batch_size: int = 200,
        interval_s: float = 1.0,
        close_deadline_s: float = 3.0,
        attempts: int = 3,
        spill_max_bytes: int = 64 * 1024 * 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        env_off = os.environ.get("FAMILIAR_TELEMETRY", "").lower() in {"off", "0", "false", "no"}
        self.enabled = (not env_off) if enabled is None else enabled
        self.url = url or os.environ.get("FAMILIAR_TELEMETRY_URL") or DEFAULT_URL
        self.content = content
        self.dir = home / "telemetry"
        self.spill_path = self.dir / "spill.jsonl"
        self.stats_path = self.dir / "stats.json"
        self._buffer: deque[dict[str, Any]] = deque()
        self._buffer_size = buffer_size
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.close_deadline_s = close_deadline_s
        self.attempts = attempts
        self.spill_max_bytes = spill_max_bytes
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._spill_pending = False
        self._closing = False
        self._retry_at = 0.0
        self.counts = {"emitted": 0, "sent": 0, "spilled": 0, "replayed": 0, "dropped": 0}

    # -- emitting (synchronous, never blocks the work) --------------------------------

    def emit(self, name: str, fields: Mapping[str, Any] | None = None, **span: Any) -> None:
        if not self.enabled:
            return
        self.counts["emitted"] += 1
        event = make_event(name, fields, **span)
        if len(self._buffer) >= self._buffer_size:
            self._spill([event])  # the buffer is full: keep the event on disk instead
            return
        self._buffer.append(event)
        if self._wake is not None and len(self._buffer) >= self.batch_size:
            self._wake.set()

    def hook(self, event: CallEvent) -> None:
        """A SlotClient hook: one ``llm.call`` event per HTTP attempt."""
        self.emit("llm.call", llm_call_fields(event))

    @contextmanager
    def span(self, name: str, fields: Mapping[str, Any] | None = None) -> Iterator[str]:
        """Emit ``name`` and make its span the parent of everything inside."""
        span_id = new_span_id()
        self.emit(name, fields, span_id=span_id)
        token = current_span.set(span_id)
        try:
            yield span_id
        finally:
            current_span.reset(token)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Telemetry:
        if self.enabled:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=5.0, trust_env=False
            )
            self._wake = asyncio.Event()
            self._spill_pending = self.spill_path.exists()
            self._task = asyncio.create_task(self._run(), name="telemetry-sender")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush what is buffered within the deadline; spill whatever is left."""
        task = self._task
        if task is None:
            return
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.close_deadline_s)
        except TimeoutError:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        finally:
            self._task = None
            if self._buffer:
                self._spill(list(self._buffer))
                self._buffer.clear()
            if self._client is not None:
                await self._client.aclose()
            self._save_stats()

    async def _run(self) -> None:
        """The sender loop: flush by size (woken) or by interval; last flush on close.

        While the receiver is away, events spill and the next try waits longer
        (interval doubling up to 30 s), so a missing Vector costs next to nothing.
        """
        assert self._wake is not None
        pause = self.interval_s
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=pause)
            self._wake.clear()
            if self._closing or time.monotonic() >= self._retry_at:
                try:
                    await self._flush_all()
                    pause = self.interval_s
                except (_Retryable, httpx.HTTPError) as exc:
                    log.debug("telemetry receiver unavailable; spilling", error=str(exc))
                    pause = min(pause * 2, 30.0)
                    self._retry_at = time.monotonic() + pause
            if self._buffer and time.monotonic() < self._retry_at:
                self._spill(list(self._buffer))
                self._buffer.clear()
            if self._closing:
                return

    async def _flush_all(self) -> None:
        if self._spill_pending:
            await self.replay()
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            try:
                await self._deliver(batch)
            except BaseException:
                self._buffer.extendleft(reversed(batch))
                raise

    # -- delivery -------------------------------------------------------------------------

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        assert self._client is not None
        body = json.dumps(batch, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            resp = await self._client.post(
                self.url, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError as exc:
            raise _Retryable(str(exc)) from exc
        if resp.status_code in (400, 413):
            raise _Refused(resp.status_code)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}")
        if resp.status_code >= 300:
            raise _Refused(resp.status_code)

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """POST with retries; split refused batches; drop a refused single event."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(batch)
        except _Refused as refused:
            if len(batch) > 1:
                half = len(batch) // 2
                await self._deliver(batch[:half])
                await self._deliver(batch[half:])
                return
            self.counts["dropped"] += 1
            log.error(
                "telemetry event refused and dropped",
                status=refused.status,
                event_name=batch[0].get("event"),
            )
            if batch[0].get("event") != "telemetry.dropped":
                self.emit("telemetry.dropped", {"dropped": 1, "reason": f"HTTP {refused.status}"})
            return
        self.counts["sent"] += len(batch)

    # -- spill and replay -------------------------------------------------------------------

    def _spill(self, events: list[dict[str, Any]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            size = self.spill_path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size >= self.spill_max_bytes:  # Vector has been away for long: bound the disk
            if not self.counts["dropped"]:
                log.warning(
                    "telemetry spill file full; dropping events",
                    path=str(self.spill_path),
                    max_bytes=self.spill_max_bytes,
                )
            self.counts["dropped"] += len(events)
            return
        with self.spill_path.open("a", encoding="utf-8") as fh:
            for event in events:
                fh.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n")
        self.counts["spilled"] += len(events)
        self._spill_pending = True

    def backlog(self) -> int:
        if not self.spill_path.exists():
            return 0
        with self.spill_path.open(encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())

    async def replay(self) -> int:
        """Send the spill file in order; what was sent is removed from it. Returns count."""
        if not self.spill_path.exists():
            self._spill_pending = False
            return 0
        lines = [
            ln for ln in self.spill_path.read_text(encoding="utf-8").splitlines() if ln.strip()
        ]
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                self.counts["dropped"] += 1  # a torn last line from a crash
        sent = 0
        try:
            while sent < len(events):
                batch = events[sent : sent + self.batch_size]
                await self._deliver(batch)
                sent += len(batch)
                self.counts["replayed"] += len(batch)
        finally:
            rest = events[sent:]
            if rest:
                write_text_atomic(
                    self.spill_path,
                    "".join(
                        json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n"
                        for e in rest
                    ),
                )
            else:
                self.spill_path.unlink(missing_ok=True)
                self._spill_pending = False
        return sent

    async def flush_spill(self) -> int:
        """Replay the spill file now, outside any run (``familiar telemetry flush``)."""
        async with httpx.AsyncClient(
            transport=self._transport, timeout=5.0, trust_env=False
        ) as client:
            self._client = client
            try:
                return await self.replay()
            finally:
                self._client = None
                self._save_stats()

    def _save_stats(self) -> None:
        totals = self.load_stats()
        for key in ("sent", "spilled", "replayed", "dropped"):
            totals[key] = totals.get(key, 0) + self.counts[key]
        totals["updated"] = time.time()
        write_json_atomic(self.stats_path, totals)

    def load_stats(self) -> dict[str, Any]:
        if not self.stats_path.exists():
            return {}
        try:
            data: dict[str, Any] = read_json(self.stats_path)
            return data
        except (OSError, ValueError):
            return {}
