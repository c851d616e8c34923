"""The fake Vector http_server source speaks real HTTP to httpx."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.fake_vector import FakeVector


@pytest.fixture
async def vector() -> AsyncIterator[FakeVector]:
    async with FakeVector() as v:
        yield v


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=2.0) as c:
        yield c


async def test_url_and_port(vector: FakeVector) -> None:
    assert vector.port > 0
    assert vector.url == f"http://127.0.0.1:{vector.port}/telemetry"
    assert vector.running


async def test_array_body_stored_element_wise(
    vector: FakeVector, client: httpx.AsyncClient
) -> None:
    batch = [{"event": "a", "n": 1}, {"event": "b", "n": 2}, {"event": "c", "n": 3}]
    resp = await client.post(vector.url, json=batch)
    assert resp.status_code == 200
    assert resp.content == b""
    assert vector.events == batch
    assert vector.requests == [
        {
            "method": "POST",
            "path": "/telemetry",
            "body_bytes": len(resp.request.content),
            "events": 3,
            "status": 200,
        }
    ]
    assert vector.status_counts == {200: 1}


async def test_single_object_and_arrival_order(
    vector: FakeVector, client: httpx.AsyncClient
) -> None:
    assert (await client.post(vector.url, json={"event": "one"})).status_code == 200
    assert (await client.post(vector.url, json=[{"event": "two"}])).status_code == 200
    assert (await client.post(vector.url, json={"event": "three"})).status_code == 200
    assert vector.events == [{"event": "one"}, {"event": "two"}, {"event": "three"}]
    assert [r["events"] for r in vector.requests] == [1, 1, 1]


async def test_ndjson_and_empty_bodies(vector: FakeVector, client: httpx.AsyncClient) -> None:
    body = b'{"a": 1}\n\n{"b": 2}\n[{"c": 3}, {"d": 4}]\n'
    assert (await client.post(vector.url, content=body)).status_code == 200
    assert vector.events == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}]
    assert (await client.post(vector.url, content=b"")).status_code == 200
    assert vector.requests[-1]["events"] == 0
    assert len(vector.events) == 4


@pytest.mark.parametrize(
    "body",
    [b'{"event": ', b"not json", b'{"a": 1}\n{"b": ', b"[1, 2]", b'"text"', b"\xff\xfe{}"],
)
async def test_undecodable_body_is_400_and_stores_nothing(
    vector: FakeVector, client: httpx.AsyncClient, body: bytes
) -> None:
    resp = await client.post(vector.url, content=body)
    assert resp.status_code == 400
    error = resp.json()
    assert error["code"] == 400
    assert error["message"].startswith("Failed decoding body")
    assert vector.events == []
    assert vector.status_counts == {400: 1}
    # The connection stays usable.
    assert (await client.post(vector.url, json={"ok": True})).status_code == 200
    assert vector.events == [{"ok": True}]


async def test_oversize_is_413_and_stores_nothing(client: httpx.AsyncClient) -> None:
    async with FakeVector(max_body_bytes=100) as v:
        big = [{"pad": "x" * 200}]
        resp = await client.post(v.url, json=big)
        assert resp.status_code == 413
        assert resp.json()["code"] == 413
        assert v.events == []
        assert v.requests[0]["status"] == 413
        assert v.requests[0]["body_bytes"] == len(resp.request.content)
        # Exactly at the limit is accepted, on the same keep-alive connection.
        exact = b'{"p": "' + b"y" * 91 + b'"}'
        assert len(exact) == 100
        assert (await client.post(v.url, content=exact)).status_code == 200
        assert v.events == [{"p": "y" * 91}]
        assert v.status_counts == {413: 1, 200: 1}
        assert v.connections == 1


async def test_chunked_bodies(client: httpx.AsyncClient) -> None:
    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with FakeVector(max_body_bytes=50) as v:
        resp = await client.post(v.url, content=chunks(b'[{"a": 1},', b' {"b": 2}]'))
        assert resp.request.headers["transfer-encoding"] == "chunked"
        assert resp.status_code == 200
        assert v.events == [{"a": 1}, {"b": 2}]
        resp = await client.post(v.url, content=chunks(b'[{"pad": "', b"z" * 60, b'"}]'))
        assert resp.status_code == 413
        assert v.events == [{"a": 1}, {"b": 2}]
        assert (await client.post(v.url, json={"c": 3})).status_code == 200
        assert v.connections == 1


async def test_fail_next_then_200(vector: FakeVector, client: httpx.AsyncClient) -> None:
    vector.fail_next(503)
    vector.fail_next(429, n=2)
    assert vector.pending_failures == 3
    statuses = []
    for i in range(4):
        statuses.append((await client.post(vector.url, json={"i": i})).status_code)
    assert statuses == [503, 429, 429, 200]
    assert vector.events == [{"i": 3}]
    assert vector.status_counts == {503: 1, 429: 2, 200: 1}
    assert [r["events"] for r in vector.requests] == [0, 0, 0, 1]
    with pytest.raises(ValueError):
        vector.fail_next(99)


async def test_wrong_path_method_and_encoding(
    vector: FakeVector, client: httpx.AsyncClient
) -> None:
    assert (await client.post(f"{vector.base}/other", json={})).status_code == 404
    assert (await client.get(vector.url)).status_code == 405
    assert (await client.put(vector.url, json={})).status_code == 405
    head = await client.head(vector.url)
    assert head.status_code == 405
    assert head.content == b""
    resp = await client.post(vector.url, content=b'{"a": 1}', headers={"content-encoding": "gzip"})
    assert resp.status_code == 415
    assert (await client.post(f"{vector.url}?x=1", json={"a": 1})).status_code == 200
    assert vector.events == [{"a": 1}]
    assert vector.status_counts == {404: 1, 405: 3, 415: 1, 200: 1}
    assert vector.connections == 1


async def test_stop_gives_connect_error_and_start_reuses_port(
    vector: FakeVector, client: httpx.AsyncClient
) -> None:
    port, url = vector.port, vector.url
    assert (await client.post(url, json={"n": 1})).status_code == 200
    await vector.stop()
    assert not vector.running
    with pytest.raises(httpx.ConnectError):
        await client.post(url, json={"n": 2})
    async with httpx.AsyncClient(timeout=2.0) as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.post(url, json={"n": 3})
    await vector.start()
    assert vector.port == port
    assert vector.url == url
    assert (await client.post(url, json={"n": 4})).status_code == 200
    assert vector.events == [{"n": 1}, {"n": 4}]


async def test_stop_closes_open_connections(vector: FakeVector) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", vector.port)
    try:
        body = json.dumps({"raw": True}).encode()
        writer.write(
            b"POST /telemetry HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
            % (len(body), body)
        )
        await writer.drain()
        status = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200 ")
        await vector.stop()
        try:
            rest = await asyncio.wait_for(reader.read(), timeout=1.0)
        except ConnectionError:
            rest = b""
        assert rest == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert vector.events == [{"raw": True}]


async def test_clear_and_wait_for_events(vector: FakeVector, client: httpx.AsyncClient) -> None:
    vector.fail_next(503)
    await client.post(vector.url, json={"a": 1})
    vector.fail_next(503)
    vector.clear()
    assert (vector.events, vector.requests, vector.status_counts) == ([], [], {})
    assert vector.pending_failures == 0

    async def send_later() -> None:
        await asyncio.sleep(0.05)
        await client.post(vector.url, json=[{"x": 1}, {"x": 2}])

    sender = asyncio.create_task(send_later())
    events = await vector.wait_for_events(2, timeout_s=1.0)
    await sender
    assert events == [{"x": 1}, {"x": 2}]
    with pytest.raises(TimeoutError):
        await vector.wait_for_events(3, timeout_s=0.05)
