"""The lifecycle shared by the in-process loopback test servers.

:class:`LoopbackServer` listens with :func:`asyncio.start_server`, keeps track of every
connection's handler task and writer, and on :meth:`~LoopbackServer.stop` aborts the open
connections (so clients see connection errors) and cancels their handlers. A stopped server can
be started again and listens on the same port. Subclasses implement :meth:`_handle`, which serves
one connection; the base class closes the writer once it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = ["LoopbackServer"]


class LoopbackServer(ABC):
    """Base of an in-process server on ``host:port``; use as ``async with Server() as srv:``."""

    #: The listen backlog passed to :func:`asyncio.start_server`.
    _backlog: ClassVar[int] = 100
    #: How ``start()`` names the server when it is already running.
    _label: ClassVar[str] = "server"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listening; after a :meth:`stop`, again on the same port."""
        if self._server is not None:
            raise RuntimeError(f"{self._label} already running")
        server = await asyncio.start_server(
            self._accept, self.host, self._port, backlog=self._backlog, reuse_address=True
        )
        self._server = server
        self._port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection (in-flight requests die)."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("port not known before start()")
        return self._port

    @property
    def base(self) -> str:
        """``http://HOST:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection with :meth:`_handle`, tracked so that :meth:`stop` can end it."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @abstractmethod
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until it ends; the caller closes ``writer`` afterwards."""
