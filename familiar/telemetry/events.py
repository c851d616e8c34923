"""Telemetry events, pure: ids, span ids, the common fields, ``llm.call`` fields, JSON.

No I/O: building an event reads only the clock, the context variables
(``familiar.context``), the host name and the version (both read once).
"""

from __future__ import annotations

import json
import random
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from familiar.client.backend import CallEvent
from familiar.config.runtimes import RUNTIMES, provider_name
from familiar.context import correlation_id, current_span
from familiar.logs import mask, mask_any

SERVICE = "familiar"
_HOST = socket.gethostname()

#: slot runtime -> ``gen_ai.provider.name`` (``familiar.config.runtimes``: ``openai`` is the
#: convention's well-known value; the self-hosted servers get their own name, no dots)
PROVIDERS: Mapping[str, str] = MappingProxyType({n: r.provider for n, r in RUNTIMES.items()})
_DEFAULT_PORTS = {"http": 80, "https": 443}

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


@lru_cache(maxsize=256)
def server_address(url: str) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port`` of a replica's base URL (the port the scheme
    implies when the URL names none); ``(None, None)`` for what does not parse."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None, None
    if not parts.hostname:
        return None, None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS.get(parts.scheme)


def llm_call_fields(e: CallEvent) -> dict[str, Any]:
    """A CallEvent in telemetry's vocabulary (OpenTelemetry GenAI names where they exist).

    familiar's own names that dashboards use stay (``latency_ms``, ``ttft_ms``, ``replica``,
    ``runtime``); the convention's names sit next to them. ``gen_ai.response.id`` and
    ``gen_ai.response.model`` are what the server said (null when no answer came).
    """
    address, port = server_address(e.replica)
    return {
        "role": e.role,
        "slot": e.slot,
        "replica": e.replica,
        "runtime": e.runtime,
        "gen_ai.provider.name": provider_name(e.runtime),
        "gen_ai.operation.name": "chat" if e.kind == "chat" else "text_completion",
        "gen_ai.conversation.id": e.correlation_id,
        "gen_ai.request.model": e.model,
        "gen_ai.request.stream": e.stream,
        "gen_ai.response.id": e.response_id,
        "gen_ai.response.model": e.response_model,
        "server.address": address,
        "server.port": port,
        "status": e.status,
        "error.type": e.error_type,
        "http.response.status_code": e.http_status,
        "latency_ms": round(e.latency_s * 1000, 2),
        "ttft_ms": None if e.ttft_s is None else round(e.ttft_s * 1000, 2),
        "gen_ai.response.time_to_first_chunk": None if e.ttft_s is None else round(e.ttft_s, 6),
        "queue_wait_ms": round(e.queue_wait_s * 1000, 2),
        "local_wait_ms": round(e.local_wait_s * 1000, 2),
        "ledger_wait_ms": round(e.ledger_wait_s * 1000, 2),
        "gen_ai.usage.input_tokens": e.prompt_tokens,
        "gen_ai.usage.output_tokens": e.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": e.cached_tokens,
        "gen_ai.response.finish_reasons": [e.finish_reason] if e.finish_reason else [],
        "attempt": e.attempt,
        "seats_in_use": e.seats_in_use,
        "seats_total": e.seats_total,
    }


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; other values become ``str()``, lone surrogates ``?``."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8", "replace")
