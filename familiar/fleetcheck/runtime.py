"""Pure: what each runtime says about itself, and where: root URL, health endpoint,
capacity (from ``/props`` or Prometheus ``/metrics``), version; and the warnings when the
server's capacity disagrees with the configured ``parallel``.

=========  ==================  ======================================  ====================
runtime    health              capacity / load                         version
=========  ==================  ======================================  ====================
llama.cpp  ``/health``         ``/props`` ``total_slots`` (else        ``/props``
                               ``/slots``); ``llamacpp:requests_*``    ``build_info``
vllm       ``/health``         ``vllm:num_requests_running|waiting``   ``/version``
sglang     ``/health``         ``/get_server_info``                    ``/get_server_info``
                               ``max_running_requests``;
                               ``sglang:num_running_reqs|queue_reqs``
ollama     ``/api/tags``       (not exposed)                           ``/api/version``
openai     (none)              (none)                                  (none)
=========  ==================  ======================================  ====================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: the runtime's own health endpoint, at the server root (None: it has none)
HEALTH_PATH: dict[str, str | None] = {
    "llama.cpp": "/health",
    "vllm": "/health",
    "sglang": "/health",
    "ollama": "/api/tags",
    "openai": None,
}
#: the Prometheus gauges of requests running / waiting, per runtime
LOAD_METRICS: dict[str, tuple[str, str]] = {
    "llama.cpp": ("llamacpp:requests_processing", "llamacpp:requests_deferred"),
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
}
#: where the version is, per runtime: (path, key)
VERSION_AT: dict[str, tuple[str, str]] = {
    "llama.cpp": ("/props", "build_info"),
    "vllm": ("/version", "version"),
    "sglang": ("/get_server_info", "version"),
    "ollama": ("/api/version", "version"),
}


def root_url(base: str) -> str:
    """The server root of an OpenAI base URL: ``http://h:8000/v1`` -> ``http://h:8000``."""
    base = base.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format: each metric name -> the sum of its samples (label sets
    added up: several engines or models of one server count together)."""
    out: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            rest = rest.rsplit("}", 1)[-1]  # what follows the labels
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if not math.isnan(value):
            out[name.strip()] = out.get(name.strip(), 0.0) + value
    return out


def load_from_metrics(runtime: str, metrics: dict[str, float]) -> tuple[int | None, int | None]:
    """(running, waiting) from parsed ``/metrics`` (None where the runtime has no gauge)."""
    names = LOAD_METRICS.get(runtime)
    if names is None:
        return None, None
    running, waiting = (metrics.get(n) for n in names)
    return (
        None if running is None else round(running),
        None if waiting is None else round(waiting),
    )


def slots_from_props(data: Any) -> int | None:
    """llama-server's ``total_slots`` (its ``--parallel``) from ``/props``."""
    if isinstance(data, dict):
        value = data.get("total_slots")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def slots_from_slots(data: Any) -> int | None:
    """llama-server's slot count from ``/slots`` (a list, one object per slot)."""
    return len(data) if isinstance(data, list) and data else None


def slots_from_server_info(data: Any) -> int | None:
    """SGLang's ``max_running_requests`` from ``/get_server_info``."""
    if isinstance(data, dict):
        value = data.get("max_running_requests")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def version_from(runtime: str, data: Any) -> str | None:
    where = VERSION_AT.get(runtime)
    if where is None or not isinstance(data, dict):
        return None
    value = data.get(where[1])
    return str(value) if isinstance(value, str | int | float) and value != "" else None


def served_models(data: Any) -> list[str]:
    """The model ids of an OpenAI ``/models`` answer."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return []
    return [str(m["id"]) for m in data["data"] if isinstance(m, dict) and "id" in m]


def ollama_models(data: Any) -> list[str]:
    """The model names of Ollama's ``/api/tags``."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        return []
    return [str(m.get("name")) for m in data["models"] if isinstance(m, dict)]


def capacity_warnings(
    parallel: int,
    server_slots: Sequence[int | None],
    running: Sequence[int | None],
    waiting: Sequence[int | None],
) -> list[str]:
    """Warnings for one slot whose replicas said what they serve at once
    (``server_slots``) and what runs / waits now; ``parallel`` covers all replicas."""
    out: list[str] = []
    if server_slots and all(s is not None for s in server_slots):
        total = sum(s for s in server_slots if s is not None)
        if total < parallel:
            out.append(
                f"the server serves {total} at once but parallel = {parallel}: requests"
                f" past {total} wait inside the server, out of familiar's sight"
            )
        elif total > parallel:
            out.append(
                f"the server serves {total} at once but parallel = {parallel}:"
                f" {total - parallel} of its seats stay idle (raise parallel, or run"
                " `familiar bench` to find the knee)"
            )
    known_running = [r for r in running if r is not None]
    if known_running and sum(known_running) > parallel:
        out.append(
            f"{sum(known_running)} requests run on the server, more than parallel ="
            f" {parallel}: something besides familiar uses it"
        )
    known_waiting = [w for w in waiting if w is not None]
    if known_waiting and sum(known_waiting) > 0 and sum(known_running) < parallel:
        out.append(
            f"{sum(known_waiting)} requests wait in the server while {sum(known_running)}"
            f" run, fewer than parallel = {parallel}: its own limit (max-num-seqs,"
            " KV cache) is below parallel"
        )
    return out
