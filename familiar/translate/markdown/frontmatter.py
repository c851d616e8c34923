"""Front matter: which one-line values are prose, and how a translated value is quoted back
so the YAML still means the same (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from familiar.translate.markdown.inline import inline_items
from familiar.translate.markdown.model import FieldPart

_FM_FIELD = re.compile(
    r"(?P<key>[A-Za-z_][\w-]*)[ \t]*:[ \t]+(?:\"(?P<dq>(?:[^\"\\]|\\.)*)\""
    r"|'(?P<sq>(?:[^']|'')*)'|(?P<plain>[^\s\-?:,\[\]{}#&*!|>'\"%@`](?:[^#]|(?<![ \t])#)*?))"
    r"[ \t]*(?:(?<=[ \t])#.*)?"
)
_PLAIN_UNSAFE = re.compile(
    r"^[-?:,\[\]{}#&*!|>'\"%@`]|:[ \t]|:$| #|\t|^(?i:yes|no|true|false|on|off|null|~)$|^[-+.\d]"
)


def front_matter(
    lines: Sequence[tuple[str, str]], keys: set[str]
) -> tuple[int, list[str | FieldPart]] | None:
    """The number of front matter lines and their parts: kept text, or a value of ``keys``."""
    if not lines or lines[0][0].rstrip(" \t") != "---":
        return None
    end = next(
        (k for k in range(1, len(lines)) if lines[k][0].rstrip(" \t") in ("---", "...")), None
    )
    if end is None:
        return None
    parts: list[str | FieldPart] = [lines[0][0] + lines[0][1]]
    for content, eol in lines[1:end]:
        m = _FM_FIELD.fullmatch(content)
        style = next((s for s, g in (('"', "dq"), ("'", "sq"), ("", "plain")) if m and m[g]), None)
        if m and style is not None and m["key"] in keys:
            keys = keys - {m["key"]}
            a, b = m.span({'"': "dq", "'": "sq", "": "plain"}[style])
            value = content[a:b].strip(" \t")
            a += len(content[a:b]) - len(content[a:b].lstrip(" \t"))
            if value:
                parts += [
                    content[:a],
                    (m["key"], style, inline_items(value, set())),
                    content[a + len(value) :] + eol,
                ]
                continue
        parts.append(content + eol)
    parts.append(lines[end][0] + lines[end][1])
    return end + 1, parts


def field_value(out: str, source: str, style: str, fill: Callable[[str], str]) -> str:
    """The translation ``out`` of a value (``source``, quoted by ``style``) as written back:
    on one line, escaped for its quotes (a plain value that would change meaning gets
    double quotes); ``fill`` puts the placeholders' bytes back."""
    out = re.sub(r"[ \t]*\n[ \t]*", " ", out)
    if out == source:
        return fill(out)
    if style == '"':
        return fill(re.sub(r'(?<!\\)"', r'\\"', out))
    if style == "'":
        return fill(re.sub(r"(?<!')'(?!')", "''", out))
    value = fill(out)
    if not _PLAIN_UNSAFE.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
