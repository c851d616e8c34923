"""Telemetry events without a receiver: fields, names, masking, never blocking."""

from __future__ import annotations

import json
from pathlib import Path

from familiar.client.backend import CallEvent
from familiar.context import bound_correlation_id
from familiar.telemetry import Telemetry, current_span, llm_call_fields, make_event


def call_event(**kw: object) -> CallEvent:
    base: dict[str, object] = dict(
        slot="naughty",
        replica="http://h:8000/v1",
        model="m",
        runtime="vllm",
        role="naughty",
        kind="chat",
        attempt=2,
        status="error",
        error_type="BackendHTTPError",
        http_status=503,
        latency_s=0.25,
        ttft_s=None,
        queue_wait_s=0.01,
        local_wait_s=0.004,
        ledger_wait_s=0.006,
        prompt_tokens=None,
        completion_tokens=None,
        finish_reason=None,
        correlation_id="c",
        seats_in_use=1,
        seats_total=3,
    )
    base.update(kw)
    return CallEvent(**base)  # type: ignore[arg-type]


def test_common_fields_and_correlation_id() -> None:
    with bound_correlation_id("cid-1"):
        token = current_span.set("parent1")
        try:
            e = make_event("session.start", {"roles": "naughty"})
        finally:
            current_span.reset(token)
    assert e["correlation_id"] == "cid-1" and e["parent_span_id"] == "parent1"
    assert e["event"] == "session.start" and e["service"] == "familiar"
    assert e["ts"].endswith("Z") and len(e["event_id"]) == 32
    assert make_event("x")["event_id"] != make_event("x")["event_id"]


def test_llm_call_uses_genai_names() -> None:
    ok = llm_call_fields(
        call_event(
            status="ok",
            error_type=None,
            http_status=200,
            ttft_s=0.1,
            prompt_tokens=12,
            completion_tokens=34,
            finish_reason="stop",
            kind="completion",
        )
    )
    assert ok["gen_ai.request.model"] == "m"
    assert ok["gen_ai.usage.input_tokens"] == 12 and ok["gen_ai.usage.output_tokens"] == 34
    assert ok["gen_ai.response.finish_reasons"] == ["stop"]
    assert ok["gen_ai.operation.name"] == "text_completion"
    assert ok["latency_ms"] == 250.0 and ok["ttft_ms"] == 100.0
    err = llm_call_fields(call_event())
    assert err["error.type"] == "BackendHTTPError" and err["http.response.status_code"] == 503
    assert err["attempt"] == 2 and err["ttft_ms"] is None


def test_secrets_in_strings_are_masked() -> None:
    e = make_event("x", {"note": "auth Bearer sk-abcdefghijklmnop and sk-1234567890abcdef"})
    assert "sk-abcdefghij" not in json.dumps(e) and "sk-1234567890" not in json.dumps(e)


def test_disabled_by_env_emits_nothing(tmp_path: Path, monkeypatch: object) -> None:
    t = Telemetry(tmp_path)  # the autouse fixture sets FAMILIAR_TELEMETRY=off
    assert not t.enabled
    t.emit("session.start")
    assert t.counts["emitted"] == 0


def test_full_buffer_spills_instead_of_blocking(tmp_path: Path) -> None:
    t = Telemetry(tmp_path, enabled=True, buffer_size=3)
    for n in range(5):
        t.emit("chunk.finished", {"chunk": n})  # no event loop, no sender: must not block
    assert len(t._buffer) == 3
    assert t.backlog() == 2
    spilled = [json.loads(x) for x in t.spill_path.read_text().splitlines()]
    assert [e["chunk"] for e in spilled] == [3, 4]


def test_spill_file_is_bounded(tmp_path: Path) -> None:
    t = Telemetry(tmp_path, enabled=True, buffer_size=1, spill_max_bytes=2000)
    for n in range(100):
        t.emit("chunk.finished", {"chunk": n})
    assert t.spill_path.stat().st_size < 2000 + 1000  # one event past the cap at most
    assert t.counts["dropped"] > 50
    assert t.counts["spilled"] + t.counts["dropped"] + 1 == 100
