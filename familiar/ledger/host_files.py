"""The host ledger's files as other processes see them: a deployment's view for
``familiar fleet``, the live waiters (doorbells to ring), the caps live processes use,
and the queue of waiter tickets as the seat policy takes it. A file's lock, not its
content, says whether its process is alive."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from familiar.ledger.base import DeploymentView, Holder, Kind
from familiar.ledger.host_locks import first_lock, locks
from familiar.ledger.policy import Waiter

RECORD = 512  # bytes per seat in a deployment's ``holders`` file
SEATS_END = 1 << 61  # seat locks live below the tickets


def default_dir() -> Path:
    """Where the host ledger lives: ``$FAMILIAR_LEDGER_DIR``, else the first usable of
    :func:`candidates` (a directory of this user's, not a symlink, or one it can create).

    Nobody else can create ``$XDG_RUNTIME_DIR/familiar`` or a directory under the user's
    home, so a squatter in the shared temporary directory never decides where it is; and
    a ``<tmp>/familiar-<uid>`` another user made (or that is a symlink) is passed over
    for the next name (``-2`` .. ``-8``), which every process of the user picks alike.
    """
    env = os.environ.get("FAMILIAR_LEDGER_DIR")
    if env:  # absolute: processes started in different directories share it
        return Path(env).expanduser().absolute()
    found = candidates()
    for cand in found:
        mine = _mine(cand)
        if mine or (mine is None and _creatable(cand)):
            return cand
    return found[0]  # opening it says what is wrong


def candidates() -> list[Path]:
    out: list[Path] = []
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isabs(run) and _mine(Path(run)):
        out.append(Path(run) / "familiar")
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if home and os.path.isabs(home) and _mine(Path(home)):
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
        if os.path.isabs(state):
            # per host: a home shared over NFS must not join the ledgers of several hosts
            out.append(Path(state) / "familiar" / f"ledger-{socket.gethostname()}")
    tmp = Path(tempfile.gettempdir())
    out.append(tmp / f"familiar-{os.getuid()}")
    out += [tmp / f"familiar-{os.getuid()}-{n}" for n in range(2, 9)]
    return out


def _mine(path: Path) -> bool | None:
    """True: a real directory (not a symlink) of this user; None: nothing there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _creatable(path: Path) -> bool:
    """Whether the nearest existing ancestor of ``path`` lets this user create it."""
    for parent in path.parents:
        mine = _mine(parent)
        if mine is None:
            continue
        return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)
    return False


def read_view(sub: Path, *, token: str | None = None) -> DeploymentView | None:
    """One deployment as the files say; ``token``: this process's, whose own cap is left
    out of ``live_caps`` (the view is of the others)."""
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
    caps = [
        c
        for name in listdir(sub / "caps")
        if name != token and (c := live_cap(sub / "caps" / name))
    ]
    return DeploymentView(sub.name, label, cap, reserve, holders, waiting, caps)


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


# -- the queue: ticket locks in the seats file -------------------------------------------

_BASE: dict[Kind, int] = {"interactive": 1 << 61, "batch": 1 << 62}
_SPAN = 1 << 60
TICKETS = (_BASE["interactive"], _BASE["batch"] + _SPAN)  # [start, end) of all tickets


def ticket(kind: Kind, stamp: int) -> int:
    """The lock offset of a waiter's ticket: by kind, then by ``stamp`` (monotonic_ns)."""
    return _BASE[kind] + stamp


def ticket_queue(tickets: Iterable[int], mine: int | None, kind: Kind) -> list[Waiter]:
    """The waiting processes in ticket order, as the seat policy takes them: the other
    processes' ``tickets`` and this process's own (``mine``, for ``kind``), if any."""
    line = [(at, Waiter("interactive" if at < _BASE["batch"] else "batch")) for at in tickets]
    if mine is not None:
        line.append((mine, Waiter(kind, True)))
    return [waiter for _at, waiter in sorted(line, key=lambda t: t[0])]


def free_seats(cap: int, taken: Iterable[int]) -> list[int]:
    """Seats ``0 .. cap-1`` not in ``taken``."""
    held = set(taken)
    return [seat for seat in range(cap) if seat not in held]
