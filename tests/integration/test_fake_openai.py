"""The fake OpenAI server speaks real HTTP to real clients (openai SDK, httpx)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.support.fake_openai import ECHO_MAX_CHARS, FakeOpenAIServer, spawn_fake_server

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
CHAT_PATH = "/v1/chat/completions"
TEXT_PATH = "/v1/completions"
BOTH_APIS = pytest.mark.parametrize("path", [CHAT_PATH, TEXT_PATH])
# More than ECHO_MAX_CHARS characters, with markers, punctuation and a line break.
JAPANESE = (
    "⟦P0⟧お茶の歴史は古く、中国の雲南省あたりが原産地だと言われています。"
    "日本には平安時代に伝わり、鎌倉時代に栄西が禅宗とともに広めました。\n"
    "室町時代には茶の湯が生まれ、千利休がわび茶を大成しました。"
    "江戸時代になると煎茶が庶民にも広まり、今日では緑茶、ほうじ茶、玄米茶など、"
    "さまざまな種類のお茶が日常的に飲まれています。詳しくは⟦P1⟧を見てください。"
    "お湯の温度は七十度から八十度くらいが目安です。急須に茶葉を入れ、一分ほど待ちます。"
)


@pytest.fixture
async def srv() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def client(srv: FakeOpenAIServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.base, timeout=5.0) as c:
        yield c


def _sdk(srv: FakeOpenAIServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=srv.url, api_key="x", max_retries=0)


async def _wait_for(predicate: Any, timeout_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------- openai SDK


async def test_sdk_chat_completion(srv: FakeOpenAIServer) -> None:
    async with _sdk(srv) as sdk:
        resp = await sdk.chat.completions.create(
            model="fake-model",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello there"},
            ],
            extra_headers={"x-correlation-id": "corr-1"},
        )
    assert resp.choices[0].message.content == "echo: hello there"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "fake-model"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 4
    assert resp.usage.completion_tokens == 3
    assert resp.usage.total_tokens == 7
    [recorded] = srv.requests
    assert recorded["path"] == "/v1/chat/completions"
    assert recorded["body"]["messages"][1]["content"] == "hello there"
    assert recorded["headers"]["authorization"] == "Bearer x"
    assert recorded["headers"]["x-correlation-id"] == "corr-1"
    assert srv.stats["requests"] == 1
    assert srv.stats["completed"] == 1
    assert srv.stats["in_flight"] == 0


async def test_sdk_streamed_chat_completion_with_usage(srv: FakeOpenAIServer) -> None:
    async with _sdk(srv) as sdk:
        stream = await sdk.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hello streaming world"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        # Keep-alive: a second request on the same client reuses the connection.
        again = await sdk.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "again"}]
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello streaming world"
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop"
    assert all(f is None for f in finish[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == 3
    assert again.choices[0].message.content == "echo: again"
    assert srv.stats["connections"] == 1
    assert srv.stats["completed"] == 2


async def test_sdk_stream_without_usage_has_no_usage_chunk(srv: FakeOpenAIServer) -> None:
    async with _sdk(srv) as sdk:
        stream = await sdk.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_sdk_completion_and_streamed_completion(srv: FakeOpenAIServer) -> None:
    async with _sdk(srv) as sdk:
        resp = await sdk.completions.create(model="fake-model", prompt="say hi")
        stream = await sdk.completions.create(
            model="fake-model",
            prompt="say hi",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert resp.choices[0].text == "echo: say hi"
    assert resp.object == "text_completion"
    assert resp.usage is not None and resp.usage.total_tokens == 5
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: say hi"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert [r["path"] for r in srv.requests] == ["/v1/completions", "/v1/completions"]


async def test_scripted_replies_and_json_schema(srv: FakeOpenAIServer) -> None:
    srv.add_replies(["first", "second"])
    srv.add_faults([{"kind": "reply", "text": "from fault", "finish_reason": "length"}])
    schema_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    }
    async with _sdk(srv) as sdk:
        replies = []
        for _ in range(4):
            resp = await sdk.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "q"}]
            )
            replies.append((resp.choices[0].message.content, resp.choices[0].finish_reason))
        structured = await sdk.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "q"}],
            response_format=schema_format,
        )
    assert replies == [
        ("from fault", "length"),
        ("first", "stop"),
        ("second", "stop"),
        ("echo: q", "stop"),
    ]
    assert json.loads(structured.choices[0].message.content or "") == {}
    assert srv.stats["faults_served"] == 1
    assert srv.stats["completed"] == 5


async def test_configured_model_and_models_endpoint(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    srv.configure(model="replica-b")
    async with _sdk(srv) as sdk:
        models = await sdk.models.list()
        resp = await sdk.chat.completions.create(
            model="whatever", messages=[{"role": "user", "content": "x"}]
        )
    assert [m.id for m in models.data] == ["replica-b"]
    assert resp.model == "replica-b"
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert (await client.get("/nope")).status_code == 404
    assert (await client.get("/v1/chat/completions")).status_code == 405


# ---------------------------------------------------------------------- faults via raw httpx


@pytest.mark.parametrize("status", [500, 503])
async def test_fault_status(srv: FakeOpenAIServer, client: httpx.AsyncClient, status: int) -> None:
    srv.add_faults([{"kind": "status", "status": status}])
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == status
    assert "error" in resp.json()
    ok = await client.post("/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200
    assert srv.stats == {
        "requests": 2,
        "in_flight": 0,
        "max_in_flight": 1,
        "completed": 1,
        "faults_served": 1,
        "disconnects": 0,
        "connections": 1,
    }


async def test_fault_429_retry_after(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    srv.add_faults([{"kind": "status", "status": 429, "retry_after": 0.2}])
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "0.2"
    assert resp.json()["error"]["type"] == "rate_limit_error"


async def test_fault_malformed(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    srv.add_faults([{"kind": "malformed"}])
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        resp.json()
    # The connection is still usable afterwards.
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_fault_reset(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    srv.add_faults([{"kind": "reset"}])
    with pytest.raises(httpx.TransportError):
        await client.post("/v1/chat/completions", json=CHAT)
    assert srv.stats["disconnects"] == 1
    assert srv.stats["in_flight"] == 0
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_fault_hang_until_client_gives_up(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    srv.add_faults([{"kind": "hang"}])
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json=CHAT, timeout=0.2)
    # httpx drops the connection on timeout; the server notices and frees the slot.
    await _wait_for(lambda: srv.stats["in_flight"] == 0)
    assert srv.stats["disconnects"] == 1
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_fault_hang_released_by_stop(srv: FakeOpenAIServer) -> None:
    srv.add_faults([{"kind": "hang"}])
    async with httpx.AsyncClient(base_url=srv.base, timeout=5.0) as c:
        pending = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
        await _wait_for(lambda: srv.stats["in_flight"] == 1)
        await srv.stop()
        with pytest.raises(httpx.TransportError):
            await pending
    assert srv.stats["in_flight"] == 0


async def test_fault_delay(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    srv.add_faults([{"kind": "status", "status": 503, "delay_s": 0.1}])
    start = time.monotonic()
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 503
    assert time.monotonic() - start >= 0.09


async def test_invalid_faults_rejected(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError):
        srv.add_faults([{"kind": "explode"}])
    resp = await client.post("/_admin/faults", json={"faults": [{"kind": "status"}]})
    assert resp.status_code == 400
    resp = await client.post("/_admin/config", json={"latency": 1})
    assert resp.status_code == 400


async def test_bad_request_body(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/chat/completions", content=b"{not json")
    assert resp.status_code == 400
    assert srv.requests[0]["body"] is None
    assert srv.stats["in_flight"] == 0


# ---------------------------------------------------------------------- admin over HTTP


async def test_admin_endpoints(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    resp = await client.post("/_admin/config", json={"latency_s": 0.05, "model": "m2"})
    assert resp.json() == {"latency_s": 0.05, "ttft_s": 0.0, "model": "m2", "reply_mode": "echo"}
    assert srv.config.latency_s == 0.05
    await client.post("/_admin/faults", json={"faults": [{"kind": "status", "status": 500}]})
    await client.post("/_admin/replies", json={"replies": ["scripted"]})
    first = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"x-correlation-id": "abc"}
    )
    second = await client.post("/v1/chat/completions", json=CHAT)
    assert first.status_code == 500
    assert second.json()["choices"][0]["message"]["content"] == "scripted"
    assert second.json()["model"] == "m2"
    stats = (await client.get("/_admin/stats")).json()
    assert stats["requests"] == 2
    assert stats["completed"] == 1
    assert stats["faults_served"] == 1
    recorded = (await client.get("/_admin/requests")).json()
    assert [r["headers"].get("x-correlation-id") for r in recorded] == ["abc", None]
    assert recorded[0]["body"] == CHAT
    assert (await client.post("/_admin/reset")).json() == {"status": "ok"}
    assert (await client.get("/_admin/requests")).json() == []
    assert (await client.get("/_admin/stats")).json()["requests"] == 0
    assert srv.config.model == "fake-model"
    assert srv.config.latency_s == 0.0


# ---------------------------------------------------------------------- latency & concurrency


async def test_max_in_flight_is_exact(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    n = 7
    srv.configure(latency_s=0.2)
    start = time.monotonic()
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=CHAT) for _ in range(n))
    )
    elapsed = time.monotonic() - start
    assert all(r.status_code == 200 for r in responses)
    assert 0.2 <= elapsed < 1.0  # serial would take 1.4 s
    stats = srv.stats
    assert stats["max_in_flight"] == n
    assert stats["in_flight"] == 0
    assert stats["completed"] == n
    assert stats["requests"] == n


async def test_client_disconnect_during_latency_frees_slot(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    srv.configure(latency_s=5.0)
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json=CHAT, timeout=0.1)
    await _wait_for(lambda: srv.stats["in_flight"] == 0)
    assert srv.stats["disconnects"] == 1
    assert srv.stats["completed"] == 0


async def test_streaming_ttft_and_latency(srv: FakeOpenAIServer) -> None:
    srv.configure(ttft_s=0.1, latency_s=0.3)
    async with _sdk(srv) as sdk:
        start = time.monotonic()
        stream = await sdk.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
        )
        times: list[float] = []
        async for _chunk in stream:
            times.append(time.monotonic() - start)
    assert 0.09 <= times[0] < 0.25
    assert times[-1] >= 0.29
    assert times[-1] < 0.6


async def test_non_streaming_latency(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    srv.configure(latency_s=0.15)
    start = time.monotonic()
    assert (await client.post("/v1/completions", json={"prompt": "x"})).status_code == 200
    assert 0.14 <= time.monotonic() - start < 0.5


# ---------------------------------------------------------------------- lifecycle


async def test_stop_and_restart_on_same_port() -> None:
    async with FakeOpenAIServer() as srv:
        port = srv.port
        async with httpx.AsyncClient(base_url=srv.base, timeout=2.0) as c:
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
            await srv.stop()
            assert not srv.running
            with pytest.raises(httpx.TransportError):
                await c.post("/v1/chat/completions", json=CHAT)
            await srv.start()
            assert srv.port == port
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert srv.stats["requests"] == 2


async def test_fixed_port() -> None:
    async with FakeOpenAIServer() as first:
        port = first.port
    async with FakeOpenAIServer(port=port) as srv:
        assert srv.url == f"http://127.0.0.1:{port}/v1"
        async with httpx.AsyncClient(timeout=2.0) as c:
            assert (await c.get(f"{srv.base}/health")).status_code == 200


def test_subprocess_mode() -> None:
    with spawn_fake_server(latency_s=0.0) as server:
        assert server.url == f"{server.base}/v1"
        with httpx.Client(base_url=server.url, timeout=5.0) as c:
            resp = c.post("/chat/completions", json=CHAT, headers={"x-correlation-id": "p1"})
            assert resp.json()["choices"][0]["message"]["content"] == "echo: hello"
            server.add_faults([{"kind": "status", "status": 503}])
            assert c.post("/chat/completions", json=CHAT).status_code == 503
        stats = server.admin("GET", "/_admin/stats")
        assert stats["requests"] == 2
        assert stats["faults_served"] == 1
        assert server.requests()[0]["headers"]["x-correlation-id"] == "p1"
        server.configure(latency_s=0.01)
        server.reset()
        assert server.stats()["requests"] == 0
        process = server.process
    assert process.returncode is not None


def test_subprocess_identity_mode() -> None:
    with spawn_fake_server(reply_mode="identity") as server:
        with httpx.Client(base_url=server.url, timeout=5.0) as c:
            resp = c.post("/chat/completions", json=_chat(JAPANESE))
            assert resp.json()["choices"][0]["message"]["content"] == JAPANESE
            assert server.configure(reply_mode="echo")["reply_mode"] == "echo"
            resp = c.post("/chat/completions", json=CHAT)
            assert resp.json()["choices"][0]["message"]["content"] == "echo: hello"


# ---------------------------------------------------------------------- misbehaving servers
# Wire-level checks with plain httpx: the SSE lines as sent, not as an SDK interprets them.


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


def _body(path: str, text: str, **extra: Any) -> dict[str, Any]:
    """A request body for ``path`` whose user text (or prompt) is ``text``."""
    if path == CHAT_PATH:
        return _chat(text, **extra)
    return {"model": "fake-model", "prompt": text, **extra}


def _choice_text(choice: dict[str, Any]) -> str:
    """The text of a (streamed or not) choice of either API."""
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    if "message" in choice:
        return str(choice["message"]["content"])
    return str(choice["text"])


def _events(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON events of SSE ``lines`` (``[DONE]`` left out)."""
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def _streamed_text(lines: list[str]) -> str:
    return "".join(_choice_text(c) for e in _events(lines) for c in e["choices"])


