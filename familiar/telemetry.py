"""Telemetry to Vector: events with correlation ids, never blocking the work.

``Telemetry.emit()`` is synchronous and never awaits: the event goes into a bounded
in-memory buffer (or, when that is full, straight to the spill file). A background
task POSTs batches as one compact JSON array to Vector's ``http_server`` source,
flushing by size and by interval, with tenacity retries on connect errors, 5xx and
429. A 400, 413 or other 4xx answer splits the batch; a single event still refused is
dropped and counted, never retried forever: one ``telemetry.dropped`` event per flush
carries the count, and one warning line at close names it.

When Vector is away, events go to ``FAMILIAR_HOME/telemetry/spill.jsonl``
(:class:`SpillFile`), replayed in order, once, as soon as Vector answers again (this
run, the next, or ``familiar telemetry flush``). The spill file survives crashes and
concurrent familiar processes: every spill call is one ``O_APPEND`` write under an
``flock``; a replay sends batches and records its progress in ``spill.offset`` after
each delivered batch, so a replay killed half-way resumes where it stopped; lines that
do not read back as a JSON object are skipped and counted (``corrupt``), never fatal.
On close, even while the caller is being cancelled: flush within a deadline, spill the
rest, then re-raise the caller's cancellation.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from familiar.backend import CallEvent
from familiar.context import correlation_id
from familiar.errors import TelemetryUnavailable
from familiar.logs import mask, mask_any
from familiar.store import read_json, write_bytes_atomic, write_json_atomic

log = structlog.get_logger("familiar.telemetry")

DEFAULT_URL = "http://127.0.0.1:8687/telemetry"
SERVICE = "familiar"
_HOST = socket.gethostname()
current_span: ContextVar[str | None] = ContextVar("familiar_span", default=None)
#: counters kept across runs in ``stats.json``
_TOTALS = ("sent", "spilled", "replayed", "dropped", "refused", "corrupt")
Counts = MutableMapping[str, int]


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
    """One event: the common fields, then ``fields`` (secrets masked in every string)."""
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
        if isinstance(value, str):
            value = mask(value)
        elif isinstance(value, dict | list | tuple):  # nested strings too (rare: walk only then)
            value = mask_any(value)
        event[key] = value
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


def _dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; other values become ``str()``, lone surrogates ``?``."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8", "replace")


def _parse(line: bytes) -> dict[str, Any] | None:
    """One spill line as an event; ``None`` if it is not UTF-8 JSON of an object."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def _lines(fh: IO[bytes], start: int, size: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(end offset, event or None if corrupt)`` for each non-blank line in ``[start, size)``.

    A final line without ``\\n`` (torn by a crash) is read as a line. When ``start`` is
    not at a line start (it follows a torn line already passed), the rest of that line is
    skipped (corrupt if it is not blank).
    """
    pos = start
    if start > 0:
        fh.seek(start - 1)
        if fh.read(1) != b"\n":
            rest = fh.readline(max(size - pos, 0))
            pos += len(rest)
            if rest.strip():
                yield pos, None
    fh.seek(pos)
    while pos < size:
        line = fh.readline(size - pos)
        pos += len(line)
        if line.strip():
            yield pos, _parse(line)


class SpillFile:
    """``spill.jsonl`` with its replay offset (``spill.offset``) and locks, in one directory.

    Appends and file removal hold ``spill.lock`` (``flock``, exclusive, a few syscalls
    long); a replay holds ``replay.lock`` for its whole length, taken without waiting, so
    that one process at a time replays. Appends only ever add whole lines at the end, so
    every byte below a size read under ``spill.lock`` is complete and stays as it is.
    ``spill.offset`` holds the byte offset of the first undelivered line (absent: 0).
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.path = directory / "spill.jsonl"
        self.offset_path = directory / "spill.offset"
        self.max_bytes = max_bytes

    @contextmanager
    def lock(self, name: str = "spill.lock", *, wait: bool = True) -> Iterator[bool]:
        """An exclusive ``flock`` on ``name``: yields False if busy and ``wait`` is False.

        Where no lock can be had (read-only directory, no ``flock``), goes on unlocked.
        """
        fd, free = -1, True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            free = False
        except OSError as exc:
            log.debug("telemetry lock unavailable; going on without", lock=name, error=str(exc))
        try:
            yield free
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock

    def append(self, data: bytes) -> bool:
        """Append whole lines with one write; False (nothing written) past ``max_bytes``."""
        with self.lock():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                size = os.fstat(fd).st_size
                if size >= self.max_bytes:
                    return False
                if size == 0:
                    self.offset_path.unlink(missing_ok=True)  # left by a crash: not this file's
                elif os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # end a torn last line, so it keeps to itself
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        return True

    def _offset(self, size: int) -> int:
        try:
            offset = int(self.offset_path.read_bytes().strip() or b"0")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("telemetry spill offset unreadable; from the start", error=str(exc))
            return 0
        if not 0 <= offset <= size:
            log.warning("telemetry spill offset past the end; from the start", offset=offset)
            return 0
        return offset

    def snapshot(self, fh: IO[bytes]) -> tuple[int, int]:
        """``(offset of the first undelivered line, size)`` of the open spill file."""
        with self.lock():
            size = os.fstat(fh.fileno()).st_size
            return self._offset(size), size

    def info(self) -> dict[str, int]:
        """``{"backlog": events waiting, "corrupt": unreadable lines waiting}``; never raises."""
        good = bad = 0
        try:
            with self.path.open("rb") as fh:
                start, size = self.snapshot(fh)
                for _, event in _lines(fh, start, size):
                    good, bad = (good + 1, bad) if event is not None else (good, bad + 1)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("telemetry spill file unreadable", path=str(self.path), error=str(exc))
        return {"backlog": good, "corrupt": bad}

    def read_batch(
        self, fh: IO[bytes], start: int, size: int, limit: int
    ) -> tuple[list[dict[str, Any]], int, int]:
        """Up to ``limit`` events from ``start``: ``(events, end offset, corrupt lines)``."""
        events: list[dict[str, Any]] = []
        corrupt, end = 0, start
        for pos, event in _lines(fh, start, size):
            end = pos
            if event is None:
                corrupt += 1
            else:
                events.append(event)
                if len(events) >= limit:
                    break
        else:
            end = size
        return events, end, corrupt

    def commit(self, fh: IO[bytes], end: int) -> bool:
        """Everything below ``end`` was delivered: True (and both files gone) if that is all."""
        with self.lock():
            mine = os.fstat(fh.fileno())
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                self.offset_path.unlink(missing_ok=True)
                return True
            if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
                return True  # removed by hand and begun anew: that file starts at 0
            if end >= now.st_size:
                self.path.unlink()
                self.offset_path.unlink(missing_ok=True)
                return True
        # outside the lock: only a replayer (us, under replay.lock) moves or removes it
        write_bytes_atomic(self.offset_path, f"{end}\n".encode())
        return False

    async def replay(
        self, deliver: Callable[[list[dict[str, Any]]], Awaitable[None]], batch: int, counts: Counts
    ) -> tuple[int, bool]:
        """Deliver the undelivered lines in order: ``(sent, whether the file is all done)``.

        The offset is kept after every delivered batch, so nothing delivered is sent
        again even if this is killed half-way. Unreadable lines are skipped and counted
        in ``counts["corrupt"]`` with one warning; ``counts["replayed"]`` grows as it
        goes. ``(0, False)`` at once if another process is replaying.
        """
        sent = corrupt = 0
        with self.lock("replay.lock", wait=False) as ours:
            if not ours:
                log.debug("telemetry spill file is being replayed by another process")
                return 0, False
            try:
                with self.path.open("rb") as fh:
                    offset, size = self.snapshot(fh)
                    while True:
                        events, end, bad = self.read_batch(fh, offset, size, batch)
                        if events:
                            await deliver(events)
                            sent += len(events)
                            counts["replayed"] += len(events)
                        done = self.commit(fh, end)
                        corrupt += bad  # counted once past them for good
                        if done:
                            return sent, True
                        offset = end
                        if end >= size:  # appended to meanwhile
                            _, size = self.snapshot(fh)
            except FileNotFoundError:
                return sent, True
            finally:
                if corrupt:
                    counts["corrupt"] += corrupt
                    log.warning(
                        f"telemetry spill file: skipped {corrupt} unreadable line(s)",
                        skipped=corrupt,
                        path=str(self.path),
                    )


