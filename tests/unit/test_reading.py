"""Reading a streamed answer off the wire (SSE parsed here, not by the SDK's objects):
what counts as finished, what is an error. Pure: a mock transport, no server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from familiar.client.backend import SlotClient
from familiar.client.wire import HTTP, RetryPolicy
from familiar.config.slots import Slot
from familiar.errors import BackendProtocolError


def sse(*events: Any, done: bool = True, extra: str = "") -> bytes:
    lines = [extra] if extra else []
    lines += [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def client(body: bytes) -> SlotClient:
    def handler(request: Any) -> Any:
        return HTTP.Response(200, content=body, headers={"content-type": "text/event-stream"})

    slot = Slot(name="s", url="http://fake.test/v1", model="m", parallel=1)
    return SlotClient(slot, transport=HTTP.MockTransport(handler), retry=RetryPolicy(attempts=1))


def delta(text: str | None, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return {"id": "chatcmpl-7", "model": "served-model", "choices": [choice]}


async def test_a_stream_with_comments_usage_and_done_is_read_whole() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    body = sse(delta("Hel"), delta("lo"), delta(None, "stop"), usage, extra=": keep-alive\n\n")
    events: list[Any] = []
    async with client(body) as c:
        c.hooks.append(events.append)
        result = await c.chat([{"role": "user", "content": "hi"}])
    assert (result.text, result.finish_reason) == ("Hello", "stop")
    (event,) = events
    assert (event.response_id, event.response_model, event.stream) == (
        "chatcmpl-7",
        "served-model",
        True,
    )
    assert (result.prompt_tokens, result.completion_tokens) == (3, 2)
    assert result.ttft_s is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (sse(delta("Hel"), {"error": {"message": "out of memory"}}), "out of memory"),
        (sse(delta("Hel"), "[1, 2]"), "not an object"),
        (sse(delta("Hel"), "{not json"), "malformed"),
        (sse(delta("Hel"), delta("lo"), done=False), "without a finish_reason"),
        (sse({"choices": []}, {"choices": []}), "no choices"),
        (sse(delta(None, "stop")), "empty answer"),
    ],
)
async def test_broken_streams_are_protocol_errors(body: bytes, message: str) -> None:
    async with client(body) as c:
        with pytest.raises(BackendProtocolError, match=message):
            await c.chat([{"role": "user", "content": "hi"}])


async def test_the_body_goes_out_as_given() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: Any) -> Any:
        sent.append(json.loads(request.content))
        return HTTP.Response(200, content=sse(delta("ok", "stop")))

    slot = Slot(name="s", url="http://fake.test/v1", model="m", parallel=1)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    async with SlotClient(slot, transport=HTTP.MockTransport(handler)) as c:
        await c.chat(messages, temperature=0.0, max_tokens=5, stop=["\n"])
    assert sent == [
        {
            "model": "m",
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
            "max_tokens": 5,
            "stop": ["\n"],
        }
    ]


@pytest.mark.parametrize(
    ("usage", "timings", "cached", "prompt"),
    [
        ({"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 8}}, None, 8, 9),
        ({"prompt_tokens": 9, "prompt_tokens_details": None}, None, None, 9),
        ({"prompt_tokens": 9}, {"cache_n": 6, "prompt_n": 3}, 6, 9),
        (None, {"cache_n": 6, "prompt_n": 3}, 6, 9),  # llama-server without usage
        ({"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 5}}, {"cache_n": 6}, 5, 9),
        ({"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": -1}}, None, None, 9),
        ({"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": True}}, None, None, 9),
        ({"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": "8"}}, None, None, 9),
        ({"prompt_tokens": 9}, {"cache_n": 2.5, "prompt_n": 3}, None, 9),
        ({"prompt_tokens": 9}, "cache_n", None, 9),
        ({"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 10}}, None, None, 9),
    ],
)
async def test_cached_prompt_tokens_are_read_from_usage_or_llama_timings(
    usage: Any, timings: Any, cached: int | None, prompt: int
) -> None:
    last: dict[str, Any] = {"choices": []}
    if usage is not None:
        last["usage"] = {"completion_tokens": 1, **usage}
    if timings is not None:
        last["timings"] = timings
    async with client(sse(delta("Hi"), delta(None, "stop"), last)) as c:
        result = await c.chat([{"role": "user", "content": "x"}])
    assert result.cached_tokens == cached and result.prompt_tokens == prompt


def split_client(body: bytes, at: list[int]) -> SlotClient:
    """A client whose server sends ``body`` in pieces cut at the byte offsets ``at``."""

    async def pieces() -> Any:
        last = 0
        for cut in [*at, len(body)]:
            yield body[last:cut]
            last = cut

    def handler(request: Any) -> Any:
        return HTTP.Response(200, content=pieces(), headers={"content-type": "text/event-stream"})

    slot = Slot(name="s", url="http://fake.test/v1", model="m", parallel=1)
    return SlotClient(slot, transport=HTTP.MockTransport(handler), retry=RetryPolicy(attempts=1))


async def test_lines_split_anywhere_crlf_and_a_last_line_without_an_end_are_read() -> None:
    events = [delta("data: é"), delta("ü\n"), delta(None, "stop")]
    body = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events).encode()
    body = body.replace(b"data: ", b"data:", 1) + b'data: {"choices": []}'
    cuts = sorted({1, 5, body.index("é".encode()) + 1, body.index(b"\r\n") + 1, len(body) - 3})
    async with split_client(body, cuts) as c:
        result = await c.chat([{"role": "user", "content": "x"}])
    assert (result.text, result.finish_reason) == ("data: éü\n", "stop")


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ('{"choices": []} trailing', "extra data"),
        ("   {not json", "malformed"),
        (b"\xff\xfe", "malformed"),
    ],
)
async def test_a_bad_event_line_is_a_protocol_error(event: str | bytes, message: str) -> None:
    raw = event if isinstance(event, bytes) else event.encode()
    body = sse(delta("Hel"), done=False) + b"data: " + raw + b"\n\n" + sse(delta(None, "stop"))
    async with split_client(body, [7]) as c:
        with pytest.raises(BackendProtocolError, match=message):
            await c.chat([{"role": "user", "content": "x"}])
