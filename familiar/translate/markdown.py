"""Split a Markdown article into prose to translate and structure to keep byte for byte (pure).

Flow: ``parse`` -> ``chunk`` -> translate each ``Chunk.text`` -> ``validate`` (on failure:
``split_chunk``, translate the parts, ``join_parts``) -> ``assemble``.

Blocks.  ``parse`` cuts the body into ``keep`` segments (fenced / indented code, HTML
blocks, ``$$`` math, reference definitions, rules, blank lines) and ``text`` segments.  In
text, every line's structural prefix (indentation, ``>``, list markers, ``#``) and the inline
code, URLs, link / image targets, inline HTML, footnote markers, entities and table pipes are
protected.  Only the chosen one-line front matter values are translatable.

Placeholders.  In a ``Chunk.text`` each protected span, and each keep block lying between
two paragraphs of the chunk, is a placeholder ``⟦P0⟧``, ``⟦P1⟧``..., numbered per chunk;
``Chunk.placeholders`` maps it to its exact bytes.  When the source already holds ``⟦`` or
``⟧``, another unused pair is chosen (``Chunk.delims``).  Line
breaks are ``\\n`` in the chunk text; the original ones (CRLF, trailing spaces / hard
breaks) come back when a translation keeps the line count, else ``Article.newline`` is used.
Chunk texts never start or end with whitespace.

Split parts.  ``split_chunk`` halves a chunk; the halves keep the parent's ``index`` and
placeholder names (a subset each, not renumbered), get ``part = parent.part + (0,)`` /
``(1,)``, and the first half's ``joiner`` is the separator removed between them.  Parts can be
split again.  ``join_parts(parts, outputs)`` turns their translations into the parent's
translation, which goes into ``assemble``'s mapping under the parent index.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Literal

__all__ = [
    "Article",
    "Chunk",
    "FrontMatter",
    "Segment",
    "assemble",
    "chunk",
    "estimate_tokens",
    "join_parts",
    "parse",
    "split_chunk",
    "validate",
]

Item = tuple[str, str]  # ("t", prose) | ("p", protected) | ("n", trailing blanks + line end)
FieldPart = tuple[str, str, list[Item]]  # front matter key, quote style ('"', "'", ""), value
_PAIRS = (("\u27e6", "\u27e7"), ("\u27ea", "\u27eb"), ("\u2983", "\u2984"), ("\u3018", "\u3019"))
_CJK = re.compile(
    "[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
    "\U00020000-\U0003134f]"
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
_FM_FIELD = re.compile(
    r"(?P<key>[A-Za-z_][\w-]*)[ \t]*:[ \t]+(?:\"(?P<dq>(?:[^\"\\]|\\.)*)\""
    r"|'(?P<sq>(?:[^']|'')*)'|(?P<plain>[^\s\-?:,\[\]{}#&*!|>'\"%@`](?:[^#]|(?<![ \t])#)*?))"
    r"[ \t]*(?:(?<=[ \t])#.*)?"
)
_PLAIN_UNSAFE = re.compile(
    r"^[-?:,\[\]{}#&*!|>'\"%@`]|:[ \t]|:$| #|\t|^(?i:yes|no|true|false|on|off|null|~)$|^[-+.\d]"
)
_CUTS = (
    re.compile(r"\n(?:[ \t]*\n)+"),
    re.compile(r"\n"),
    re.compile(
        "(?:[\u3002\uff01\uff1f][\u300d\u300f\uff09)\\]\"']*|[.!?][\"')\\]]*(?=[ \t]))([ \t]*)"
    ),
)
_CJK_END = re.compile("[\u3002\uff01\uff1f][\u300d\u300f\uff09)]*$")
_ASCII_END = re.compile(r"[.!?][\"')\]]*$")
_REPEAT = re.compile(r"(.{8,200}?)\1{5,}", re.S)


@dataclass(frozen=True)
class Segment:
    """A piece of the body: ``text`` (prose blocks) or ``keep`` (kept byte for byte)."""

    kind: Literal["text", "keep"]
    text: str


@dataclass(frozen=True)
class FrontMatter:
    """The raw front matter (both ``---`` lines included) and its translatable fields."""

    text: str
    fields: dict[str, str]  # key -> value as written (inside the quotes when quoted)


@dataclass
class Chunk:
    """Prose to translate; ``text`` holds placeholders for everything protected."""

    index: int
    text: str
    placeholders: dict[str, str]  # placeholder -> original bytes
    tokens: int  # estimate_tokens(text)
    part: tuple[int, ...] = ()  # () for a chunk from chunk(); split halves append 0 / 1
    joiner: str = ""  # separator to put after this part when parts are joined
    front_matter_key: str | None = None  # set for a front matter value
    delims: tuple[str, str] = _PAIRS[0]


@dataclass(frozen=True)
class _Block:
    kind: Literal["prose", "keep"]
    items: list[Item]
    tokens: int
    heading: bool = False


@dataclass(frozen=True)
class _Slot:
    chunk: Chunk
    original: str
    breaks: tuple[str, ...]
    style: str | None  # None for body prose, else the front matter quote style


@dataclass
class Article:
    """A parsed document; ``source`` rebuilds the input exactly.  Build it with ``parse``."""

    front_matter: FrontMatter | None
    body_segments: list[Segment]
    newline: str  # dominant line ending, "\r\n" or "\n"
    bom: str = ""
    _delims: tuple[str, str] = field(default=_PAIRS[0], init=False, repr=False)
    _fm_parts: list[str | FieldPart] = field(default_factory=list, init=False, repr=False)
    _blocks: list[_Block] = field(default_factory=list, init=False, repr=False)
    _layout: list[str | int] | None = field(default=None, init=False, repr=False)
    _slots: list[_Slot] = field(default_factory=list, init=False, repr=False)

    @property
    def source(self) -> str:
        front = self.front_matter.text if self.front_matter else ""
        return self.bom + front + "".join(s.text for s in self.body_segments)

    @property
    def chunks(self) -> list[Chunk]:
        """The chunks of the latest ``chunk`` call (the layout ``assemble`` uses)."""
        return [slot.chunk for slot in self._slots]


def estimate_tokens(text: str) -> int:
    """A rough token estimate: one per CJK character, one per 4 other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + -(-(len(text) - cjk) // 4)


def parse(
    source: str,
    *,
    front_matter_keys: Sequence[str] = ("title", "description", "summary", "excerpt"),
) -> Article:
    """Split ``source`` into front matter, keep segments and prose segments."""
    bom = "\ufeff" if source.startswith("\ufeff") else ""
    lines = _lines(source[len(bom) :])
    crlf = source.count("\r\n")
    article = Article(None, [], "\r\n" if crlf > source.count("\n") - crlf else "\n", bom)
    article._delims = _pick_delims(source)
    found = _front_matter(lines, set(front_matter_keys))
    if found:
        end, article._fm_parts = found
        lines = lines[end:]
        fields = {p[0]: _text(p[2]) for p in article._fm_parts if not isinstance(p, str)}
        text = "".join(p if isinstance(p, str) else _text(p[2]) for p in article._fm_parts)
        article.front_matter = FrontMatter(text, fields)
    labels = {_norm(m[1]) for c, _ in lines if (m := _REFDEF.match(c))}
    article._blocks = _blocks(lines, labels)
    for blk in article._blocks:
        kind: Literal["text", "keep"] = "text" if blk.kind == "prose" else "keep"
        segs = article.body_segments
        if segs and segs[-1].kind == kind:
            segs[-1] = Segment(kind, segs[-1].text + _text(blk.items))
        else:
            segs.append(Segment(kind, _text(blk.items)))
    return article


def chunk(article: Article, max_tokens: int) -> list[Chunk]:
    """Pack the prose into chunks of at most ``max_tokens`` (estimated) where possible.

    Front matter values come first, one chunk each.  Body chunks are cut between blocks
    (preferably before a heading); an oversized block is cut at blank lines, line breaks,
    sentence ends, and as a last resort anywhere.  Records the layout on ``article``.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    layout: list[str | int] = [article.bom]
    slots: list[_Slot] = []

    def emit(items: list[Item], style: str | None, key: str | None) -> None:
        text, placeholders, breaks = _render(items, article._delims)
        ch = Chunk(
            len(slots), text, placeholders, estimate_tokens(text), (), "", key, article._delims
        )
        slots.append(_Slot(ch, _text(items), breaks, style))
        layout.append(ch.index)

    for fm_part in article._fm_parts:
        if isinstance(fm_part, str):
            layout.append(fm_part)
        else:
            emit(fm_part[2], fm_part[1], fm_part[0])
    for piece in _pack(_fit(article._blocks, max_tokens, article._delims), max_tokens):
        if isinstance(piece, str):
            layout.append(piece)
        else:
            emit(piece, None, None)
    article._layout = [p for p in layout if p != ""]
    article._slots = slots
    return article.chunks


def assemble(article: Article, translations: Mapping[int, str]) -> str:
    """The whole document with ``translations`` (chunk index -> text) put back.

    A missing index keeps that chunk's source.  Raises ``ValueError`` for an unknown index or
    a translation whose placeholders are missing, duplicated or invented.
    """
    unknown = set(translations) - set(range(len(article._slots)))
    if unknown:
        raise ValueError(f"no chunk with index {sorted(unknown)} (call chunk() first)")
    if article._layout is None:
        return article.source
    out: list[str] = []
    prev: tuple[str, str] | None = None
    for piece in article._layout:
        if isinstance(piece, str):
            out.append(piece)
            prev = None
            continue
        slot = article._slots[piece]
        text = slot.original
        if piece in translations:
            text = _restore(slot, translations[piece], article.newline)
            if prev:
                out.append(_glue(prev[0], prev[1], text))
        out.append(text)
        prev = (slot.chunk.text, text)
    return "".join(out)


def validate(chunk: Chunk, output: str) -> list[str]:
    """Problems with a translation of ``chunk``; ``[]`` when it looks fine.

    Every placeholder exactly once (no invented ones); length ratio 0.2..5.0 counted in
    non-space characters outside placeholders (when the source has more than 20); no runaway
    repetition (8+ characters repeated 6+ times in a row, or a line 4+ times in a row)
    unless the source repeats the same way.
    """
    problems = _placeholder_problems(chunk, output)
    tok = _tok_re(chunk.delims)
    src = "".join(tok.sub("", chunk.text).split())
    dst = "".join(tok.sub("", output).split())
    if src and not dst:
        problems.append("empty translation")
    elif len(src) > 20 and not 0.2 <= len(dst) / len(src) <= 5.0:
        problems.append(f"length ratio {len(dst) / len(src):.2f} outside 0.2..5.0")
    for check in (_repeated_substring, _repeated_line):
        found = check(output)
        if found and not check(chunk.text):
            problems.append(found)
    return problems


def split_chunk(chunk: Chunk) -> list[Chunk]:
    """Two halves of ``chunk`` cut at a paragraph, line or sentence boundary (else mid-text).

    Returns ``[chunk]`` when the text cannot be split.  See the module docstring for parts.
    """
    cut = _best_cut(chunk.text, chunk.delims)
    if cut is None:
        return [chunk]
    i, j = cut
    halves = ((chunk.text[:i], chunk.text[i:j]), (chunk.text[j:], chunk.joiner))
    tok = _tok_re(chunk.delims)
    return [
        Chunk(
            chunk.index,
            text,
            {t: chunk.placeholders[t] for t in tok.findall(text) if t in chunk.placeholders},
            estimate_tokens(text),
            (*chunk.part, n),
            joiner,
            chunk.front_matter_key,
            chunk.delims,
        )
        for n, (text, joiner) in enumerate(halves)
    ]


def join_parts(parts: Sequence[Chunk], outputs: Sequence[str]) -> str:
    """Join the translations of split parts (in ``part`` order) into the parent's text."""
    if len(parts) != len(outputs):
        raise ValueError("one output per part")
    pairs = sorted(zip(parts, outputs, strict=True), key=lambda po: po[0].part)
    result = ""
    for k, (_, output) in enumerate(pairs):
        out = output.strip(" \t\r\n")
        if k:
            prev = pairs[k - 1][0]
            result += prev.joiner or _glue(prev.text, result, out)
        result += out
    return result


# --- lines and blocks ------------------------------------------------------------------------


def _lines(text: str) -> list[tuple[str, str]]:
    parts = _EOL.split(text)
    lines = [(parts[k], parts[k + 1]) for k in range(0, len(parts) - 1, 2)]
    return [*lines, (parts[-1], "")] if parts[-1] else lines


def _blank(content: str) -> bool:
    return not content.strip(" \t")


def _block(items: list[Item], heading: bool = False, keep: bool = False) -> _Block:
    prose = not keep and any(k == "t" and v.strip() for k, v in items)
    if not prose:  # nothing to translate: all of it is protected
        items = _merge([("p", v) if k == "t" else (k, v) for k, v in items])
    shown = "".join(v if k == "t" else "\n" if k == "n" else "\u27e6P00\u27e7" for k, v in items)
    return _Block("prose" if prose else "keep", items, estimate_tokens(shown), heading)


def _blocks(lines: list[tuple[str, str]], labels: set[str]) -> list[_Block]:
    out: list[_Block] = []
    i, n, in_list, after_blank = 0, len(lines), False, True
    while i < n:
        first = lines[i][0]
        if _blank(first):
            j = i
            while j < n and _blank(lines[j][0]):
                j += 1
            out.append(_block([("n", c + e) if e else ("p", c) for c, e in lines[i:j]], keep=True))
            i, after_blank = j, True
            continue
        end = _keep_end(lines, i, after_blank and not in_list)
        listy = False
        if end is not None:
            text = "".join(c + e for c, e in lines[i:end])
            eol = lines[end - 1][1]
            items = [("p", text[: len(text) - len(eol)]), ("n", eol)]
            out.append(_block([it for it in items if it[1]], keep=True))
        else:
            table = _table_start(lines, i)
            heading = not table and bool(_HEADING.match(first))
            end = i + 1 if heading else _para_end(lines, i + (2 if table else 1))
            items = []
            for k in range(i, end):
                mode = ("delim" if k == i + 1 else "row") if table else "prose"
                items += _line_items(*lines[k], mode, labels)
            out.append(_block(items, heading))
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
            items += [("p", piece)] if k % 2 else _inline(piece, labels)
    else:
        m = _PREFIX.match(body)
        end = m.end() if m else 0
        rest, suffix = body[end:], ""
        if m and m["h"] and (s := re.search(r"[ \t]+#+$", rest)):
            rest, suffix = rest[: s.start()], s.group()
        items = [("p", body[:end]), *_inline(rest, labels), ("p", suffix)]
    items.append(("n", trail + eol) if eol else ("p", trail))
    return _merge([it for it in items if it[1]])


# --- inline ------------------------------------------------------------------------------------


def _inline(text: str, labels: set[str]) -> list[Item]:
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
    return _merge([it for it in [*items, ("t", text[last:])] if it[1]])


def _link(text: str, start: int, labels: set[str]) -> tuple[list[Item], int] | None:
    opening = start + (2 if text[start] == "!" else 1)
    close = _bracket_end(text, opening - 1)
    if close is None:
        return None
    m = _TARGET.match(text, close + 1) or _REF_LABEL.match(text, close + 1)
    if m and m.group() != "[]":
        inner = _inline(text[opening:close], labels)
        return [("t", text[start:opening]), *inner, ("t", "]"), ("p", m.group())], m.end()
    if m or _norm(text[opening:close]) in labels:
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


def _norm(label: str) -> str:
    return " ".join(label.split()).casefold()


def _merge(items: list[Item]) -> list[Item]:
    out: list[Item] = []
    for kind, val in items:
        if out and kind != "n" and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + val)
        else:
            out.append((kind, val))
    return out


