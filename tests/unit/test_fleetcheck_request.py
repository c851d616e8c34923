"""One bench request read off a stream (HTTP.MockTransport, an injected clock)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from familiar.client.wire import HTTP
from familiar.fleetcheck.request import SseEvents, measure
from familiar.fleetcheck.sweep import Sweep, Target, Workload


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return _event({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


USAGE = _event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})


def _stream(*parts: bytes) -> Callable[[Any], HTTP.Response]:
    def handler(request: Any) -> Any:
        async def body() -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        return HTTP.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    return handler


def _clock() -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: float(next(ticks))


async def _measure(handler: Callable[[Any], HTTP.Response]) -> Any:
    async with HTTP.AsyncClient(transport=HTTP.MockTransport(handler)) as client:
        return await measure(
            client, "http://h/v1/chat/completions", b"{}", headers={}, timeout_s=5, clock=_clock()
        )


def test_sse_events_survive_any_split() -> None:
    data = _chunk("a") + b": keep-alive comment\n\n" + _chunk("b") + b"data: [DONE]\n\n"
    for cut in range(len(data)):
        events = SseEvents()
        got = events.feed(data[:cut]) + events.feed(data[cut:])
        assert got[-1] == b"[DONE]" and len(got) == 3, cut


async def test_a_finished_stream_is_timed_piece_by_piece() -> None:
    # clock: start=0, then one tick per network chunk (1, 2, 3, 4, 5), end=6
    s = await _measure(
        _stream(
            _chunk(""), _chunk("Hel"), _chunk("lo") + _chunk("!"), _chunk(None, "length"), USAGE
        )
    )
    assert s.ok and s.error is None
    assert s.ttft_s == 2.0  # the first chunk carries no text
    assert s.itl_s == (1.0, 0.0)  # two pieces in one network chunk: a zero gap
    assert s.e2e_s == 6.0
    assert s.output_tokens == 3 and s.prompt_tokens == 7
    assert s.tpot_s == pytest.approx((6.0 - 2.0) / 2)


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ((_chunk("a"), _chunk("b"), b"data: [DONE]\n\n"), "no finish_reason (cut off)"),
        ((_event({"choices": []}),), "no choices"),
        ((_chunk(None, "stop"),), "empty answer (finish_reason=stop)"),
        ((b"data: {not json\n\n",), "malformed stream"),
    ],
    ids=["cut", "no choices", "empty", "malformed"],
)
async def test_unfinished_answers_are_failures(parts: tuple[bytes, ...], error: str) -> None:
    s = await _measure(_stream(*parts))
    assert not s.ok and s.error == error and s.ttft_s is None


async def test_http_errors_and_connection_errors_are_failures() -> None:
    s = await _measure(lambda request: HTTP.Response(503, json={"error": "busy"}))
    assert (s.ok, s.error) == (False, "HTTP 503")

    def refuse(request: Any) -> Any:
        raise HTTP.ConnectError("refused", request=request)

    s = await _measure(refuse)
    assert (s.ok, s.error) == (False, "connection error (ConnectError)")


async def test_the_sweep_sends_what_vllm_bench_sends_round_robin() -> None:
    seen: list[tuple[str, dict[str, Any], str | None]] = []

    def handler(request: Any) -> Any:
        seen.append(
            (str(request.url), json.loads(request.content), request.headers.get("authorization"))
        )
        return _stream(_chunk("x"), _chunk("y", "length"), USAGE)(request)

    target = Target("s", ("http://a/v1", "http://b/v1"), "m", "vllm", api_key="k-1")
    lines: list[str] = []
    sweep = Sweep(
        target,
        Workload(input_tokens=20, output_tokens=2),
        transport=HTTP.MockTransport(handler),
        progress=lines.append,
    )
    levels = await sweep.run([1, 2])
    assert [(lv.concurrency, lv.ok, lv.failed) for lv in levels] == [(1, 8, 0), (2, 8, 0)]
    assert levels[0].output_tokens == 8 * 3  # the server's usage count wins
    urls = [u for u, _, _ in seen]
    assert urls.count("http://a/v1/chat/completions") == urls.count("http://b/v1/chat/completions")
    body = seen[0][1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 2 and body["ignore_eos"] is True and body["model"] == "m"
    assert len(body["messages"][0]["content"].split()) == 19
    # 16 measured and one warm-up before each level, every prompt different
    assert len(seen) == 18 and len({b["messages"][0]["content"] for _, b, _ in seen}) == 18
    assert {auth for _, _, auth in seen} == {"Bearer k-1"}
    assert lines[0] == "concurrency 1: 8 requests ..." and "8 ok" in lines[1]
    ollama = Target("s", ("http://a/v1",), "m", "ollama")
    assert "ignore_eos" not in json.loads(Workload().body(ollama, 0))


async def test_a_closed_keep_alive_connection_is_retried_once_before_any_answer() -> None:
    calls = 0

    def closed_first(request: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise HTTP.RemoteProtocolError("Server disconnected without sending a response.")
        return _stream(_chunk("a"), _chunk("b", "stop"))(request)

    s = await _measure(closed_first)
    assert s.ok and s.reconnected and calls == 2

    def always_closed(request: Any) -> Any:
        raise HTTP.RemoteProtocolError("Server disconnected without sending a response.")

    s = await _measure(always_closed)
    assert not s.ok and s.reconnected and s.error == "connection error (RemoteProtocolError)"

    async def dies_mid_answer() -> AsyncIterator[bytes]:
        yield _chunk("a")
        raise HTTP.RemoteProtocolError("peer closed connection")

    calls = 0

    def mid(request: Any) -> Any:
        nonlocal calls
        calls += 1
        return HTTP.Response(200, content=dies_mid_answer())

    s = await _measure(mid)
    assert not s.ok and not s.reconnected and calls == 1  # an answer had begun: a failure
