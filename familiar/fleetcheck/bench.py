"""``familiar bench``: resolve the slot, hold every seat of its deployment, sweep, knee.

The bench measures the *server*, so it goes past the configured ``parallel`` on purpose.
While it runs it holds every seat of the deployment in the seat ledger (interactive
kind, taken one by one before the sweep, given back in a ``finally``), so no other
familiar work lands on the server and disturbs the figures, and nothing of familiar's
sees a server pushed past its cap. An embedded slot runs on the embedded llama-server,
started for the bench (and stopped after) when it is not already up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from familiar.client.wire import HTTP
from familiar.config.slots import Slot
from familiar.fleetcheck.knee import Knee, cap_to_server, find_knee, noise
from familiar.fleetcheck.openloop import OpenLoop, rate_name
from familiar.fleetcheck.probe import Prober
from familiar.fleetcheck.results import Level
from familiar.fleetcheck.sweep import Sweep, Target, Workload
from familiar.ledger import (
    DeploymentSeats,
    DeploymentView,
    FleetSettings,
    Lease,
    deployment_id,
    deployment_label,
    make_ledger,
)
from familiar.logs import redact_url, register_url_secrets

Progress = Callable[[str], None]
MAX_CONCURRENCY = 4096


@dataclass(frozen=True)
class BenchRun:
    id: str
    slot: str
    model: str
    runtime: str
    urls: tuple[str, ...]
    parallel: int
    server: Mapping[str, Any]
    settings: Mapping[str, Any]
    levels: tuple[Level, ...]
    knee: Knee
    started_at: float
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        started = datetime.fromtimestamp(self.started_at, UTC)
        return {
            "id": self.id,
            "slot": self.slot,
            "model": self.model,
            "runtime": self.runtime,
            "url": list(self.urls),
            "parallel": self.parallel,
            "server": dict(self.server),
            "settings": dict(self.settings),
            "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "duration_s": round(self.duration_s, 3),
            "levels": [lv.to_json() for lv in self.levels],
            "suggested_parallel": self.knee.suggested,
            "knee": self.knee.to_json(),
        }


def honest_knee(levels: Sequence[Level], server_parallel: Any) -> Knee:
    """The knee, with its noise warning, capped to the server's own capacity."""
    knee = find_knee(levels)
    spreads = {lv.concurrency: lv.spread for lv in levels if lv.runs_tok_per_s}
    knee = dataclasses.replace(knee, noise=noise(levels, knee, spreads))
    return cap_to_server(knee, server_parallel if isinstance(server_parallel, int) else None)


def open_knee(levels: Sequence[Level]) -> Knee:
    """An open-loop run suggests no ``parallel`` (its levels are rates, not concurrency)."""
    peak = max(levels, key=lambda lv: lv.output_tok_per_s, default=None)
    tok = peak.output_tok_per_s if peak is not None else 0.0
    return Knee(None, tok, None, 0.9, None, True)


def default_levels(parallel: int) -> list[int]:
    """Powers of two from 1 to ``max(8, 4 x parallel)`` (at most 2048)."""
    top = min(max(8, 4 * parallel), 2048)
    out, c = [], 1
    while c <= top:
        out.append(c)
        c *= 2
    return out


def parse_levels(text: str) -> list[int]:
    """``"1,2,4,8"`` or ``"1..64"`` (powers of two from the first to the last), or a mix;
    sorted, each once. ``ValueError`` with the reason."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"empty item in {text!r}")
        low_text, dots, high_text = part.partition("..")
        try:
            low = int(low_text)
            high = int(high_text) if dots else low
        except ValueError:
            raise ValueError(f"{part!r} is not a whole number or a range like 1..64") from None
        if low < 1 or high > MAX_CONCURRENCY or high < low:
            raise ValueError(f"{part!r}: concurrency must be 1 .. {MAX_CONCURRENCY}, low to high")
        c = low
        while c <= high:
            out.add(c)
            c *= 2
        out.add(high)
    return sorted(out)


def new_run_id(slot: str, now: float | None = None) -> str:
    """``<UTC time>-<slot>-<4 hex>``: sortable by time, unique within a second."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', slot)}-{secrets.token_hex(2)}"


