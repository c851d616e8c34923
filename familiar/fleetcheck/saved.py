"""Saved bench runs: ``FAMILIAR_HOME/bench/<run id>.json``, found again by id or path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from familiar.errors import ConfigError, StateError
from familiar.fleetcheck.results import Level
from familiar.store import read_record, write_json_atomic


def bench_dir(home: Path) -> Path:
    return home / "bench"


def save(home: Path, run: dict[str, Any]) -> Path:
    """Write a run (its ``to_json()``) as ``<id>.json``; returns the path."""
    path = bench_dir(home) / f"{run['id']}.json"
    write_json_atomic(path, run)
    return path


def saved_ids(home: Path) -> list[str]:
    folder = bench_dir(home)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def load(home: Path, ref: str) -> dict[str, Any]:
    """A saved run by path, or by id under ``FAMILIAR_HOME/bench`` (an id's unique prefix
    will do). ``ConfigError`` when there is no such run, ``StateError`` when it is not
    a bench run."""
    path = Path(ref)
    if not path.is_file():
        folder = bench_dir(home)
        exact = folder / f"{ref}.json"
        matches = [exact] if exact.is_file() else sorted(folder.glob(f"{ref}*.json"))
        if len(matches) != 1:
            known = ", ".join(saved_ids(home)[-5:]) or "none saved yet (bench --save)"
            what = "is ambiguous" if matches else "is neither a file nor a saved run id"
            raise ConfigError(f"{ref!r} {what}; recent ids: {known}")
        path = matches[0]
    data = read_record(path, "bench run")
    levels(data, path)
    return data


def levels(data: dict[str, Any], source: object = "bench run") -> list[Level]:
    """The levels of a saved run (``StateError`` naming ``source`` when unreadable)."""
    raw = data.get("levels")
    if not isinstance(raw, list) or not raw:
        raise StateError(f"{source}: not a bench run (no levels)")
    try:
        return [Level.from_json(item) for item in raw]
    except ValueError as exc:
        raise StateError(f"{source}: not a bench run ({exc})") from None
