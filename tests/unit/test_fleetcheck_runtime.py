"""Pure runtime knowledge: root URLs, Prometheus text, capacity, the warnings."""

from __future__ import annotations

from familiar.fleetcheck import runtime as rt

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="gemma"} 3.0
vllm:num_requests_running{engine="1",model_name="gemma"} 2.0
vllm:num_requests_waiting{engine="0",model_name="gemma"} 4.0
vllm:num_requests_waiting{engine="1",model_name="g{x}"} 1.0
vllm:gpu_cache_usage_perc{engine="0"} NaN
process_start_time_seconds 1.7e9
"""


def test_root_url_drops_v1() -> None:
    assert rt.root_url("http://h:8000/v1") == "http://h:8000"
    assert rt.root_url("http://h:8000/v1/") == "http://h:8000"
    assert rt.root_url("http://h:11434") == "http://h:11434"


def test_metrics_sum_label_sets_and_skip_comments_and_nan() -> None:
    m = rt.parse_metrics(VLLM_METRICS)
    assert m["vllm:num_requests_running"] == 5.0
    assert m["vllm:num_requests_waiting"] == 5.0
    assert "vllm:gpu_cache_usage_perc" not in m
    assert m["process_start_time_seconds"] == 1.7e9
    assert rt.load_from_metrics("vllm", m) == (5, 5)
    assert rt.load_from_metrics("ollama", m) == (None, None)
    llama = rt.parse_metrics("llamacpp:requests_processing 2\nllamacpp:requests_deferred 0\n")
    assert rt.load_from_metrics("llama.cpp", llama) == (2, 0)


def test_capacity_and_version_readers() -> None:
    assert rt.slots_from_props({"total_slots": 4, "build_info": "b6500-abc"}) == 4
    assert rt.slots_from_props({"total_slots": True}) is None
    assert rt.slots_from_slots([{"id": 0}, {"id": 1}]) == 2
    assert rt.slots_from_slots({"error": "disabled"}) is None
    assert rt.slots_from_server_info({"max_running_requests": 48, "version": "0.4.9"}) == 48
    assert rt.version_from("llama.cpp", {"build_info": "b6500-abc"}) == "b6500-abc"
    assert rt.version_from("vllm", {"version": "0.11.0"}) == "0.11.0"
    assert rt.version_from("openai", {"version": "1"}) is None
    assert rt.served_models({"data": [{"id": "a"}, {"id": "b"}, "junk"]}) == ["a", "b"]
    assert rt.ollama_models({"models": [{"name": "llama3:8b"}]}) == ["llama3:8b"]


def test_capacity_warnings() -> None:
    assert rt.capacity_warnings(4, [2, 2], [1, 0], [0, 0]) == []
    fewer = rt.capacity_warnings(8, [2, 2], [None], [None])
    assert len(fewer) == 1 and "serves 4 at once but parallel = 8" in fewer[0]
    more = rt.capacity_warnings(2, [4], [], [])
    assert "2 of its seats stay idle" in more[0]
    assert rt.capacity_warnings(2, [None], [], []) == []  # unknown: no guess
    busy = rt.capacity_warnings(2, [], [3], [0])
    assert "something besides familiar" in busy[0]
    queued = rt.capacity_warnings(8, [], [4], [3])
    assert "3 requests wait in the server while 4 run" in queued[0]
