"""Inside a line of prose: what is protected (code spans, URLs, link / image targets, inline
HTML, autolinks, footnote markers, entities) and what is prose (pure)."""

from __future__ import annotations

import re

from familiar.translate.markdown.model import Item, merge

# raw HTML as the standard has it: open and closing tags (attributes may hold "<" in
# quotes), comments, processing instructions, declarations, CDATA
_ATTR = r"""(?:\s+[A-Za-z_:][A-Za-z0-9_.:-]*(?:\s*=\s*(?:[^\s"'=<>`]+|'[^']*'|"[^"]*"))?)"""
_HTML = (
    r"<[A-Za-z][A-Za-z0-9-]*" + _ATTR + r"*\s*/?>|</[A-Za-z][A-Za-z0-9-]*\s*>"
    r"|<!--->|<!-->|<!--.*?-->|<\?.*?\?>|<![A-Za-z][^>]*>|<!\[CDATA\[.*?\]\]>"
)
_HTML_OR_AUTO = re.compile(
    _HTML + r"|<[A-Za-z][A-Za-z0-9+.\-]{1,31}:[^\s<>]*>|<[^\s<>@]+@[^\s<>@]+>", re.S
)
_INLINE = re.compile(
    r"(?P<esc>\\[\\`*_{}\[\]()#+\-.!<>|&$~^])"
    r"|(?P<code>(?<!`)(?P<ticks>`+)(?!`).+?(?<!`)(?P=ticks)(?!`))"
    r"|(?P<auto><[A-Za-z][A-Za-z0-9+.\-]{1,31}:[^\s<>]*>|<[^\s<>@]+@[^\s<>@]+>)"
    r"|(?P<html>" + _HTML + ")"
    r"|(?P<foot>\[\^[^\]\s]+\])"
    r"|(?P<link>!?\[)"
    r"|(?P<url>https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+)"
    r"|(?P<ent>&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});)",
    re.S,  # a code span or HTML may go on to the next line of its paragraph
)
_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
_DEST_CHAR = r"(?:[^\x00-\x20()\\]|\\.)"
_NESTED = _DEST_CHAR + "*"
for _ in range(4):  # parentheses balanced, nested up to four deep
    _NESTED = rf"(?:{_DEST_CHAR}|\({_NESTED}\))*"
_SPACE = r"[ \t]*(?:\n[ \t]*)?"  # spaces, at most one line ending
_TARGET = re.compile(
    r"\(" + _SPACE + r"(?:<[^<>\n]*>|" + _NESTED + ")"
    r"(?:(?:[ \t]+(?:\n[ \t]*)?|\n[ \t]*)(?:\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
    r"|\((?:[^()\\]|\\.)*\)))?" + _SPACE + r"\)"
)
_REF_LABEL = re.compile(r"\[(?:[^\[\]\\]|\\.){0,999}\]")


def inline_items(text: str, labels: set[str]) -> list[Item]:
    """``text`` as prose and protected items; ``labels``: the reference definitions' labels."""
    items: list[Item] = []
    pos = last = 0
    while m := _INLINE.search(text, pos):
        start, end = m.span()
        if m["esc"]:
            pos = end
            continue
        found: list[Item] = [("p", m.group())]
        if m["link"]:
            link = _link(text, start, labels)
            if link is None:
                pos = end
                continue
            found, end = link
        elif m["url"]:
            end = start + len(_trim_url(m["url"]))
            found = [("p", text[start:end])]
        items += [("t", text[last:start]), *found]
        pos = last = end
    return merge([it for it in [*items, ("t", text[last:])] if it[1]])


def norm_label(label: str) -> str:
    """A link reference label as matched: whitespace collapsed, case folded."""
    return " ".join(label.split()).casefold()


def _link(text: str, start: int, labels: set[str]) -> tuple[list[Item], int] | None:
    opening = start + (2 if text[start] == "!" else 1)
    close = _bracket_end(text, opening - 1)
    if close is None:
        return None
    m = _TARGET.match(text, close + 1) or _REF_LABEL.match(text, close + 1)
    if m and m.group() != "[]":
        inner = inline_items(text[opening:close], labels)
        return [("t", text[start:opening]), *inner, ("t", "]"), ("p", m.group())], m.end()
    if m or norm_label(text[opening:close]) in labels:
        end = m.end() if m else close + 1
        return [("p", text[start:end])], end
    return None


def _bracket_end(text: str, k: int) -> int | None:
    depth = 0
    while k < len(text):
        c = text[k]
        if c == "\\":
            k += 2
            continue
        if c == "`":
            m = _CODE.match(text, k)
            k = m.end() if m else len(text) - len(text[k:].lstrip("`"))
            continue
        if c == "<" and (m := _HTML_OR_AUTO.match(text, k)):  # binds tighter than brackets
            k = m.end()
            continue
        depth += (c == "[") - (c == "]")
        if c == "]" and depth == 0:
            return k
        k += 1
    return None


def _trim_url(url: str) -> str:
    while url[-1] in ".,;:!?'\"*_~" or any(
        url[-1] == b and url.count(a) < url.count(b) for a, b in ("()", "[]")
    ):
        url = url[:-1]
    return url
