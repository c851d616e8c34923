"""llm.call events in the OpenTelemetry GenAI vocabulary: provider, server, conversation,
time to first chunk, and the response/stream attributes once CallEvent carries them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from familiar.client.backend import CallEvent
from familiar.config.slots import Slot
from familiar.telemetry import llm_call_fields
from familiar.telemetry.events import PROVIDERS, provider_name, server_address

BASE: dict[str, Any] = dict(
    slot="naughty",
    replica="http://gpu1:8000/v1",
    model="qwen3-32b",
    runtime="vllm",
    role="naughty",
    kind="chat",
    attempt=1,
    status="ok",
    error_type=None,
    http_status=200,
    latency_s=1.5,
    ttft_s=0.125,
    queue_wait_s=0.003,
    local_wait_s=0.001,
    ledger_wait_s=0.002,
    prompt_tokens=10,
    completion_tokens=20,
    finish_reason="stop",
    correlation_id="0190c1d2e3f4",
    seats_in_use=1,
    seats_total=4,
)


def call(**changes: Any) -> CallEvent:
    """A CallEvent; fields CallEvent may grow later get a value too."""
    values = {**BASE, **changes}
    for field in dataclasses.fields(CallEvent):
        values.setdefault(field.name, None)
    return CallEvent(**{f.name: values[f.name] for f in dataclasses.fields(CallEvent)})


@pytest.mark.parametrize(
    ("runtime", "provider"),
    [
        ("openai", "openai"),
        ("vllm", "vllm"),
        ("llama.cpp", "llama_cpp"),
        ("sglang", "sglang"),
        ("ollama", "ollama"),
    ],
)
def test_provider_name_from_the_runtime(runtime: str, provider: str) -> None:
    assert llm_call_fields(call(runtime=runtime))["gen_ai.provider.name"] == provider


def test_every_runtime_a_slot_accepts_has_a_provider_without_dots() -> None:
    runtimes = Slot.model_fields["runtime"].annotation.__args__  # type: ignore[union-attr]
    assert set(runtimes) == set(PROVIDERS)
    for runtime in runtimes:
        assert "." not in provider_name(runtime)
    assert provider_name("tgi.v2") == "tgi_v2"  # an unknown one passes, dots replaced


@pytest.mark.parametrize(
    ("url", "address", "port"),
    [
        ("http://gpu1:8000/v1", "gpu1", 8000),
        ("https://api.example.com/v1", "api.example.com", 443),
        ("http://10.0.0.10/v1", "10.0.0.10", 80),
        ("http://[fd00::5]:8080/v1", "fd00::5", 8080),
        ("http://gpu1:99999/v1", None, None),
        ("not a url", None, None),
    ],
)
def test_server_address_and_port_from_the_replica(
    url: str, address: str | None, port: int | None
) -> None:
    assert server_address(url) == (address, port)
    fields = llm_call_fields(call(replica=url))
    assert (fields["server.address"], fields["server.port"]) == (address, port)
    assert fields["replica"] == url  # familiar's own field stays whole


def test_conversation_and_time_to_first_chunk() -> None:
    fields = llm_call_fields(call())
    assert fields["gen_ai.conversation.id"] == "0190c1d2e3f4"
    assert fields["gen_ai.response.time_to_first_chunk"] == 0.125
    assert fields["ttft_ms"] == 125.0  # the name dashboards use stays
    silent = llm_call_fields(call(ttft_s=None, status="error", error_type="BackendTimeout"))
    assert silent["gen_ai.response.time_to_first_chunk"] is None and silent["ttft_ms"] is None


def test_stream_and_response_attributes_come_from_the_callevent() -> None:
    fields = llm_call_fields(
        call(stream=True, response_id="chatcmpl-42", response_model="qwen3-32b-awq")
    )
    assert fields["gen_ai.request.stream"] is True
    assert fields["gen_ai.response.id"] == "chatcmpl-42"
    assert fields["gen_ai.response.model"] == "qwen3-32b-awq"
    assert fields["gen_ai.request.model"] == "qwen3-32b"
    silent = llm_call_fields(call(stream=False, status="error", error_type="BackendTimeout"))
    assert silent["gen_ai.request.stream"] is False and silent["gen_ai.response.id"] is None


def test_operation_names_are_the_conventions() -> None:
    assert llm_call_fields(call(kind="chat"))["gen_ai.operation.name"] == "chat"
    assert llm_call_fields(call(kind="completion"))["gen_ai.operation.name"] == "text_completion"
