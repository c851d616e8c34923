"""One way to connect to NATS, for the seat ledger and the work queue alike."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client


async def connect(
    nc: Client,
    url: str,
    *,
    wait_s: float,
    error_cb: Callable[[Exception], Awaitable[None]],
    disconnected_cb: Callable[[], Awaitable[None]],
    reconnected_cb: Callable[[], Awaitable[None]],
    name: str = "familiar",
) -> None:
    """Connect ``nc`` to ``url`` (comma-separated servers: a cluster), the first connect
    bounded by ``wait_s``; afterwards the client reconnects forever in the background
    (every 0.5 s) and notices a dead server within about 10 s (pings every 5 s)."""
    await asyncio.wait_for(
        nc.connect(
            [u.strip() for u in url.split(",") if u.strip()],
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int, takes seconds
            connect_timeout=max(1, min(5, int(wait_s))),
            ping_interval=5,
            max_outstanding_pings=2,
            name=name,  # how the server's connection list shows us
        ),
        wait_s,
    )
