"""Open-file-description byte-range locks (Linux ``F_OFD_SETLK``/``F_OFD_GETLK``): the
kernel drops them when the open file is closed, however the process ends."""

from __future__ import annotations

import errno
import fcntl
import struct
from collections.abc import Iterator

_FLOCK = "hhqqi4x"  # struct flock (Linux): type, whence, start, len, pid
OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
OFD_GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None)


def try_lock(fd: int, start: int, length: int = 1) -> bool:
    assert OFD_SETLK is not None
    try:
        fcntl.fcntl(fd, OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, 0, start, length, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock(fd: int, start: int, length: int = 1) -> None:
    assert OFD_SETLK is not None
    fcntl.fcntl(fd, OFD_SETLK, struct.pack(_FLOCK, fcntl.F_UNLCK, 0, start, length, 0))


def first_lock(fd: int, start: int, end: int) -> tuple[int, int] | None:
    """The first lock another open file holds in ``[start, end)``: (start, length)."""
    assert OFD_GETLK is not None
    probe = struct.pack(_FLOCK, fcntl.F_WRLCK, 0, start, end - start, 0)
    kind, _whence, at, length, _pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, OFD_GETLK, probe))
    if kind == fcntl.F_UNLCK:
        return None
    return at, (length or end - at)


def locks(fd: int, start: int, end: int) -> Iterator[int]:
    """Every locked byte offset another open file holds in ``[start, end)``, in order.

    ``F_OFD_GETLK`` answers with *a* conflicting lock, the first in the kernel's own list
    for the file, not the lowest offset: the range is split around each lock found and
    both sides are asked again (at most two probes per lock, plus one). Runs of more
    than 4096 locked bytes are cut short (no deployment has that many seats).
    """
    stack = [(start, end)]
    found: set[int] = set()
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue
        hit = first_lock(fd, lo, hi)
        if hit is None:
            continue
        at, length = hit
        top = min(at + length, hi)
        found.update(range(max(at, lo), min(top, max(at, lo) + 4096)))
        stack.append((lo, at))
        stack.append((top, hi))
    yield from sorted(found)


def first_free(fd: int, n: int, mine: set[int]) -> int | None:
    """The first of bytes ``0 .. n-1`` no other open file has locked and ``mine`` lacks."""
    for seat in range(n):
        if seat not in mine and first_lock(fd, seat, seat + 1) is None:
            return seat
    return None
