"""Block structure: ``parse`` cuts the body into kept blocks (fenced / indented code, HTML,
``$$`` math, reference definitions, rules, blank lines) and prose blocks (paragraphs,
headings, list items, quotes, tables) whose line prefixes and inline markup are protected
(pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from familiar.translate.markdown.frontmatter import front_matter
from familiar.translate.markdown.inline import inline_items, norm_label
from familiar.translate.markdown.model import (
    Article,
    Block,
    FieldPart,
    FrontMatter,
    Item,
    Segment,
    estimate_tokens,
    merge,
    pick_delims,
    text_of,
)

_EOL = re.compile(r"(\r\n|\r|\n)")
_QUOTE = r"[ \t]*(?:>[ \t]*)*"
_QUOTE_RE = re.compile(_QUOTE)
_FENCE = re.compile(_QUOTE + r"(?P<fence>`{3,}|~{3,})(?P<info>.*)")
_MATH = re.compile(_QUOTE + r"\$\$")
_TAGS = (
    "address|article|aside|base|basefont|blockquote|body|caption|center|col|colgroup|dd|"
    "details|dialog|dir|div|dl|dt|fieldset|figcaption|figure|footer|form|frame|frameset|"
    "h[1-6]|head|header|hr|html|iframe|legend|li|link|main|menu|menuitem|nav|noframes|ol|"
    "optgroup|option|p|param|section|source|summary|table|tbody|td|tfoot|th|thead|title|tr|"
    "track|ul"
)
_HTML_COMMENT = re.compile(r" {0,3}<!--")
_HTML_RAW = re.compile(r" {0,3}<(pre|script|style|textarea)(?=[\s>]|$)", re.I)
_HTML_BLOCK = re.compile(r" {0,3}</?(?:" + _TAGS + r")(?=[\s/>]|$)", re.I)
_HTML_LONE = re.compile(r" {0,3}</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>[ \t]*$")
_INDENTED = re.compile(r"(?: {4}|\t)")
_REFDEF = re.compile(r" {0,3}\[(?!\^)((?:[^\[\]\\]|\\.)+)\]:[ \t]*\S")
_HR = re.compile(r" {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,}|=+[ \t]*)$")
_HEADING = re.compile(r" {0,3}#{1,6}(?=[ \t]|$)")
_LIST = re.compile(_QUOTE + r"(?:[-*+]|\d{1,9}[.)])(?=[ \t]|$)")
_DELIM_ROW = re.compile(_QUOTE + r"\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_PREFIX = re.compile(
    r"(?:[ \t]*(?:>|(?:[-*+]|\d{1,9}[.)]|\[[ xX]\])(?=[ \t]|$)))*[ \t]*"
    r"(?:(?P<h>#{1,6})(?=[ \t]|$)[ \t]*|\[\^[^\]\s]+\]:[ \t]*)?"
)
_CELL_SEP = re.compile(r"((?:[ \t]*(?<!\\)\|[ \t]*)+)")


def parse(
    source: str,
    *,
    front_matter_keys: Sequence[str] = ("title", "description", "summary", "excerpt"),
) -> Article:
    """Split ``source`` into front matter, keep segments and prose segments."""
    bom = "\ufeff" if source.startswith("\ufeff") else ""
    lines = _lines(source[len(bom) :])
    crlf = source.count("\r\n")
    newline = "\r\n" if crlf > source.count("\n") - crlf else "\n"
    fm: FrontMatter | None = None
    fm_parts: list[str | FieldPart] = []
    found = front_matter(lines, set(front_matter_keys))
    if found:
        end, fm_parts = found
        lines = lines[end:]
        fields = {p[0]: text_of(p[2]) for p in fm_parts if not isinstance(p, str)}
        fm = FrontMatter(
            "".join(p if isinstance(p, str) else text_of(p[2]) for p in fm_parts), fields
        )
    labels = {norm_label(m[1]) for c, _ in lines if (m := _REFDEF.match(c))}
    blocks = _blocks(lines, labels)
    segs: list[Segment] = []
    for blk in blocks:
        kind: Literal["text", "keep"] = "text" if blk.kind == "prose" else "keep"
        if segs and segs[-1].kind == kind:
            segs[-1] = Segment(kind, segs[-1].text + text_of(blk.items))
        else:
            segs.append(Segment(kind, text_of(blk.items)))
    return Article(fm, segs, newline, bom, pick_delims(source), fm_parts, blocks)


def make_block(items: list[Item], heading: bool = False, keep: bool = False) -> Block:
    """A block of ``items``: kept when ``keep`` or when none of it is prose to translate."""
    prose = not keep and any(k == "t" and v.strip() for k, v in items)
    if not prose:  # nothing to translate: all of it is protected
        items = merge([("p", v) if k == "t" else (k, v) for k, v in items])
    shown = "".join(v if k == "t" else "\n" if k == "n" else "\u27e6P00\u27e7" for k, v in items)
    return Block("prose" if prose else "keep", items, estimate_tokens(shown), heading)


def _lines(text: str) -> list[tuple[str, str]]:
    parts = _EOL.split(text)
    lines = [(parts[k], parts[k + 1]) for k in range(0, len(parts) - 1, 2)]
    return [*lines, (parts[-1], "")] if parts[-1] else lines


def _blank(content: str) -> bool:
    return not content.strip(" \t")


def _blocks(lines: list[tuple[str, str]], labels: set[str]) -> list[Block]:
    out: list[Block] = []
    i, n, in_list, after_blank = 0, len(lines), False, True
    while i < n:
        first = lines[i][0]
        if _blank(first):
            j = i
            while j < n and _blank(lines[j][0]):
                j += 1
            items = [("n", c + e) if e else ("p", c) for c, e in lines[i:j]]
            out.append(make_block(items, keep=True))
            i, after_blank = j, True
            continue
        end = _keep_end(lines, i, after_blank and not in_list)
        listy = False
        if end is not None:
            text = "".join(c + e for c, e in lines[i:end])
            eol = lines[end - 1][1]
            items = [("p", text[: len(text) - len(eol)]), ("n", eol)]
            out.append(make_block([it for it in items if it[1]], keep=True))
        else:
            table = _table_start(lines, i)
            heading = not table and bool(_HEADING.match(first))
            end = i + 1 if heading else _para_end(lines, i + (2 if table else 1))
            items = []
            for k in range(i, end):
                mode = ("delim" if k == i + 1 else "row") if table else "prose"
                items += _line_items(*lines[k], mode, labels)
            out.append(make_block(items, heading))
            listy = any(_LIST.match(c) for c, _ in lines[i:end])
        in_list = listy or (in_list and first[0] in " \t")
        i, after_blank = end, False
    return out


def _fence_open(content: str) -> re.Match[str] | None:
    m = _FENCE.match(content)
    return None if m and m["fence"][0] == "`" and "`" in m["info"] else m


def _find(lines: list[tuple[str, str]], start: int, needle: str, default: int) -> int:
    return next((k + 1 for k in range(start, len(lines)) if needle in lines[k][0].lower()), default)


def _keep_end(lines: list[tuple[str, str]], i: int, indented_ok: bool) -> int | None:
    c, n = lines[i][0], len(lines)
    if m := _fence_open(c):
        fence = m["fence"]
        close = re.compile(_QUOTE + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$")
        return next((k + 1 for k in range(i + 1, n) if close.match(lines[k][0])), n)
    if m := _MATH.match(c):
        return i + 1 if "$$" in c[m.end() :] else _find(lines, i + 1, "$$", i + 1)
    if m := _HTML_COMMENT.match(c):
        return i + 1 if "-->" in c[m.end() :] else _find(lines, i + 1, "-->", n)
    if m := _HTML_RAW.match(c):
        closing = f"</{m[1].lower()}>"
        return i + 1 if closing in c[m.end() :].lower() else _find(lines, i + 1, closing, n)
    if _HTML_BLOCK.match(c) or _HTML_LONE.match(c):
        return next((k for k in range(i + 1, n) if _blank(lines[k][0])), n)
    if indented_ok and _INDENTED.match(c):
        end = k = i + 1
        while k < n and (_blank(lines[k][0]) or _INDENTED.match(lines[k][0])):
            k += 1
            end = k if not _blank(lines[k - 1][0]) else end
        return end
    return i + 1 if _REFDEF.match(c) or _HR.match(c) else None


def _table_start(lines: list[tuple[str, str]], i: int) -> bool:
    return (
        i + 1 < len(lines)
        and "|" in lines[i][0]
        and "|" in lines[i + 1][0]
        and bool(_DELIM_ROW.match(lines[i + 1][0]))
    )


def _para_end(lines: list[tuple[str, str]], j: int) -> int:
    while j < len(lines):
        c = lines[j][0]
        if (
            _blank(c)
            or _table_start(lines, j)
            or any(
                rx.match(c)
                for rx in (_MATH, _HTML_COMMENT, _HTML_RAW, _HTML_BLOCK, _HEADING, _HR, _REFDEF)
            )
        ):
            break
        if _fence_open(c):
            break
        j += 1
    return j


def _line_items(content: str, eol: str, mode: str, labels: set[str]) -> list[Item]:
    body = content.rstrip(" \t")
    trail = content[len(body) :]
    items: list[Item]
    if mode == "delim":
        items = [("p", body)]
    elif mode == "row":
        prefix = _QUOTE_RE.match(body)
        end = prefix.end() if prefix else 0
        items = [("p", body[:end])]
        for k, piece in enumerate(_CELL_SEP.split(body[end:])):
            items += [("p", piece)] if k % 2 else inline_items(piece, labels)
    else:
        m = _PREFIX.match(body)
        end = m.end() if m else 0
        rest, suffix = body[end:], ""
        if m and m["h"] and (s := re.search(r"[ \t]+#+$", rest)):
            rest, suffix = rest[: s.start()], s.group()
        items = [("p", body[:end]), *inline_items(rest, labels), ("p", suffix)]
    items.append(("n", trail + eol) if eol else ("p", trail))
    return merge([it for it in items if it[1]])
