"""Pure: set one slot's ``parallel`` in the text of a slots file, nothing else changed.

Only a slot written as a ``[slots.NAME]`` table can be edited: its ``parallel = ...``
line gets the new value (spacing and comment kept), or a ``parallel = N`` line is added
after the table's last line. Every other byte stays as it was (CRLF stays CRLF). The
result is parsed again and must equal the old file with only that value changed;
anything else (an inline table, dotted keys, a header inside a multi-line string) is
refused with a ``ConfigError`` saying to edit the file by hand.
"""

from __future__ import annotations

import copy
import re
import tomllib

from familiar.errors import ConfigError

_HEADER = re.compile(r"^[ \t]*\[(?P<double>\[)?(?P<key>[^\[\]]*)\](?(double)\])[ \t]*(#.*)?$")
_KEY_PART = re.compile(
    r"""[ \t]*(?:"(?P<basic>[^"\\]*)"|'(?P<literal>[^']*)'|(?P<bare>[A-Za-z0-9_-]+))[ \t]*"""
)
_PARALLEL = re.compile(
    r"""^(?P<lead>[ \t]*(?:parallel|"parallel"|'parallel')[ \t]*=[ \t]*)"""
    r"""(?P<value>[^#\r\n]*?)(?P<tail>[ \t]*(?:#[^\r\n]*)?)$"""
)
_CONTENT = re.compile(r"^[ \t]*[^ \t#\r\n]")


def _key_path(text: str) -> tuple[str, ...] | None:
    parts: list[str] = []
    for piece in _split_dots(text):
        m = _KEY_PART.fullmatch(piece)
        if m is None:
            return None
        parts.append(m.group("basic") or m.group("literal") or m.group("bare") or "")
    return tuple(parts)


def _split_dots(text: str) -> list[str]:
    out, cur, quote = [], "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return out


def set_parallel(text: str, slot: str, value: int, *, source: str = "slots file") -> str:
    """``text`` with ``[slots.<slot>]``'s ``parallel`` set to ``value``."""
    if value < 1:
        raise ValueError("parallel must be at least 1")
    lines = text.splitlines(keepends=True)
    headers = []
    for i, line in enumerate(lines):
        m = _HEADER.match(line.rstrip("\r\n"))
        if m is not None:
            headers.append((i, None if m.group("double") else _key_path(m.group("key"))))
    mine = [i for i, key in headers if key == ("slots", slot)]
    if len(mine) != 1:
        raise ConfigError(
            f"{source}: slot {slot!r} is not written as a [slots.{slot}] table (an inline"
            f" table or dotted keys?): set parallel = {value} there by hand"
        )
    start = mine[0] + 1
    end = next((i for i, _ in headers if i >= start), len(lines))
    newline = "\r\n" if "\r\n" in text else "\n"
    out = list(lines)
    for i in range(start, end):
        m = _PARALLEL.match(lines[i].rstrip("\r\n"))
        if m is not None:
            ending = lines[i][len(lines[i].rstrip("\r\n")) :]
            out[i] = f"{m.group('lead')}{value}{m.group('tail')}{ending}"
            break
    else:
        last = max((i for i in range(start, end) if _CONTENT.match(lines[i])), default=start - 1)
        first = next((lines[i] for i in range(start, end) if _CONTENT.match(lines[i])), "")
        indent = first[: len(first) - len(first.lstrip(" \t"))]
        if not out[last].endswith(("\n", "\r")):
            out[last] += newline
        out.insert(last + 1, f"{indent}parallel = {value}{newline}")
    result = "".join(out)
    _verify(text, result, slot, value, source)
    return result


def _verify(before: str, after: str, slot: str, value: int, source: str) -> None:
    try:
        old = tomllib.loads(before)
        new = tomllib.loads(after)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: cannot edit safely ({exc}): edit it by hand") from None
    expected = copy.deepcopy(old)
    table = expected.get("slots", {}).get(slot)
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: no slot {slot!r} to edit")
    table["parallel"] = value
    if new != expected:
        raise ConfigError(
            f"{source}: cannot edit slot {slot!r} safely (unusual layout): set"
            f" parallel = {value} by hand"
        )
