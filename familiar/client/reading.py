"""Reading an answer off the wire: a stream or a whole body, and whether it finished.

An answer counts only when the server said it finished: :func:`check_finished` turns a
stream that ended without a ``finish_reason`` (a server restarted mid-answer, a dropped
connection), an answer without choices, or empty text into a retryable
``BackendProtocolError``. The readers fill an :class:`Answer` as bytes arrive, so what
was measured (time to first token, usage) survives a failure for telemetry.
"""

from __future__ import annotations

import asyncio
import json
import json.scanner
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from familiar.client.transport import Pipe, Reply
from familiar.client.wire import Sent, Stalled, refusal, short
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
    pipe: Pipe,
    url: Any,
    headers: Mapping[str, str],
    content: bytes,
    kind: Kind,
    acc: Answer,
    start: float,
    sent: Sent,
    stall_s: float = float("inf"),
) -> None:
    """Send a streamed request (``stream_options.include_usage`` set by the caller) and
    read its SSE events into ``acc``, as plain JSON dicts, off the raw bytes: no SDK
    objects, no text decoding of whole lines (``benchmarks/stream.py``,
    ``benchmarks/profile_stream.py``). A status that is not 2xx raises ``Refused``; bytes
    that end no line for ``stall_s`` raise ``Stalled``."""
    reply = await pipe.post(url, headers, content)
    ended = False
    try:
        sent.answered = True
        if not 200 <= reply.status < 300:
            raise refusal(reply.status, await _error_body(reply), reply.headers)
        _check_type(reply.headers, "text/event-stream")
        chunks = reply.chunks()
        ended = await read_events(chunks, kind, acc, start, stall_s) and await _drain(chunks)
    finally:
        await reply.close(ended)


#: the longest SSE line taken (an event is one token's delta: a few hundred bytes), and
#: the most bytes one answer may take, streamed or whole: a server sending more, or bytes
#: without a line end for ever, fails the attempt instead of filling the memory
MAX_LINE = 8 << 20
MAX_BODY = 256 << 20
#: the most of a refused request's body read for its message
MAX_ERROR_BODY = 64 << 10


async def _capped(chunks: AsyncIterator[bytes]) -> bytes:
    """A body of unknown length, up to ``MAX_BODY``."""
    parts: list[bytes] = []
    size = 0
    async for data in chunks:
        size += len(data)
        if size > MAX_BODY:
            raise ValueError(f"the answer is too large (over {MAX_BODY} bytes)")
        parts.append(data)
    return b"".join(parts)


#: how long the body's end may take to come after ``[DONE]``
DRAIN_S = 0.1


async def _drain(chunks: AsyncIterator[bytes]) -> bool:
    """After ``[DONE]``: read the rest of the body (its end, which usually follows at once),
    so that the connection can serve again; False (drop it) when more than a little comes,
    or it does not end soon, or it fails: the answer is complete either way."""
    size = 0
    try:
        async with asyncio.timeout(DRAIN_S):
            async for data in chunks:
                size += len(data)
                if size > MAX_ERROR_BODY:
                    return False
    except Exception:  # whatever comes after the answer is not its failure
        return False
    return True


def _check_type(headers: Mapping[str, str], *wanted: str) -> None:
    """A 2xx answer whose content-type is none of ``wanted`` (a proxy's HTML page, a
    captive portal) is malformed, however its bytes read; none given is taken."""
    given = headers.get("content-type")
    if given is None:
        return
    media = given.split(";", 1)[0].strip().lower()
    if media not in wanted and not (media.endswith("+json") and "application/json" in wanted):
        raise ValueError(
            f"content-type {short(given, 60)!r}, not {wanted[0]}: an empty or malformed answer"
        )


async def _error_body(reply: Reply) -> bytes:
    """The start of a refused request's body (an endless one is not waited for)."""
    parts: list[bytes] = []
    size = 0
    async for data in reply.chunks():
        parts.append(data)
        size += len(data)
        if size >= MAX_ERROR_BODY:
            break
    return b"".join(parts)[:MAX_ERROR_BODY]


#: the JSON decoder's value scanner (C): a value at an index of a longer string, without
#: slicing it out first nor ``json.loads``' encoding sniffing and whitespace regexes
_scan: Any = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