def _text(items: list[Item]) -> str:
    return "".join(v for _, v in items)


# --- front matter ------------------------------------------------------------------------------


def _front_matter(
    lines: list[tuple[str, str]], keys: set[str]
) -> tuple[int, list[str | FieldPart]] | None:
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
                    (m["key"], style, _inline(value, set())),
                    content[a + len(value) :] + eol,
                ]
                continue
        parts.append(content + eol)
    parts.append(lines[end][0] + lines[end][1])
    return end + 1, parts


def _restore_field(slot: _Slot, out: str) -> str:
    out = re.sub(r"[ \t]*\n[ \t]*", " ", out)
    ch = slot.chunk
    if out == ch.text:
        return _fill(out, ch)
    if slot.style == '"':
        return _fill(re.sub(r'(?<!\\)"', r'\\"', out), ch)
    if slot.style == "'":
        return _fill(re.sub(r"(?<!')'(?!')", "''", out), ch)
    value = _fill(out, ch)
    if not _PLAIN_UNSAFE.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- chunks, placeholders, cutting --------------------------------------------------------------


def _pick_delims(source: str) -> tuple[str, str]:
    used = set(source)
    for a, b in _PAIRS:
        if a not in used and b not in used:
            return a, b
    for cp in [*range(0xE000, 0xF8FE, 2), *range(0xF0000, 0xFFFFD, 2)]:
        if chr(cp) not in used and chr(cp + 1) not in used:
            return chr(cp), chr(cp + 1)
    raise ValueError("no free placeholder delimiters")


