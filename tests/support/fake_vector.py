"""A fake Vector ``http_server`` source (``decoding.codec = "json"``) for tests.

Pure ``asyncio`` streams and the standard library only, in the style of
:mod:`tests.support.fake_openai` (whose small HTTP helpers it reuses). HTTP/1.1 with keep-alive;
request bodies framed by ``Content-Length`` or ``Transfer-Encoding: chunked``;
``Expect: 100-continue`` is honoured. No ``Content-Encoding`` is supported (absent or
``identity`` only; anything else is answered ``415`` as Vector does for an unknown encoding).

Answers, for each request, in this order:

* a path other than :attr:`FakeVector.path` (query string ignored): ``404``;
* a method other than ``POST``: ``405``;
* a status queued by :meth:`FakeVector.fail_next`: that status, nothing stored;
* a ``Content-Encoding`` other than ``identity``: ``415``;
* a body larger than ``max_body_bytes``: ``413``, decided from ``Content-Length`` before the body
  is read (a chunked body is counted while it is read), nothing stored;
* a body that does not decode: ``400``, nothing stored (the whole request is rejected);
* otherwise ``200`` with an empty body, and the events are stored.

Decoding: the body must be UTF-8 JSON. A JSON array contributes each element, a JSON object
contributes itself; if the whole body is not one JSON document, it is read as newline-delimited
JSON (each non-blank line an object or an array of objects). Every event must be a JSON object
(Vector refuses to turn non-object JSON into a log event). An empty body is accepted and
contributes no events. Note that real Vector frames a JSON body per line by default, so it would
refuse a pretty-printed multi-line document that this fake accepts.

Error answers carry a short JSON message like Vector's: ``{"code": 400, "message": "..."}``.
Every answered request is recorded (see :attr:`FakeVector.requests`) and counted (see
:attr:`FakeVector.status_counts`) *before* its response is written, so a client that has its
response can assert on the fake's state at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict, deque
from typing import Any

from tests.support.fake_openai import (
    _MAX_HEADER_BYTES,
    _BadRequestError,
    _BufferedReader,
    _dumps,
    _parse_head,
    _response_bytes,
    _status_line,
)
from tests.support.loopback import LoopbackServer

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_PATH", "FakeVector"]

DEFAULT_PATH = "/telemetry"
DEFAULT_MAX_BODY_BYTES = 1_000_000

#: Largest rejected body that is read and thrown away to keep a keep-alive connection usable;
#: beyond it the connection is closed right after the answer.
_DRAIN_LIMIT = 64 * 1024 * 1024
_MAX_CHUNK_LINE = 4096
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_IDENTITY_ENCODINGS = frozenset({"", "identity"})


class _BodyTooLargeError(Exception):
    """A chunked body went past the limit (raised while reading, caught by the server)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON number {name}")


def _decode_events(body: bytes) -> list[dict[str, Any]]:
    """Vector-style JSON decoding of a request body; ``ValueError`` if it does not decode."""
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not text.strip():
        return []
    try:
        documents = [json.loads(text, parse_constant=_reject_constant)]
    except ValueError:
        documents = [
            json.loads(line, parse_constant=_reject_constant)
            for line in text.splitlines()
            if line.strip()
        ]
    events: list[dict[str, Any]] = []
    for document in documents:
        for value in document if isinstance(document, list) else (document,):
            if not isinstance(value, dict):
                raise ValueError("Attempted to convert non-Object JSON into an Event.")
            events.append(value)
    return events


def _answer(status: int, message: str | None, *, keep_alive: bool, head: bool = False) -> bytes:
    """A complete response: empty body when ``message`` is ``None``, else Vector's error JSON."""
    if message is None:
        return b"".join(
            (
                _status_line(status),
                b"Content-Length: 0\r\n",
                b"" if keep_alive else b"Connection: close\r\n",
                b"\r\n",
            )
        )
    body = _dumps({"code": status, "message": message})
    data = _response_bytes(status, body, keep_alive=keep_alive)
    return data[: len(data) - len(body)] if head else data


