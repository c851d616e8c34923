"""Atomic files: every result is written whole or not at all (tmp + fsync + rename).

Modes: a new file gets what a plain ``open()`` would give under the umask (0o666 &
~umask); a rewritten file keeps its own mode. (``mkstemp`` alone would make every file
0o600.)
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from familiar.errors import StateError
from familiar.logs import mask_any


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: the classic read-by-setting, put back at once
    os.umask(old)
    return old


def write_bytes_atomic(
    path: Path, data: bytes | Iterable[bytes], *, mode: int | None = None
) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, then rename.

    ``mode`` sets the file's permission bits; by default an existing file keeps its
    mode and a new one gets ``0o666 & ~umask``, as ``open()`` would give it. The
    directory is fsynced after the rename where the platform allows it.
    """
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~current_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes):
                fh.write(data)
            else:
                fh.writelines(data)  # pieces: a big text is never encoded whole
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


_PIECE = 1 << 20  # characters encoded at a time when a text is written


def write_text_atomic(path: Path, text: str | Iterable[str]) -> None:
    """``text`` as UTF-8, written atomically; a long text, or pieces of one, is encoded a
    piece at a time (never a whole second copy in memory)."""
    if isinstance(text, str) and len(text) <= _PIECE:
        write_bytes_atomic(path, text.encode("utf-8"))
        return
    write_bytes_atomic(path, (piece.encode("utf-8") for piece in _pieces(text)))


def _pieces(text: str | Iterable[str]) -> Iterator[str]:
    """``text`` in pieces of at most ``_PIECE`` characters."""
    for part in [text] if isinstance(text, str) else text:
        if len(part) <= _PIECE:
            yield part
        else:
            yield from (part[i : i + _PIECE] for i in range(0, len(part), _PIECE))


def write_json_atomic(path: Path, obj: Any) -> None:
    """A record as indented JSON; secrets (configured keys, URL userinfo) are masked."""
    write_text_atomic(path, json.dumps(mask_any(obj), ensure_ascii=False, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_record(path: Path, what: str = "record") -> dict[str, Any]:
    """A JSON object written by familiar, or ``StateError`` naming the file (exit 2)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise StateError(f"{what} {path} is missing") from None
    except OSError as exc:
        raise StateError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError):
        raise StateError(f"{what} {path} is corrupt (not valid JSON)") from None
    if not isinstance(data, dict):
        raise StateError(f"{what} {path} is corrupt (not a JSON object)")
    return data
