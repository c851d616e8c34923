"""Pure: reading what a runtime says about itself (root URL, Prometheus text, capacity,
version; where each is comes from ``familiar.config.runtimes``), and the warnings when the
server's capacity disagrees with the configured ``parallel``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from familiar.config.runtimes import (
    RUNTIMES,
    root_url,
    slots_from_props,
    slots_from_server_info,
    slots_from_slots,
)

__all__ = [
    "capacity_warnings",
    "load_from_metrics",
    "ollama_models",
    "parse_metrics",
    "root_url",
    "served_models",
    "slots_from_props",
    "slots_from_server_info",
    "slots_from_slots",
    "version_from",
]


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
    info = RUNTIMES.get(runtime)
    names = None if info is None else info.load_metrics
    if names is None:
        return None, None
    running, waiting = (metrics.get(n) for n in names)
    return (
        None if running is None else round(running),
        None if waiting is None else round(waiting),
    )


def version_from(runtime: str, data: Any) -> str | None:
    info = RUNTIMES.get(runtime)
    where = None if info is None else info.version_at
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
