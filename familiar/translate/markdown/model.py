"""The data of a parsed article and of its chunks, and the small helpers they share (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, overload

# ("t", prose) | ("p", protected) | ("n", trailing blanks + line end)
# | ("x", a line's prefix: indentation, quote and list markers; kept out of the chunk text)
Item = tuple[str, str]
FieldPart = tuple[str, str, list[Item]]  # front matter key, quote style ('"', "'", ""), value
PAIRS = (("\u27e6", "\u27e7"), ("\u27ea", "\u27eb"), ("\u2983", "\u2984"), ("\u3018", "\u3019"))
_CJK = re.compile(
    "[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
    "\U00020000-\U0003134f]"
)


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


@dataclass(frozen=True)
class Frame:
    """Where a chunk sits: ``source[start:end]`` is its original text, ``source[a:b]`` the
    top-level blocks around it (the region a CommonMark parser reads to check a translation),
    and what putting a translation back needs (line prefixes and ends)."""

    source: str = field(repr=False)
    a: int
    start: int
    end: int
    b: int
    prefixes: tuple[str, ...]
    breaks: tuple[str, ...]
    newline: str


@dataclass(frozen=True)
class Chunk:
    """Prose to translate; ``text`` holds placeholders for everything protected."""

    index: int
    text: str
    placeholders: dict[str, str]  # placeholder -> original bytes
    tokens: int  # estimate_tokens(text)
    part: tuple[int, ...] = ()  # () for a chunk from chunk(); split halves append 0 / 1
    joiner: str = ""  # separator to put after this part when parts are joined
    front_matter_key: str | None = None  # set for a front matter value
    delims: tuple[str, str] = PAIRS[0]
    frame: Frame | None = field(default=None, compare=False, repr=False)  # body chunks


@dataclass(frozen=True)
class Block:
    """A body block: prose (some of it translatable) or kept (all of it protected)."""

    kind: Literal["prose", "keep"]
    items: list[Item]
    tokens: int
    heading: bool = False


@dataclass(frozen=True)
class Article:
    """A parsed document.  Build it with ``parse``; ``source`` is the input itself (held, not
    rebuilt: a 50 MB article is not copied), ``body_segments`` what the blocks rebuild."""

    front_matter: FrontMatter | None
    source: str = field(repr=False)
    newline: str  # dominant line ending, "\r\n" or "\n"
    bom: str = ""
    delims: tuple[str, str] = field(default=PAIRS[0], repr=False)  # placeholder brackets
    fm_parts: list[str | FieldPart] = field(default_factory=list, repr=False)
    blocks: list[Block] = field(default_factory=list, repr=False)
    tops: tuple[int, ...] = field(default=(), repr=False)  # body offsets of top-level blocks
    inner: tuple[int, ...] = field(default=(), repr=False)  # ... and of blocks one level down

    @property
    def body_segments(self) -> list[Segment]:
        """The body as runs of prose (``text``) and kept (``keep``) blocks."""
        segs: list[Segment] = []
        for blk in self.blocks:
            kind: Literal["text", "keep"] = "text" if blk.kind == "prose" else "keep"
            if segs and segs[-1].kind == kind:
                segs[-1] = Segment(kind, segs[-1].text + text_of(blk.items))
            else:
                segs.append(Segment(kind, text_of(blk.items)))
        return segs


@dataclass(frozen=True)
class Slot:
    """A chunk and what putting its translation back needs."""

    chunk: Chunk
    kept: str  # the chunk's source text; "" once its frame holds it (no second copy)
    breaks: tuple[str, ...]  # the source's line endings (with trailing blanks), in order
    style: str | None  # None for body prose, else the front matter quote style
    prefixes: tuple[str, ...] = ()  # each chunk line's prefix (len(breaks) + 1, or none)

    @property
    def original(self) -> str:
        """The chunk's source text, byte for byte."""
        frame = self.chunk.frame
        return frame.source[frame.start : frame.end] if frame is not None else self.kept


@dataclass(frozen=True)
class Chunking(Sequence[Chunk]):
    """The chunks of one article (a sequence, in index order) and the layout ``assemble``
    puts their translations back into: kept text between the chunks' slots."""

    layout: tuple[str | int, ...]  # kept text, or the index of a chunk
    slots: tuple[Slot, ...]  # slots[i].chunk.index == i
    newline: str  # the article's dominant line ending

    def __len__(self) -> int:
        return len(self.slots)

    def __iter__(self) -> Iterator[Chunk]:
        return (slot.chunk for slot in self.slots)

    @overload
    def __getitem__(self, index: int) -> Chunk: ...
    @overload
    def __getitem__(self, index: slice) -> list[Chunk]: ...
    def __getitem__(self, index: int | slice) -> Chunk | list[Chunk]:
        if isinstance(index, slice):
            return [slot.chunk for slot in self.slots[index]]
        return self.slots[index].chunk


def estimate_tokens(text: str) -> int:
    """A rough token estimate: one per CJK character, one per 4 other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + -(-(len(text) - cjk) // 4)


def pick_delims(source: str) -> tuple[str, str]:
    """A placeholder bracket pair absent from ``source``."""
    used = set(source)
    for a, b in PAIRS:
        if a not in used and b not in used:
            return a, b
    for cp in [*range(0xE000, 0xF8FE, 2), *range(0xF0000, 0xFFFFD, 2)]:
        if chr(cp) not in used and chr(cp + 1) not in used:
            return chr(cp), chr(cp + 1)
    raise ValueError("no free placeholder delimiters")


@lru_cache(maxsize=16)
def tok_re(delims: tuple[str, str]) -> re.Pattern[str]:
    """The pattern of a placeholder (``⟦P0⟧``...) between ``delims``."""
    return re.compile(re.escape(delims[0]) + r"P\d+" + re.escape(delims[1]))


def merge(items: list[Item]) -> list[Item]:
    """Neighbouring items of the same kind made one (line ends stay apart)."""
    out: list[Item] = []
    for kind, val in items:
        if out and kind != "n" and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + val)
        else:
            out.append((kind, val))
    return out


def text_of(items: list[Item]) -> str:
    return "".join(v for _, v in items)