async def read_events(
    chunks: AsyncIterator[bytes], kind: Kind, acc: Answer, start: float, stall_s: float
) -> bool:
    """The events of one stream into ``acc``; True once ``[DONE]`` came.

    Whole lines are cut off the bytes read so far (a partial line waits for the next read),
    decoded at once, and every ``data:`` line's JSON is scanned where it stands; other
    lines (blank separators, comments, ``event:``) are skipped by the search. Only the
    first choice (index 0) is read; text or another finish_reason after the finish is
    malformed."""
    chat = kind == "chat"
    text = acc.text
    scan = _scan
    rest = b""
    partial: list[bytes] = []  # reads that ended no line yet (joined once a line ends)
    waiting = 0  # their bytes
    since = 0.0  # when the first of them came
    left = MAX_BODY  # bytes the answer may still take
    async for data in _ended(chunks):
        left -= len(data)
        cut = data.rfind(b"\n") + 1 or data.rfind(b"\r") + 1  # LF; CR-only lines too
        if not cut:  # no line end: keep the bytes, unless too many or too slow
            if not partial:
                since = time.monotonic()
                if rest:
                    partial.append(rest)
                    waiting = len(rest)
                    rest = b""
            partial.append(data)
            waiting += len(data)
            if waiting > MAX_LINE:
                raise ValueError(f"a stream line longer than {MAX_LINE} bytes")
            if time.monotonic() - since > stall_s:
                raise Stalled
            continue
        if left < 0:
            raise ValueError(f"the answer is too large (over {MAX_BODY} bytes)")
        if partial:
            partial.append(data)
            data = b"".join(partial)
            cut += len(data) - len(partial[-1])
            partial.clear()
        elif rest:
            cut += len(rest)
            data = rest + data
        rest = data[cut:]
        lines = "\n" + data[:cut].decode()  # bad UTF-8 is a ValueError: malformed
        if "\r" in lines:  # CRLF (or CR) line ends: all the same to a line reader
            lines = lines.replace("\r\n", "\n").replace("\r", "\n")
        i = lines.find("\ndata:")
        while i >= 0:
            j = i + 6
            if lines[j] == " ":
                j += 1
            if lines[j] == "[" and lines.startswith("[DONE]", j):
                return True
            try:
                chunk, end = scan(lines, j)
            except StopIteration:  # no JSON value where the line's data starts
                end = lines.find("\n", j)
                chunk = json.loads(lines[j:end])  # raises, saying what is wrong
            if lines[end] != "\n" and lines[end : lines.find("\n", end)].strip():
                raise ValueError(f"extra data after a stream event: {lines[j : end + 80]!r}")
            i = lines.find("\ndata:", end)
            if type(chunk) is not dict:
                raise ValueError(f"a stream event is not an object: {lines[j:end][:80]!r}")
            acc.chunks += 1
            if acc.response_id is None:
                acc.response_id = chunk.get("id")
                acc.response_model = chunk.get("model")
            choices = chunk.get("choices")
            if choices:
                acc.choices += 1
                choice = choices[0]
                if choice.get("index"):  # another choice's: never mixed into this text
                    continue
                if chat:
                    delta = choice.get("delta")
                    piece = delta.get("content") if delta else None
                else:
                    piece = choice.get("text")
                finish = choice.get("finish_reason")
                if acc.finish_reason is not None and (
                    piece or finish not in (None, acc.finish_reason)
                ):
                    raise ValueError(f"an event after the finish_reason {acc.finish_reason!r}")
                if piece:
                    if acc.ttft_s is None:
                        acc.ttft_s = time.monotonic() - start
                        if acc.on_first is not None:
                            acc.on_first()
                    text.append(piece)
                if finish is not None:
                    acc.finish_reason = finish
            if not choices or "usage" in chunk or "timings" in chunk or "error" in chunk:
                _read_extra(acc, chunk)
    return False


async def _ended(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body's chunks, then a line end (a last line without one is a line too)."""
    async for data in chunks:
        yield data
    yield b"\n"


def _read_extra(acc: Answer, chunk: dict[str, Any]) -> None:
    """The rare parts of a stream event: an error, usage, llama-server's timings."""
    if "error" in chunk:
        raise ValueError(f"the server reported an error mid-answer: {chunk['error']}")
    usage = chunk.get("usage")
    if usage:
        acc.prompt_tokens = usage.get("prompt_tokens")
        acc.completion_tokens = usage.get("completion_tokens")
    if usage or "timings" in chunk:
        read_cached(acc, usage, chunk.get("timings"))


async def read_whole(
    pipe: Pipe,
    url: Any,
    headers: Mapping[str, str],
    content: bytes,
    kind: Kind,
    acc: Answer,
    sent: Sent,
) -> None:
    """A non-streamed completion (its first byte comes at the end: no stall limit)."""
    reply = await pipe.post(url, headers, content)
    ok = False
    try:
        sent.answered = True
        if not 200 <= reply.status < 300:
            raise refusal(reply.status, await _error_body(reply), reply.headers)
        _check_type(reply.headers, "application/json")
        length = reply.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= MAX_BODY:
            raw = await reply.body()  # as long as it says (the usual answer: one read)
        else:
            raw = await _capped(reply.chunks())
        resp = json.loads(raw)
        if type(resp) is not dict:
            raise ValueError(f"the answer is not an object: {raw[:80]!r}")
        ok = True
    finally:  # a malformed answer's connection is not reused: what follows is unknown
        await reply.close(ok)
    acc.chunks = 1
    acc.response_id = resp.get("id")
    acc.response_model = resp.get("model")
    choices = resp.get("choices")
    if choices:
        acc.choices = 1
        choice = choices[0]
        if kind == "chat":
            message = choice.get("message")
            text = (message.get("content") if message else None) or ""
        else:
            text = choice.get("text") or ""
        if text:
            acc.text.append(text)
            if acc.on_first is not None:
                acc.on_first()
        acc.finish_reason = choice.get("finish_reason")
    usage = resp.get("usage")
    if usage:
        acc.prompt_tokens = usage.get("prompt_tokens")
        acc.completion_tokens = usage.get("completion_tokens")
    read_cached(acc, usage, resp.get("timings"))


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
    try:
        "".join(acc.text).encode()
    except UnicodeEncodeError:  # a JSON escape of a lone surrogate: no text can hold it
        raise BackendProtocolError(
            slot, "the answer holds a lone surrogate (\\ud800-\\udfff): not text", replica=replica
        ) from None
