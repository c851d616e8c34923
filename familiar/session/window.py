"""How many tokens a slot's model takes in one request, asked of the server itself where
its runtime says (``familiar.config.runtimes``: llama.cpp ``/props`` ``n_ctx``, the context of one
slot; vLLM and SGLang ``/v1/models`` ``max_model_len``). Other runtimes do not say; the
caller then assumes :data:`ASSUMED` and says so."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from familiar.client.backend import SlotClient
from familiar.client.wire import HTTP
from familiar.config.runtimes import RUNTIMES, root_url

ASSUMED = 8192
_TIMEOUT_S = 5.0


async def context_window(client: SlotClient) -> int | None:
    """The slot's context window in tokens as its first replica reports it, or None."""
    slot = client.slot
    info = RUNTIMES.get(slot.runtime)
    source = None if info is None else info.context_window
    if source is None:
        return None
    base = slot.url[0].rstrip("/")
    url = (root_url(base) if source.at == "root" else base) + source.path
    key = slot.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with contextlib.suppress(Exception):
        async with HTTP.AsyncClient(timeout=_TIMEOUT_S) as http:
            response = await http.get(url, headers=headers)
            if response.status_code == 200:
                return source.read(response.json(), slot.model)
    return None


async def smallest_window(clients: Sequence[SlotClient]) -> tuple[int, str]:
    """The smallest context window of ``clients`` and where the figure came from."""
    found = await asyncio.gather(*(context_window(c) for c in clients))
    known = [(n, c.slot.name) for n, c in zip(found, clients, strict=True) if n is not None]
    if not known:
        return ASSUMED, f"assumed {ASSUMED:,}: no slot reports its context window"
    n, name = min(known)
    return n, f"slot {name} serves {n:,} tokens per request"
