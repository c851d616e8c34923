"""The sender: ``Telemetry`` buffers events, a background task delivers them, close flushes.

Owns the in-memory buffer, the sender task (flush by size and interval, back-off while
the receiver is away), spilling and replaying through :class:`SpillFile`, the counts
(totals in ``stats.json``), and closing within a deadline. POSTing is :class:`Delivery`'s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import structlog

from familiar.client.backend import CallEvent
from familiar.context import current_span
from familiar.errors import TelemetryUnavailable
from familiar.logs import register_url_secrets
from familiar.telemetry.delivery import Delivery
from familiar.telemetry.events import dumps, llm_call_fields, make_event, new_span_id
from familiar.telemetry.spill import SpillFile
from familiar.telemetry.stats import TOTALS, add_totals, read_totals

log = structlog.get_logger("familiar.telemetry")

DEFAULT_URL = "http://127.0.0.1:8687/telemetry"


async def _wait_through_cancel(task: asyncio.Task[None], within_s: float) -> BaseException | None:
    """Wait up to ``within_s`` seconds for ``task``, even through cancellations of the caller.

    Returns the caller's last ``CancelledError`` (to be re-raised once the work is
    closed), or None.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    cancelled: BaseException | None = None
    while not task.done() and (left := deadline - loop.time()) > 0:
        try:
            await asyncio.wait({task}, timeout=left)
        except asyncio.CancelledError as exc:
            cancelled = exc
    return cancelled


