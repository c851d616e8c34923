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


#: workload settings two runs must share for their figures to compare
COMPARABLE = ("input_tokens", "prompts", "output_tokens", "requests_per_level")


def different_settings(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``"name A vs B"`` for every workload setting the two runs do not share."""
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    return [
        f"{key} {sa.get(key)} vs {sb.get(key)}"
        for key in COMPARABLE
        if isinstance(sa, dict) and isinstance(sb, dict) and sa.get(key) != sb.get(key)
    ]


def summaries(home: Path) -> list[dict[str, Any]]:
    """One line of facts per saved run, oldest first (unreadable files are skipped)."""
    out = []
    for run_id in saved_ids(home):
        try:
            data = read_record(bench_dir(home) / f"{run_id}.json", "bench run")
        except (ConfigError, StateError):
            continue
        settings = _object(data.get("settings"))
        server = _object(data.get("server"))
        raw = data.get("levels")
        out.append(
            {
                "id": run_id,
                "slot": data.get("slot"),
                "model": data.get("model"),
                "started_at": data.get("started_at"),
                "levels": ",".join(str(lv.get("concurrency")) for lv in raw if isinstance(lv, dict))
                if isinstance(raw, list)
                else "",
                "input_tokens": settings.get("input_tokens"),
                "output_tokens": settings.get("output_tokens"),
                "repeat": settings.get("repeat", 1),
                "suggested_parallel": data.get("suggested_parallel"),
                "server_parallel": server.get("server_parallel"),
                "file": str(bench_dir(home) / f"{run_id}.json"),
            }
        )
    return out


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
