"""Cutting prose into chunks under a token budget, rendering them with placeholders, and
splitting a chunk in two / joining the halves' translations (pure)."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace

from familiar.translate.markdown.blocks import make_block
from familiar.translate.markdown.model import (
    Article,
    Block,
    Chunk,
    Chunking,
    Frame,
    Item,
    Slot,
    estimate_tokens,
    text_of,
    tok_re,
)

_CUTS = (
    re.compile(r"\n(?:[ \t]*\n)+"),
    re.compile(r"\n"),
    re.compile(
        "(?:[\u3002\uff01\uff1f][\u300d\u300f\uff09)\\]\"']*|[.!?][\"')\\]]*(?=[ \t]))([ \t]*)"
    ),
)
_CJK_CHAR = re.compile("[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def chunk(article: Article, max_tokens: int) -> Chunking:
    """Pack the prose into chunks of at most ``max_tokens`` (estimated) where possible.

    Front matter values come first, one chunk each.  Body chunks are cut between blocks
    (preferably before a heading); an oversized block is cut at blank lines, line breaks,
    sentence ends, and as a last resort anywhere.  The result is the chunks with the layout
    ``assemble`` needs.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    layout: list[str | int] = [article.bom]
    slots: list[Slot] = []

    def emit(items: list[Item], style: str | None, key: str | None) -> None:
        text, placeholders, breaks, prefixes = _render(items, article.delims)
        ch = Chunk(
            len(slots), text, placeholders, estimate_tokens(text), (), "", key, article.delims
        )
        slots.append(Slot(ch, text_of(items), breaks, style, prefixes))
        layout.append(ch.index)

    for fm_part in article.fm_parts:
        if isinstance(fm_part, str):
            layout.append(fm_part)
        else:
            emit(fm_part[2], fm_part[1], fm_part[0])
    for piece in _pack(_fit(article.blocks, max_tokens, article.delims), max_tokens):
        if isinstance(piece, str):
            layout.append(piece)
        else:
            emit(piece, None, None)
    layout = [p for p in layout if p != ""]
    return Chunking(tuple(layout), _framed(article, layout, slots), article.newline)


#: a region larger than this is not re-parsed whole for each chunk: the chunk's own text is
_MAX_REGION = 200_000


def _framed(article: Article, layout: list[str | int], slots: list[Slot]) -> tuple[Slot, ...]:
    """The slots with their chunks' frames: the top-level blocks around each body chunk."""
    source = article.source
    base = len(article.bom) + (len(article.front_matter.text) if article.front_matter else 0)
    levels = ([base + t for t in article.tops], [base + t for t in article.inner])
    out = list(slots)
    pos = 0
    for piece in layout:
        if isinstance(piece, str):
            pos += len(piece)
            continue
        slot = slots[piece]
        start, end = pos, pos + len(slot.original)
        pos = end
        if slot.style is not None:
            continue
        a, b = start, end  # a chunk in a huge block: read alone
        for tops in levels:  # the top-level blocks around it, else the blocks inside them
            k = bisect.bisect_right(tops, start)
            top_a = tops[k - 1] if k else base
            k = bisect.bisect_left(tops, end)
            top_b = tops[k] if k < len(tops) else len(source)
            if top_b - top_a <= max(_MAX_REGION, 4 * (end - start)):
                a, b = top_a, top_b
                break
        frame = Frame(source, a, start, end, b, slot.prefixes, slot.breaks, article.newline)
        out[piece] = replace(slot, chunk=replace(slot.chunk, frame=frame), kept="")
    return tuple(out)


def split_chunk(chunk: Chunk) -> list[Chunk]:
    """Two halves of ``chunk`` cut at a paragraph, line or sentence boundary (else mid-text).

    Returns ``[chunk]`` when the text cannot be split.  See the package docstring for parts.
    """
    cut = _best_cut(chunk.text, chunk.delims)
    if cut is None:
        return [chunk]
    i, j = cut
    halves = ((chunk.text[:i], chunk.text[i:j]), (chunk.text[j:], chunk.joiner))
    tok = tok_re(chunk.delims)
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
    for k, (part, output) in enumerate(pairs):
        out = output.strip(" \t\r\n")
        if k:
            prev = pairs[k - 1][0]
            result += _joint(prev.joiner, prev.text, part.text, result, out)
        result += out
    return result


def _joint(joiner: str, left_src: str, right_src: str, left: str, right: str) -> str:
    """What goes between two translated parts the source had ``joiner`` between.  A line
    break stays.  Spaces stay, except between two Japanese sentences the source did not
    write that way.  Nothing in the source: nothing where it ran on without CJK on either
    side (a word or a token cut in the middle) or the translation is CJK at the joint
    (Japanese sentences follow each other), else a space (English words and numbers)."""
    if "\n" in joiner:
        return joiner
    if not left or not right or left[-1].isspace() or right[0].isspace():
        return ""
    if joiner:  # spaces: none between Japanese sentences unless the source had them there
        cjk_src = _CJK_CHAR.match(left_src[-1:]) and _CJK_CHAR.match(right_src[:1])
        cjk_out = _CJK_CHAR.match(left[-1]) and _CJK_CHAR.match(right[0])
        return "" if cjk_out and not cjk_src else joiner
    if not (_CJK_CHAR.match(left_src[-1:]) or _CJK_CHAR.match(right_src[:1])):
        return ""
    return "" if _CJK_CHAR.match(left[-1]) or _CJK_CHAR.match(right[0]) else " "


