"""Reading an answer off the wire: a stream or a whole body, and whether it finished.

An answer counts only when the server said it finished: :func:`check_finished` turns a
stream that ended without a ``finish_reason`` (a server restarted mid-answer, a dropped
connection), an answer without choices, or empty text into a retryable
``BackendProtocolError``. The readers fill an :class:`Answer` as bytes arrive, so what
was measured (time to first token, usage) survives a failure for telemetry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
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
    ttft_s: float | None = None
    chunks: int = 0
    choices: int = 0  # chunks (or answers) that carried at least one choice


async def read_stream(
    create: Any,
    model: str,
    kind: Kind,
    body: Mapping[str, Any],
    headers: dict[str, str] | None,
    acc: Answer,
    start: float,
) -> None:
    """Stream a completion (``create`` is the SDK's ``...completions.create``)."""
    extra = {"stream": True, "stream_options": {"include_usage": True}}
    stream: Any = await create(model=model, extra_headers=headers, **body, **extra)
    async with stream:
        async for chunk in stream:
            acc.chunks += 1
            if chunk.usage is not None:
                acc.prompt_tokens = chunk.usage.prompt_tokens
                acc.completion_tokens = chunk.usage.completion_tokens
            if not chunk.choices:
                continue
            acc.choices += 1
            choice = chunk.choices[0]
            piece = choice.delta.content if kind == "chat" else choice.text
            if piece:
                if acc.ttft_s is None:
                    acc.ttft_s = time.monotonic() - start
                acc.text.append(piece)
            if choice.finish_reason is not None:
                acc.finish_reason = choice.finish_reason


async def read_whole(
    create: Any,
    model: str,
    kind: Kind,
    body: Mapping[str, Any],
    headers: dict[str, str] | None,
    acc: Answer,
) -> None:
    """A non-streamed completion (its first byte comes at the end: no stall limit)."""
    resp: Any = await create(model=model, extra_headers=headers, **body)
    acc.chunks = 1
    if resp.choices:
        acc.choices = 1
        choice = resp.choices[0]
        text = (choice.message.content if kind == "chat" else choice.text) or ""
        if text:
            acc.text.append(text)
        acc.finish_reason = choice.finish_reason
    if resp.usage is not None:
        acc.prompt_tokens = resp.usage.prompt_tokens
        acc.completion_tokens = resp.usage.completion_tokens


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