class _Reader(_BufferedReader):
    """Buffered reads from one client connection."""

    __slots__ = ()

    async def read_head(self) -> tuple[str, str, str, dict[str, str]] | None:
        """``(method, path, version, headers)``; ``None`` on a clean EOF between requests."""
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > _MAX_HEADER_BYTES:
                raise _BadRequestError("header block too large")
            if not await self._fill():
                if buf.strip():
                    raise _BadRequestError("EOF inside the header block")
                return None
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        method, target, version, headers = _parse_head(head.lstrip("\r\n"))
        return method, target.split("?", 1)[0], version, headers

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise _BadRequestError("EOF inside the body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def discard(self, n: int) -> None:
        while n > 0:
            if not self.buf and not await self._fill():
                raise _BadRequestError("EOF inside the body")
            taken = min(n, len(self.buf))
            del self.buf[:taken]
            n -= taken

    async def _read_line(self) -> bytes:
        buf = self.buf
        while (end := buf.find(b"\r\n")) < 0:
            if len(buf) > _MAX_CHUNK_LINE:
                raise _BadRequestError("chunk header line too long")
            if not await self._fill():
                raise _BadRequestError("EOF inside a chunked body")
        line = bytes(buf[:end])
        del buf[: end + 2]
        return line

    async def read_chunked(self, limit: int) -> tuple[bytes | None, int]:
        """Read a whole chunked body: ``(body, size)``, ``body`` ``None`` if over ``limit``.

        An over-limit body is still read (and thrown away) up to :data:`_DRAIN_LIMIT`, past
        which :class:`_BodyTooLargeError` is raised.
        """
        parts: list[bytes] | None = []
        total = 0
        while True:
            line = await self._read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequestError(f"bad chunk size line {line[:40]!r}") from None
            if size < 0:
                raise _BadRequestError("negative chunk size")
            if size == 0:
                while await self._read_line():  # trailer fields, up to the blank line
                    pass
                return (None if parts is None else b"".join(parts)), total
            total += size
            if total > _DRAIN_LIMIT:
                raise _BodyTooLargeError(total)
            if parts is not None and total <= limit:
                parts.append(await self.read_exact(size))
            else:
                parts = None
                await self.discard(size)
            if await self.read_exact(2) != b"\r\n":
                raise _BadRequestError("chunk not terminated by CRLF")


class FakeVector(LoopbackServer):
    """In-process fake of Vector's ``http_server`` source with the JSON codec.

    Use as ``async with FakeVector() as v:``; POST to :attr:`url`. Stored events are in
    :attr:`events`; every answered request is in :attr:`requests`.
    """

    _label = "FakeVector"

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        port: int = 0,
        host: str = "127.0.0.1",
        dedupe: int | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """``dedupe``: drop an event whose ``event_id`` is among the last ``dedupe`` ids seen,
        as ``deploy/vector.toml``'s ``dedupe`` transform does (an LRU cache of that many
        events; a repeat refreshes its entry). ``delay_s``: wait that long before storing and
        answering each POST (a slow pipeline, for killing a client mid-request)."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        self.path = path
        self.max_body_bytes = max_body_bytes
        super().__init__(host=host, port=port)
        #: Every stored event (a JSON object), in arrival order.
        self.events: list[dict[str, Any]] = []
        #: One dict per answered request: ``method``, ``path``, ``body_bytes`` (the body size;
        #: the declared ``Content-Length`` when the body was refused unread), ``events`` (the
        #: number stored, 0 unless the answer was 200) and ``status``.
        self.requests: list[dict[str, Any]] = []
        #: Answers given, by HTTP status.
        self.status_counts: dict[int, int] = {}
        #: TCP connections accepted (useful to check keep-alive).
        self.connections = 0
        self._failures: deque[int] = deque()
        self._arrived = asyncio.Event()
        self.dedupe = dedupe
        self.delay_s = delay_s
        #: every ``event_id`` accepted (answered 200), repeats included, in arrival order
        self.arrivals: list[Any] = []
        #: repeats the dedupe cache dropped
        self.deduplicated = 0
        self._seen: OrderedDict[Any, None] = OrderedDict()

    @property
    def url(self) -> str:
        """The source's endpoint, ``http://HOST:PORT/PATH``."""
        return f"{self.base}{self.path}"

    # ------------------------------------------------------------------ control API

    def fail_next(self, status: int, n: int = 1) -> None:
        """Answer the next ``n`` POSTs to :attr:`path` with ``status``, storing nothing.

        Calls queue up in order: ``fail_next(503, 2); fail_next(429)`` gives 503, 503, 429.
        """
        if isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError(f"status must be an HTTP status in 200..599, got {status!r}")
        if n < 0:
            raise ValueError("n must be >= 0")
        self._failures.extend([status] * n)

    @property
    def pending_failures(self) -> int:
        """How many queued :meth:`fail_next` answers are left."""
        return len(self._failures)

    def clear(self) -> None:
        """Forget events, requests, status counts, queued failures and the connection count."""
        self.events.clear()
        self.requests.clear()
        self.status_counts.clear()
        self._failures.clear()
        self.connections = 0

    async def wait_for_events(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` events are stored; returns :attr:`events`.

        Raises ``TimeoutError`` after ``timeout_s`` seconds.
        """
        async with asyncio.timeout(timeout_s):
            while len(self.events) < count:
                await self._arrived.wait()
        return self.events

    # ------------------------------------------------------------------ HTTP plumbing

    def _record(
        self, method: str, path: str, body_bytes: int, events: list[dict[str, Any]], status: int
    ) -> None:
        if events and status == 200:
            events = self._dedupe(events)
        if events:
            self.events.extend(events)
            self._arrived.set()
            self._arrived = asyncio.Event()
        self.requests.append(
            {
                "method": method,
                "path": path,
                "body_bytes": body_bytes,
                "events": len(events),
                "status": status,
            }
        )
        self.status_counts[status] = self.status_counts.get(status, 0) + 1

    def _dedupe(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for event in events:
            key = event.get("event_id")
            self.arrivals.append(key)
            if self.dedupe is None:
                kept.append(event)
                continue
            if key in self._seen:
                self._seen.move_to_end(key)
                self.deduplicated += 1
                continue
            self._seen[key] = None
            if len(self._seen) > self.dedupe:
                self._seen.popitem(last=False)
            kept.append(event)
        return kept

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = _Reader(reader)
        try:
            while (head := await conn.read_head()) is not None:
                if not await self._serve(conn, writer, *head):
                    break
        except _BadRequestError as exc:
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(_answer(400, str(exc), keep_alive=False))
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    def _precheck(
        self, method: str, path: str, headers: dict[str, str], length: int | None
    ) -> tuple[int, str | None] | None:
        """The answer to give without reading the body, if any."""
        if path != self.path:
            return 404, f"Not found: {path}"
        if method != "POST":
            return 405, f"Method not allowed: {method}"
        if self._failures:
            status = self._failures.popleft()
            return status, (f"Injected failure: HTTP {status}" if status >= 400 else None)
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in _IDENTITY_ENCODINGS:
            return 415, f"Unsupported encoding {encoding}"
        if length is not None and length > self.max_body_bytes:
            return 413, f"Request body too large: {length} bytes > {self.max_body_bytes}"
        return None

    async def _serve(
        self,
        conn: _Reader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        version: str,
        headers: dict[str, str],
    ) -> bool:
        """Serve one request; return whether the connection stays open."""
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep = "close" not in connection
        else:
            keep = "keep-alive" in connection
        head_only = method == "HEAD"
        transfer_encoding = headers.get("transfer-encoding", "").strip().lower()
        length: int | None = None
        if transfer_encoding:
            if transfer_encoding != "chunked":
                raise _BadRequestError(f"unsupported Transfer-Encoding {transfer_encoding!r}")
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequestError("bad Content-Length") from None
            if length < 0:
                raise _BadRequestError("bad Content-Length")
        expect_continue = headers.get("expect", "").strip().lower() == "100-continue"

        refusal = self._precheck(method, path, headers, length)
        if refusal is not None:
            status, message = refusal
            size = length or 0
            if expect_continue or (length is not None and length > _DRAIN_LIMIT):
                # The body was not (or will not be) read: answer, then drop the connection.
                keep = False
            elif length is None:
                try:
                    _, size = await conn.read_chunked(-1)
                except _BodyTooLargeError:
                    keep = False
            else:
                await conn.discard(length)
            self._record(method, path, size, [], status)
            writer.write(_answer(status, message, keep_alive=keep, head=head_only))
            await writer.drain()
            return keep

        if expect_continue:
            writer.write(_CONTINUE)
        if length is None:
            try:
                body, size = await conn.read_chunked(self.max_body_bytes)
            except _BodyTooLargeError as exc:
                body, size, keep = None, int(exc.args[0]), False
        else:
            body, size = await conn.read_exact(length), length
        events: list[dict[str, Any]] = []
        error: str | None = None
        if body is None:
            error = f"Request body too large: more than {self.max_body_bytes} bytes"
            status = 413
        else:
            try:
                events = _decode_events(body)
            except ValueError as exc:
                error = f"Failed decoding body: {exc}"
            status = 200 if error is None else 400
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self._record(method, path, size, events, status)
        writer.write(_answer(status, error, keep_alive=keep))
        await writer.drain()
        return keep
