"""familiar health's probes against emulated runtimes (HTTP.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from familiar.client.wire import HTTP
from familiar.config.slots import Slot
from familiar.fleetcheck.health import NOT_RUNNING, check, events
from familiar.fleetcheck.report import health_text

FINISHED = {"choices": [{"index": 0, "message": {"content": "OK"}, "finish_reason": "length"}]}


def server(
    model: str = "m",
    *,
    props: dict[str, Any] | None = None,
    metrics: str = "",
    health: int = 200,
    answer: dict[str, Any] | None = None,
    seen: list[str] | None = None,
) -> Callable[[Any], HTTP.Response]:
    def handler(request: Any) -> Any:
        path = request.url.path
        if seen is not None:
            seen.append(f"{request.method} {request.url.host}{path}")
        if path == "/v1/models":
            return HTTP.Response(200, json={"object": "list", "data": [{"id": model}]})
        if path == "/health":
            return HTTP.Response(health, json={"status": "ok" if health == 200 else "loading"})
        if path == "/props" and props is not None:
            return HTTP.Response(200, json=props)
        if path == "/metrics" and metrics:
            return HTTP.Response(200, text=metrics)
        if path == "/v1/chat/completions":
            return HTTP.Response(200, json=FINISHED if answer is None else answer)
        return HTTP.Response(404, json={"error": "not found"})

    return handler


def _slot(runtime: str = "llama.cpp", parallel: int = 4, **kw: Any) -> Slot:
    return Slot(
        name="naughty", url="http://h:8080/v1", model="m", runtime=runtime, parallel=parallel, **kw
    )  # type: ignore[arg-type]


async def _check(slot: Slot, handler: Any, tmp_path: Path) -> Any:
    return await check(
        {slot.name: slot}, home=tmp_path, transport=HTTP.MockTransport(handler), timeout_s=5
    )


async def test_a_healthy_llama_server(tmp_path: Path) -> None:
    seen: list[str] = []
    props = {"total_slots": 4, "build_info": "b6500-abc"}
    metrics = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 0\n"
    report = await _check(_slot(), server(props=props, metrics=metrics, seen=seen), tmp_path)
    (row,) = report.rows
    assert report.ok and row.ok and row.error is None
    assert (row.reachable, row.model_served, row.health_ok) == (True, True, True)
    assert row.server_parallel == 4 and row.version == "b6500-abc"
    assert (row.running, row.waiting) == (1, 0)
    assert row.probe_ms is not None and row.warnings == []
    assert "GET h/health" in seen and "POST h/v1/chat/completions" in seen  # at the root
    data = report.to_json()
    assert set(data["slots"][0]) >= {"slot", "url", "ok", "error", "probe_ms", "seats_in_use"}
    (event,) = events(report)
    assert event["up"] == 1 and event["slot"] == "naughty" and event["server_parallel"] == 4


async def test_capacity_disagreeing_with_parallel_is_a_warning_not_a_failure(
    tmp_path: Path,
) -> None:
    report = await _check(_slot(parallel=8), server(props={"total_slots": 2}), tmp_path)
    (row,) = report.rows
    assert row.ok
    assert len(row.warnings) == 1 and "serves 2 at once but parallel = 8" in row.warnings[0]
    assert "warning: the server serves 2" in health_text(report.rows, {})


async def test_vllm_queueing_below_parallel_is_a_warning(tmp_path: Path) -> None:
    metrics = 'vllm:num_requests_running{m="m"} 2\nvllm:num_requests_waiting{m="m"} 5\n'
    report = await _check(_slot("vllm", parallel=8), server(metrics=metrics), tmp_path)
    (row,) = report.rows
    assert row.ok and (row.running, row.waiting) == (2, 5)
    assert "5 requests wait in the server while 2 run" in row.warnings[0]


async def test_what_makes_a_replica_down(tmp_path: Path) -> None:
    cases = {
        "model 'm' is not served (serves: other)": server("other"),
        "GET /health: HTTP 503": server(health=503),
        "one-token probe: the answer has no finish_reason": server(
            answer={"choices": [{"message": {"content": "O"}, "finish_reason": None}]}
        ),
        "one-token probe: HTTP 500": lambda r: (
            HTTP.Response(500) if r.url.path.endswith("/completions") else server()(r)
        ),
    }
    for error, handler in cases.items():
        report = await _check(_slot(), handler, tmp_path)
        (row,) = report.rows
        assert not report.ok and not row.ok
        assert row.error is not None and error in row.error, (error, row.error)
        assert events(report)[0]["up"] == 0


async def test_unreachable_stops_at_the_first_check(tmp_path: Path) -> None:
    def refuse(request: Any) -> Any:
        raise HTTP.ConnectError("refused", request=request)

    report = await _check(_slot(), refuse, tmp_path)
    (row,) = report.rows
    assert (
        row.reachable is False
        and row.error == "unreachable: connection refused or host unreachable"
    )
    assert "DOWN" in health_text(report.rows, {})


async def test_every_replica_is_a_row_and_capacity_adds_up(tmp_path: Path) -> None:
    slot = Slot(
        name="k", url=["http://a/v1", "http://b/v1"], model="m", runtime="llama.cpp", parallel=4
    )
    report = await _check(slot, server(props={"total_slots": 2}), tmp_path)
    assert [r.url for r in report.rows] == ["http://a/v1", "http://b/v1"]
    assert all(r.ok and r.warnings == [] for r in report.rows)  # 2 + 2 = parallel 4


async def test_an_embedded_slot_is_never_started(tmp_path: Path) -> None:
    slot = Slot(name="translator", url="embedded", model="gemma-3-270m", runtime="llama.cpp")
    report = await _check(slot, server(), tmp_path)
    (row,) = report.rows
    assert row.url == "embedded" and not row.ok and row.error == NOT_RUNNING
    assert not (tmp_path / "local").exists()  # nothing was started
