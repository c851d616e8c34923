"""A raw HTTP/1.1 server on loopback for hostile-server tests: each connection is handed
to a test's coroutine, which reads requests with :meth:`Conn.request` and writes whatever
bytes it likes (lies, cuts, resets), so a client's reading can be attacked byte by byte."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from familiar.client.backend import CallResult, SlotClient
from familiar.client.wire import HTTP, RetryPolicy
from familiar.config.slots import Slot
from familiar.errors import BackendError


class Conn:
    """One accepted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, read_body: bool = True) -> dict[str, Any] | None:
        """The next request's head (and JSON body); None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body: Any = None
        if read_body:
            body = json.loads(await self.reader.readexactly(length)) if length else None
        return {"line": lines[0], "headers": headers, "body": body, "length": length}

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Conn], Awaitable[None]]


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self.handler(Conn(reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly (the server is stopping)
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.transport.abort()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._server.wait_closed()


def event(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One SSE ``data:`` event of a chat stream (with its blank line)."""
    delta = {} if content is None else {"content": content}
    chunk = {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": delta}], **extra}
    chunk["choices"][0]["finish_reason"] = finish
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def whole(content: str, finish: str | None = "stop") -> bytes:
    """A non-streamed chat completion's JSON body."""
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return json.dumps({"id": "c1", "model": "m", "choices": [choice]}).encode()


def head(
    status: int = 200,
    ctype: str = "text/event-stream",
    length: int | None = None,
    close: bool = False,
    extra: str = "",
) -> bytes:
    """A response's status line and headers: ``Content-Length`` when ``length`` is given,
    else close-delimited (``close``) or chunked."""
    lines = [f"HTTP/1.1 {status} X", f"content-type: {ctype}"]
    if length is not None:
        lines.append(f"content-length: {length}")
    elif not close:
        lines.append("transfer-encoding: chunked")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (an empty ``data``: the last one)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# -- SlotClient against such a server -----------------------------------------------------

MSG = [{"role": "user", "content": "hello"}]


PIPES = ["aiohttp", "httpx2"]


def client(url: str, pipe: str, *, stream: bool = True, attempts: int = 1, **kw: Any) -> SlotClient:
    kw.setdefault("timeout_s", 5)
    slot = Slot(name="s", url=url, model="m", parallel=kw.pop("parallel", 2), **kw)
    forced = HTTP.AsyncHTTPTransport() if pipe == "httpx2" else None

    async def nap(_: float) -> None:
        pass

    retry = RetryPolicy(attempts=attempts, sleep=nap)
    c = SlotClient(slot, transport=forced, stream=stream, retry=retry)
    assert c._pipe.name == pipe
    return c


async def ask(handler: Handler, pipe: str, **kw: Any) -> CallResult | BackendError:
    """One chat call against a raw server: its result, or the error of the tree it raised
    (anything else fails the test)."""
    async with RawServer(handler) as srv, client(srv.url, pipe, **kw) as c:
        try:
            return await c.chat(MSG)
        except BackendError as exc:
            return exc


def once(*parts: bytes, pause: float = 0.0, then: str = "close") -> Handler:
    """Read one request, write ``parts`` (pausing between them), then close, reset or hang."""

    async def handle(conn: Conn) -> None:
        if await conn.request() is None:
            return
        for part in parts:
            await conn.send(part)
            if pause:
                await asyncio.sleep(pause)
        if then == "reset":
            conn.reset()
        elif then == "hang":
            await asyncio.sleep(3600)

    return handle


STREAMED = head(close=True)


async def timed(handler: Handler, pipe: str, **kw: Any) -> tuple[CallResult | BackendError, float]:
    start = time.monotonic()
    got = await ask(handler, pipe, **kw)
    return got, time.monotonic() - start
