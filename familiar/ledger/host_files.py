"""The host ledger's files as other processes see them: a deployment's view for
``familiar fleet``, the live waiters (doorbells to ring), the caps live processes use.
A file's lock, not its content, says whether its process is alive."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from familiar.ledger.base import DeploymentView, Holder
from familiar.ledger.host_locks import first_lock, locks

RECORD = 512  # bytes per seat in a deployment's ``holders`` file
SEATS_END = 1 << 61  # seat locks live below the tickets


def default_dir() -> Path:
    """Where the host ledger lives (see the module docstring)."""
    env = os.environ.get("FAMILIAR_LEDGER_DIR")
    if env:  # absolute: processes started in different directories share it
        return Path(env).expanduser().absolute()
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run):
        return Path(run) / "familiar"
    return Path(tempfile.gettempdir()) / f"familiar-{os.getuid()}"


def read_view(sub: Path) -> DeploymentView | None:
    try:
        meta = json.loads((sub / "meta.json").read_text(encoding="utf-8"))
        label, cap, reserve = str(meta["label"]), int(meta["cap"]), int(meta.get("reserve", 0))
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return None
    if not (1 <= cap <= 4096 and 0 <= reserve < cap):
        return None  # not a record familiar wrote
    holders: dict[int, Holder] = {}
    try:
        fd = os.open(sub / "seats", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return DeploymentView(sub.name, label, cap, reserve)
    try:
        with open(sub / "holders", "rb") as records:
            for seat in locks(fd, 0, SEATS_END):
                records.seek(seat * RECORD)
                holder = Holder.from_json(records.read(RECORD).strip(b"\0 \n"))
                holders[seat] = holder or Holder("?", 0, "?")
    except OSError:
        pass
    finally:
        os.close(fd)
    waiting = [h for _token, h in live_waiters(sub / "waiters", prune=True)]
    return DeploymentView(sub.name, label, cap, reserve, holders, waiting)


def listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def live_cap(path: Path) -> int | None:
    """The cap in a live process's ``caps/`` file; a dead one's file is removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if first_lock(fd, 0, 1) is None:
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        value = int(os.pread(fd, 16, 0) or b"0")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return value if 1 <= value <= 4096 else None


def live_waiters(folder: Path, *, prune: bool) -> Iterator[tuple[str, Holder]]:
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if first_lock(fd, 0, 1) is None:  # its process is gone
                if prune:
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            holder = Holder.from_json(os.pread(fd, 4096, 0))
        finally:
            os.close(fd)
        if holder is not None:
            yield name, holder