@lru_cache(maxsize=16)
def _tok_re(delims: tuple[str, str]) -> re.Pattern[str]:
    return re.compile(re.escape(delims[0]) + r"P\d+" + re.escape(delims[1]))


def _render(
    items: list[Item], delims: tuple[str, str]
) -> tuple[str, dict[str, str], tuple[str, ...]]:
    out: list[str] = []
    placeholders: dict[str, str] = {}
    breaks: list[str] = []
    last = ""
    for kind, val in items:
        if kind == "p" and last == "p":
            placeholders[out[-1]] += val
        elif kind == "p":
            out.append(f"{delims[0]}P{len(placeholders)}{delims[1]}")
            placeholders[out[-1]] = val
        else:
            out.append(val if kind == "t" else "\n")
            breaks += [val] if kind == "n" else []
        last = kind
    return "".join(out), placeholders, tuple(breaks)


def _unrender(
    text: str, placeholders: dict[str, str], breaks: Iterator[str], delims: tuple[str, str]
) -> list[Item]:
    """Items back from rendered text (consuming ``breaks`` in order)."""
    items: list[Item] = []
    for k, piece in enumerate(re.split(f"({_tok_re(delims).pattern}|\n)", text)):
        if k % 2 == 0:
            items += [("t", piece)] if piece else []
        else:
            items.append(("n", next(breaks)) if piece == "\n" else ("p", placeholders[piece]))
    return items


