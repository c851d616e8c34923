"""The active role string, kept on a ``familiar: <string>`` line of the workspace's CLAUDE.md.

Only that line's value is ever changed: every other byte of the file (line endings, BOM,
missing final newline, even invalid UTF-8) is preserved. Lines inside fenced code blocks
(````` ``` ````` or ``~~~``) are ignored. Writes are atomic (temp file in the same directory,
fsync, ``os.replace``) and keep the file's mode. This module does not validate the role
string; the caller does (see :func:`familiar.config.roles.parse_role_string`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Final

from familiar.errors import StateError
from familiar.store import write_bytes_atomic

FILENAME: Final = "CLAUDE.md"
NEW_FILE_HEADER: Final = "# CLAUDE.md\n\n"
NEW_FILE_MODE: Final = 0o644

_ROLE_LINE_RE: Final = re.compile(r"^familiar:\s*(.*?)\s*$")
_FENCE_RE: Final = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_BOM: Final = b"\xef\xbb\xbf"
_ENCODING: Final = "utf-8"
_ERRORS: Final = "surrogateescape"  # round-trips undecodable bytes unchanged


def find_workspace(start: Path | None = None) -> Path | None:
    """The nearest directory from ``start`` (default: cwd) upward that contains CLAUDE.md."""
    here = (start if start is not None else Path.cwd()).resolve()
    if not here.is_dir():
        here = here.parent
    for directory in (here, *here.parents):
        if (directory / FILENAME).is_file():
            return directory
    return None


def _split_lines(text: str) -> list[tuple[str, str]]:
    """``(content, ending)`` pairs; ending is ``"\\r\\n"``, ``"\\n"`` or ``""`` (last line)."""
    pieces = text.split("\n")
    lines: list[tuple[str, str]] = []
    for i, piece in enumerate(pieces):
        if i == len(pieces) - 1:
            if piece:
                lines.append((piece, ""))
        elif piece.endswith("\r"):
            lines.append((piece[:-1], "\r\n"))
        else:
            lines.append((piece, "\n"))
    return lines


def _scan(lines: list[tuple[str, str]]) -> tuple[int | None, str | None]:
    """Index of the first role line outside code fences, and the fence left open at EOF."""
    fence: str | None = None
    for index, (content, _) in enumerate(lines):
        if fence is not None:
            if _closes(content, fence):
                fence = None
            continue
        if opened := _FENCE_RE.match(content):
            fence = opened.group(1)
        elif _ROLE_LINE_RE.match(content):
            return index, None
    return None, fence


def _closes(content: str, fence: str) -> bool:
    match = _FENCE_RE.match(content)
    if match is None:
        return False
    marker = match.group(1)
    rest = content[match.end() :]
    return marker[0] == fence[0] and len(marker) >= len(fence) and not rest.strip()


def _decode(data: bytes) -> tuple[bytes, str]:
    bom = _BOM if data.startswith(_BOM) else b""
    return bom, data[len(bom) :].decode(_ENCODING, _ERRORS)


def read_role_line(path: Path) -> str | None:
    """The value of the first ``familiar:`` line outside code fences; None if absent.

    A missing file counts as absent.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = _split_lines(_decode(data)[1])
    index, _ = _scan(lines)
    if index is None:
        return None
    match = _ROLE_LINE_RE.match(lines[index][0])
    assert match is not None
    return match.group(1)


def _dominant_ending(lines: list[tuple[str, str]]) -> str:
    crlf = sum(1 for _, ending in lines if ending == "\r\n")
    lf = sum(1 for _, ending in lines if ending == "\n")
    return "\r\n" if crlf > lf else "\n"


def _render(text: str, role_string: str) -> str:
    lines = _split_lines(text)
    index, open_fence = _scan(lines)
    if index is not None:
        content, ending = lines[index]
        match = _ROLE_LINE_RE.match(content)
        assert match is not None
        start, end = match.span(1)
        gap = " " if start == end == len("familiar:") else ""  # bare "familiar:"
        lines[index] = (content[:start] + gap + role_string + content[end:], ending)
        return "".join(c + e for c, e in lines)
    newline = _dominant_ending(lines)
    prefix = text if not text or text.endswith("\n") else text + newline
    if open_fence is not None:  # an unclosed fence would swallow the appended line
        prefix += open_fence + newline
    return f"{prefix}familiar: {role_string}{newline}"


def write_role_line(path: Path, role_string: str) -> None:
    """Set the ``familiar:`` line's value to ``role_string``, atomically.

    Replaces only the value of the first role line outside code fences; appends
    ``familiar: <role_string>`` at the end if there is none; creates the file (with a short
    header) if it does not exist. A symlinked CLAUDE.md is written through, not replaced.
    Raises ValueError if ``role_string`` contains a line break.
    """
    if any(c in role_string for c in "\r\n"):
        raise ValueError(f"role string must be a single line: {role_string!r}")
    target = Path(os.path.realpath(path))
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        bom, text, mode = b"", NEW_FILE_HEADER, NEW_FILE_MODE
        new_text = f"{text}familiar: {role_string}\n"
    except OSError as exc:  # a directory in the way, no permission, ...
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None
    else:
        mode = stat.S_IMODE(target.stat().st_mode)
        bom, text = _decode(data)
        new_text = _render(text, role_string)
    if target.exists() and not os.access(target, os.W_OK):
        raise StateError(f"cannot write {path}: permission denied (left unchanged)")
    try:
        write_bytes_atomic(target, bom + new_text.encode(_ENCODING, _ERRORS), mode=mode)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc} (left unchanged)") from None


__all__ = ["FILENAME", "find_workspace", "read_role_line", "write_role_line"]
