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

from tests.support.fake_openai import FakeOpenAIServer, spawn_fake_server

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


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
    assert resp.json() == {"latency_s": 0.05, "ttft_s": 0.0, "model": "m2"}
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
