"""``stats.json``: the telemetry counts added up across runs and processes."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from familiar.store import read_json, write_json_atomic
from familiar.telemetry.spill import Counts, SpillFile

log = structlog.get_logger("familiar.telemetry")

#: counters kept across runs in ``stats.json``
TOTALS = ("sent", "spilled", "replayed", "dropped", "refused", "corrupt")


def read_totals(path: Path) -> dict[str, Any]:
    """The totals in ``stats.json`` (empty if missing or unreadable)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def add_totals(path: Path, spill: SpillFile, counts: Mapping[str, int], saved: Counts) -> None:
    """Add ``counts`` since the last save (``saved``, brought up to date) to ``path``.

    Nothing new to add writes nothing. An ``OSError`` is a warning, never raised.
    """
    if all(counts[key] == saved[key] for key in TOTALS):
        return  # nothing to add: a run that did nothing (a usage error) writes nothing
    try:
        with spill.lock():  # another familiar process may be adding too
            totals = read_totals(path)
            for key in TOTALS:
                old = totals.get(key)
                base = old if isinstance(old, int) and not isinstance(old, bool) else 0
                totals[key] = base + counts[key] - saved[key]
                saved[key] = counts[key]
            totals["updated"] = time.time()
            write_json_atomic(path, totals)
    except OSError as exc:
        log.warning("telemetry stats not saved", path=str(path), error=str(exc))
