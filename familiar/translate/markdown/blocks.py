"""Block structure: ``parse`` cuts the body into kept blocks and prose blocks the way
CommonMark does (``standard.outline``).  Fenced and indented code, HTML blocks, reference
definitions, rules, setext underlines, table delimiter rows, ``$$`` math and blank lines are
kept; paragraphs, headings and table rows are prose, whose line prefixes (indentation,
block-quote and list markers, task boxes, heading marks) stay out of the chunk text as
``x`` items and whose inline markup is protected (pure)."""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator, Sequence
from typing import overload

from familiar.translate.markdown.frontmatter import front_matter
from familiar.translate.markdown.inline import inline_items, norm_label
from familiar.translate.markdown.model import (
    Article,
    Block,
    FieldPart,
    FrontMatter,
    Item,
    estimate_tokens,
    merge,
    pick_delims,
    text_of,
)
from familiar.translate.markdown.standard import Leaf, outline

_EOL = re.compile(r"(\r\n|\r|\n)")
_REFDEF = re.compile(r" {0,3}\[(?!\^)((?:[^\[\]\\]|\\.)+)\]:[ \t]*\S")
_CONTAINER_ONLY = re.compile(r"[ \t]*(?:(?:>|[-+*]|\d{1,9}[.)])[ \t]*)*")
_FOOTNOTE = re.compile(r"(?:[ \t]*>)*[ \t]*\[\^[^\]\s]+\]:[ \t]*(?=\S)")
_ROW_PREFIX = re.compile(r"(?:[ \t]*>)*[ \t]*")
_LEAD = re.compile(r"\[\^[^\]\s]+\]:[ \t]*|\[[ xX]\][ \t]+(?=\S)")
_ITEM_END = re.compile(r"(?:[-+*]|\d{1,9}[.)])[ \t]+$")
_CELL_SEP = re.compile(r"((?:[ \t]*(?<!\\)\|[ \t]*)+)")


def parse(
    source: str,
    *,
    front_matter_keys: Sequence[str] = ("title", "description", "summary", "excerpt"),
) -> Article:
    """Split ``source`` into front matter, keep segments and prose segments."""
    bom = "\ufeff" if source.startswith("\ufeff") else ""
    lines = Lines(source[len(bom) :])
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
    shape = outline(lines.text())  # the body, parsed (then let go)
    labels = set(shape.labels) | {norm_label(m[1]) for c, _ in lines if (m := _REFDEF.match(c))}
    blocks = _blocks(lines, shape.leaves, labels)
    base = lines.offset(0)
    tops = tuple(lines.offset(t) - base for t in shape.tops)
    inner = tuple(lines.offset(t) - base for t in shape.inner)
    return Article(fm, source, newline, bom, pick_delims(source), fm_parts, blocks, tops, inner)


def make_block(items: list[Item], heading: bool = False, keep: bool = False) -> Block:
    """A block of ``items``: kept when ``keep`` or when none of it is prose to translate."""
    prose = not keep and any(k == "t" and v.strip() for k, v in items)
    if not prose:  # nothing to translate: all of it is protected
        items = merge([("p", v) if k == "t" else (k, v) for k, v in items])
    shown = "".join(
        v if k == "t" else "\n" if k == "n" else "" if k == "x" else "\u27e6P00\u27e7"
        for k, v in items
    )
    return Block("prose" if prose else "keep", items, estimate_tokens(shown), heading)


class Lines(Sequence[tuple[str, str]]):
    """The lines of a text as ``(content, line end)`` pairs, each made when it is read (a
    list of them would be a second copy of a 50 MB article and 100 bytes a line more).  A
    final line end opens no line; a slice is a view."""

    def __init__(self, text: str, ends: array[int] | None = None, lo: int = 0, hi: int = -1):
        self._text = text
        if ends is None:  # per line: where its content ends, where its line end ends
            ends = array("q")
            for m in _EOL.finditer(text):
                ends.extend((m.start(), m.end()))
            if (ends[-1] if ends else 0) < len(text):
                ends.extend((len(text), len(text)))
        self._ends = ends
        self._lo = lo
        self._hi = len(ends) // 2 if hi < 0 else hi

    def __len__(self) -> int:
        return self._hi - self._lo

    def offset(self, k: int) -> int:
        """Where line ``k`` starts in the text (``len(self)``: where the last one ends)."""
        n = self._lo + k
        return self._ends[2 * n - 1] if n else 0

    def text(self) -> str:
        """The text of these lines."""
        return self._text[self.offset(0) : self.offset(len(self))]

    def _line(self, n: int) -> tuple[str, str]:
        start = self._ends[2 * n - 1] if n else 0
        stop, end = self._ends[2 * n], self._ends[2 * n + 1]
        return self._text[start:stop], self._text[stop:end]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return (self._line(n) for n in range(self._lo, self._hi))

    @overload
    def __getitem__(self, k: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, k: slice) -> Lines: ...
    def __getitem__(self, k: int | slice) -> tuple[str, str] | Lines:
        if isinstance(k, slice):
            a, b, step = k.indices(len(self))
            if step != 1:
                raise ValueError("a step over lines")
            return Lines(self._text, self._ends, self._lo + a, self._lo + max(a, b))
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        return self._line(self._lo + (k % len(self)))


