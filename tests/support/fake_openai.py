"""A fake OpenAI-compatible HTTP/1.1 server for tests and benchmarks.

Pure ``asyncio`` streams and the standard library only (``httpx`` is imported lazily, and only by
the :func:`spawn_fake_server` helper). The hot path is kept lean so that the server can be used
as a zero-latency benchmark target; HTTP keep-alive is supported, request bodies must carry a
``Content-Length`` (no chunked request bodies), and streamed answers use
``Transfer-Encoding: chunked``.

Endpoints
---------
* ``POST /v1/chat/completions`` and ``POST /v1/completions`` (also without the ``/v1`` prefix):
  OpenAI response shapes, SSE streaming when ``"stream": true`` (with a final usage-only chunk
  when ``stream_options.include_usage`` is true).
* ``GET /health`` and ``GET /v1/models``.
* Admin (JSON): ``POST /_admin/config``, ``POST /_admin/faults``, ``POST /_admin/replies``,
  ``GET /_admin/stats``, ``POST /_admin/reset``, ``GET /_admin/requests``.

Reply text selection for a completion request, in order: the next queued fault (a fault of kind
``"reply"`` is a scripted success), else the next queued scripted reply, else what the
in-process ``handler(body)`` returns when one is set and it returns a string (a reply that is a
function of the request, for flow tests that must not depend on arrival order; see
``tests/support/scripts.py``), else ``"{}"`` when the
request has a ``response_format`` of type ``json_schema``/``json_object``, else the text given
by the reply mode (``FakeConfig.reply_mode``, set with the constructor, :meth:`configure`,
``POST /_admin/config`` or ``--reply-mode``; :meth:`reset` restores the initial mode):

* ``"echo"`` (default): ``"echo: " + <last user message or prompt>`` (the echoed part truncated
  to :data:`ECHO_MAX_CHARS` characters);
* ``"identity"``: exactly the last user message (chat) or, for ``/v1/completions``, the text of
  the prompt after the last line starting with ``"Japanese: "`` or ``"English: "``, without a
  trailing ``"\nEnglish:"``/``"\nJapanese:"`` label (the whole prompt when no line starts with
  either label); never truncated.

Faults (consumed one per completion request, FIFO; optional ``"delay_s"`` delays any non-reply
fault before anything is sent; the configured ``latency_s``/``ttft_s`` apply only to answers sent
like a normal reply, i.e. ``reply`` and ``empty``). Every fault below works for chat and text
completions, streamed (``"stream": true``) or not:

* ``{"kind": "status", "status": 500}`` (any status; ``"retry_after": 0.2`` sets ``Retry-After``)
* ``{"kind": "echo_key", "status": 401}``: an OpenAI-style ``invalid_api_key`` error (status
  401 by default, any status allowed) whose message echoes the request's API key, as some
  servers do: ``{"error": {"message": "Incorrect API key provided: <KEY>. You can find your API
  key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error",
  "param": null, "code": "invalid_api_key"}}``, ``<KEY>`` being the token of the request's
  ``Authorization: Bearer <KEY>`` header (the raw header value if it is not a bearer token)
* ``{"kind": "hang"}``: never answer until the client disconnects or the server stops
* ``{"kind": "reset"}``: close the socket abruptly (``SO_LINGER`` 0, so the peer gets a RST)
* ``{"kind": "malformed"}``: 200, ``application/json``, body ``{"choices": [``
* ``{"kind": "reply", "text": "...", "finish_reason": "stop"}``: scripted successful reply
* ``{"kind": "cut", "after": 1, "done": true}``: a clean cut (what a proxy sends when the model
  server dies): a well-formed 200 with the first ``after`` text pieces of the reply and no
  ``finish_reason`` anywhere. Streamed: those pieces' chunks, then ``data: [DONE]`` (omitted when
  ``"done": false``) and the terminating zero-length chunk. Not streamed: a JSON completion whose
  choice has those pieces as its text and ``"finish_reason": null``.
* ``{"kind": "empty_choices"}``: 200 with ``"choices": []``. Streamed: one chunk with empty
  choices, the usage chunk if asked for, ``[DONE]``. Not streamed: a completion object with empty
  choices and a usage block.
* ``{"kind": "empty"}``: 200 with content ``""`` and ``finish_reason`` ``"stop"`` (streamed: the
  first (role) chunk with empty content, then the finish chunk).
* ``{"kind": "trickle", "interval_s": 0.5, "min_pieces": 0}``: stream the reply one piece every
  ``interval_s`` seconds (the first piece right after the headers), then finish normally; the
  pieces are repeated (each repetition after a space) until there are at least ``min_pieces``.
  Stops (a disconnect) when the client goes away. Not streamed: wait ``interval_s`` times the
  number of pieces, then answer.
* ``{"kind": "reset_mid", "after": 1}``: streamed, send the first ``after`` pieces' chunks then
  reset the connection (RST, as ``reset``); not streamed, send the headers and half the body of
  the full answer, then reset.

A "piece" is a word with its leading whitespace (the unit of streamed chunks). The text of
``cut``, ``trickle`` and ``reset_mid`` is what the reply would have been: the next scripted reply
(only ``trickle``, a successful answer, consumes it; after a ``cut`` or ``reset_mid`` a retry gets
it in full) or the reply-mode text.

Serving limit (for benchmarks of a saturated server): ``capacity=N`` serves at most N normal
replies at once and queues the rest in arrival order (a queued request's wait shows as time to
first token), ``token_delay_s=d`` streams the reply one piece every ``d`` seconds (the first
after ``d`` too; not streamed: the whole answer after ``d`` times the pieces), and
``fill_max_tokens=True`` makes the reply exactly ``max_tokens`` pieces long (the reply's pieces
repeated or cut, ``finish_reason`` ``"length"``), as a server run with ``ignore_eos`` does. Set
them with the constructor, :meth:`FakeOpenAIServer.set_capacity`, ``POST /_admin/capacity``
or ``--capacity``/``--token-delay``/``--fill-max-tokens``; faults are served at once, outside
the limit. :attr:`FakeOpenAIServer.queue_stats` (``GET /_admin/queue``) counts ``running``,
``queued`` and their maxima; :meth:`~FakeOpenAIServer.reset` restores the initial limit.

Prefix cache (for affinity benchmarks): ``prefix_cache=PrefixCacheConfig(...)`` gives the server
a prefix cache of its own with a prefill cost (time per uncached prompt token, one server's
prefills sharing its compute) and reports the cached prompt tokens of each answer, as
``usage.prompt_tokens_details.cached_tokens`` or llama-server's ``timings.cache_n``/``prompt_n``
(see tests/support/prefix_cache.py; :attr:`FakeOpenAIServer.prefix_cache` has its counts).

Stats: ``requests`` (completion requests received), ``in_flight``, ``max_in_flight``,
``completed`` (completion requests answered successfully with a full, well-formed 200 response,
scripted ``reply`` and finished ``trickle`` faults included; ``cut``, ``empty`` and
``empty_choices`` answers are not), ``faults_served`` (fault-queue entries consumed, ``reply``
entries included), ``disconnects`` (completion requests whose client went away, or hit a
``reset``/``reset_mid`` fault, before the response was fully written) and ``connections`` (TCP
connections accepted; useful to verify keep-alive).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.loopback import LoopbackServer
from tests.support.prefix_cache import PrefixCache, PrefixCacheConfig

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_MODEL",
    "ECHO_MAX_CHARS",
    "FAULT_KINDS",
    "RECORDED_HEADERS",
    "REPLY_MODES",
    "FakeConfig",
    "FakeOpenAIServer",
    "SpawnedFakeServer",
    "main",
    "spawn_fake_server",
]

DEFAULT_MODEL = "fake-model"
#: Maximum number of characters of the user's text echoed back by the default reply.
ECHO_MAX_CHARS = 200
#: Request headers copied into each recorded request (lower-cased names).
RECORDED_HEADERS: tuple[str, ...] = ("authorization", "x-correlation-id", "x-request-id")
FAULT_KINDS = frozenset(
    {
        "status",
        "hang",
        "reset",
        "malformed",
        "reply",
        "cut",
        "empty_choices",
        "empty",
        "trickle",
        "reset_mid",
        "echo_key",
    }
)
#: Reply modes (see the module docstring).
REPLY_MODES = ("echo", "identity")

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024
_READ_SIZE = 65536
_MALFORMED_BODY = b'{"choices": ['
_PIECE_RE = re.compile(r"\s*\S+|\s+")
_REPO_ROOT = Path(__file__).resolve().parents[2]

_CHAT = "chat"
_TEXT = "text"
_COMPLETION_ROUTES: dict[str, str] = {
    "/v1/chat/completions": _CHAT,
    "/chat/completions": _CHAT,
    "/v1/completions": _TEXT,
    "/completions": _TEXT,
}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_status_line_cache: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _status_line_cache.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = f"HTTP/1.1 {status} {phrase}\r\n".encode()
        _status_line_cache[status] = line
    return line


def _response_bytes(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: bytes = b"application/json",
    extra_headers: bytes = b"",
) -> bytes:
    return b"".join(
        (
            _status_line(status),
            b"Content-Type: ",
            content_type,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n" if keep_alive else b"\r\nConnection: close\r\n",
            extra_headers,
            b"\r\n",
            body,
        )
    )


def _error_body(message: str, err_type: str, code: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}})


def _sse_chunk(obj: Any) -> bytes:
    """One SSE event framed as one HTTP chunk."""
    data = b"data: " + _dumps(obj) + b"\n\n"
    return b"%x\r\n%b\r\n" % (len(data), data)


_SSE_DONE_AND_END = b"%x\r\n%b\r\n0\r\n\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n")
#: The terminating zero-length chunk of a chunked body.
_CHUNKED_END = b"0\r\n\r\n"
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
)
_STREAM_HEAD_KEEP = _STREAM_HEAD + b"\r\n"
_STREAM_HEAD_CLOSE = _STREAM_HEAD + b"Connection: close\r\n\r\n"
_BAD_KEY_MESSAGE = (
    "Incorrect API key provided: {key}. "
    "You can find your API key at https://platform.openai.com/account/api-keys."
)
#: Labels that start the source text in a few-shot translation prompt (``identity`` mode).
_IDENTITY_LABELS = ("\nJapanese: ", "\nEnglish: ")
_IDENTITY_TAILS = ("\nJapanese:", "\nEnglish:", "\nJapanese: ", "\nEnglish: ")


def _content_text(content: Any) -> str:
    """Text of a chat message ``content`` (a string or a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _identity_completion(prompt: str) -> str:
    """The ``identity`` reply to a completion prompt (see the module docstring)."""
    for tail in _IDENTITY_TAILS:
        if prompt.endswith(tail):
            prompt = prompt[: -len(tail)]
            break
    text = "\n" + prompt
    start = -1
    at = -1
    for label in _IDENTITY_LABELS:
        i = text.rfind(label)
        if i > at:
            at, start = i, i + len(label)
    return prompt if start < 0 else text[start:]


def _bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` value (else the raw value)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else authorization


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close the connection abruptly: ``SO_LINGER`` 0, so the peer gets a RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _wants_usage(body: dict[str, Any]) -> bool:
    """Whether a streamed request asks for the final usage-only chunk."""
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _format_seconds(value: float) -> str:
    return format(value, "g")


class _BadRequestError(Exception):
    """The peer sent something this server will not parse; the connection is dropped."""


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _BufferedReader:
    """Buffered reads from one client connection (bytes read while waiting are kept)."""

    __slots__ = ("buf", "reader")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.reader.read(_READ_SIZE)
        if not data:
            return False
        self.buf += data
        return True


def _parse_head(head: str) -> tuple[str, str, str, dict[str, str]]:
    """Split a header block (no final blank line) into ``(method, target, version, headers)``.

    Header names are lower-cased; names and values are stripped.
    """
    lines = head.split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _BadRequestError(f"bad request line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


class _Connection(_BufferedReader):
    """A client connection with its own read buffer (bytes read while waiting are kept)."""

    __slots__ = ("writer",)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader)
        self.writer = writer

    async def read_request(self) -> _Request | None:
        """Read one request; ``None`` on a clean EOF between requests."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > _MAX_HEADER_BYTES:
                raise _BadRequestError("header block too large")
            if not await self._fill():
                if buf:
                    raise _BadRequestError("EOF inside the header block")
                return None
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        method, target, version, headers = _parse_head(head)
        if "transfer-encoding" in headers:
            raise _BadRequestError("chunked request bodies are not supported")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequestError("bad Content-Length") from None
        if length < 0 or length > _MAX_BODY_BYTES:
            raise _BadRequestError("bad Content-Length")
        while len(buf) < length:
            if not await self._fill():
                raise _BadRequestError("EOF inside the body")
        body = bytes(buf[:length])
        del buf[:length]
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        path = target.split("?", 1)[0]
        return _Request(method, path, headers, body, keep_alive)

    async def wait_eof(self) -> None:
        """Return when the peer has closed the connection (buffering anything it sends)."""
        try:
            while await self._fill():
                pass
        except (ConnectionError, OSError):
            pass

    async def sleep_unless_eof(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; ``False`` if the peer disconnected meanwhile."""
        watcher = asyncio.create_task(self.wait_eof())
        try:
            done, _ = await asyncio.wait((watcher,), timeout=delay)
            return not done
        finally:
            if not watcher.done():
                watcher.cancel()
                await asyncio.wait((watcher,))


@dataclass(slots=True)
class FakeConfig:
    """Runtime configuration (see ``POST /_admin/config``)."""

    latency_s: float = 0.0
    ttft_s: float = 0.0
    model: str = DEFAULT_MODEL
    reply_mode: str = "echo"


def _check_reply_mode(reply_mode: Any) -> str:
    if reply_mode not in REPLY_MODES:
        raise ValueError(f"reply_mode must be one of {list(REPLY_MODES)}, got {reply_mode!r}")
    return str(reply_mode)


def _check_int(out: dict[str, Any], key: str, default: int, low: int, high: int | None) -> None:
    value = out.setdefault(key, default)
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{out['kind']} fault: {key!r} must be an integer {bounds}, got {value!r}")


def _validate_fault(fault: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(fault, Mapping):
        raise ValueError(f"a fault must be an object, got {fault!r}")
    kind = fault.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
    out = dict(fault)
    if kind == "status":
        status = out.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"status fault needs an integer 'status', got {status!r}")
        retry_after = out.get("retry_after")
        if retry_after is not None and not isinstance(retry_after, int | float):
            raise ValueError(f"'retry_after' must be a number, got {retry_after!r}")
    elif kind == "reply":
        if not isinstance(out.get("text"), str):
            raise ValueError("reply fault needs a string 'text'")
        if not isinstance(out.setdefault("finish_reason", "stop"), str):
            raise ValueError("'finish_reason' must be a string")
    elif kind == "echo_key":
        _check_int(out, "status", 401, 100, 599)
    elif kind in ("cut", "reset_mid"):
        _check_int(out, "after", 1, 0, None)
        if kind == "cut" and not isinstance(out.setdefault("done", True), bool):
            raise ValueError(f"cut fault: 'done' must be a boolean, got {out['done']!r}")
    elif kind == "trickle":
        interval = out.get("interval_s")
        if not isinstance(interval, int | float) or isinstance(interval, bool) or interval < 0:
            raise ValueError(
                f"trickle fault needs a non-negative number 'interval_s', got {interval!r}"
            )
        _check_int(out, "min_pieces", 0, 0, None)
    delay = out.setdefault("delay_s", 0.0)
    if not isinstance(delay, int | float) or delay < 0:
        raise ValueError(f"'delay_s' must be a non-negative number, got {delay!r}")
    return out


class _Gate:
    """At most ``capacity`` holders at once (0: no limit); the rest wait in arrival order."""

    __slots__ = ("_waiters", "capacity", "max_queued", "max_running", "running")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self.max_running = 0
        self.max_queued = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _admit(self) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def wake(self) -> None:
        """Admit waiters while there is room (after a release or a larger capacity)."""
        while self._waiters and (self.capacity <= 0 or self.running < self.capacity):
            fut = self._waiters.popleft()
            if not fut.done():
                self._admit()
                fut.set_result(None)

    async def __aenter__(self) -> None:
        if not self._waiters and (self.capacity <= 0 or self.running < self.capacity):
            self._admit()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.max_queued = max(self.max_queued, len(self._waiters))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # admitted just as we were cancelled
                self.running -= 1
                self.wake()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.running -= 1
        self.wake()


def _check_capacity(capacity: Any, token_delay_s: Any, fill_max_tokens: Any) -> None:
    if capacity is not None and (
        not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0
    ):
        raise ValueError(f"capacity must be an integer >= 0, got {capacity!r}")
    if token_delay_s is not None and (
        not isinstance(token_delay_s, int | float)
        or isinstance(token_delay_s, bool)
        or token_delay_s < 0
    ):
        raise ValueError(f"token_delay_s must be a non-negative number, got {token_delay_s!r}")
    if fill_max_tokens is not None and not isinstance(fill_max_tokens, bool):
        raise ValueError(f"fill_max_tokens must be a boolean, got {fill_max_tokens!r}")


def _filled(text: str, body: dict[str, Any]) -> str | None:
    """``text`` repeated or cut to exactly ``max_tokens`` pieces (None: no max_tokens)."""
    n = body.get("max_tokens", body.get("max_completion_tokens"))
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    pieces = _PIECE_RE.findall(text) or ["tok"]
    again = pieces if pieces[0][:1].isspace() else [" " + pieces[0], *pieces[1:]]
    out = pieces[:n]
    out.extend(itertools.islice(itertools.cycle(again), n - len(out)))
    return "".join(out)


class FakeOpenAIServer(LoopbackServer):
    """In-process fake OpenAI server; use as ``async with FakeOpenAIServer() as srv:``."""

    _backlog = 2048

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        ttft_s: float = 0.0,
        model: str = DEFAULT_MODEL,
        reply_mode: str = "echo",
        host: str = "127.0.0.1",
        port: int = 0,
        capacity: int = 0,
        token_delay_s: float = 0.0,
        fill_max_tokens: bool = False,
        prefix_cache: PrefixCacheConfig | None = None,
        report_slots: int | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        #: a per-server prefix cache with a prefill cost (None: prompts cost nothing, and
        #: answers say nothing of cached tokens); see tests/support/prefix_cache.py
        self.prefix_cache = PrefixCache(prefix_cache) if prefix_cache is not None else None
        self._cached: dict[int, int] = {}  # id(request body) -> its cached prompt tokens
        #: answer GET /props with this ``total_slots``, as llama-server does (None: 404)
        self.report_slots = report_slots
        _check_capacity(capacity, token_delay_s, fill_max_tokens)
        self._default_limit = (capacity, float(token_delay_s), fill_max_tokens)
        self._gate = _Gate(capacity)
        self._token_delay_s = float(token_delay_s)
        self._fill_max_tokens = fill_max_tokens
        self._default_config = FakeConfig(
            latency_s=latency_s,
            ttft_s=ttft_s,
            model=model,
            reply_mode=_check_reply_mode(reply_mode),
        )
        self.config = FakeConfig(**asdict(self._default_config))
        self._faults: deque[dict[str, Any]] = deque()
        self._replies: deque[str] = deque()
        self._requests: list[dict[str, Any]] = []
        #: ``reply = handler(request body)`` when no fault or scripted reply is queued
        #: (return None to fall through to the reply mode); order-independent scripting
        self.handler: Callable[[dict[str, Any]], str | None] | None = None
        self._n_requests = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._completed = 0
        self._faults_served = 0
        self._disconnects = 0
        self._connections = 0
        self._ids = itertools.count(1)
        self._admin_routes: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("POST", "/_admin/config"): self._admin_config,
            ("POST", "/_admin/faults"): self._admin_faults,
            ("POST", "/_admin/replies"): self._admin_replies,
            ("GET", "/_admin/stats"): lambda _body: self.stats,
            ("POST", "/_admin/reset"): self._admin_reset,
            ("GET", "/_admin/requests"): lambda _body: self.requests,
            ("POST", "/_admin/capacity"): self._admin_capacity,
            ("GET", "/_admin/queue"): lambda _body: self.queue_stats,
        }

    @property
    def url(self) -> str:
        """OpenAI ``base_url``: ``http://HOST:PORT/v1``."""
        return f"{self.base}/v1"

    # ------------------------------------------------------------------ control API

    def configure(
        self,
        *,
        latency_s: float | None = None,
        ttft_s: float | None = None,
        model: str | None = None,
        reply_mode: str | None = None,
    ) -> dict[str, Any]:
        """Change the config (any subset); returns the resulting config.

        Nothing changes when a value is invalid (``ValueError``).
        """
        if latency_s is not None and latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        if ttft_s is not None and ttft_s < 0:
            raise ValueError("ttft_s must be >= 0")
        if reply_mode is not None:
            self.config.reply_mode = _check_reply_mode(reply_mode)
        if latency_s is not None:
            self.config.latency_s = float(latency_s)
        if ttft_s is not None:
            self.config.ttft_s = float(ttft_s)
        if model is not None:
            self.config.model = str(model)
        return asdict(self.config)

    def set_capacity(
        self,
        capacity: int | None = None,
        *,
        token_delay_s: float | None = None,
        fill_max_tokens: bool | None = None,
    ) -> dict[str, Any]:
        """Change the serving limit (any subset, see the module docstring); returns it.

        Nothing changes when a value is invalid (``ValueError``). A larger capacity admits
        queued requests at once.
        """
        _check_capacity(capacity, token_delay_s, fill_max_tokens)
        if capacity is not None:
            self._gate.capacity = capacity
            self._gate.wake()
        if token_delay_s is not None:
            self._token_delay_s = float(token_delay_s)
        if fill_max_tokens is not None:
            self._fill_max_tokens = fill_max_tokens
        return self._limit()

    def _limit(self) -> dict[str, Any]:
        return {
            "capacity": self._gate.capacity,
            "token_delay_s": self._token_delay_s,
            "fill_max_tokens": self._fill_max_tokens,
        }

    @property
    def queue_stats(self) -> dict[str, Any]:
        """The serving limit and its counts: ``running``, ``queued`` and their maxima."""
        gate = self._gate
        return {
            **self._limit(),
            "running": gate.running,
            "queued": gate.queued,
            "max_running": gate.max_running,
            "max_queued": gate.max_queued,
        }

    def add_faults(self, faults: Iterable[Mapping[str, Any]]) -> int:
        """Append faults to the FIFO; returns the number queued."""
        validated = [_validate_fault(f) for f in faults]
        self._faults.extend(validated)
        return len(self._faults)

    def add_replies(self, replies: Iterable[str]) -> int:
        """Append scripted reply texts to the FIFO; returns the number queued."""
        texts = list(replies)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("replies must be strings")
        self._replies.extend(texts)
        return len(self._replies)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "requests": self._n_requests,
            "in_flight": self._in_flight,
            "max_in_flight": self._max_in_flight,
            "completed": self._completed,
            "faults_served": self._faults_served,
            "disconnects": self._disconnects,
            "connections": self._connections,
        }

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded completion requests: ``{"path", "body", "headers", "at"}`` each (a copy;
        ``at``: ``time.monotonic()`` when the request arrived)."""
        return list(self._requests)

    def reset(self) -> None:
        """Clear stats, faults, replies and recorded requests; restore the initial config.

        ``in_flight`` keeps counting requests still being served; ``max_in_flight`` restarts
        from the current ``in_flight``.
        """
        self.config = FakeConfig(**asdict(self._default_config))
        self._faults.clear()
        self._replies.clear()
        self._requests.clear()
        self._n_requests = 0
        self._max_in_flight = self._in_flight
        self._completed = 0
        self._faults_served = 0
        self._disconnects = 0
        self._connections = 0
        capacity, token_delay_s, fill_max_tokens = self._default_limit
        self.set_capacity(capacity, token_delay_s=token_delay_s, fill_max_tokens=fill_max_tokens)
        self._gate.max_running = self._gate.running
        self._gate.max_queued = self._gate.queued
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    # ------------------------------------------------------------------ admin handlers

    def _admin_capacity(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(body) - {"capacity", "token_delay_s", "fill_max_tokens"}
        if unknown:
            raise ValueError(f"unknown capacity keys: {sorted(unknown)}")
        return self.set_capacity(
            body.get("capacity"),
            token_delay_s=body.get("token_delay_s"),
            fill_max_tokens=body.get("fill_max_tokens"),
        )

    def _admin_config(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(body) - {"latency_s", "ttft_s", "model", "reply_mode"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        for key in ("latency_s", "ttft_s"):
            value = body.get(key)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ValueError(f"{key} must be a non-negative number")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ValueError("model must be a string")
        return self.configure(
            latency_s=body.get("latency_s"),
            ttft_s=body.get("ttft_s"),
            model=model,
            reply_mode=body.get("reply_mode"),
        )

    def _admin_faults(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("faults"), list):
            raise ValueError('body must be {"faults": [...]}')
        return {"queued": self.add_faults(body["faults"])}

    def _admin_replies(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("replies"), list):
            raise ValueError('body must be {"replies": [...]}')
        return {"queued": self.add_replies(body["replies"])}

    def _admin_reset(self, _body: Any) -> dict[str, Any]:
        self.reset()
        return {"status": "ok"}

    # ------------------------------------------------------------------ HTTP plumbing

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        conn = _Connection(reader, writer)
        try:
            while True:
                req = await conn.read_request()
                if req is None:
                    break
                if not await self._dispatch(conn, req):
                    break
        except _BadRequestError as exc:
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(
                    _response_bytes(
                        400, _error_body(str(exc), "invalid_request_error"), keep_alive=False
                    )
                )
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _dispatch(self, conn: _Connection, req: _Request) -> bool:
        """Serve one request; return whether the connection stays open."""
        path = req.path
        kind = _COMPLETION_ROUTES.get(path)
        if kind is not None and req.method == "POST":
            return await self._completion(conn, req, kind)
        writer = conn.writer
        keep = req.keep_alive
        if req.method == "GET" and path == "/health":
            writer.write(_response_bytes(200, b'{"status":"ok"}', keep_alive=keep))
        elif req.method == "GET" and path in ("/v1/models", "/models"):
            body = _dumps(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.config.model,
                            "object": "model",
                            "created": 0,
                            "owned_by": "fake-openai",
                        }
                    ],
                }
            )
            writer.write(_response_bytes(200, body, keep_alive=keep))
        elif req.method == "GET" and path == "/props" and self.report_slots is not None:
            body = _dumps({"total_slots": self.report_slots, "build_info": "b0-fake"})
            writer.write(_response_bytes(200, body, keep_alive=keep))
        elif path.startswith("/_admin/"):
            writer.write(self._admin(req))
        elif kind is not None or path in ("/health", "/v1/models", "/models"):
            writer.write(
                _response_bytes(
                    405,
                    _error_body(f"{req.method} not allowed", "invalid_request_error"),
                    keep_alive=keep,
                )
            )
        else:
            writer.write(
                _response_bytes(
                    404, _error_body(f"no route {path}", "invalid_request_error"), keep_alive=keep
                )
            )
        await writer.drain()
        return keep

    def _admin(self, req: _Request) -> bytes:
        keep = req.keep_alive
        handler = self._admin_routes.get((req.method, req.path))
        if handler is None:
            return _response_bytes(
                404,
                _error_body(f"no admin route {req.method} {req.path}", "invalid_request_error"),
                keep_alive=keep,
            )
        try:
            body = json.loads(req.body) if req.body else None
            result = handler(body)
        except ValueError as exc:
            return _response_bytes(
                400, _error_body(str(exc), "invalid_request_error"), keep_alive=keep
            )
        return _response_bytes(200, _dumps(result), keep_alive=keep)

    # ------------------------------------------------------------------ completions

    async def _completion(self, conn: _Connection, req: _Request, api: str) -> bool:
        self._n_requests += 1
        body: Any
        try:
            body = json.loads(req.body) if req.body else {}
        except ValueError:
            body = None
        headers = req.headers
        self._requests.append(
            {
                "path": req.path,
                "body": body,
                "headers": {h: headers[h] for h in RECORDED_HEADERS if h in headers},
                "at": time.monotonic(),
            }
        )
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight
        try:
            writer = conn.writer
            keep = req.keep_alive
            if not isinstance(body, dict):
                writer.write(
                    _response_bytes(
                        400,
                        _error_body("request body must be a JSON object", "invalid_request_error"),
                        keep_alive=keep,
                    )
                )
                await writer.drain()
                return keep
            finish_reason = "stop"
            if self._faults:
                fault = self._faults.popleft()
                self._faults_served += 1
                if fault["kind"] != "reply":
                    return await self._serve_fault(conn, req, body, api, fault)
                text: str = fault["text"]
                finish_reason = fault["finish_reason"]
            elif self._replies:
                text = self._replies.popleft()
            else:
                text = self._default_text(body, api)
            if self._fill_max_tokens and (filled := _filled(text, body)) is not None:
                text, finish_reason = filled, "length"
            async with self._gate:
                if self.prefix_cache is not None:
                    words = self._prompt_words(body, api)
                    self._cached[id(body)] = await self.prefix_cache.prefill(words)
                if body.get("stream"):
                    ok = await self._send_stream(conn, req, body, api, text, finish_reason)
                else:
                    ok = await self._send_full(conn, req, body, api, text, finish_reason)
            if ok:
                self._completed += 1
                return keep
            self._disconnects += 1
            return False
        except (ConnectionError, OSError):
            self._disconnects += 1
            raise
        finally:
            self._in_flight -= 1
            self._cached.pop(id(body), None)

    def _default_text(self, body: dict[str, Any], api: str) -> str:
        if self.handler is not None:  # a reply that is a function of the request
            text = self.handler(body)
            if text is not None:
                return text
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") in (
            "json_schema",
            "json_object",
        ):
            return "{}"
        identity = self.config.reply_mode == "identity"
        source = ""
        if api == _CHAT:
            messages = body.get("messages")
            if isinstance(messages, list):
                for message in reversed(messages):
                    if isinstance(message, dict) and message.get("role") == "user":
                        source = _content_text(message.get("content"))
                        break
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt:
                prompt = prompt[-1]
            if isinstance(prompt, str):
                source = _identity_completion(prompt) if identity else prompt
        if identity:
            return source
        return "echo: " + source[:ECHO_MAX_CHARS]

    @staticmethod
    def _prompt_words(body: dict[str, Any], api: str) -> list[str]:
        """The prompt's tokens for the prefix cache (as many as ``_prompt_tokens`` counts)."""
        words: list[str] = []
        if api == _CHAT:
            messages = body.get("messages")
            for message in messages if isinstance(messages, list) else ():
                if isinstance(message, dict):
                    words += _content_text(message.get("content")).split()
        else:
            prompt = body.get("prompt")
            for p in [prompt] if isinstance(prompt, str) else prompt or ():
                if isinstance(p, str):
                    words += p.split()
        return words

    def _cache_extra(self, body: dict[str, Any], api: str) -> dict[str, Any]:
        """llama-server style ``timings`` for an answer's last chunk (else nothing)."""
        cached = self._cached.get(id(body))
        cache = self.prefix_cache
        if cached is None or cache is None or cache.config.style != "llama":
            return {}
        return cache.report(self._prompt_tokens(body, api), cached)

    @staticmethod
    def _prompt_tokens(body: dict[str, Any], api: str) -> int:
        n = 0
        if api == _CHAT:
            messages = body.get("messages")
            if isinstance(messages, list):
                for message in messages:
                    if isinstance(message, dict):
                        n += len(_content_text(message.get("content")).split())
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                n = len(prompt.split())
            elif isinstance(prompt, list):
                n = sum(len(p.split()) for p in prompt if isinstance(p, str))
        return max(n, 1)

    async def _serve_fault(
        self,
        conn: _Connection,
        req: _Request,
        body: dict[str, Any],
        api: str,
        fault: dict[str, Any],
    ) -> bool:
        """Serve a non-``reply`` fault; return whether the connection stays open."""
        kind = fault["kind"]
        writer = conn.writer
        keep = req.keep_alive
        delay = fault["delay_s"]
        if delay > 0 and kind != "hang" and not await conn.sleep_unless_eof(delay):
            self._disconnects += 1
            return False
        if kind == "status":
            status: int = fault["status"]
            extra = b""
            retry_after = fault.get("retry_after")
            if retry_after is not None:
                extra = f"Retry-After: {_format_seconds(retry_after)}\r\n".encode()
            err_type = "rate_limit_error" if status == 429 else "fake_fault"
            error = _error_body(f"injected fault: HTTP {status}", err_type, str(status))
            writer.write(_response_bytes(status, error, keep_alive=keep, extra_headers=extra))
            await writer.drain()
            return keep
        if kind == "echo_key":
            key = _bearer_token(req.headers.get("authorization", ""))
            error = _error_body(
                _BAD_KEY_MESSAGE.format(key=key), "invalid_request_error", "invalid_api_key"
            )
            writer.write(_response_bytes(fault["status"], error, keep_alive=keep))
            await writer.drain()
            return keep
        if kind == "malformed":
            writer.write(_response_bytes(200, _MALFORMED_BODY, keep_alive=keep))
            await writer.drain()
            return keep
        if kind == "hang":
            await conn.wait_eof()
            self._disconnects += 1
            return False
        if kind == "reset":
            _abort_with_rst(writer)
            self._disconnects += 1
            return False
        stream = bool(body.get("stream"))
        if kind == "empty":
            if stream:
                ok = await self._send_stream(conn, req, body, api, "", "stop")
            else:
                ok = await self._send_full(conn, req, body, api, "", "stop")
            if ok:
                return keep
            self._disconnects += 1
            return False
        if kind == "empty_choices":
            writer.write(self._empty_choices_bytes(req, body, api, stream))
            await writer.drain()
            return keep
        if kind == "trickle":
            text = self._replies.popleft() if self._replies else self._default_text(body, api)
            if await self._send_trickle(conn, req, body, api, text, fault, stream):
                self._completed += 1
                return keep
            self._disconnects += 1
            return False
        # "cut" or "reset_mid": a failed answer, the scripted reply (if any) stays queued.
        text = self._replies[0] if self._replies else self._default_text(body, api)
        if kind == "cut":
            pieces = _PIECE_RE.findall(text)[: fault["after"]]
            if stream:
                _base, event = self._stream_encoder(api)
                data = [_STREAM_HEAD_KEEP if keep else _STREAM_HEAD_CLOSE]
                data.extend(event(piece, None, i == 0) for i, piece in enumerate(pieces))
                data.append(_SSE_DONE_AND_END if fault["done"] else _CHUNKED_END)
                writer.write(b"".join(data))
            else:
                writer.write(self._full_bytes(req, body, api, "".join(pieces), None))
            await writer.drain()
            return keep
        # kind == "reset_mid"
        if stream:
            _base, event = self._stream_encoder(api)
            pieces = _PIECE_RE.findall(text)[: fault["after"]]
            data = [_STREAM_HEAD_KEEP if keep else _STREAM_HEAD_CLOSE]
            data.extend(event(piece, None, i == 0) for i, piece in enumerate(pieces))
            partial = b"".join(data)
        else:
            full = self._full_bytes(req, body, api, text, "stop")
            body_start = full.index(b"\r\n\r\n") + 4
            partial = full[: body_start + (len(full) - body_start) // 2]
        # With no write buffering, drain() returns once every byte is in the kernel: the RST
        # below discards whatever the transport still holds.
        writer.transport.set_write_buffer_limits(high=0)
        writer.write(partial)
        await writer.drain()
        _abort_with_rst(writer)
        self._disconnects += 1
        return False

    def _usage(self, body: dict[str, Any], api: str, completion_tokens: int) -> dict[str, Any]:
        prompt_tokens = self._prompt_tokens(body, api)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        cached = self._cached.get(id(body))
        cache = self.prefix_cache
        if cached is not None and cache is not None and cache.config.style == "openai":
            usage.update(cache.report(prompt_tokens, cached))
        return usage

    def _full_bytes(
        self,
        req: _Request,
        body: dict[str, Any],
        api: str,
        text: str,
        finish_reason: str | None,
    ) -> bytes:
        """A whole non-streamed 200 answer with ``text`` as the one choice."""
        n = next(self._ids)
        usage = self._usage(body, api, len(_PIECE_RE.findall(text)))
        if api == _CHAT:
            payload: dict[str, Any] = {
                "id": f"chatcmpl-fake-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.config.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
                **self._cache_extra(body, api),
            }
        else:
            payload = {
                "id": f"cmpl-fake-{n}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.config.model,
                "choices": [
                    {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
                ],
                "usage": usage,
                **self._cache_extra(body, api),
            }
        return _response_bytes(200, _dumps(payload), keep_alive=req.keep_alive)

    def _empty_choices_bytes(
        self, req: _Request, body: dict[str, Any], api: str, stream: bool
    ) -> bytes:
        n = next(self._ids)
        if api == _CHAT:
            ident = f"chatcmpl-fake-{n}"
            obj = "chat.completion.chunk" if stream else "chat.completion"
        else:
            ident, obj = f"cmpl-fake-{n}", "text_completion"
        base: dict[str, Any] = {
            "id": ident,
            "object": obj,
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [],
        }
        if not stream:
            payload = {**base, "usage": self._usage(body, api, 0)}
            return _response_bytes(200, _dumps(payload), keep_alive=req.keep_alive)
        data = [_STREAM_HEAD_KEEP if req.keep_alive else _STREAM_HEAD_CLOSE, _sse_chunk(base)]
        if _wants_usage(body):
            data.append(_sse_chunk({**base, "usage": self._usage(body, api, 0)}))
        data.append(_SSE_DONE_AND_END)
        return b"".join(data)

    def _stream_encoder(
        self, api: str
    ) -> tuple[dict[str, Any], Callable[[str | None, str | None, bool], bytes]]:
        """``(base, event)`` for one streamed answer: the fields shared by its chunks, and
        ``event(content, finish_reason, first)`` framing one choice chunk."""
        n = next(self._ids)
        created = int(time.time())
        model = self.config.model
        if api == _CHAT:
            base: dict[str, Any] = {
                "id": f"chatcmpl-fake-{n}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }

            def event(content: str | None, finish: str | None, first: bool = False) -> bytes:
                delta: dict[str, Any] = {}
                if first:
                    delta["role"] = "assistant"
                if content is not None:
                    delta["content"] = content
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return _sse_chunk({**base, "choices": [choice]})

        else:
            base = {
                "id": f"cmpl-fake-{n}",
                "object": "text_completion",
                "created": created,
                "model": model,
            }

            def event(content: str | None, finish: str | None, first: bool = False) -> bytes:
                choice = {
                    "index": 0,
                    "text": content or "",
                    "logprobs": None,
                    "finish_reason": finish,
                }
                return _sse_chunk({**base, "choices": [choice]})

        return base, event

    def _stream_tail(
        self,
        body: dict[str, Any],
        api: str,
        base: dict[str, Any],
        finish: bytes,
        completion_tokens: int,
    ) -> list[bytes]:
        """The end of a finished stream: the finish chunk, the usage chunk if asked, [DONE]."""
        tail = [finish]
        if _wants_usage(body):
            tail.append(
                _sse_chunk(
                    {
                        **base,
                        "choices": [],
                        "usage": self._usage(body, api, completion_tokens),
                        **self._cache_extra(body, api),
                    }
                )
            )
        tail.append(_SSE_DONE_AND_END)
        return tail

    async def _send_full(
        self,
        conn: _Connection,
        req: _Request,
        body: dict[str, Any],
        api: str,
        text: str,
        finish_reason: str,
    ) -> bool:
        config = self.config
        delay = max(config.latency_s, config.ttft_s)
        if self._token_delay_s > 0:
            delay += self._token_delay_s * max(1, len(_PIECE_RE.findall(text)))
        if delay > 0 and not await conn.sleep_unless_eof(delay):
            return False
        writer = conn.writer
        writer.write(self._full_bytes(req, body, api, text, finish_reason))
        await writer.drain()
        return True

    async def _send_stream(
        self,
        conn: _Connection,
        req: _Request,
        body: dict[str, Any],
        api: str,
        text: str,
        finish_reason: str,
    ) -> bool:
        config = self.config
        ttft = config.ttft_s
        rest_delay = config.latency_s - ttft
        if ttft > 0 and not await conn.sleep_unless_eof(ttft):
            return False
        if self._token_delay_s > 0:
            return await self._send_paced(conn, req, body, api, text, finish_reason)
        pieces = _PIECE_RE.findall(text)
        base, event = self._stream_encoder(api)
        head = _STREAM_HEAD_KEEP if req.keep_alive else _STREAM_HEAD_CLOSE
        first = head + event(pieces[0] if pieces else "", None, True)
        rest = [event(piece, None, False) for piece in pieces[1:]]
        rest.extend(
            self._stream_tail(body, api, base, event(None, finish_reason, False), len(pieces))
        )
        writer = conn.writer
        if rest_delay > 0:
            writer.write(first)
            await writer.drain()
            if not await conn.sleep_unless_eof(rest_delay):
                return False
            writer.write(b"".join(rest))
        else:
            rest.insert(0, first)
            writer.write(b"".join(rest))
        await writer.drain()
        return True

    async def _send_paced(
        self,
        conn: _Connection,
        req: _Request,
        body: dict[str, Any],
        api: str,
        text: str,
        finish_reason: str,
    ) -> bool:
        """Stream one piece every ``token_delay_s`` (the first after one delay too)."""
        delay = self._token_delay_s
        pieces = _PIECE_RE.findall(text) or [""]
        base, event = self._stream_encoder(api)
        writer = conn.writer
        for i, piece in enumerate(pieces):
            if not await conn.sleep_unless_eof(delay):
                return False
            head = (_STREAM_HEAD_KEEP if req.keep_alive else _STREAM_HEAD_CLOSE) if i == 0 else b""
            writer.write(head + event(piece, None, i == 0))
            await writer.drain()
        finish = event(None, finish_reason, False)
        writer.write(b"".join(self._stream_tail(body, api, base, finish, len(pieces))))
        await writer.drain()
        return True

    async def _send_trickle(
        self,
        conn: _Connection,
        req: _Request,
        body: dict[str, Any],
        api: str,
        text: str,
        fault: dict[str, Any],
        stream: bool,
    ) -> bool:
        """Serve a ``trickle`` fault; ``False`` if the client went away."""
        interval: float = fault["interval_s"]
        pieces = _PIECE_RE.findall(text) or [""]
        missing = fault["min_pieces"] - len(pieces)
        if missing > 0:
            # Repeat the pieces, each repetition starting with a space.
            again = pieces if pieces[0][:1].isspace() else [" " + pieces[0], *pieces[1:]]
            pieces.extend(itertools.islice(itertools.cycle(again), missing))
        writer = conn.writer
        if not stream:
            if interval > 0 and not await conn.sleep_unless_eof(interval * len(pieces)):
                return False
            writer.write(self._full_bytes(req, body, api, "".join(pieces), "stop"))
            await writer.drain()
            return True
        base, event = self._stream_encoder(api)
        head = _STREAM_HEAD_KEEP if req.keep_alive else _STREAM_HEAD_CLOSE
        writer.write(head + event(pieces[0], None, True))
        await writer.drain()
        for piece in pieces[1:]:
            if interval > 0 and not await conn.sleep_unless_eof(interval):
                return False
            writer.write(event(piece, None, False))
            await writer.drain()
        tail = self._stream_tail(body, api, base, event(None, "stop", False), len(pieces))
        writer.write(b"".join(tail))
        await writer.drain()
        return True


# ---------------------------------------------------------------------- subprocess mode


class SpawnedFakeServer:
    """Handle on a fake server running in a subprocess (see :func:`spawn_fake_server`)."""

    def __init__(self, base: str, process: subprocess.Popen[bytes], client: httpx.Client) -> None:
        self.base = base
        self.url = f"{base}/v1"
        self.port = int(base.rsplit(":", 1)[1])
        self.process = process
        self._client = client

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        """Call an admin (or any) endpoint, e.g. ``admin("GET", "/_admin/stats")``."""
        response = self._client.request(method, path, json=json)
        response.raise_for_status()
        return response.json()

    def configure(
        self,
        *,
        latency_s: float | None = None,
        ttft_s: float | None = None,
        model: str | None = None,
        reply_mode: str | None = None,
    ) -> dict[str, Any]:
        values = {
            "latency_s": latency_s,
            "ttft_s": ttft_s,
            "model": model,
            "reply_mode": reply_mode,
        }
        result: dict[str, Any] = self.admin(
            "POST", "/_admin/config", {k: v for k, v in values.items() if v is not None}
        )
        return result

    def set_capacity(
        self,
        capacity: int | None = None,
        *,
        token_delay_s: float | None = None,
        fill_max_tokens: bool | None = None,
    ) -> dict[str, Any]:
        values = {
            "capacity": capacity,
            "token_delay_s": token_delay_s,
            "fill_max_tokens": fill_max_tokens,
        }
        result: dict[str, Any] = self.admin(
            "POST", "/_admin/capacity", {k: v for k, v in values.items() if v is not None}
        )
        return result

    def queue_stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", "/_admin/queue")
        return result

    def add_faults(self, faults: Iterable[Mapping[str, Any]]) -> int:
        queued: int = self.admin("POST", "/_admin/faults", {"faults": list(faults)})["queued"]
        return queued

    def add_replies(self, replies: Iterable[str]) -> int:
        queued: int = self.admin("POST", "/_admin/replies", {"replies": list(replies)})["queued"]
        return queued

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self.admin("GET", "/_admin/stats")
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", "/_admin/requests")
        return result

    def reset(self) -> None:
        self.admin("POST", "/_admin/reset")


def _stop_process(process: subprocess.Popen[bytes], grace_s: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def spawn_fake_server(
    latency_s: float = 0.0,
    ttft_s: float = 0.0,
    *,
    model: str = DEFAULT_MODEL,
    reply_mode: str = "echo",
    port: int = 0,
    startup_timeout_s: float = 15.0,
    stop_grace_s: float = 5.0,
    capacity: int = 0,
    token_delay_s: float = 0.0,
    fill_max_tokens: bool = False,
) -> Iterator[SpawnedFakeServer]:
    """Run ``python -m tests.support.fake_openai`` in a subprocess for the ``with`` block."""
    import selectors

    import httpx

    cmd = [
        sys.executable,
        "-m",
        "tests.support.fake_openai",
        "--port",
        str(port),
        "--latency",
        repr(float(latency_s)),
        "--ttft",
        repr(float(ttft_s)),
        "--model",
        model,
        "--reply-mode",
        reply_mode,
        "--capacity",
        str(capacity),
        "--token-delay",
        repr(float(token_delay_s)),
        *(["--fill-max-tokens"] if fill_max_tokens else []),
    ]
    process = subprocess.Popen(
        cmd, cwd=_REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=startup_timeout_s):
                raise RuntimeError(
                    f"fake OpenAI server did not report LISTENING within {startup_timeout_s}s"
                )
        line = process.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(
                f"fake OpenAI server failed to start (exit code {process.poll()}): {line!r}"
            )
        base = line.split(" ", 1)[1]
        with httpx.Client(base_url=base, timeout=10.0) as client:
            yield SpawnedFakeServer(base, process, client)
    finally:
        _stop_process(process, stop_grace_s)
        if process.stdout is not None:
            process.stdout.close()


async def _serve(args: argparse.Namespace) -> None:
    server = FakeOpenAIServer(
        latency_s=args.latency,
        ttft_s=args.ttft,
        model=args.model,
        reply_mode=args.reply_mode,
        host=args.host,
        port=args.port,
        capacity=args.capacity,
        token_delay_s=args.token_delay,
        fill_max_tokens=args.fill_max_tokens,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        print(f"LISTENING {server.base}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="total latency, seconds")
    parser.add_argument("--ttft", type=float, default=0.0, help="time to first token, seconds")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--reply-mode", choices=REPLY_MODES, default="echo", help="default reply text"
    )
    parser.add_argument(
        "--capacity", type=int, default=0, help="replies served at once, the rest queue (0: all)"
    )
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds between streamed pieces"
    )
    parser.add_argument(
        "--fill-max-tokens", action="store_true", help="replies exactly max_tokens pieces long"
    )
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