def _fit(blocks: list[_Block], max_tokens: int, delims: tuple[str, str]) -> Iterator[_Block]:
    for blk in blocks:
        if blk.kind == "keep" or blk.tokens <= max_tokens:
            yield blk
            continue
        items, tail = blk.items, []
        if items[-1][0] == "n":
            items, tail = items[:-1], items[-1:]
        text, placeholders, breaks = _render(items, delims)
        brk = iter(breaks)
        for piece, sep in _cut(text, max_tokens, delims):
            yield _block(_unrender(piece, placeholders, brk, delims), blk.heading)
            if sep:
                yield _block(_unrender(sep, placeholders, brk, delims), keep=True)
        if tail:
            yield _block(tail, keep=True)


def _pack(blocks: Iterator[_Block], max_tokens: int) -> list[str | list[Item]]:
    out: list[str | list[Item]] = []
    cur: list[Item] = []
    pend: list[Item] = []
    cur_tok = pend_tok = 0
    for blk in blocks:
        if blk.kind == "keep":
            pend += blk.items
            pend_tok += blk.tokens
            continue
        items, tail = blk.items, []
        if items[-1][0] == "n":
            items, tail = items[:-1], items[-1:]
        over = cur_tok + pend_tok + blk.tokens > max_tokens
        if cur and (over or (blk.heading and 2 * cur_tok >= max_tokens)):
            out.append(cur)
            cur, cur_tok = [], 0
        if cur:
            cur += pend
            cur_tok += pend_tok
        else:
            out.append(_text(pend))
        cur += items
        cur_tok += blk.tokens
        pend, pend_tok = tail, 0
    return [p for p in [*out, cur, _text(pend)] if p]


