"""What CommonMark says about a document (markdown-it-py: CommonMark plus GFM tables and
strikethrough): its leaf blocks with their lines, and the signature a translation must keep
(the block token types in order, and every protected span: code, HTML, link and image
targets) (pure)."""

from __future__ import annotations

import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.token import Token

_MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
_BLOCKS = MarkdownIt("commonmark").enable(["table"]).disable(["inline", "text_join"])

LeafKind = Literal["para", "atx", "setext", "table", "keep"]


@dataclass(frozen=True)
class Leaf:
    """A leaf block on lines ``start`` to ``end`` (exclusive) of the parsed text."""

    kind: LeafKind
    start: int
    end: int
    content: str = ""  # the inline content (paragraphs, headings)
    rows: tuple[int, ...] = ()  # a table's header and body rows (not the delimiter row)


@dataclass(frozen=True)
class Outline:
    """The leaf blocks in order, the reference labels, the lines where top-level blocks
    start, and where the blocks one level down start (list items, blocks in a quote)."""

    leaves: tuple[Leaf, ...]
    labels: frozenset[str]
    tops: tuple[int, ...]
    inner: tuple[int, ...]


#: lines parsed at once: a long article is outlined window by window, so the parser's tokens
#: (about 5 bytes a source byte) never exist for the whole of it at once
WINDOW_LINES = 4_000
_EOL = re.compile(r"\r\n|\r|\n")


def outline(text: str, window: int = WINDOW_LINES) -> Outline:
    """The leaf blocks of ``text`` as a CommonMark parser finds them.

    A text of more than ``window`` lines is parsed a window at a time.  Block structure is
    decided going forward: a top-level block followed by the start of another is complete,
    whatever comes later.  So of each window everything before its last top-level block is
    kept, and the next window starts at that block (a window holding one block only grows).
    Reference labels are collected from every window."""
    starts = array("q", [0])
    starts.extend(m.end() for m in _EOL.finditer(text))
    if starts[-1] == len(text):  # a final line end opens no line
        starts.pop()
    lines = len(starts) if text else 0
    if lines <= window:
        return _outline(text, 0)
    leaves: list[Leaf] = []
    labels: set[str] = set()
    tops: list[int] = []
    inner: list[int] = []
    pos, size = 0, window
    while pos < lines:
        end = min(lines, pos + size)
        part = _outline(text[starts[pos] : starts[end] if end < lines else len(text)], pos)
        cut = max((t for t in part.tops if t > pos), default=pos) if end < lines else end
        if cut == pos:  # one block fills the window: look further
            size *= 2
            continue
        leaves += (leaf for leaf in part.leaves if leaf.start < cut)
        labels |= part.labels
        tops += (t for t in part.tops if t < cut)
        inner += (t for t in part.inner if t < cut)
        pos, size = cut, window
    return Outline(tuple(leaves), frozenset(labels), tuple(tops), tuple(sorted(set(inner))))


def _outline(text: str, first: int) -> Outline:
    """The outline of ``text``, its line numbers counted from ``first``."""
    env: dict[str, dict[str, object]] = {}
    tokens = _BLOCKS.parse(text, env)  # blocks only: inline content is not parsed
    leaves: list[Leaf] = []
    tops: list[int] = []
    nested: list[int] = []
    for k, t in enumerate(tokens):
        if t.map is None or t.nesting < 0:
            continue
        a, b = t.map[0] + first, t.map[1] + first
        if t.level == 0:
            tops.append(a)
        elif t.level == 1:
            nested.append(a)
        if t.type == "paragraph_open":
            leaves.append(Leaf("para", a, b, tokens[k + 1].content))
        elif t.type == "heading_open":
            inner = tokens[k + 1]
            if t.markup.startswith("#"):
                leaves.append(Leaf("atx", a, b, inner.content))
            else:
                end = inner.map[1] + first if inner.map else b - 1
                leaves.append(Leaf("setext", a, end, inner.content))
                leaves.append(Leaf("keep", end, b))
        elif t.type == "table_open":
            rows = tuple(r + first for r in _rows(tokens, k))
            leaves.append(Leaf("table", a, b, rows=rows))
        elif t.type in ("code_block", "fence", "html_block", "hr"):
            leaves.append(Leaf("keep", a, b))
    labels = frozenset(" ".join(k.split()).casefold() for k in env.get("references", {}))
    return Outline(tuple(leaves), labels, tuple(tops), tuple(sorted(set(tops + nested))))


def _rows(tokens: Sequence[Token], k: int) -> tuple[int, ...]:
    rows: list[int] = []
    for j in range(k + 1, len(tokens)):  # no slice: a copy per table would be quadratic
        t = tokens[j]
        if t.type == "table_close":
            break
        if t.type == "tr_open" and t.map:
            rows.append(t.map[0])
    return tuple(rows)


Signature = tuple[tuple[tuple[str, str, int], ...], tuple[str, ...]]


@lru_cache(maxsize=64)
def signature(text: str) -> Signature:
    """The block token types in order (without inline content) and the protected spans."""
    tokens = _MD.parse(text)
    blocks = tuple((t.type, t.tag, t.level) for t in tokens if t.type != "inline")
    spans: list[str] = []
    for t in tokens:
        if t.type in ("code_block", "fence", "html_block"):
            spans.append(f"{t.type} {t.info}: {t.content}")
        for c in t.children or ():
            if c.type == "code_inline":
                spans.append(f"code {c.markup}{c.content}{c.markup}")
            elif c.type == "html_inline":
                spans.append(f"html {c.content}")
            elif c.type == "link_open":
                spans.append(f"link {c.attrs.get('href')}")
            elif c.type == "image":
                spans.append(f"image {c.attrs.get('src')}")
    return blocks, tuple(spans)


def signature_problems(source: str, output: str) -> list[str]:
    """How ``output`` breaks the block structure or the protected spans of ``source``."""
    (want_blocks, want_spans), (got_blocks, got_spans) = signature(source), signature(output)
    problems = []
    if want_blocks != got_blocks:
        first = next(
            (k for k, (w, g) in enumerate(zip(want_blocks, got_blocks, strict=False)) if w != g),
            min(len(want_blocks), len(got_blocks)),
        )
        want = want_blocks[first][0] if first < len(want_blocks) else "nothing"
        got = got_blocks[first][0] if first < len(got_blocks) else "nothing"
        problems.append(f"block structure changed: {got} where the source has {want}")
    if want_spans != got_spans:
        lost = [s for s in want_spans if s not in got_spans][:1]
        new = [s for s in got_spans if s not in want_spans][:1]
        detail = f"lost {lost[0][:60]!r}" if lost else f"new {new[0][:60]!r}" if new else "order"
        problems.append(f"protected spans changed ({detail})")
    return problems
