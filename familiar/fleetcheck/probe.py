"""Probing one replica of a slot: reachable, model served, the runtime's own health,
a one-token answer, the server's capacity and load, its version.

Every check is best effort and bounded by the client's timeout; what a server does not
say stays ``None``. Only four things decide ``ok``: the replica answered ``/models``,
it serves the configured model, its own health endpoint (where the runtime has one)
said 200, and a one-token chat completion came back *finished* (a ``finish_reason``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from familiar.client.wire import HTTP
from familiar.config.runtimes import RUNTIMES
from familiar.config.slots import Slot
from familiar.fleetcheck import runtime as rt
from familiar.logs import mask, redact_url


@dataclass
class ReplicaHealth:
    """One replica of one slot, as ``familiar health`` reports it."""

    slot: str
    url: str
    runtime: str
    model: str
    parallel: int
    ok: bool = False
    error: str | None = None
    reachable: bool | None = None
    model_served: bool | None = None
    served_models: list[str] = field(default_factory=list)
    health_endpoint: str | None = None
    health_ok: bool | None = None
    health_status: int | None = None
    probe_ms: float | None = None
    server_parallel: int | None = None
    running: int | None = None
    waiting: int | None = None
    version: str | None = None
    seats_in_use: int | None = None
    seats_cap: int | None = None
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: why the one-token probe was not sent (every seat busy): not a fault of the server
    probe_skipped: str | None = None

    def finish(self) -> None:
        """Decide ``ok`` and ``error`` from what was found."""
        self.ok = (
            bool(self.reachable)
            and bool(self.model_served)
            and self.health_ok is not False
            and (self.probe_ms is not None or self.probe_skipped is not None)
            and not self.problems
        )
        self.error = None if self.ok else ("; ".join(self.problems) or "not healthy")

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "url": self.url,
            "ok": self.ok,
            "error": self.error,
            "runtime": self.runtime,
            "model": self.model,
            "reachable": self.reachable,
            "model_served": self.model_served,
            "served_models": self.served_models,
            "health": None
            if self.health_endpoint is None
            else {
                "endpoint": self.health_endpoint,
                "ok": self.health_ok,
                "status": self.health_status,
            },
            "probe_ms": None if self.probe_ms is None else round(self.probe_ms, 1),
            "parallel": self.parallel,
            "server_parallel": self.server_parallel,
            "running": self.running,
            "waiting": self.waiting,
            "version": self.version,
            "seats_in_use": self.seats_in_use,
            "seats_cap": self.seats_cap,
            "warnings": self.warnings,
            "probe_skipped": self.probe_skipped,
        }


class SeatBusy(Exception):
    """No seat of the deployment came free in time for the one-token probe."""


SeatGate = Callable[[], AbstractAsyncContextManager[None]]


def describe(exc: BaseException) -> str:
    """A short, masked reason for an HTTP failure."""
    if isinstance(exc, HTTP.TimeoutException | TimeoutError):
        return "timed out"
    if isinstance(exc, HTTP.ConnectError):
        return "connection refused or host unreachable"
    text = str(exc) or type(exc).__name__
    return mask(text)[:160]


def auth_headers(slot: Slot) -> dict[str, str]:
    key = slot.api_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


class Prober:
    """Probes replicas through one ``familiar.client.wire.HTTP.AsyncClient`` (its transport
    injectable)."""

    def __init__(self, client: Any, *, timeout_s: float = 10.0) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def get(self, url: str, headers: dict[str, str]) -> tuple[int, Any, str]:
        """(status, JSON body or None, text) of a GET."""
        response = await self.client.get(url, headers=headers)
        text = response.text
        try:
            data = response.json()
        except ValueError:
            data = None
        return response.status_code, data, text

    async def replica(self, slot: Slot, url: str, seat: SeatGate | None = None) -> ReplicaHealth:
        """Probe one replica; ``seat``: held around the one-token answer (a ledger seat)."""
        row = ReplicaHealth(
            slot=slot.name,
            url=redact_url(url),
            runtime=slot.runtime,
            model=slot.model,
            parallel=slot.parallel,
        )
        headers = auth_headers(slot)
        try:
            status, data, _ = await self.get(f"{url}/models", headers)
        except HTTP.HTTPError as exc:
            row.reachable = False
            row.problems.append(f"unreachable: {describe(exc)}")
            row.finish()
            return row
        row.reachable = True
        if status != 200:
            row.problems.append(f"GET /models: HTTP {status}")
        else:
            row.served_models = rt.served_models(data)
            row.model_served = slot.model in row.served_models or (
                f"{slot.model}:latest" in row.served_models
            )
            if not row.model_served:
                served = ", ".join(row.served_models[:5]) or "none"
                row.problems.append(f"model {slot.model!r} is not served (serves: {served})")
        root = rt.root_url(url)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._health(row, root, headers))
            group.create_task(self._capacity(row, root, headers))
            group.create_task(self._seated_probe(row, slot, url, headers, seat))
        row.finish()
        return row

    async def _health(self, row: ReplicaHealth, root: str, headers: dict[str, str]) -> None:
        info = RUNTIMES.get(row.runtime)
        path = None if info is None else info.health_path
        if path is None:
            return
        row.health_endpoint = path
        try:
            status, _, _ = await self.get(root + path, headers)
        except HTTP.HTTPError as exc:
            row.health_ok = False
            row.problems.append(f"GET {path}: {describe(exc)}")
            return
        row.health_status = status
        row.health_ok = status == 200
        if not row.health_ok:
            row.problems.append(f"GET {path}: HTTP {status}")

    async def _capacity(self, row: ReplicaHealth, root: str, headers: dict[str, str]) -> None:
        """Version, capacity and load where the runtime says them (``familiar.config.runtimes``);
        a document read for one is not asked for again."""
        info = RUNTIMES.get(row.runtime)
        if info is None:
            return
        read: dict[str, Any] = {}

        async def document(path: str) -> Any:
            if path not in read:
                read[path] = await self._try_json(root + path, headers)
            return read[path]

        if info.version_at is not None:
            row.version = rt.version_from(info.name, await document(info.version_at[0]))
        for source in info.capacity:
            row.server_parallel = source.read(await document(source.path))
            if row.server_parallel is not None:
                break
        if info.load_metrics is not None:
            text = await self._try_text(root + "/metrics", headers)
            if text is not None:
                row.running, row.waiting = rt.load_from_metrics(info.name, rt.parse_metrics(text))

    async def _try_json(self, url: str, headers: dict[str, str]) -> Any:
        try:
            status, data, _ = await self.get(url, headers)
        except HTTP.HTTPError:
            return None
        return data if status == 200 else None

    async def _try_text(self, url: str, headers: dict[str, str]) -> str | None:
        try:
            status, _, text = await self.get(url, headers)
        except HTTP.HTTPError:
            return None
        return text if status == 200 else None

    async def _seated_probe(
        self,
        row: ReplicaHealth,
        slot: Slot,
        url: str,
        headers: dict[str, str],
        seat: SeatGate | None,
    ) -> None:
        if seat is None:
            await self._probe(row, slot, url, headers)
            return
        try:
            async with seat():
                await self._probe(row, slot, url, headers)
        except SeatBusy as exc:
            row.probe_skipped = str(exc)
            row.warnings.append(f"one-token probe not sent: {exc}")

    async def _probe(
        self, row: ReplicaHealth, slot: Slot, url: str, headers: dict[str, str]
    ) -> None:
        """A one-token chat completion; it counts only when the server said it finished."""
        body = {
            "model": slot.model,
            "messages": [{"role": "user", "content": "Reply with OK."}],
            "max_tokens": 1,
            "temperature": 0,
            "stream": False,
        }
        start = time.perf_counter()
        try:
            async with asyncio.timeout(min(slot.timeout_s, self.timeout_s)):
                response = await self.client.post(
                    f"{url}/chat/completions", json=body, headers=headers
                )
        except (HTTP.HTTPError, TimeoutError) as exc:
            row.problems.append(f"one-token probe: {describe(exc)}")
            return
        elapsed_ms = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            row.problems.append(f"one-token probe: HTTP {response.status_code}")
            return
        try:
            choices = response.json().get("choices")
            finish = choices[0].get("finish_reason") if choices else None
        except (ValueError, AttributeError, TypeError):
            row.problems.append("one-token probe: malformed answer")
            return
        if finish is None:
            row.problems.append("one-token probe: the answer has no finish_reason")
            return
        row.probe_ms = elapsed_ms

    async def identity(self, slot: Slot, url: str) -> dict[str, Any]:
        """Who serves ``url``: model, runtime, version, capacity (for saved bench runs)."""
        row = ReplicaHealth(slot.name, redact_url(url), slot.runtime, slot.model, slot.parallel)
        headers = auth_headers(slot)
        await self._capacity(row, rt.root_url(url), headers)
        models = rt.served_models(await self._try_json(f"{url}/models", headers))
        return {
            "model": slot.model,
            "runtime": slot.runtime,
            "version": row.version,
            "server_parallel": row.server_parallel,
            "served_models": models,
        }