def _finish_reasons(lines: list[str]) -> list[str | None]:
    return [c["finish_reason"] for e in _events(lines) for c in e["choices"]]


async def _sse_lines(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[str]]:
    """POST a streamed request; the response and its non-empty lines, read to the end."""
    async with client.stream("POST", path, json={**body, "stream": True}) as resp:
        lines = [line async for line in resp.aiter_lines() if line]
    return resp, lines


async def _settled(srv: FakeOpenAIServer) -> dict[str, int]:
    """The stats once no request is in flight any more."""
    await _wait_for(lambda: srv.stats["in_flight"] == 0)
    return srv.stats


@BOTH_APIS
@pytest.mark.parametrize("include_usage", [False, True])
async def test_fault_cut_stream(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str, include_usage: bool
) -> None:
    srv.add_faults([{"kind": "cut", "after": 2}])
    body = _body(path, "one two three four", stream_options={"include_usage": include_usage})
    resp, lines = await _sse_lines(client, path, body)
    assert resp.status_code == 200
    assert resp.headers["transfer-encoding"] == "chunked"
    assert lines[-1] == "data: [DONE]"
    assert lines.count("data: [DONE]") == 1
    assert _finish_reasons(lines) == [None, None]
    assert all('"finish_reason":null' in line for line in lines[:-1])
    assert all("usage" not in event for event in _events(lines))
    assert _streamed_text(lines) == "echo: one"
    if path == CHAT_PATH:
        assert _events(lines)[0]["choices"][0]["delta"]["role"] == "assistant"
    # The body ended cleanly: the connection is reused for the next request.
    ok = await client.post(path, json=_body(path, "again"))
    assert ok.status_code == 200
    stats = await _settled(srv)
    assert stats["completed"] == 1
    assert stats["faults_served"] == 1
    assert stats["disconnects"] == 0
    assert stats["connections"] == 1


