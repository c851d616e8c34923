"""SlotClient against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from familiar.client.backend import CallEvent, RetryPolicy, SlotClient
from familiar.config.slots import Slot
from familiar.context import bound_correlation_id
from familiar.errors import BackendHTTPError
from familiar.fleet import Fleet
from tests.support.fake_openai import FakeOpenAIServer

MSG = [{"role": "user", "content": "hello"}]


def slot(*urls: str, parallel: int = 2, timeout_s: float = 5.0, **kw: object) -> Slot:
    return Slot(
        name="s", url=urls, model="m", runtime="vllm", parallel=parallel, timeout_s=timeout_s, **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("parallel", [1, 3, 5])
async def test_cap_holds_exactly_under_10x_oversubscription(
    parallel: int, fast_retry: RetryPolicy
) -> None:
    async with FakeOpenAIServer(latency_s=0.05) as srv:
        async with SlotClient(slot(srv.url, parallel=parallel), retry=fast_retry) as client:
            results = await asyncio.gather(*(client.chat(MSG) for _ in range(10 * parallel)))
        assert all(r.text for r in results)
        assert srv.stats["max_in_flight"] == parallel
        assert client.seats.peak == parallel
        assert srv.stats["completed"] == 10 * parallel


async def test_cap_holds_across_replicas(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer(latency_s=0.05) as a, FakeOpenAIServer(latency_s=0.05) as b:
        async with SlotClient(slot(a.url, b.url, parallel=4), retry=fast_retry) as client:
            await asyncio.gather(*(client.chat(MSG) for _ in range(40)))
        assert a.stats["max_in_flight"] + b.stats["max_in_flight"] <= 4
        # least-outstanding choice spreads the load over both replicas
        assert a.stats["completed"] >= 10 and b.stats["completed"] >= 10


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 500},
        {"kind": "status", "status": 503},
        {"kind": "status", "status": 429, "retry_after": 0.3},
        {"kind": "hang"},
        {"kind": "reset"},
        {"kind": "malformed"},
    ],
    ids=["500", "503", "429", "hang", "reset", "malformed"],
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_each_fault_is_recovered(
    fault: dict[str, object], stream: bool, fast_retry: RetryPolicy
) -> None:
    events: list[CallEvent] = []
    async with FakeOpenAIServer() as srv:
        srv.add_faults([fault])
        s = slot(srv.url, timeout_s=0.5)
        async with SlotClient(s, retry=fast_retry, hooks=[events.append], stream=stream) as c:
            started = time.monotonic()
            result = await c.chat(MSG)
            elapsed = time.monotonic() - started
    assert result.text.startswith("echo")
    assert result.attempts == 2
    assert [e.status for e in events] == ["error", "ok"]
    assert events[0].attempt == 1 and events[1].attempt == 2
    if fault.get("status") == 429:
        assert events[0].http_status == 429
        assert elapsed >= 0.3  # Retry-After honoured


async def test_client_error_is_not_retried(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer() as srv:
        srv.add_faults([{"kind": "status", "status": 400}])
        async with SlotClient(slot(srv.url), retry=fast_retry) as client:
            with pytest.raises(BackendHTTPError) as err:
                await client.chat(MSG)
        assert err.value.status == 400
        assert srv.stats["requests"] == 1


async def test_retries_are_bounded(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer() as srv:
        srv.add_faults([{"kind": "status", "status": 503}] * 10)
        async with SlotClient(slot(srv.url), retry=fast_retry) as client:
            with pytest.raises(BackendHTTPError) as err:
                await client.chat(MSG)
        assert err.value.status == 503
        assert srv.stats["requests"] == fast_retry.attempts


async def test_dead_replica_fails_over(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer() as dead, FakeOpenAIServer() as alive:
        dead_url = dead.url
        await dead.stop()
        async with SlotClient(slot(dead_url, alive.url, parallel=3), retry=fast_retry) as c:
            results = await asyncio.gather(*(c.chat(MSG) for _ in range(12)))
            assert {r.replica for r in results} == {alive.url}
            dead_replica = next(r for r in c.replicas if r.url == dead_url)
            assert dead_replica.cooling(time.monotonic())
        assert alive.stats["completed"] == 12
        # at most the first few attempts touched the dead replica, then it cooled down
        assert sum(r.attempts - 1 for r in results) <= 3


async def test_completion_streaming_measures_ttft_and_usage(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer(latency_s=0.2, ttft_s=0.1) as srv:
        async with SlotClient(slot(srv.url), retry=fast_retry) as client:
            result = await client.complete("once upon", max_tokens=8)
    assert result.text.startswith("echo")
    assert result.ttft_s is not None and 0.1 <= result.ttft_s < result.latency_s
    assert result.completion_tokens and result.prompt_tokens
    assert result.finish_reason == "stop"


async def test_correlation_id_header_and_api_key_never_in_repr(
    monkeypatch: pytest.MonkeyPatch, fast_retry: RetryPolicy
) -> None:
    monkeypatch.setenv("TEST_SLOT_KEY", "sk-secret-value-123456")
    async with FakeOpenAIServer() as srv:
        s = slot(srv.url, api_key_env="TEST_SLOT_KEY")
        async with SlotClient(s, retry=fast_retry) as client:
            with bound_correlation_id("cid-42"):
                await client.chat(MSG)
            assert "sk-secret" not in repr(client) and "sk-secret" not in repr(s)
        headers = srv.requests[0]["headers"]
    assert headers["x-correlation-id"] == "cid-42"
    assert headers["authorization"] == "Bearer sk-secret-value-123456"


async def test_json_schema_is_requested(fast_retry: RetryPolicy) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    async with FakeOpenAIServer() as srv:
        srv.add_replies(['{"a": "b"}'])
        async with SlotClient(slot(srv.url), retry=fast_retry) as client:
            result = await client.chat(MSG, json_schema=schema, schema_name="thing")
        body = srv.requests[0]["body"]
    assert result.json() == {"a": "b"}
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == schema
    assert body["response_format"]["json_schema"]["name"] == "thing"


async def test_rate_throttle_is_separate_from_seats(fast_retry: RetryPolicy) -> None:
    async with FakeOpenAIServer() as srv:
        async with SlotClient(slot(srv.url, parallel=8, rps=20), retry=fast_retry) as client:
            started = time.monotonic()
            await asyncio.gather(*(client.chat(MSG) for _ in range(30)))
            elapsed = time.monotonic() - started
    # 30 requests at 20/s need at least one full period beyond the first 20
    assert elapsed >= 0.9


async def test_a_cancelled_request_is_reported_cancelled_not_ok(fast_retry: RetryPolicy) -> None:
    events: list[CallEvent] = []
    async with FakeOpenAIServer() as srv:
        srv.add_faults([{"kind": "hang"}])
        async with SlotClient(slot(srv.url), retry=fast_retry, hooks=[events.append]) as client:
            task = asyncio.create_task(client.chat(MSG))
            while srv.stats["in_flight"] < 1:  # noqa: ASYNC110 - the server has no event
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        (event,) = events
        assert (event.status, event.error_type, event.http_status) == (
            "cancelled",
            "CancelledError",
            None,
        )
        assert client.seats.in_use == 0


async def test_models_behind_one_gateway_url_are_separate_deployments(
    tmp_path: Path, fast_retry: RetryPolicy
) -> None:
    async with FakeOpenAIServer(latency_s=0.1) as gw:  # one URL, two models (a LiteLLM proxy)
        slots = {
            "naughty": Slot(name="naughty", url=gw.url, model="big", parallel=3),
            "kindergarten": Slot(name="kindergarten", url=gw.url, model="fast", parallel=5),
        }
        async with Fleet(slots, home=tmp_path, retry=fast_retry) as fleet:
            assert fleet["naughty"].seats is not fleet["kindergarten"].seats
            await asyncio.gather(
                *(fleet["naughty"].chat(MSG) for _ in range(12)),
                *(fleet["kindergarten"].chat(MSG) for _ in range(20)),
            )
            assert fleet["naughty"].seats.peak == 3 and fleet["kindergarten"].seats.peak == 5
        assert gw.stats["max_in_flight"] == 8  # each model gets its own cap, not the strictest