_Retryable = TelemetryUnavailable


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


def _statuses(by_status: Mapping[int, int]) -> str:
    return ", ".join(f"HTTP {s}" for s in sorted(by_status))


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
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._spill_pending = False
        self._closing = False
        self._retry_at = 0.0
        self._spill_warned = False
        self._refused: dict[int, int] = {}  # by HTTP status, since the last warning
        self._unannounced: dict[int, int] = {}  # not yet in a telemetry.dropped event
        self.counts = dict.fromkeys(("emitted", *_TOTALS), 0)
        self._saved = dict.fromkeys(_TOTALS, 0)

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
        cancelled = await _wait_through_cancel(task, self.close_deadline_s)
        if not task.done():
            task.cancel()  # past the deadline: the sender puts its batch back, spilled below
            cancelled = await _wait_through_cancel(task, 1.0) or cancelled
        self._task = None
        if self._buffer:
            self._spill(list(self._buffer))
            self._buffer.clear()
        self._warn_refused()
        self._save_stats()
        if self._client is not None:
            try:
                await self._client.aclose()
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
        await self._flush_buffer()

    async def _flush_buffer(self) -> None:
        """Send the buffer; then one ``telemetry.dropped`` event for what was refused."""
        while True:
            while self._buffer:
                n = min(self.batch_size, len(self._buffer))
                batch = [self._buffer.popleft() for _ in range(n)]
                try:
                    await self._deliver(batch)
                except BaseException:
                    self._buffer.extendleft(reversed(batch))
                    raise
            if not self._unannounced:
                return
            count, reason = sum(self._unannounced.values()), _statuses(self._unannounced)
            self._unannounced.clear()
            self.emit("telemetry.dropped", {"dropped": count, "reason": reason})

    # -- delivery -------------------------------------------------------------------------

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        assert self._client is not None
        try:
            resp = await self._client.post(
                self.url, content=_dumps(batch), headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError as exc:
            raise _Retryable(str(exc)) from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}")
        if resp.status_code >= 300:
            raise _Refused(resp.status_code)

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """POST with retries; split refused batches; drop (and count) a refused single event."""
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
            status = refused.status
            self.counts["dropped"] += 1
            self.counts["refused"] += 1
            self._refused[status] = self._refused.get(status, 0) + 1
            if batch[0].get("event") != "telemetry.dropped":  # never a loop of notices
                self._unannounced[status] = self._unannounced.get(status, 0) + 1
            return
        self.counts["sent"] += len(batch)

    def _warn_refused(self) -> None:
        """One warning line for every event refused since the last one."""
        if self._refused:
            count = sum(self._refused.values())
            log.warning(
                f"telemetry receiver refused {count} event(s) ({_statuses(self._refused)}); "
                "dropped",
                refused=count,
                url=self.url,
            )
            self._refused.clear()

    # -- spill and replay -------------------------------------------------------------------

    def _spill(self, events: list[dict[str, Any]]) -> None:
        data = b"".join(_dumps(event) + b"\n" for event in events)
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
        """``{"backlog": events in the spill file, "corrupt": unreadable lines waiting}``.

        Never raises (an unreadable file reads as what could be counted).
        """
        return self.spill.info()

    def backlog(self) -> int:
        """Events waiting in the spill file; never raises."""
        return self.spill_info()["backlog"]

    async def replay(self) -> int:
        """Send the spill file in order (see :meth:`SpillFile.replay`); returns the count."""
        try:
            sent, done = await self.spill.replay(self._deliver, self.batch_size, self.counts)
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
            self._client = client
            try:
                sent = await self.replay()
                with suppress(_Retryable, httpx.HTTPError):
                    await self._flush_buffer()  # the telemetry.dropped notice, if any
                return sent
            finally:
                self._client = None
                if self._buffer:
                    self._spill(list(self._buffer))
                    self._buffer.clear()
                self._warn_refused()
                self._save_stats()

    def _save_stats(self) -> None:
        """Add this instance's counts since the last save to ``stats.json``."""
        try:
            with self.spill.lock():  # another familiar process may be adding too
                totals = self.load_stats()
                for key in _TOTALS:
                    old = totals.get(key)
                    base = old if isinstance(old, int) and not isinstance(old, bool) else 0
                    totals[key] = base + self.counts[key] - self._saved[key]
                    self._saved[key] = self.counts[key]
                totals["updated"] = time.time()
                write_json_atomic(self.stats_path, totals)
        except OSError as exc:
            log.warning("telemetry stats not saved", path=str(self.stats_path), error=str(exc))

    def load_stats(self) -> dict[str, Any]:
        """The totals in ``stats.json`` (empty if missing or unreadable)."""
        try:
            data = read_json(self.stats_path)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