@BOTH_APIS
async def test_fault_cut_stream_without_done(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str
) -> None:
    srv.add_faults([{"kind": "cut", "done": False}])
    resp, lines = await _sse_lines(client, path, _body(path, "one two three"))
    assert resp.status_code == 200
    assert len(lines) == 1  # the first piece (default "after": 1), no [DONE]
    assert "[DONE]" not in lines[0]
    assert _finish_reasons(lines) == [None]
    assert _streamed_text(lines) == "echo:"
    assert (await client.post(path, json=_body(path, "x"))).status_code == 200
    stats = await _settled(srv)
    assert stats["connections"] == 1
    assert stats["disconnects"] == 0


async def test_fault_cut_after_zero_sends_no_event(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    srv.add_faults([{"kind": "cut", "after": 0}])
    resp, lines = await _sse_lines(client, CHAT_PATH, CHAT)
    assert resp.status_code == 200
    assert lines == ["data: [DONE]"]


@BOTH_APIS
async def test_fault_cut_plain(srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str) -> None:
    srv.add_faults([{"kind": "cut", "after": 3}])
    resp = await client.post(path, json=_body(path, "one two three four"))
    assert resp.status_code == 200
    payload = resp.json()
    [choice] = payload["choices"]
    assert choice["finish_reason"] is None
    assert _choice_text(choice) == "echo: one two"
    assert payload["usage"]["completion_tokens"] == 3
    stats = await _settled(srv)
    assert stats["completed"] == 0
    assert stats["faults_served"] == 1


async def test_fault_cut_leaves_the_scripted_reply_for_the_retry(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    srv.add_replies(["alpha beta gamma"])
    srv.add_faults([{"kind": "cut"}, {"kind": "reset_mid", "after": 2}])
    _, lines = await _sse_lines(client, CHAT_PATH, CHAT)
    assert _streamed_text(lines) == "alpha"
    with pytest.raises(httpx.TransportError):
        await _sse_lines(client, CHAT_PATH, CHAT)
    _, lines = await _sse_lines(client, CHAT_PATH, CHAT)
    assert _streamed_text(lines) == "alpha beta gamma"
    assert _finish_reasons(lines)[-1] == "stop"
    _, lines = await _sse_lines(client, CHAT_PATH, CHAT)
    assert _streamed_text(lines) == "echo: hello"


@BOTH_APIS
@pytest.mark.parametrize("include_usage", [False, True])
async def test_fault_empty_choices_stream(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str, include_usage: bool
) -> None:
    srv.add_faults([{"kind": "empty_choices"}])
    body = _body(path, "hi there", stream_options={"include_usage": include_usage})
    resp, lines = await _sse_lines(client, path, body)
    assert resp.status_code == 200
    assert lines[-1] == "data: [DONE]"
    events = _events(lines)
    assert [e["choices"] for e in events] == [[]] * (2 if include_usage else 1)
    assert ("usage" in events[-1]) is include_usage
    if include_usage:
        assert events[-1]["usage"]["completion_tokens"] == 0
    stats = await _settled(srv)
    assert stats["completed"] == 0
    assert stats["faults_served"] == 1


@BOTH_APIS
async def test_fault_empty_choices_plain(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str
) -> None:
    srv.add_faults([{"kind": "empty_choices"}])
    resp = await client.post(path, json=_body(path, "hi"))
    assert resp.status_code == 200
    payload = resp.json()
    assert payload["choices"] == []
    assert payload["usage"]["completion_tokens"] == 0
    assert payload["object"] == ("chat.completion" if path == CHAT_PATH else "text_completion")
    assert (await _settled(srv))["completed"] == 0


@BOTH_APIS
async def test_fault_empty(srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str) -> None:
    srv.add_faults([{"kind": "empty"}, {"kind": "empty"}])
    resp, lines = await _sse_lines(client, path, _body(path, "hi"))
    assert resp.status_code == 200
    assert lines[-1] == "data: [DONE]"
    assert _finish_reasons(lines) == [None, "stop"]
    assert _streamed_text(lines) == ""
    events = _events(lines)
    if path == CHAT_PATH:
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert events[1]["choices"][0]["delta"] == {}
    plain = await client.post(path, json=_body(path, "hi"))
    [choice] = plain.json()["choices"]
    assert _choice_text(choice) == ""
    assert choice["finish_reason"] == "stop"
    stats = await _settled(srv)
    assert stats["completed"] == 0
    assert stats["faults_served"] == 2


@BOTH_APIS
async def test_fault_trickle_stream_is_spaced(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str
) -> None:
    interval = 0.1
    srv.add_faults([{"kind": "trickle", "interval_s": interval}])
    arrivals: list[tuple[float, str]] = []
    body = _body(path, "a b c", stream=True, stream_options={"include_usage": True})
    start = time.monotonic()
    async with client.stream("POST", path, json=body) as resp:
        headers_at = time.monotonic() - start
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line:
                arrivals.append((time.monotonic() - start, line))
    lines = [line for _, line in arrivals]
    assert lines[-1] == "data: [DONE]"
    assert _streamed_text(lines) == "echo: a b c"
    assert _finish_reasons(lines) == [None, None, None, None, "stop"]
    content_times = [t for t, line in arrivals if '"finish_reason":null' in line]
    assert len(content_times) == 4
    assert content_times[0] - headers_at < interval  # the first piece comes with the headers
    # Piece k is sent k intervals after the first one. Checked against the time the request
    # was sent (never late) rather than between arrivals: a busy client may read two at once.
    for k, arrived in enumerate(content_times):
        assert arrived >= k * interval * 0.98, content_times
    stats = await _settled(srv)
    assert stats["completed"] == 1
    assert stats["disconnects"] == 0


async def test_fault_trickle_min_pieces_repeats_the_text(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    srv.add_replies(["tick tock"])
    srv.add_faults([{"kind": "trickle", "interval_s": 0.005, "min_pieces": 5}])
    _, lines = await _sse_lines(client, CHAT_PATH, CHAT)
    assert _streamed_text(lines) == "tick tock tick tock tick"
    assert _finish_reasons(lines) == [None] * 5 + ["stop"]
    # A trickle is a successful answer: it consumed the scripted reply.
    assert (await client.post(CHAT_PATH, json=CHAT)).json()["choices"][0]["message"][
        "content"
    ] == "echo: hello"
    assert (await _settled(srv))["completed"] == 2


async def test_fault_trickle_stops_when_the_client_goes_away(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    srv.add_faults([{"kind": "trickle", "interval_s": 0.05, "min_pieces": 1000}])
    async with client.stream("POST", CHAT_PATH, json={**CHAT, "stream": True}) as resp:
        async for line in resp.aiter_lines():
            if line:
                break  # leaving the block closes the unfinished connection
    stats = await _settled(srv)
    assert stats["disconnects"] == 1
    assert stats["completed"] == 0


@BOTH_APIS
async def test_fault_trickle_plain_waits(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str
) -> None:
    srv.add_faults([{"kind": "trickle", "interval_s": 0.05}])
    start = time.monotonic()
    resp = await client.post(path, json=_body(path, "a b c"))
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 2.0  # 4 pieces
    [choice] = resp.json()["choices"]
    assert _choice_text(choice) == "echo: a b c"
    assert choice["finish_reason"] == "stop"
    assert (await _settled(srv))["completed"] == 1


@BOTH_APIS
async def test_fault_reset_mid_stream(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str
) -> None:
    srv.add_faults([{"kind": "reset_mid", "after": 2}])
    lines: list[str] = []
    body = _body(path, "one two three four", stream=True)
    with pytest.raises(httpx.TransportError):
        async with client.stream("POST", path, json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line:
                    lines.append(line)
    assert _streamed_text(lines) == "echo: one"
    assert _finish_reasons(lines) == [None, None]
    assert "data: [DONE]" not in lines
    stats = await _settled(srv)
    assert stats["disconnects"] == 1
    assert stats["completed"] == 0
    assert (await client.post(path, json=_body(path, "x"))).status_code == 200


@BOTH_APIS
async def test_fault_reset_mid_plain(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, path: str
) -> None:
    srv.add_faults([{"kind": "reset_mid"}])
    with pytest.raises(httpx.TransportError):
        await client.post(path, json=_body(path, "one two three"))
    stats = await _settled(srv)
    assert stats["disconnects"] == 1
    assert stats["completed"] == 0


@BOTH_APIS
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fault", "status"), [({}, 401), ({"status": 403}, 403)])
async def test_fault_echo_key(
    srv: FakeOpenAIServer,
    client: httpx.AsyncClient,
    path: str,
    stream: bool,
    fault: dict[str, Any],
    status: int,
) -> None:
    key = "sk-proj-SECRET_0123456789abcdef"
    srv.add_faults([{"kind": "echo_key", **fault}])
    resp = await client.post(
        path, json=_body(path, "hi", stream=stream), headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["message"] == (
        f"Incorrect API key provided: {key}. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert key in resp.text
    stats = await _settled(srv)
    assert stats["completed"] == 0
    assert stats["faults_served"] == 1
    assert (await client.post(path, json=_body(path, "x"))).status_code == 200


async def test_new_faults_honour_delay(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    srv.add_faults([{"kind": "cut", "delay_s": 0.1}])
    start = time.monotonic()
    resp = await client.post(CHAT_PATH, json=CHAT)
    assert time.monotonic() - start >= 0.09
    assert resp.json()["choices"][0]["finish_reason"] is None


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "cut", "after": -1},
        {"kind": "cut", "after": "2"},
        {"kind": "cut", "done": "no"},
        {"kind": "reset_mid", "after": 1.5},
        {"kind": "trickle"},
        {"kind": "trickle", "interval_s": -0.1},
        {"kind": "trickle", "interval_s": 0.1, "min_pieces": -1},
        {"kind": "echo_key", "status": 99},
        {"kind": "echo_key", "status": True},
    ],
)
async def test_invalid_new_faults_rejected(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, fault: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        srv.add_faults([fault])
    resp = await client.post("/_admin/faults", json={"faults": [fault]})
    assert resp.status_code == 400
    assert srv.stats["faults_served"] == 0
    assert (await client.post(CHAT_PATH, json=CHAT)).status_code == 200


async def test_new_faults_over_admin_http(srv: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    faults = [
        {"kind": "cut"},
        {"kind": "empty_choices"},
        {"kind": "empty"},
        {"kind": "trickle", "interval_s": 0},
        {"kind": "reset_mid"},
        {"kind": "echo_key"},
    ]
    resp = await client.post("/_admin/faults", json={"faults": faults})
    assert resp.json() == {"queued": 6}
    results = []
    for _ in faults:
        try:
            resp = await client.post(CHAT_PATH, json=CHAT)
        except httpx.TransportError:
            results.append("transport error")
        else:
            results.append(resp.status_code)
    assert results == [200, 200, 200, 200, "transport error", 401]
    stats = await _settled(srv)
    assert stats["faults_served"] == 6
    assert stats["completed"] == 1  # the trickle
    assert stats["disconnects"] == 1  # the reset_mid


# ---------------------------------------------------------------------- reply modes


@pytest.mark.parametrize("stream", [False, True])
async def test_identity_mode_chat_returns_the_user_text(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, stream: bool
) -> None:
    assert len(JAPANESE) > ECHO_MAX_CHARS
    srv.configure(reply_mode="identity")
    body = {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "Translate from Japanese to English."},
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "earlier, translated"},
            {"role": "user", "content": JAPANESE},
        ],
    }
    if stream:
        _, lines = await _sse_lines(client, CHAT_PATH, body)
        assert _streamed_text(lines) == JAPANESE
        assert _finish_reasons(lines)[-1] == "stop"
    else:
        resp = await client.post(CHAT_PATH, json=body)
        assert resp.json()["choices"][0]["message"]["content"] == JAPANESE
        # Byte for byte, not only once decoded.
        assert json.dumps(JAPANESE, separators=(",", ":")).encode() in resp.content


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "Translate.\n\nJapanese: お茶\nEnglish: Tea\n\nJapanese: " + JAPANESE + "\nEnglish:",
            JAPANESE,
        ),
        ("Translate.\n\nEnglish: Tea\nJapanese: お茶\n\nEnglish: Boil it.\nJapanese:", "Boil it."),
        ("English: first line\nsecond line\nJapanese:", "first line\nsecond line"),
        ("Japanese: no label after", "no label after"),
        ("no label at all: " + JAPANESE, "no label at all: " + JAPANESE),
    ],
)
async def test_identity_mode_completion_returns_the_source_text(
    srv: FakeOpenAIServer, client: httpx.AsyncClient, prompt: str, expected: str
) -> None:
    srv.configure(reply_mode="identity")
    resp = await client.post(TEXT_PATH, json={"model": "fake-model", "prompt": prompt})
    assert resp.json()["choices"][0]["text"] == expected
    _, lines = await _sse_lines(client, TEXT_PATH, {"model": "fake-model", "prompt": prompt})
    assert _streamed_text(lines) == expected


async def test_identity_mode_feeds_the_new_faults(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    srv.configure(reply_mode="identity")
    srv.add_faults([{"kind": "cut", "after": 2}])
    _, lines = await _sse_lines(client, CHAT_PATH, _chat("un deux trois"))
    assert _streamed_text(lines) == "un deux"


async def test_reply_mode_precedence_admin_and_reset(
    srv: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    resp = await client.post("/_admin/config", json={"reply_mode": "identity"})
    assert resp.json()["reply_mode"] == "identity"
    srv.add_replies(["scripted"])
    srv.add_faults([{"kind": "reply", "text": "from fault"}])
    texts = []
    for _ in range(3):
        resp = await client.post(CHAT_PATH, json=_chat("source text"))
        texts.append(resp.json()["choices"][0]["message"]["content"])
    assert texts == ["from fault", "scripted", "source text"]
    assert (await client.post("/_admin/config", json={"reply_mode": "mirror"})).status_code == 400
    assert (await client.post("/_admin/config", json={"reply_mode": 1})).status_code == 400
    with pytest.raises(ValueError):
        srv.configure(reply_mode="mirror")
    with pytest.raises(ValueError):
        srv.configure(reply_mode="echo", latency_s=-1)
    assert srv.config.reply_mode == "identity"  # nothing changed by the rejected call
    await client.post("/_admin/reset")
    assert srv.config.reply_mode == "echo"
    resp = await client.post(CHAT_PATH, json=_chat("source text"))
    assert resp.json()["choices"][0]["message"]["content"] == "echo: source text"


async def test_reply_mode_from_constructor_survives_reset() -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        srv.configure(reply_mode="echo")
        srv.reset()
        assert srv.config.reply_mode == "identity"
        async with httpx.AsyncClient(base_url=srv.base, timeout=5.0) as c:
            resp = await c.post(CHAT_PATH, json=_chat(JAPANESE))
        assert resp.json()["choices"][0]["message"]["content"] == JAPANESE
    with pytest.raises(ValueError):
        FakeOpenAIServer(reply_mode="mirror")