def _blocks(
    lines: Sequence[tuple[str, str]], leaves: Sequence[Leaf], labels: set[str]
) -> list[Block]:
    out: list[Block] = []
    i = 0
    for leaf in leaves:
        if leaf.start < i:  # nested in a leaf already taken (never, but be safe)
            continue
        if leaf.start > i:
            out += _kept(lines, i, leaf.start, labels=labels)
        block = None if leaf.kind == "keep" else _prose(lines, leaf, labels)
        out += [block] if block else _kept(lines, leaf.start, leaf.end, whole=True)
        i = leaf.end
    if i < len(lines):
        out += _kept(lines, i, len(lines), labels=labels)
    return out


def _kept(
    lines: Sequence[tuple[str, str]],
    a: int,
    b: int,
    whole: bool = False,
    labels: frozenset[str] | set[str] = frozenset(),
) -> list[Block]:
    """Kept lines: a line of container markers only (blank, ``>``, a bare list marker) is an
    ``x`` item (a prefix with no content), any other run one protected item.  A footnote
    definition (``[^1]: text``, a reference definition to CommonMark) is prose."""
    out: list[Block] = []
    items: list[Item] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            text = "".join(run)
            eol = _EOL.search(text[-2:])
            cut = len(text) - (len(eol.group()) if eol and text.endswith(eol.group()) else 0)
            items.extend(it for it in (("p", text[:cut]), ("n", text[cut:])) if it[1])
            run.clear()

    for c, e in lines[a:b]:
        if not whole and _CONTAINER_ONLY.fullmatch(c):
            flush()
            items.extend(it for it in (("x", c), ("n", e)) if it[1])
        elif not whole and (m := _FOOTNOTE.match(c)):
            flush()
            out += [make_block(items, keep=True)] if items else []
            items = []
            body = c.rstrip(" \t")
            trail = c[len(body) :]
            note = [("x", c[: m.end()]), *inline_items(body[m.end() :], set(labels))]
            out.append(make_block([*note, ("n", trail + e) if e else ("p", trail)]))
        else:
            run.append(c + e)
    flush()
    return [*out, make_block(items, keep=True)] if items else out


def _prose(lines: Sequence[tuple[str, str]], leaf: Leaf, labels: set[str]) -> Block | None:
    """The prose block of a paragraph, heading or table; None when its lines do not hold
    the content the parser found (then it is kept whole)."""
    if leaf.kind == "table":
        items: list[Item] = []
        for k in range(leaf.start, leaf.end):
            mode = "row" if k in leaf.rows else "keep"
            items += _row_items(*lines[k], mode, labels)
        return make_block(items)
    parts: list[tuple[str, str, str, str]] = []  # prefix, content, trailing blanks, eol
    contents = leaf.content.split("\n")
    if len(contents) != leaf.end - leaf.start:
        return None
    closer = ""
    for k, want in zip(range(leaf.start, leaf.end), contents, strict=True):
        c, e = lines[k]
        body = c.rstrip(" \t")
        want = want.strip(" \t")
        if leaf.kind == "atx":
            at = body.find(want, body.find("#") + 1) if want else -1
            if at < 0:
                return None
            closer = body[at + len(want) :]
            body = body[: at + len(want)]
        if not want or not body.endswith(want):
            return None
        parts.append((body[: len(body) - len(want)], want, c[len(body) + len(closer) :], e))
    prefix, first, trail, eol = parts[0]
    if first.startswith("$$"):
        return None  # display math: kept
    if (m := _LEAD.match(first)) and (m.group()[1] == "^" or _ITEM_END.search(prefix)):
        parts[0] = (prefix + m.group(), first[m.end() :], trail, eol)
    return make_block(_para_items(parts, closer, labels), heading=leaf.kind != "para")


def _para_items(
    parts: list[tuple[str, str, str, str]], closer: str, labels: set[str]
) -> list[Item]:
    """A paragraph's items: its inline markup found across its lines (a code span may go on
    to the next line), prefixes as ``x`` items, line ends as ``n`` items."""
    joined = "\n".join(p[1] for p in parts)
    items: list[Item] = [("x", parts[0][0])]
    line = 0

    def breaks(k: int) -> tuple[str, str]:
        return parts[k][2] + parts[k][3], parts[k + 1][0]

    for kind, val in inline_items(joined, labels):
        pieces = val.split("\n")
        for n, piece in enumerate(pieces):
            if n:
                end, prefix = breaks(line)
                line += 1
                if kind == "p":
                    items.append(("p", end + prefix))
                else:
                    items += [("n", end), ("x", prefix)]
            if piece:
                items.append((kind, piece))
    _, _, trail, eol = parts[-1]
    items.append(("p", closer))
    items.append(("n", trail + eol) if eol else ("p", trail))
    return merge([it for it in items if it[1]])


def _row_items(content: str, eol: str, mode: str, labels: set[str]) -> list[Item]:
    body = content.rstrip(" \t")
    trail = content[len(body) :]
    items: list[Item]
    if mode == "keep":
        items = [("p", body)]
    else:
        prefix = _ROW_PREFIX.match(body)
        end = prefix.end() if prefix else 0
        items = [("x", body[:end])]
        for k, piece in enumerate(_CELL_SEP.split(body[end:])):
            items += [("p", piece)] if k % 2 else inline_items(piece, labels)
    items.append(("n", trail + eol) if eol else ("p", trail))
    return merge([it for it in items if it[1]])