def seat_plan(
    slots: Mapping[str, Slot], slot: Slot, views: Sequence[DeploymentView]
) -> tuple[int, int]:
    """(cap, reserve) to hold every seat of ``slot``'s deployment: the largest cap any
    slot of the file or any holder in the ledger uses for it."""
    same = [s for s in slots.values() if not s.embedded and s.deployment == slot.deployment]
    cap = max([slot.parallel, *(s.parallel for s in same)])
    dep = deployment_id(slot.url, slot.model)
    cap = max([cap, *(v.cap for v in views if v.id == dep)])
    reserve = min(max([slot.reserve, *(s.reserve for s in same)]), cap - 1)
    return cap, reserve


@contextlib.asynccontextmanager
async def holding_every_seat(seats: DeploymentSeats) -> AsyncIterator[None]:
    """Hold all ``seats.cap`` seats for the block (given back even when cancelled)."""
    leases: list[Lease] = []
    try:
        for _ in range(seats.cap):
            leases.append(await seats.acquire("interactive"))
        yield
    finally:
        for lease in leases:
            await seats.release(lease)


def raise_fd_limit(needed: int) -> None:
    """Let the process open ``needed`` connections (soft RLIMIT_NOFILE up to the hard)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


async def run_bench(
    slots: Mapping[str, Slot],
    name: str,
    workload: Workload,
    levels: Sequence[int] | None,
    *,
    home: Path,
    fleet: FleetSettings | None = None,
    transport: Any = None,
    progress: Progress = lambda _line: None,
    rates: Sequence[float] | None = None,
) -> BenchRun:
    """Bench slot ``name`` of ``slots`` (see the module docstring); with ``rates``, the
    open loop (``familiar.fleetcheck.openloop``): one level per rate, at most the one
    ``levels`` value (default: the seats held) in flight."""
    slot = slots[name]
    started = time.time()
    async with contextlib.AsyncExitStack() as stack:
        if slot.embedded:
            from familiar.local import LocalServer

            progress("the embedded llama-server: reusing the running one or starting one ...")
            info = await stack.enter_async_context(LocalServer(home).running(owned=True))
            slot = slot.model_copy(update={"url": (info.base_url,), "parallel": info.seats})
        ledger = await stack.enter_async_context(make_ledger(fleet))
        cap, reserve = seat_plan(slots, slot, await ledger.views())
        if rates:
            levels = [levels[0] if levels else cap]
        levels = list(levels) if levels else default_levels(slot.parallel)
        raise_fd_limit(max(levels))
        label = deployment_label(slot.url, slot.model)
        seats = ledger.deployment(deployment_id(slot.url, slot.model), label, cap, reserve)
        progress(f"taking all {cap} seats of {label} in the seat ledger ({ledger.kind}) ...")
        await stack.enter_async_context(holding_every_seat(seats))
        progress(
            f"holding all {cap} seats until the bench ends: no other familiar work lands"
            f" there; the sweep goes past parallel = {slot.parallel} on purpose"
        )
        run_id = new_run_id(name, started)
        for url in slot.url:
            register_url_secrets(url)  # its token or password, and their Basic-auth form
        async with HTTP.AsyncClient(transport=transport, timeout=10.0) as client:
            server = await Prober(client).identity(slot, slot.url[0])
        target = Target(
            slot=name,
            urls=slot.url,
            model=slot.model,
            runtime=slot.runtime,
            api_key=slot.api_key(),
            timeout_s=slot.timeout_s,
            stall_s=min(slot.stall_timeout_s, slot.timeout_s),
            connect_s=min(slot.connect_timeout_s, slot.timeout_s),
        )
        if rates:
            loop = OpenLoop(target, workload, run_id=run_id, transport=transport, progress=progress)
            measured = await loop.run_rates(rates, levels[0])
        else:
            sweep = Sweep(target, workload, run_id=run_id, transport=transport, progress=progress)
            measured = await sweep.run(levels)
    return BenchRun(
        id=run_id,
        slot=name,
        model=slot.model,
        runtime=slot.runtime,
        urls=tuple(redact_url(u) for u in slot.url),
        parallel=slot.parallel,
        server=server,
        settings={
            **workload.settings(),
            "concurrency": levels,
            "replicas": len(slot.url),
            **({"request_rate": [rate_name(r) for r in rates]} if rates else {}),
        },
        levels=tuple(measured),
        knee=open_knee(measured) if rates else honest_knee(measured, server.get("server_parallel")),
        started_at=started,
        duration_s=time.time() - started,
    )
