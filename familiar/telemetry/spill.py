"""The spill file: append, replay offset, locks, info, and reading it back for replay.

``spill.jsonl`` keeps the events Vector could not take; see :class:`SpillFile`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import structlog

from familiar.store import write_bytes_atomic

log = structlog.get_logger("familiar.telemetry")

Counts = MutableMapping[str, int]

#: the most events one replay POST carries. A replay killed between a delivered POST and
#: the offset written after it sends that batch again when it restarts, and nothing older:
#: a repeat is at most this many events back in what familiar sent, far inside the
#: 10,000 events ``deploy/vector.toml``'s ``dedupe`` transform remembers.
REPLAY_BATCH_MAX = 500


def _parse(line: bytes) -> dict[str, Any] | None:
    """One spill line as an event; ``None`` if it is not UTF-8 JSON of an object."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def _lines(fh: IO[bytes], start: int, size: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(end offset, event or None if corrupt)`` for each non-blank line in ``[start, size)``.

    A final line without ``\\n`` (torn by a crash) is read as a line. When ``start`` is
    not at a line start (it follows a torn line already passed), the rest of that line is
    skipped (corrupt if it is not blank).
    """
    pos = start
    if start > 0:
        fh.seek(start - 1)
        if fh.read(1) != b"\n":
            rest = fh.readline(max(size - pos, 0))
            pos += len(rest)
            if rest.strip():
                yield pos, None
    fh.seek(pos)
    while pos < size:
        line = fh.readline(size - pos)
        pos += len(line)
        if line.strip():
            yield pos, _parse(line)


class SpillFile:
    """``spill.jsonl`` with its replay offset (``spill.offset``) and locks, in one directory.

    Appends and file removal hold ``spill.lock`` (``flock``, exclusive, a few syscalls
    long); a replay holds ``replay.lock`` for its whole length, taken without waiting, so
    that one process at a time replays. Appends only ever add whole lines at the end, so
    every byte below a size read under ``spill.lock`` is complete and stays as it is.
    ``spill.offset`` holds the byte offset of the first undelivered line (absent: 0).
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.path = directory / "spill.jsonl"
        self.offset_path = directory / "spill.offset"
        self.max_bytes = max_bytes

    @contextmanager
    def lock(self, name: str = "spill.lock", *, wait: bool = True) -> Iterator[bool]:
        """An exclusive ``flock`` on ``name``: yields False if busy and ``wait`` is False.

        Where no lock can be had (read-only directory, no ``flock``), goes on unlocked.
        """
        fd, free = -1, True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            free = False
        except OSError as exc:
            log.debug("telemetry lock unavailable; going on without", lock=name, error=str(exc))
        try:
            yield free
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock

    def append(self, data: bytes) -> bool:
        """Append whole lines with one write; False (nothing written) past ``max_bytes``."""
        with self.lock():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                size = os.fstat(fd).st_size
                if size >= self.max_bytes:
                    return False
                if size == 0:
                    self.offset_path.unlink(missing_ok=True)  # left by a crash: not this file's
                elif os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # end a torn last line, so it keeps to itself
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        return True

    def _offset(self, size: int) -> int:
        try:
            offset = int(self.offset_path.read_bytes().strip() or b"0")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("telemetry spill offset unreadable; from the start", error=str(exc))
            return 0
        if not 0 <= offset <= size:
            log.warning("telemetry spill offset past the end; from the start", offset=offset)
            return 0
        return offset

    def snapshot(self, fh: IO[bytes]) -> tuple[int, int]:
        """``(offset of the first undelivered line, size)`` of the open spill file."""
        with self.lock():
            size = os.fstat(fh.fileno()).st_size
            return self._offset(size), size

    def info(self) -> dict[str, int]:
        """``{"backlog": events waiting, "corrupt": unreadable lines waiting}``; never raises."""
        good = bad = 0
        try:
            with self.path.open("rb") as fh:
                start, size = self.snapshot(fh)
                for _, event in _lines(fh, start, size):
                    good, bad = (good + 1, bad) if event is not None else (good, bad + 1)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("telemetry spill file unreadable", path=str(self.path), error=str(exc))
        return {"backlog": good, "corrupt": bad}

    def read_batch(
        self, fh: IO[bytes], start: int, size: int, limit: int
    ) -> tuple[list[dict[str, Any]], int, int]:
        """Up to ``limit`` events from ``start``: ``(events, end offset, corrupt lines)``."""
        events: list[dict[str, Any]] = []
        corrupt, end = 0, start
        for pos, event in _lines(fh, start, size):
            end = pos
            if event is None:
                corrupt += 1
            else:
                events.append(event)
                if len(events) >= limit:
                    break
        else:
            end = size
        return events, end, corrupt

    def commit(self, fh: IO[bytes], end: int) -> bool:
        """Everything below ``end`` was delivered: True (and both files gone) if that is all."""
        with self.lock():
            mine = os.fstat(fh.fileno())
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                self.offset_path.unlink(missing_ok=True)
                return True
            if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
                return True  # removed by hand and begun anew: that file starts at 0
            if end >= now.st_size:
                self.path.unlink()
                self.offset_path.unlink(missing_ok=True)
                return True
        # outside the lock: only a replayer (us, under replay.lock) moves or removes it
        write_bytes_atomic(self.offset_path, f"{end}\n".encode())
        return False

    async def replay(
        self, deliver: Callable[[list[dict[str, Any]]], Awaitable[None]], batch: int, counts: Counts
    ) -> tuple[int, bool]:
        """Deliver the undelivered lines in order: ``(sent, whether the file is all done)``.

        The offset is kept after every delivered batch, so nothing delivered is sent
        again even if this is killed half-way. Unreadable lines are skipped and counted
        in ``counts["corrupt"]`` with one warning; ``counts["replayed"]`` grows as it
        goes. ``(0, False)`` at once if another process is replaying.
        """
        sent = corrupt = 0
        batch = max(1, min(batch, REPLAY_BATCH_MAX))
        with self.lock("replay.lock", wait=False) as ours:
            if not ours:
                log.debug("telemetry spill file is being replayed by another process")
                return 0, False
            try:
                with self.path.open("rb") as fh:
                    offset, size = self.snapshot(fh)
                    while True:
                        events, end, bad = self.read_batch(fh, offset, size, batch)
                        if events:
                            await deliver(events)
                            sent += len(events)
                            counts["replayed"] += len(events)
                        done = self.commit(fh, end)
                        corrupt += bad  # counted once past them for good
                        if done:
                            return sent, True
                        offset = end
                        if end >= size:  # appended to meanwhile
                            _, size = self.snapshot(fh)
            except FileNotFoundError:
                return sent, True
            finally:
                if corrupt:
                    counts["corrupt"] += corrupt
                    log.warning(
                        f"telemetry spill file: skipped {corrupt} unreadable line(s)",
                        skipped=corrupt,
                        path=str(self.path),
                    )
