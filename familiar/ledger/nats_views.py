"""What ``familiar fleet`` shows of the NATS seat ledger: every deployment in the bucket,
its holders and waiters, read once (records that fail the fleet key check are shown as
an unknown holder, never believed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import Any

from nats.js.kv import KeyValue

from familiar.ledger.base import DeploymentSeats, DeploymentView, Holder
from familiar.ledger.nats_trust import FleetKey

UNKNOWN = Holder("?", 0, "?")


async def read_views(
    kv: KeyValue, fleet_key: FleetKey, known: Iterable[DeploymentSeats], within_s: float
) -> list[DeploymentView]:
    """Every deployment in the bucket (and the ``known`` ones of this process), read once
    within ``within_s``."""
    watcher = await kv.watch(">")
    entries: dict[str, KeyValue.Entry] = {}
    try:
        async with asyncio.timeout(within_s):
            async for entry in watcher:
                if entry is None:
                    break
                entries[entry.key] = entry
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]
    metas: dict[str, dict[str, Any]] = {
        d.id: {"label": d.label, "cap": d.cap, "reserve": d.reserve} for d in known
    }
    holders: dict[str, dict[int, Holder]] = {d: {} for d in metas}
    waiting: dict[str, list[Holder]] = {d: [] for d in metas}
    caps: dict[str, list[int]] = {d: [] for d in metas}
    check = fleet_key.check
    for key, entry in sorted(entries.items()):
        dep, _, rest = key.partition(".")
        what, _, name = rest.partition(".")
        if entry.operation is not None or not entry.value:
            continue
        holders.setdefault(dep, {})
        waiting.setdefault(dep, [])
        caps.setdefault(dep, [])
        if what == "meta":
            data = check("meta", key, entry.value)
            with contextlib.suppress(ValueError, TypeError):
                if data is not None:
                    metas.setdefault(dep, json.loads(data))
        elif what == "s" and name.isdigit():
            data = check("seat", key, entry.value)
            holders[dep][int(name)] = Holder.from_json(data or b"") or UNKNOWN
        elif what == "c":
            data = check("cap", key, entry.value)
            with contextlib.suppress(ValueError, TypeError, KeyError):
                cap = int(json.loads(data or b"")["cap"])
                if 1 <= cap <= 4096:
                    caps[dep].append(cap)
        elif what == "w":
            data = check("waiter", key, entry.value)
            if data is not None:
                waiting[dep].append(Holder.from_json(data) or UNKNOWN)
    views = []
    for dep in sorted(holders):
        meta = metas.get(dep, {})
        cap = int(meta.get("cap") or max(holders[dep], default=-1) + 1)
        label, reserve = str(meta.get("label") or dep), int(meta.get("reserve") or 0)
        views.append(
            DeploymentView(dep, label, cap, reserve, holders[dep], waiting[dep], caps[dep])
        )
    return views
