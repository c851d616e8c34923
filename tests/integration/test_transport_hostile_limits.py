"""SlotClient against slow and hostile servers (raw sockets on loopback), on both HTTP
clients: timeouts hold, memory stays bounded, statuses and headers are handled, no secret
shows. The answers' own faults: test_transport_hostile.py."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest

from familiar.client import reading
from familiar.client.backend import CallResult, SlotClient
from familiar.client.wire import RetryPolicy
from familiar.config.slots import Slot
from familiar.errors import (
    BackendConnectError,
    BackendError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
)
from tests.support.raw_http import (
    MSG,
    PIPES,
    STREAMED,
    Conn,
    Handler,
    RawServer,
    ask,
    client,
    event,
    head,
    once,
    timed,
    whole,
)


@pytest.mark.parametrize("pipe", PIPES)
async def test_headers_then_nothing_hits_the_stall_limit(pipe: str) -> None:
    got, took = await timed(once(head(), then="hang"), pipe, stall_timeout_s=0.3)
    assert isinstance(got, BackendTimeout) and "stall limit" in str(got), got
    assert took < 2


@pytest.mark.parametrize("pipe", PIPES)
async def test_headers_then_nothing_plain_hits_the_whole_limit(pipe: str) -> None:
    h = head(ctype="application/json", length=100)
    got, took = await timed(once(h, then="hang"), pipe, stream=False, timeout_s=0.5)
    assert isinstance(got, BackendTimeout), got
    assert took < 2


@pytest.mark.parametrize("pipe", PIPES)
async def test_one_byte_per_interval_slower_than_the_stall_limit(pipe: str) -> None:
    raw = event("Hi", "stop")
    parts = [raw[i : i + 1] for i in range(len(raw))]
    got, took = await timed(once(STREAMED, *parts, pause=0.6), pipe, stall_timeout_s=0.3)
    assert isinstance(got, BackendTimeout) and "stall limit" in str(got), got
    assert took < 2


@pytest.mark.parametrize("pipe", PIPES)
async def test_a_trickle_that_never_ends_a_line_hits_the_stall_limit(pipe: str) -> None:
    """Bytes come faster than the stall limit, but no line ever ends: no progress."""

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(STREAMED + b"data: ")
        while True:
            await conn.send(b" ")
            await asyncio.sleep(0.05)

    got, took = await timed(handle, pipe, stall_timeout_s=0.5, timeout_s=10)
    assert isinstance(got, BackendTimeout) and "stall limit" in str(got), got
    assert took < 3


@pytest.mark.parametrize("pipe", PIPES)
async def test_a_trickle_of_lines_is_bounded_by_the_whole_limit(pipe: str) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(STREAMED + event("x"))
        while True:
            await conn.send(b": ping\n\n")
            await asyncio.sleep(0.05)

    got, took = await timed(handle, pipe, stall_timeout_s=0.5, timeout_s=1)
    assert isinstance(got, BackendTimeout) and "timeout_s=1" in str(got), got
    assert took < 3


@pytest.mark.parametrize("pipe", PIPES)
async def test_a_huge_line_fails_cleanly(pipe: str) -> None:
    huge = b"data: " + json.dumps({"x": "y" * (10 << 20)}).encode() + b"\n\n"
    got, took = await timed(once(STREAMED, huge, event("Hi", "stop")), pipe, timeout_s=20)
    assert isinstance(got, BackendProtocolError) and "line" in str(got), got
    assert took < 10


@pytest.mark.parametrize("pipe", PIPES)
async def test_endless_bytes_without_a_line_end_fail_cleanly(pipe: str) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(STREAMED + b"data: ")
        block = b"a" * 65536
        while True:
            await conn.send(block)

    got, took = await timed(handle, pipe, timeout_s=30)
    assert isinstance(got, BackendProtocolError) and "line" in str(got), got
    assert took < 15


@pytest.mark.parametrize("pipe", PIPES)
async def test_an_endless_whole_answer_fails_cleanly(
    pipe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reading, "MAX_BODY", 4 << 20)

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(head(ctype="application/json", close=True) + b'{"x": "')
        block = b"a" * 65536
        while True:
            await conn.send(block)

    got, took = await timed(handle, pipe, stream=False, timeout_s=30)
    assert isinstance(got, BackendProtocolError) and "large" in str(got), got
    assert took < 15


@pytest.mark.parametrize("pipe", PIPES)
async def test_content_length_longer_than_the_body(pipe: str) -> None:
    body = whole("Hi")
    h = head(ctype="application/json", length=len(body) + 50)
    got = await ask(once(h, body), pipe, stream=False)  # then closes
    assert isinstance(got, BackendConnectError | BackendProtocolError), got
    got = await ask(once(h, body, then="hang"), pipe, stream=False, timeout_s=0.5)
    assert isinstance(got, BackendTimeout), got


@pytest.mark.parametrize("pipe", PIPES)
async def test_a_redirect_is_not_followed(pipe: str) -> None:
    async with RawServer(
        once(head(307, close=True, extra="location: http://10.0.0.1/\r\n"))
    ) as srv:
        async with client(srv.url, pipe) as c:
            with pytest.raises(BackendHTTPError, match="HTTP 307"):
                await c.chat(MSG)
        assert srv.connections == 1


@pytest.mark.parametrize("pipe", PIPES)
async def test_a_key_echoed_in_a_401_never_shows(
    pipe: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "sk-hostile-5ecret-key-0123456789"
    monkeypatch.setenv("HOSTILE_KEY", key)
    seen: list[str] = []

    async def handle(conn: Conn) -> None:
        req = await conn.request()
        assert req is not None
        auth = req["headers"]["authorization"]
        seen.append(auth)
        body = json.dumps({"error": {"message": f"bad key {auth} ({key[3:]})"}}).encode()
        await conn.send(head(401, ctype="application/json", length=len(body)) + body)

    got = await ask(handle, pipe, api_key_env="HOSTILE_KEY")
    assert seen == [f"Bearer {key}"]
    assert isinstance(got, BackendHTTPError) and got.status == 401, got
    shown = f"{got} {got!r} {got.args} {capsys.readouterr()}"
    assert key not in shown and "***" in shown


@pytest.mark.parametrize("pipe", PIPES)
async def test_url_credentials_echoed_never_show(pipe: str) -> None:
    async def handle(conn: Conn) -> None:
        req = await conn.request()
        assert req is not None
        body = f"who is {req['headers']['authorization']}? pw-hostile-77".encode()
        await conn.send(head(403, ctype="text/plain", length=len(body)) + body)

    async with RawServer(handle) as srv:
        url = srv.url.replace("http://", "http://bob:pw-hostile-77@")
        async with client(url, pipe) as c:
            with pytest.raises(BackendHTTPError) as caught:
                await c.chat(MSG)
    shown = f"{caught.value} {caught.value!r}"
    assert "pw-hostile-77" not in shown and "Ym9i" not in shown, shown


@pytest.mark.parametrize("pipe", PIPES)
async def test_an_answer_before_the_request_body_is_read(pipe: str) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request(read_body=False)
        body = whole("early")
        await conn.send(head(ctype="application/json", length=len(body), close=True) + body)

    big = [{"role": "user", "content": "x" * (4 << 20)}]
    async with RawServer(handle) as srv, client(srv.url, pipe, stream=False) as c:
        try:
            got: CallResult | BackendError = await c.chat(big)
        except BackendError as exc:
            got = exc
    assert isinstance(got, BackendConnectError) or (
        isinstance(got, CallResult) and got.text == "early"
    ), got


@pytest.mark.parametrize("pipe", PIPES)
async def test_a_compressed_bomb_fails_cleanly(pipe: str) -> None:
    """40 MiB without a line end, gzipped to ~40 KiB: inflated, it still meets the cap."""
    bomb = gzip.compress(b"data: " + b"0" * (40 << 20), compresslevel=9)
    h = head(extra="content-encoding: gzip\r\n", length=len(bomb))
    got, took = await timed(once(h, bomb, then="hang"), pipe, timeout_s=20)
    assert isinstance(got, BackendProtocolError) and "line" in str(got), got
    assert took < 10


@pytest.mark.parametrize("pipe", PIPES)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_an_endless_error_body_is_not_waited_for(pipe: str, stream: bool) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(head(500, ctype="text/plain", close=True))
        while True:
            await conn.send(b"overloaded " * 1000)
            await asyncio.sleep(0.01)

    got, took = await timed(handle, pipe, stream=stream, timeout_s=10)
    assert isinstance(got, BackendHTTPError) and got.status == 500, got
    assert took < 3 and len(str(got)) < 400


@pytest.mark.parametrize(
    "value", ["nan", "inf", "-5", "1e400", "Wed, 21 Oct 2999 07:28:00 GMT", "x"]
)
async def test_a_lying_retry_after_never_makes_a_long_wait(value: str) -> None:
    async def handle(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(
                head(503, ctype="text/plain", length=4, extra=f"retry-after: {value}\r\n")
            )
            await conn.send(b"busy")

    waits: list[float] = []

    async def nap(s: float) -> None:
        waits.append(s)

    async with RawServer(handle) as srv:
        slot = Slot(name="s", url=srv.url, model="m", parallel=1, timeout_s=5)
        async with SlotClient(slot, retry=RetryPolicy(attempts=3, sleep=nap)) as c:
            with pytest.raises(BackendHTTPError, match="HTTP 503"):
                await c.chat(MSG)
    assert len(waits) == 2 and all(0 <= w <= 120 for w in waits), waits


@pytest.mark.parametrize("pipe", PIPES)
async def test_an_endless_header_fails_cleanly(pipe: str) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nx-junk: ")
        while True:
            await conn.send(b"a" * 65536)

    got, took = await timed(handle, pipe, timeout_s=20)
    assert isinstance(got, BackendConnectError | BackendProtocolError), got
    assert took < 5 and len(str(got)) < 400


def closes_kept_alive(served: list[int]) -> Handler:
    """llama-server's way (cpp-httplib): a kept-alive connection answers a request or two,
    then is closed without a word when the next request comes on it."""

    async def handle(conn: Conn) -> None:
        for _ in range(2):
            if await conn.request() is None:
                return
            body = whole(f"answer {len(served)}")
            await conn.send(head(ctype="application/json", length=len(body)) + body)
            served.append(1)
        await conn.request()  # the next one is read, never answered: the server closes

    return handle


@pytest.mark.parametrize("pipe", PIPES)
async def test_a_kept_alive_connection_the_server_closed_is_not_a_failure(pipe: str) -> None:
    """A request sent on a pooled connection the server has closed gets no byte back: it is
    sent again on a new connection, not counted as the replica's fault (with one attempt
    and no retries, every call still succeeds; before: "connection failed: Server
    disconnected" on every third request, and the replica cooled down for 5 s)."""
    served: list[int] = []
    async with RawServer(closes_kept_alive(served)) as srv:
        async with client(srv.url, pipe, stream=False, attempts=1, parallel=1) as c:
            texts = [(await c.chat(MSG)).text for _ in range(7)]
        assert texts == [f"answer {n}" for n in range(7)]
        assert srv.connections >= 4  # two answers a connection: new ones were opened