def glue(prev_src: str, prev_out: str, out: str, src: str = "\u3002") -> str:
    """What goes between two neighbouring chunks' translations (see ``_joint``)."""
    return _joint("", prev_src, src, prev_out, out)


def _render(
    items: list[Item], delims: tuple[str, str]
) -> tuple[str, dict[str, str], tuple[str, ...], tuple[str, ...]]:
    """The chunk text of ``items`` (placeholders numbered from 0), the placeholders' bytes,
    the line endings replaced by ``\\n``, and each line's prefix (left out of the text)."""
    out: list[str] = []
    placeholders: dict[str, str] = {}
    breaks: list[str] = []
    prefixes: list[str] = [""]
    last = ""
    for kind, val in items:
        if kind == "x":
            prefixes[-1] += val
            continue
        if kind == "n":
            prefixes.append("")
        if kind == "p" and last == "p":
            placeholders[out[-1]] += val
        elif kind == "p":
            out.append(f"{delims[0]}P{len(placeholders)}{delims[1]}")
            placeholders[out[-1]] = val
        else:
            out.append(val if kind == "t" else "\n")
            breaks += [val] if kind == "n" else []
        last = kind
    return "".join(out), placeholders, tuple(breaks), tuple(prefixes)


class _Lines:
    """The prefixes and line ends of rendered text, taken in order as it is cut."""

    def __init__(self, prefixes: tuple[str, ...], breaks: tuple[str, ...]) -> None:
        self._next = iter(zip(prefixes, (*breaks, ""), strict=True))
        self.end = ""

    def start(self) -> str:
        prefix, self.end = next(self._next)
        return prefix


def _unrender(
    text: str,
    placeholders: dict[str, str],
    lines: _Lines,
    delims: tuple[str, str],
    at_line_start: bool,
) -> list[Item]:
    """Items back from rendered text: a line's prefix at each line start, its end at each
    ``\\n``."""
    items: list[Item] = [("x", lines.start())] if at_line_start else []
    pos = 0
    for k, piece in enumerate(re.split(f"({tok_re(delims).pattern}|\n)", text)):
        pos += len(piece)
        if k % 2 == 0:
            items += [("t", piece)] if piece else []
        elif piece != "\n":
            items.append(("p", placeholders[piece]))
        else:
            items.append(("n", lines.end))
            if pos < len(text):
                items.append(("x", lines.start()))
    return [it for it in items if it[1]]


def _fit(blocks: list[Block], max_tokens: int, delims: tuple[str, str]) -> Iterator[Block]:
    for blk in blocks:
        if blk.kind == "keep" or blk.tokens <= max_tokens:
            yield blk
            continue
        items, tail = blk.items, []
        if items[-1][0] == "n":
            items, tail = items[:-1], items[-1:]
        text, placeholders, breaks, prefixes = _render(items, delims)
        lines = _Lines(prefixes, breaks)
        pos = 0
        for piece, sep in _cut(text, max_tokens, delims):
            start = pos == 0 or text[pos - 1] == "\n"
            yield make_block(_unrender(piece, placeholders, lines, delims, start), blk.heading)
            pos += len(piece)
            if sep:
                start = text[pos - 1] == "\n"
                yield make_block(_unrender(sep, placeholders, lines, delims, start), keep=True)
                pos += len(sep)
        if tail:
            yield make_block(tail, keep=True)


def _pack(blocks: Iterator[Block], max_tokens: int) -> list[str | list[Item]]:
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
            out.append(text_of(pend))
        cur += items
        cur_tok += blk.tokens
        pend, pend_tok = tail, 0
    return [p for p in [*out, cur, text_of(pend)] if p]


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
    spans = [m.span() for m in tok_re(delims).finditer(text)]
    # never separate a link's visible text from its (protected) target
    link = re.compile(r"\[[^\[\]\n]*\](?:" + tok_re(delims).pattern + ")?")
    spans += [m.span() for m in link.finditer(text)]

    inner = bytearray(n + 1)  # inner[k]: k lies strictly inside a span (O(1) to ask)
    for a, b in spans:
        inner[a + 1 : b] = b"\x01" * max(b - a - 1, 0)

    def widen(i: int, j: int) -> tuple[int, int] | None:
        while i > 0 and text[i - 1] in " \t\n":
            i -= 1
        while j < n and text[j] in " \t\n":
            j += 1
        inside = inner[i] or inner[j]
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
