"""SlotClient on each of its HTTP clients (familiar/client/transport.py): aiohttp, the default,
and httpx2 (forced by an injected transport). The same answers, and every failure maps to
the same class of the error tree, on either."""

from __future__ import annotations

import base64
import socket
from typing import Any

import pytest

from familiar.client import transport
from familiar.client.backend import SlotClient
from familiar.client.wire import HTTP, RetryPolicy
from familiar.config.slots import Slot
from familiar.errors import (
    BackendConnectError,
    BackendError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
)
from tests.support.fake_openai import FakeOpenAIServer

MSG = [{"role": "user", "content": "hello there"}]
PIPES = ["aiohttp", "httpx2"]


def client(url: str, pipe: str, *, stream: bool = True, **kw: Any) -> SlotClient:
    slot = Slot(name="s", url=url, model="m", parallel=2, **kw)
    forced = HTTP.AsyncHTTPTransport() if pipe == "httpx2" else None
    c = SlotClient(slot, transport=forced, stream=stream, retry=RetryPolicy(attempts=1))
    assert c._pipe.name == pipe
    return c


@pytest.mark.parametrize("pipe", PIPES)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_the_same_answer_on_either_client(pipe: str, stream: bool) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        async with client(srv.url, pipe, stream=stream) as c:
            results = [await c.chat(MSG) for _ in range(3)]  # a kept-alive connection
            done = await c.complete("once upon a time", max_tokens=8)
        body = srv.requests[0]["body"]
    assert {r.text for r in results} == {"hello there"}
    assert all(r.finish_reason == "stop" and r.completion_tokens == 2 for r in results)
    assert results[0].prompt_tokens and done.text and done.finish_reason
    assert body["model"] == "m" and body.get("stream", False) is stream
    assert srv.stats["completed"] == 4


@pytest.mark.parametrize("pipe", PIPES)
@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ({"kind": "status", "status": 503, "retry_after": 7}, BackendHTTPError, "HTTP 503"),
        ({"kind": "status", "status": 400}, BackendHTTPError, "HTTP 400"),
        ({"kind": "hang"}, BackendTimeout, "stall limit"),
        ({"kind": "reset"}, BackendConnectError, "connection failed"),
        ({"kind": "reset_mid", "after": 2}, BackendError, "slot 's'"),
        ({"kind": "malformed"}, BackendProtocolError, "empty or malformed"),
        ({"kind": "cut", "after": 1}, BackendProtocolError, "without a finish_reason"),
        ({"kind": "empty"}, BackendProtocolError, "empty answer"),
    ],
    ids=["503", "400", "hang", "reset", "reset_mid", "malformed", "cut", "empty"],
)
async def test_each_failure_is_the_same_error_on_either_client(
    pipe: str, fault: dict[str, Any], error: type[BackendError], message: str
) -> None:
    async with FakeOpenAIServer() as srv:
        srv.add_faults([fault])
        async with client(srv.url, pipe, stall_timeout_s=0.3) as c:
            with pytest.raises(error, match=message) as caught:
                await c.chat(MSG)
            assert (await c.chat(MSG)).text  # and the next request is served
    if fault.get("retry_after"):
        assert isinstance(caught.value, BackendHTTPError) and caught.value.retry_after == 7
        assert "injected fault" in str(caught.value)  # the server's message, as before
    if fault["kind"] == "reset_mid":  # cut mid-answer: a transport error or no finish
        assert isinstance(caught.value, BackendConnectError | BackendProtocolError)


@pytest.mark.parametrize("pipe", PIPES)
async def test_a_closed_port_is_a_connect_error(pipe: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with client(f"http://127.0.0.1:{port}/v1", pipe) as c:
        with pytest.raises(BackendConnectError, match="connection failed"):
            await c.chat(MSG)


@pytest.mark.parametrize("pipe", PIPES)
async def test_url_credentials_go_as_basic_auth_and_a_key_as_bearer(
    pipe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_KEY", "sk-t-123")
    async with FakeOpenAIServer() as srv:
        userinfo = srv.url.replace("http://", "http://alice:pw-42@")
        async with client(userinfo, pipe) as c:
            await c.chat(MSG)
        async with client(srv.url, pipe, api_key_env="T_KEY") as c:
            await c.chat(MSG)
        async with client(srv.url, pipe) as c:
            await c.chat(MSG)
        sent = [r["headers"]["authorization"] for r in srv.requests]
    basic = base64.b64encode(b"alice:pw-42").decode()
    assert sent == [f"Basic {basic}", "Bearer sk-t-123", "Bearer sk-no-key"]


def test_aiohttp_takes_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "gpu1.lan")
    for name in ("http_proxy", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    pipe = transport.AiohttpPipe(transport.Limits(1, 1.0, 1.0))
    assert pipe.url("http://gpu0.lan:8000/v1/chat/completions").proxy == "http://proxy.test:3128"
    assert pipe.url("http://gpu1.lan:8000/v1/chat/completions").proxy is None
    assert pipe.url("https://gpu0.lan/v1/chat/completions").proxy is None  # no HTTPS_PROXY
