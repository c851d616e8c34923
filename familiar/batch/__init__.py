"""Any batch: OpenAI Batch JSONL requests through the fleet (``familiar batch``).

:mod:`.lines` reads request lines and writes result lines (pure); :mod:`.run` streams a
file through the slots' seats, resumable; :func:`run_batch` opens the fleet for a batch
(the service the CLI calls).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from familiar.batch.lines import Request
from familiar.batch.run import BatchRun, Counts, Writer, check_input, prepare_output
from familiar.config.workspace import Config
from familiar.context import bound_correlation_id, new_correlation_id
from familiar.errors import ConfigError

__all__ = ["BatchOptions", "Counts", "check_input", "progress_printer", "router", "run_batch"]


@dataclass(frozen=True)
class BatchOptions:
    requests: Path
    out: Path
    errors: Path | None = None
    role: str | None = None
    slot: str | None = None
    force: bool = False


def router(
    cfg: Config, role: str | None = None, slot: str | None = None
) -> tuple[dict[str, Any], Callable[[Request], str]]:
    """The slots a batch may use and how a request picks one: ``--slot``, ``--role``,
    else the request's ``body.model`` naming an active role or slot (ConfigError: a bad
    ``--role``/``--slot``; from the route, that request's ``model_not_found``). The local
    batch and the queue's workers route with it."""
    if slot and role:
        raise ConfigError("give --role or --slot, not both")
    if slot:
        if slot not in cfg.slots:
            raise ConfigError(f"unknown slot {slot!r} (slots: {', '.join(sorted(cfg.slots))})")
        name = slot
        return {name: cfg.slots[name]}, lambda _req: name
    roles = cfg.role_config.roles
    if role:
        if role not in roles:
            raise ConfigError(f"role {role!r} is not active (active: {', '.join(roles)})")
        name = cfg.slots_for(role)[0].name
        return {name: cfg.slots[name]}, lambda _req: name
    slots = dict(cfg.active_slots)
    by_role = {r: cfg.slots_for(r)[0].name for r in roles}

    def route(req: Request) -> str:
        model = req.model
        if model in slots:
            return model
        if model in by_role:
            return by_role[model]
        known = ", ".join(sorted({*slots, *by_role}))
        raise ConfigError(
            f"model {model!r} names no active role or slot ({known}); or give --role/--slot"
        )

    return slots, route


async def run_batch(
    cfg: Config, opts: BatchOptions, total: int, progress: Callable[[Counts], None] | None
) -> tuple[str, Counts]:
    """The batch's correlation id and its counts; result lines written as they finish."""
    from familiar.fleet import Fleet
    from familiar.ledger import make_ledger
    from familiar.telemetry import Telemetry

    slots, route = router(cfg, opts.role, opts.slot)
    done = prepare_output(opts.out, opts.errors, force=opts.force)
    cid = new_correlation_id()
    counts = Counts(total=total)
    with bound_correlation_id(cid):
        telemetry = Telemetry(cfg.home)
        async with (
            telemetry,
            Fleet(
                slots,
                home=cfg.home,
                hooks=[telemetry.hook],
                ledger=make_ledger(cfg.fleet),
                kind="batch",
            ) as fleet,
        ):
            seats = sum(s.total for s in fleet.seats.values())
            workers = max(1, min(512, seats + 2))
            telemetry.emit(
                "batch.start",
                {
                    "kind": "jsonl",
                    "requests": total,
                    "already_done": len(done),
                    "slots": sorted(slots),
                },
            )
            writer = Writer(opts.out, opts.errors)
            t0 = time.monotonic()
            try:
                run = BatchRun(dict(fleet.clients), route, writer, cid, counts, progress)
                await run.run(opts.requests, done, workers)
            finally:
                writer.close()
                telemetry.emit(
                    "batch.end",
                    {**counts.summary(), "duration_ms": round((time.monotonic() - t0) * 1000)},
                )
    return cid, counts


def progress_printer(total: int, every_s: float = 10.0) -> Callable[[Counts], None]:
    """Plain progress lines on stderr: at most one per ``every_s`` seconds, and the last."""
    last = [0.0]

    def show(c: Counts) -> None:
        now = time.monotonic()
        remaining = total - c.skipped
        if c.done < remaining and now - last[0] < every_s:
            return
        last[0] = now
        took = now - c.started
        rate = c.done / took if took > 0 else 0.0
        eta = (
            f", ETA {int((remaining - c.done) / rate)} s" if rate > 0 and c.done < remaining else ""
        )
        tps = c.completion_tokens / took if took > 0 else 0.0
        print(
            f"batch: {c.done}/{remaining} done ({c.ok} ok, {c.failed} failed),"
            f" {rate:.1f} req/s, {tps:.0f} tokens/s{eta}",
            file=sys.stderr,
        )

    return show
