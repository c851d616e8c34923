"""Inside a line of prose: what is protected (code spans, URLs, link / image targets, inline
HTML, autolinks, footnote markers, entities) and what is prose (pure)."""

from __future__ import annotations

import re

from familiar.translate.markdown.model import Item, merge

_INLINE = re.compile(
    r"(?P<esc>\\[\\`*_{}\[\]()#+\-.!<>|&$~^])"
    r"|(?P<code>(?<!`)(?P<ticks>`+)(?!`).+?(?<!`)(?P=ticks)(?!`))"
    r"|(?P<auto><[A-Za-z][A-Za-z0-9+.\-]{1,31}:[^\s<>]*>|<[^\s<>@]+@[^\s<>@]+>)"
    r"|(?P<html><!--.*?-->|</?[A-Za-z][A-Za-z0-9\-]*(?:\s[^<>]*)?/?>)"
    r"|(?P<foot>\[\^[^\]\s]+\])"
    r"|(?P<link>!?\[)"
    r"|(?P<url>https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+)"
    r"|(?P<ent>&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});)"
)
_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)")
_TARGET = re.compile(
    r"\([ \t]*(?:<[^<>]*>|(?:[^\s()\\]|\\.|\((?:[^\s()\\]|\\.)*\))*)"
    r"(?:[ \t]+(?:\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|\((?:[^()\\]|\\.)*\)))?[ \t]*\)"
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
