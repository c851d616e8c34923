"""``familiar health``: every active deployment's replicas probed at once (one probe per
replica, whatever the number of slot names), its one-token answer on a ledger seat.

Embedded slots are looked up, never started: when the embedded llama-server is not
running the slot is reported so (not ok). Per slot, the capacity the replicas report
(summed) is compared with the configured ``parallel`` (:func:`runtime.capacity_warnings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from familiar.client.wire import HTTP
from familiar.config.runtimes import EMBEDDED_RUNTIME
from familiar.config.slots import EMBEDDED, Slot
from familiar.errors import RuntimeFailure
from familiar.fleetcheck.probe import Prober, ReplicaHealth, SeatBusy
from familiar.fleetcheck.runtime import capacity_warnings
from familiar.ledger import DeploymentView, Ledger, deployment_id, deployment_label
from familiar.logs import register_url_secrets

NOT_RUNNING = "the embedded llama-server is not running (`familiar local up` starts it)"


@dataclass
class HealthReport:
    rows: list[ReplicaHealth]
    checked_at: float
    ledger: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked_at": round(self.checked_at, 3),
            "ledger": self.ledger,
            "slots": [r.to_json() for r in self.rows],
        }


def resolve(slots: Mapping[str, Slot], local_url: str | None, local_seats: int) -> dict[str, Slot]:
    """Embedded slots pointed at the running local server (left embedded when none runs)."""
    if local_url is None:
        return dict(slots)
    return {
        name: slot.model_copy(update={"url": (local_url,), "parallel": local_seats})
        if slot.embedded
        else slot
        for name, slot in slots.items()
    }


async def check(
    slots: Mapping[str, Slot],
    *,
    home: Path,
    ledger: Ledger | None = None,
    transport: Any = None,
    timeout_s: float = 10.0,
) -> HealthReport:
    """Probe every replica of every deployment of ``slots`` once (embedded ones resolved
    through ``home``); ``transport``: one of ``familiar.client.wire.HTTP``'s, for tests.

    Slots naming one deployment (URLs + model) share its probes: one per replica, however
    many slot names point there. The one-token answer, the only request that occupies a
    server seat, takes a seat in ``ledger`` like any other request and waits its turn
    (at most ``timeout_s``; a deployment whose seats stay busy is reported busy, not
    down), so a health check never pushes a deployment past its cap.
    """
    local_url, local_seats = None, 0
    if any(s.embedded for s in slots.values()):
        from familiar.local import LocalServer

        info = LocalServer(home).status()
        if info is not None:
            local_url, local_seats = info.base_url, info.seats
    resolved = resolve(slots, local_url, local_seats)
    for slot in resolved.values():
        for url in slot.url:
            register_url_secrets(url)  # its token or password, and their Basic-auth form
    groups: dict[tuple[tuple[str, ...], str], list[Slot]] = {}
    for slot in resolved.values():
        if not slot.embedded:
            groups.setdefault(slot.deployment, []).append(slot)
    async with contextlib.AsyncExitStack() as stack:
        opened, error = await _open(stack, ledger, timeout_s)
        async with HTTP.AsyncClient(transport=transport, timeout=timeout_s) as client:
            prober = Prober(client, timeout_s=timeout_s)
            async with asyncio.TaskGroup() as group:
                tasks = {
                    (key, url): group.create_task(
                        prober.replica(members[0], url, seat=_seat(opened, key, members, timeout_s))
                    )
                    for key, members in groups.items()
                    for url in key[0]
                }
        views: list[DeploymentView] = []
        if opened is not None:
            views, error = await _views(opened, timeout_s)
    rows: list[ReplicaHealth] = []
    for slot in resolved.values():
        if slot.embedded:
            rows.append(_not_running(slot))
            continue
        mine = [_as_slot(tasks[(slot.deployment, url)].result(), slot) for url in slot.url]
        warnings = capacity_warnings(
            slot.parallel,
            [r.server_parallel for r in mine],
            [r.running for r in mine],
            [r.waiting for r in mine],
        )
        for r in mine:
            r.warnings.extend(warnings)
        rows.extend(mine)
    report = HealthReport(rows, time.time())
    if ledger is not None:
        report.ledger = {"kind": ledger.kind, "where": ledger.where, "error": error}
        _seats(report.rows, resolved, views)
    return report


def _as_slot(row: ReplicaHealth, slot: Slot) -> ReplicaHealth:
    """The deployment's probe as one of its slots reports it (its own name, parallel)."""
    return dataclasses.replace(
        row,
        slot=slot.name,
        parallel=slot.parallel,
        served_models=list(row.served_models),
        warnings=list(row.warnings),
        problems=list(row.problems),
    )