class Telemetry:
    """The sender. ``async with Telemetry(home) as t: t.emit("session.start", {...})``.

    ``counts``: ``emitted``, ``sent`` (POSTed live), ``spilled``, ``replayed`` (sent from
    the spill file), ``dropped`` (refused or past the spill cap), ``refused`` (the part of
    ``dropped`` a receiver answered 4xx), ``corrupt`` (spill lines skipped as unreadable).
    """

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
        register_url_secrets(self.url)  # a remote receiver's password, and its Basic form
        self.content = content
        self.dir = home / "telemetry"
        self.spill = SpillFile(self.dir, spill_max_bytes)
        self.spill_path = self.spill.path
        self.stats_path = self.dir / "stats.json"
        self._buffer: deque[dict[str, Any]] = deque()
        self._buffer_size = buffer_size
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.close_deadline_s = close_deadline_s
        self.attempts = attempts
        self._transport = transport
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._spill_pending = False
        self._closing = False
        self._retry_at = 0.0
        self._spill_warned = False
        self.counts = dict.fromkeys(("emitted", *TOTALS), 0)
        self._saved = dict.fromkeys(TOTALS, 0)
        self._delivery = Delivery(self.url, attempts, self.counts)

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
            self._delivery.client = httpx.AsyncClient(
                transport=self._transport, timeout=5.0, trust_env=False
            )
            self._wake = asyncio.Event()
            self._spill_pending = self.spill_path.exists()
            self._task = asyncio.create_task(self._run(), name="telemetry-sender")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush what is buffered within the deadline; spill whatever is left.

        Called while the caller is being cancelled (Ctrl-C, SIGTERM), it still flushes
        within ``close_deadline_s``, then re-raises any cancellation it absorbed.
        """
        task = self._task
        if task is None:
            return
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        # interrupted (Ctrl-C, SIGTERM): the command must end within a second, so the
        # flush gets half of one; what it cannot send is spilled, not lost
        me = asyncio.current_task()
        interrupted = me is not None and me.cancelling() > 0
        deadline = min(self.close_deadline_s, 0.5) if interrupted else self.close_deadline_s
        cancelled = await _wait_through_cancel(task, deadline)
        if not task.done():
            task.cancel()  # past the deadline: the sender puts its batch back, spilled below
            cancelled = await _wait_through_cancel(task, 0.1 if interrupted else 1.0) or cancelled
        self._task = None
        if self._buffer:
            self._spill(list(self._buffer))
            self._buffer.clear()
        self._delivery.warn_refused()
        self._save_stats()
        if self._delivery.client is not None:
            try:
                await self._delivery.client.aclose()
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled
        if task.done() and not task.cancelled() and (failure := task.exception()):
            raise failure

    async def _run(self) -> None:
        """The sender loop: flush by size (woken) or by interval; last flush on close.

        While the receiver is away, events spill and the next try waits longer
        (interval doubling up to 30 s), so a missing Vector costs next to nothing.
        """
        assert self._wake is not None
        pause = self.interval_s
        while True:
            with suppress(TimeoutError):  # (asyncio.timeout: a cancellation is never lost)
                async with asyncio.timeout(pause):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing or time.monotonic() >= self._retry_at:
                try:
                    await self._flush_all()
                    pause = self.interval_s
                except (TelemetryUnavailable, httpx.HTTPError) as exc:
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
        await self._flush_buffer()

    async def _flush_buffer(self) -> None:
        """Send the buffer; then one ``telemetry.dropped`` event for what was refused."""
        while True:
            while self._buffer:
                n = min(self.batch_size, len(self._buffer))
                batch = [self._buffer.popleft() for _ in range(n)]
                try:
                    await self._delivery.deliver(batch)
                except BaseException:
                    self._buffer.extendleft(reversed(batch))
                    raise
            notice = self._delivery.take_unannounced()
            if notice is None:
                return
            self.emit("telemetry.dropped", notice)

    # -- spill and replay -------------------------------------------------------------------

    def _spill(self, events: list[dict[str, Any]]) -> None:
        data = b"".join(dumps(event) + b"\n" for event in events)
        try:
            kept = self.spill.append(data)
            problem = "spill file full (Vector away for long)"
        except OSError as exc:
            kept, problem = False, f"spill file unwritable: {exc}"
        if not kept:
            if not self._spill_warned:
                self._spill_warned = True
                log.warning(
                    f"telemetry {problem}; dropping events",
                    path=str(self.spill_path),
                    max_bytes=self.spill.max_bytes,
                )
            self.counts["dropped"] += len(events)
            return
        self.counts["spilled"] += len(events)
        self._spill_pending = True

    def spill_info(self) -> dict[str, int]:
        """``{"backlog": events in the spill file, "corrupt": unreadable lines waiting}``;
        never raises (an unreadable file reads as what could be counted)."""
        return self.spill.info()

    def backlog(self) -> int:
        """Events waiting in the spill file; never raises."""
        return self.spill_info()["backlog"]

    async def replay(self) -> int:
        """Send the spill file in order (see :meth:`SpillFile.replay`); returns the count."""
        try:
            sent, done = await self.spill.replay(
                self._delivery.deliver, self.batch_size, self.counts
            )
        except OSError as exc:
            sent, done = 0, True  # not again this run
            log.warning(
                "telemetry spill file unreadable", path=str(self.spill_path), error=str(exc)
            )
        if done:
            self._spill_pending = False
        return sent

    async def flush_spill(self) -> int:
        """Replay the spill file now, outside any run (``familiar telemetry flush``)."""
        async with httpx.AsyncClient(
            transport=self._transport, timeout=5.0, trust_env=False
        ) as client:
            self._delivery.client = client
            try:
                sent = await self.replay()
                with suppress(TelemetryUnavailable, httpx.HTTPError):
                    await self._flush_buffer()  # the telemetry.dropped notice, if any
                return sent
            finally:
                self._delivery.client = None
                if self._buffer:
                    self._spill(list(self._buffer))
                    self._buffer.clear()
                self._delivery.warn_refused()
                self._save_stats()

    def _save_stats(self) -> None:  # this instance's counts since the last save
        add_totals(self.stats_path, self.spill, self.counts, self._saved)

    def load_stats(self) -> dict[str, Any]:
        """The totals in ``stats.json`` (empty if missing or unreadable)."""
        return read_totals(self.stats_path)