def _cut(text: str, max_tokens: int, delims: tuple[str, str]) -> list[tuple[str, str]]:
    cut = _best_cut(text, delims) if estimate_tokens(text) > max_tokens else None
    if cut is None:
        return [(text, "")]
    left = _cut(text[: cut[0]], max_tokens, delims)
    left[-1] = (left[-1][0], text[cut[0] : cut[1]])
    return left + _cut(text[cut[1] :], max_tokens, delims)


def _best_cut(text: str, delims: tuple[str, str]) -> tuple[int, int] | None:
    """The separator span to cut ``text`` at: the best structural boundary near the middle."""
    n = len(text)
    spans = [m.span() for m in _tok_re(delims).finditer(text)]
    # never separate a link's visible text from its (protected) target
    link = re.compile(r"\[[^\[\]\n]*\](?:" + _tok_re(delims).pattern + ")?")
    spans += [m.span() for m in link.finditer(text)]

    def widen(i: int, j: int) -> tuple[int, int] | None:
        while i > 0 and text[i - 1] in " \t\n":
            i -= 1
        while j < n and text[j] in " \t\n":
            j += 1
        inside = any(a < i < b or a < j < b for a, b in spans)
        return None if inside or i == 0 or j == n else (i, j)

    fallback: tuple[int, int] | None = None
    for rx in _CUTS:
        found = [widen(*(m.span(1) if rx.groups else m.span())) for m in rx.finditer(text)]
        cands = [c for c in found if c]
        if cands:
            i, j = min(cands, key=lambda c: abs(c[0] + c[1] - n))
            if 4 * min(i, n - j) >= n:
                return i, j
            if fallback is None or min(i, n - j) > min(fallback[0], n - fallback[1]):
                fallback = (i, j)
    if fallback:
        return fallback
    order = sorted(range(1, n), key=lambda p: abs(2 * p - n))
    return next((c for p in order if (c := widen(p, p))), None)