async def _open(
    stack: contextlib.AsyncExitStack, ledger: Ledger | None, timeout_s: float
) -> tuple[Ledger | None, str | None]:
    """The ledger opened for this check, or why not (probes then go without seats)."""
    if ledger is None:
        return None, None
    try:
        async with asyncio.timeout(timeout_s):
            await stack.enter_async_context(ledger)
    except TimeoutError:
        return None, f"no answer within {timeout_s:g} s"
    except RuntimeFailure as exc:
        return None, str(exc)
    return ledger, None


def _seat(
    ledger: Ledger | None, key: tuple[tuple[str, ...], str], members: list[Slot], wait_s: float
) -> Callable[[], AbstractAsyncContextManager[None]] | None:
    """A seat of the deployment ``key`` for one probe (``None`` without a ledger)."""
    if ledger is None:
        return None
    urls, model = key
    cap = min(s.parallel for s in members)
    reserve = min(max(s.reserve for s in members), cap - 1)
    seats = ledger.deployment(
        deployment_id(urls, model), deployment_label(urls, model), cap, reserve
    )

    @contextlib.asynccontextmanager
    async def hold() -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(wait_s):
                lease = await seats.acquire("interactive")
        except TimeoutError:
            raise SeatBusy(f"every seat stayed taken for {wait_s:g} s") from None
        try:
            yield
        finally:
            await seats.release(lease)

    return hold


def _not_running(slot: Slot) -> ReplicaHealth:
    row = ReplicaHealth(slot.name, EMBEDDED, EMBEDDED_RUNTIME, slot.model, slot.parallel)
    row.problems.append(NOT_RUNNING)
    row.finish()
    return row


async def _views(ledger: Ledger, timeout_s: float) -> tuple[list[DeploymentView], str | None]:
    """The open ledger's views, or the reason there are none (never fails the check)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await ledger.views(), None
    except TimeoutError:
        return [], f"no answer within {timeout_s:g} s"
    except RuntimeFailure as exc:
        return [], str(exc)


def _seats(
    rows: list[ReplicaHealth], slots: Mapping[str, Slot], views: list[DeploymentView]
) -> None:
    by_id = {v.id: v for v in views}
    for row in rows:
        slot = slots[row.slot]
        if slot.embedded:
            continue
        view = by_id.get(deployment_id(slot.url, slot.model))
        row.seats_cap = slot.parallel if view is None else view.effective_cap
        row.seats_in_use = 0 if view is None else view.in_use


def events(report: HealthReport) -> list[dict[str, Any]]:
    """The fields of one ``fleet.health`` telemetry event per row (pure)."""
    return [
        {
            "slot": r.slot,
            "replica": r.url,
            "runtime": r.runtime,
            "gen_ai.request.model": r.model,
            "ok": r.ok,
            "up": 1 if r.ok else 0,
            "error": r.error,
            "probe_ms": None if r.probe_ms is None else round(r.probe_ms, 1),
            "parallel": r.parallel,
            "server_parallel": r.server_parallel,
            "running": r.running,
            "waiting": r.waiting,
            "seats_in_use": r.seats_in_use,
            "seats_capacity": r.seats_cap,
            "warnings": len(r.warnings),
        }
        for r in report.rows
    ]
