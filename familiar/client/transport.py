"""The HTTP client under SlotClient: one POST, its status, its body as raw byte chunks.

Two implementations behind one small interface (:class:`Pipe`, :class:`Reply`), chosen
by :func:`pipe_for`:

* :class:`AiohttpPipe` (aiohttp, its HTTP parser in C): the default where aiohttp is
  installed. A streamed answer arrives as one HTTP chunk per SSE event, and httpx2 parses
  each of those in Python (h11) before the reader sees a byte: about half of a streamed
  call's CPU (``benchmarks/stream.py --stacks``, ``benchmarks/profile_stream.py``).
* :class:`HttpxPipe` (``familiar.client.wire.HTTP``: httpx2, else httpx): where aiohttp is
  missing, and whenever a test injects an httpx transport (``MockTransport``).

Both honour the same limits (connect timeout, the stall limit as the read timeout),
proxies from the environment (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), Basic
credentials in a URL's userinfo, and keep connections alive. What they raise is mapped
to the error tree by :func:`familiar.client.wire.map_errors`.
"""

from __future__ import annotations

import functools
import io
import json
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from familiar import __version__
from familiar.client.wire import HTTP

try:
    import aiohttp
    import yarl
except ImportError:  # pragma: no cover - an install without aiohttp: httpx2 serves
    aiohttp = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Limits:
    """The HTTP client's limits for one slot."""

    connections: int
    connect_s: float
    read_s: float  # no byte for that long aborts the attempt (the stall limit)


class Reply(Protocol):
    """An answer whose status line and headers have arrived."""

    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def body(self) -> bytes: ...

    async def close(self, reuse: bool) -> None:
        """Give the connection back (``reuse``: the body was read to its end) or drop it."""


class Pipe(Protocol):
    """Sends one POST to a URL made by :meth:`url`."""

    name: str

    def url(self, url: str) -> Any: ...

    async def post(self, url: Any, headers: Mapping[str, str], content: bytes) -> Reply: ...

    async def aclose(self) -> None: ...


#: the request body: compact JSON, UTF-8 as it is; NaN refused (no server reads it)
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True)
class Target:
    """Where one replica is asked (URLs in the pipe's own type, made once), and the
    headers every request to it carries."""

    chat: Any  # <url>/chat/completions
    completion: Any  # <url>/completions
    headers: dict[str, str]

    @classmethod
    def of(cls, pipe: Pipe, url: str, key: str | None) -> Target:
        parts = urllib.parse.urlsplit(url)
        path = parts.path.rstrip("/")
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": f"familiar/{__version__}",
        }
        if not (parts.username or parts.password):  # else Basic credentials from the URL
            # no key: a placeholder, as the openai SDK sent
            headers["authorization"] = f"Bearer {key or 'sk-no-key'}"
        return cls(
            chat=pipe.url(parts._replace(path=f"{path}/chat/completions").geturl()),
            completion=pipe.url(parts._replace(path=f"{path}/completions").geturl()),
            headers=headers,
        )


def pipe_for(limits: Limits, transport: Any = None) -> Pipe:
    """aiohttp where installed; httpx2 without it or with an injected httpx transport."""
    if transport is None and aiohttp is not None:
        return AiohttpPipe(limits)
    return HttpxPipe(limits, transport)


# -- httpx2 ----------------------------------------------------------------------------


class _HttpxReply:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: Any) -> None:
        self._response = response
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        chunks: AsyncIterator[bytes] = self._response.aiter_bytes()
        return chunks

    async def body(self) -> bytes:
        content: bytes = await self._response.aread()
        return content

    async def close(self, reuse: bool) -> None:
        await self._response.aclose()


class HttpxPipe:
    """httpx2 (else httpx): its own pool, proxies from the environment, URL userinfo."""

    name = HTTP.__name__

    def __init__(self, limits: Limits, transport: Any = None) -> None:
        size = limits.connections
        self._http = HTTP.AsyncClient(
            transport=transport,
            timeout=HTTP.Timeout(limits.read_s, connect=limits.connect_s),
            limits=HTTP.Limits(max_connections=size, max_keepalive_connections=size),
        )

    def url(self, url: str) -> Any:
        return HTTP.URL(url)

    async def post(self, url: Any, headers: Mapping[str, str], content: bytes) -> Reply:
        for attempt in range(_STALE_TRIES + 1):
            request = self._http.build_request("POST", url, content=content, headers=headers)
            try:
                return _HttpxReply(await self._http.send(request, stream=True))
            except HTTP.RemoteProtocolError as exc:
                # a kept-alive connection the server had closed: sent again (see AiohttpPipe)
                if attempt == _STALE_TRIES or "without sending a response" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()


