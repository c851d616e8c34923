"""Reading an answer off the wire: a stream or a whole body, and whether it finished.

An answer counts only when the server said it finished: :func:`check_finished` turns a
stream that ended without a ``finish_reason`` (a server restarted mid-answer, a dropped
connection), an answer without choices, or empty text into a retryable
``BackendProtocolError``. The readers fill an :class:`Answer` as bytes arrive, so what
was measured (time to first token, usage) survives a failure for telemetry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from familiar.errors import BackendProtocolError

Kind = Literal["chat", "completion"]


@dataclass
class Answer:
    """What one attempt has read so far."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: prompt tokens the server served from its prefix cache (None: it did not say)
    cached_tokens: int | None = None
    ttft_s: float | None = None
    chunks: int = 0
    choices: int = 0  # chunks (or answers) that carried at least one choice
    response_id: str | None = None  # the server's id of the answer
    response_model: str | None = None  # the model the server says answered
    on_first: Callable[[], None] | None = None  # called at the first piece of text


async def read_stream(
    create: Any,
    model: str,
    kind: Kind,
    body: Mapping[str, Any],
    headers: dict[str, str] | None,
    acc: Answer,
    start: float,
) -> None:
    """Stream a completion. ``create`` is the SDK's
    ``...completions.with_streaming_response.create``: the SDK builds and sends the
    request and maps a refused one (status, connection) to its errors; the event stream
    itself is read here, as plain JSON dicts, because the SDK's typed objects cost more
    than the rest of the request (``benchmarks/stream.py``)."""
    body = {**body, "stream_options": {"include_usage": True}}
    piece_of = _delta if kind == "chat" else _text
    async with create(**_arguments(kind, model, body, headers), stream=True) as response:
        async for line in response.http_response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, "event:" lines
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                raise ValueError(f"a stream event is not an object: {data[:80]}")
            acc.chunks += 1
            if acc.response_id is None:
                acc.response_id = chunk.get("id")
                acc.response_model = chunk.get("model")
            if "error" in chunk:
                raise ValueError(f"the server reported an error mid-answer: {chunk['error']}")
            usage = chunk.get("usage")
            if usage:
                acc.prompt_tokens = usage.get("prompt_tokens")
                acc.completion_tokens = usage.get("completion_tokens")
            if usage or "timings" in chunk:
                read_cached(acc, usage, chunk.get("timings"))
            choices = chunk.get("choices")
            if not choices:
                continue
            acc.choices += 1
            choice = choices[0]
            piece = piece_of(choice)
            if piece:
                if acc.ttft_s is None:
                    acc.ttft_s = time.monotonic() - start
                    if acc.on_first is not None:
                        acc.on_first()
                acc.text.append(piece)
            finish = choice.get("finish_reason")
            if finish is not None:
                acc.finish_reason = finish


def _arguments(
    kind: Kind, model: str, body: Mapping[str, Any], headers: dict[str, str] | None
) -> dict[str, Any]:
    """The SDK call's arguments with the body as ``extra_body``: sent as it is, instead
    of walked through the SDK's typed-dict transform first (2.5 ms per chat request of a
    translation batch on a 2-core machine: more than the rest of the request)."""
    empty: dict[str, Any] = {"messages": []} if kind == "chat" else {"prompt": ""}
    return {"model": model, **empty, "extra_headers": headers, "extra_body": dict(body)}


def _delta(choice: Mapping[str, Any]) -> str | None:
    delta = choice.get("delta")
    return delta.get("content") if delta else None


def _text(choice: Mapping[str, Any]) -> str | None:
    return choice.get("text")


async def read_whole(
    create: Any,
    model: str,
    kind: Kind,
    body: Mapping[str, Any],
    headers: dict[str, str] | None,
    acc: Answer,
) -> None:
    """A non-streamed completion (its first byte comes at the end: no stall limit)."""
    resp: Any = await create(**_arguments(kind, model, body, headers))
    acc.chunks = 1
    acc.response_id = getattr(resp, "id", None)
    acc.response_model = getattr(resp, "model", None)
    if resp.choices:
        acc.choices = 1
        choice = resp.choices[0]
        text = (choice.message.content if kind == "chat" else choice.text) or ""
        if text:
            acc.text.append(text)
            if acc.on_first is not None:
                acc.on_first()
        acc.finish_reason = choice.finish_reason
    if resp.usage is not None:
        acc.prompt_tokens = resp.usage.prompt_tokens
        acc.completion_tokens = resp.usage.completion_tokens
    extra = getattr(resp, "model_extra", None) or {}
    usage = resp.usage.model_dump() if resp.usage is not None else None
    read_cached(acc, usage, extra.get("timings"))


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def read_cached(acc: Answer, usage: Any, timings: Any) -> None:
    """The prompt tokens served from the server's prefix cache: ``usage.
    prompt_tokens_details.cached_tokens`` (vLLM, SGLang, OpenAI, newer llama-server),
    else llama-server's ``timings``: ``cache_n`` cached, ``prompt_n`` computed (their sum
    is the prompt when the usage gave none). A value that is not a count, or more than the
    prompt, is ignored."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    if cached is None and isinstance(timings, dict):
        cached = _count(timings.get("cache_n"))
        computed = _count(timings.get("prompt_n"))
        if cached is not None and computed is not None and acc.prompt_tokens is None:
            acc.prompt_tokens = cached + computed
    if cached is not None and (acc.prompt_tokens is None or cached <= acc.prompt_tokens):
        acc.cached_tokens = cached  # more cached than prompt tokens: not believed


def check_finished(acc: Answer, slot: str, replica: str) -> None:
    """Raise ``BackendProtocolError`` unless the server said the answer finished."""
    if acc.chunks == 0:
        raise BackendProtocolError(slot, "empty or malformed answer", replica=replica)
    if acc.finish_reason is None:
        raise BackendProtocolError(
            slot,
            "the answer ended without a finish_reason (cut off: server restarted or"
            " connection dropped)"
            if acc.choices
            else "the answer had no choices",
            replica=replica,
        )
    if not acc.text and acc.finish_reason != "tool_calls":
        raise BackendProtocolError(
            slot, f"empty answer (finish_reason={acc.finish_reason})", replica=replica
        )