def _fill(text: str, ch: Chunk) -> str:
    return _tok_re(ch.delims).sub(lambda m: ch.placeholders.get(m.group(), m.group()), text)


def _restore(slot: _Slot, output: str, newline: str) -> str:
    problems = _placeholder_problems(slot.chunk, output)
    if problems:
        raise ValueError(f"chunk {slot.chunk.index}: " + "; ".join(problems))
    out = output.replace("\r\n", "\n").replace("\r", "\n").strip(" \t\n")
    if slot.style is not None:
        return _restore_field(slot, out)
    lines = [line.rstrip(" \t") for line in out.split("\n")]
    seps = slot.breaks if len(lines) - 1 == len(slot.breaks) else (newline,) * (len(lines) - 1)
    return _fill(
        lines[0] + "".join(s + line for s, line in zip(seps, lines[1:], strict=True)), slot.chunk
    )


def _glue(prev_src: str, prev_out: str, out: str) -> str:
    """A space between a CJK sentence end translated into an ASCII one and the next text."""
    ascii_end = _CJK_END.search(prev_src) and _ASCII_END.search(prev_out)
    return " " if ascii_end and out[:1] and not out[:1].isspace() else ""


def _placeholder_problems(ch: Chunk, output: str) -> list[str]:
    tok = _tok_re(ch.delims)
    counts = Counter(tok.findall(output))
    problems = [f"missing placeholder {t}" for t in ch.placeholders if not counts[t]]
    problems += [
        f"placeholder {t} appears {c} times"
        for t, c in counts.items()
        if c > 1 and t in ch.placeholders
    ]
    problems += [f"unknown placeholder {t}" for t in counts if t not in ch.placeholders]
    stray = tok.sub("", output)
    if ch.delims[0] in stray or ch.delims[1] in stray:
        problems.append("stray placeholder delimiter")
    return problems


def _repeated_substring(text: str) -> str | None:
    m = _REPEAT.search(text)
    return f"runaway repetition of {m[1][:30]!r}" if m else None


def _repeated_line(text: str) -> str | None:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    run = 1
    for a, b in pairwise(lines):
        run = run + 1 if a == b else 1
        if run >= 4:
            return f"line repeated {run} times: {a[:30]!r}"
    return None
