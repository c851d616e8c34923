"""How many tokens a slot's model takes in one request, asked of the server itself:
llama.cpp ``/props`` (``default_generation_settings.n_ctx``, the context of one slot),
vLLM and SGLang ``/v1/models`` (``max_model_len``). Other runtimes do not say; the
caller then assumes :data:`ASSUMED` and says so."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from familiar.backend import SlotClient
from familiar.wire import HTTP

ASSUMED = 8192
_TIMEOUT_S = 5.0


def _root(base: str) -> str:
    base = base.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _window(runtime: str, model: str, path: str, data: Any) -> int | None:
    if not isinstance(data, dict):
        return None
    if path == "/props":
        settings = data.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None
    models = data.get("data")
    if not isinstance(models, list):
        return None
    lengths = [
        m.get("max_model_len")
        for m in models
        if isinstance(m, dict) and (m.get("id") == model or len(models) == 1)
    ]
    found = [n for n in lengths if isinstance(n, int) and n > 0]
    return min(found) if found else None


async def context_window(client: SlotClient) -> int | None:
    """The slot's context window in tokens as its first replica reports it, or None."""
    slot = client.slot
    base = slot.url[0]
    if slot.runtime == "llama.cpp":
        url, path = _root(base) + "/props", "/props"
    elif slot.runtime in ("vllm", "sglang"):
        url, path = base.rstrip("/") + "/models", "/models"
    else:
        return None
    key = slot.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with contextlib.suppress(Exception):
        async with HTTP.AsyncClient(timeout=_TIMEOUT_S) as http:
            response = await http.get(url, headers=headers)
            if response.status_code == 200:
                return _window(slot.runtime, slot.model, path, response.json())
    return None


async def smallest_window(clients: Sequence[SlotClient]) -> tuple[int, str]:
    """The smallest context window of ``clients`` and where the figure came from."""
    found = await asyncio.gather(*(context_window(c) for c in clients))
    known = [(n, c.slot.name) for n, c in zip(found, clients, strict=True) if n is not None]
    if not known:
        return ASSUMED, f"assumed {ASSUMED:,}: no slot reports its context window"
    n, name = min(known)
    return n, f"slot {name} serves {n:,} tokens per request"