# -- aiohttp ---------------------------------------------------------------------------


class _AiohttpReply:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: Any) -> None:
        self._response = response
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        chunks: AsyncIterator[bytes] = self._response.content.iter_any()
        return chunks

    async def body(self) -> bytes:
        content: bytes = await self._response.read()
        return content

    async def close(self, reuse: bool) -> None:
        if reuse:
            self._response.release()  # back to the pool if the body ended, else closed
        else:
            self._response.close()


class AiohttpPipe:
    """aiohttp: one session per slot, made on first use (inside the running loop)."""

    name = "aiohttp"

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._session: Any = None
        self._proxies = urllib.request.getproxies()  # the environment's, as httpx reads

    def url(self, url: str) -> Any:
        return _AiohttpURL(yarl.URL(url), self._proxy(url))

    def _proxy(self, url: str) -> str | None:
        """The proxy the environment names for ``url`` (None: direct), read once."""
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
        if not self._proxies or urllib.request.proxy_bypass(host):
            return None
        return self._proxies.get(parsed.scheme) or self._proxies.get("all")

    def _open(self) -> Any:
        limits = self._limits
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.connect_s, sock_read=limits.read_s
        )
        # an idle connection is dropped after 4 s, before the servers' own 5 s (uvicorn
        # under vLLM and SGLang, llama-server): never a request sent on one they close
        connector = _Connector(limit=limits.connections, limit_per_host=0, keepalive_timeout=4.0)
        # trust_env=False: the proxy is read once per URL (above); with True, aiohttp
        # would also look up ~/.netrc in a thread for every request without credentials
        return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)

    async def post(self, url: Any, headers: Mapping[str, str], content: bytes) -> Reply:
        if self._session is None:
            self._session = self._open()
        for attempt in range(_STALE_TRIES + 1):
            # over 1 MiB, raw bytes make aiohttp warn (ResourceWarning): the same bytes as a file
            data = io.BytesIO(content) if len(content) > _LARGE else content
            try:
                response = await self._session.post(
                    url.url, data=data, headers=headers, proxy=url.proxy, allow_redirects=False
                )
            except aiohttp.ServerDisconnectedError:
                # no byte of an answer: a kept-alive connection the server had closed
                # (llama-server closes one after a few requests) is not the server's fault;
                # sent again, on another connection, before it counts as a failure
                if attempt == _STALE_TRIES:
                    raise
                continue
            return _AiohttpReply(response)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


_LARGE = 1 << 20
#: sends again when a kept-alive connection turns out closed before any answer
_STALE_TRIES = 2

if aiohttp is not None:
    from aiohttp.client_proto import ResponseHandler

    class _Handler(ResponseHandler):
        """aiohttp's protocol, but bytes that come while it waits in the pool (a server's
        extra bytes after an answer) close it: they must never answer the next request."""

        idle = False

        def set_response_params(self, *args: Any, **kwargs: Any) -> None:
            self.idle = False  # a request is about to be sent on it
            super().set_response_params(*args, **kwargs)

        def data_received(self, data: bytes) -> None:
            if data and self.idle and self.transport is not None:
                self.force_close()
                self.transport.close()
                return
            super().data_received(data)

    class _Connector(aiohttp.TCPConnector):
        """Makes :class:`_Handler` protocols and marks them idle when given back."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._factory = functools.partial(_Handler, loop=self._loop)  # type: ignore[assignment]

        def _release(
            self, key: Any, protocol: ResponseHandler, *, should_close: bool = False
        ) -> None:
            super()._release(key, protocol, should_close=should_close)
            if isinstance(protocol, _Handler):
                protocol.idle = True


@dataclass(frozen=True)
class _AiohttpURL:
    url: Any  # yarl.URL
    proxy: str | None
