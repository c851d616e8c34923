"""Putting translations back (``assemble``) and every check on a chunk's translation:
placeholders, length, repetition (``validate``), visible markup (``markup_problems``),
finish reason and copied prompt examples (``chunk_problems``) (pure)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import pairwise

from familiar import copycheck
from familiar.translate.markdown.cut import glue
from familiar.translate.markdown.frontmatter import field_value
from familiar.translate.markdown.model import Chunk, Chunking, Slot, tok_re

_BLOCK_MARK = re.compile(r"^[ \t]*(#{1,6}(?=[ \t])|>|[-*+](?=[ \t])|\d{1,9}[.)](?=[ \t]))", re.M)
_LINKED = re.compile(r"\][^\s\]]{1,2}P\d+[^\s\]]")


def assemble(chunking: Chunking, translations: Mapping[int, str]) -> str:
    """The whole document with ``translations`` (chunk index -> text) put back.

    A missing index keeps that chunk's source.  Raises ``ValueError`` for an unknown index or
    a translation whose placeholders are missing, duplicated or invented.
    """
    unknown = set(translations) - set(range(len(chunking.slots)))
    if unknown:
        raise ValueError(f"no chunk with index {sorted(unknown)}")
    out: list[str] = []
    prev: tuple[str, str] | None = None
    for piece in chunking.layout:
        if isinstance(piece, str):
            out.append(piece)
            prev = None
            continue
        slot = chunking.slots[piece]
        text = slot.original
        if piece in translations:
            text = _restore(slot, translations[piece], chunking.newline)
            if prev:
                out.append(glue(prev[0], prev[1], text))
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
    tok = tok_re(chunk.delims)
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


def markup_problems(source: str, output: str) -> list[str]:
    """Markdown syntax left visible in the prose (link brackets, emphasis) must survive,
    and a link's text must stay attached to its protected target (``[text]⟦P0⟧``)."""
    problems = [
        f"link target {m.group()[1:]} detached from its text"
        for m in _LINKED.finditer(source)
        if m.group() not in output
    ]
    for mark in ("[", "]", "**", "`"):
        if source.count(mark) != output.count(mark):
            problems.append(
                f"{mark!r} appears {output.count(mark)} time(s), expected {source.count(mark)}"
            )
    want, got = _block_marks(source), _block_marks(output)
    if want != got:
        problems.append(f"block markup at line starts {got} instead of {want}")
    breaks = source.strip("\n").count("\n\n"), output.strip("\n").count("\n\n")
    if breaks[0] != breaks[1]:
        problems.append(f"{breaks[1] + 1} paragraph(s) instead of {breaks[0] + 1}")
    return problems


def _block_marks(text: str) -> list[str]:
    """The Markdown block markers that open lines (headings, quotes, list items), in
    order: a heading run into the previous sentence is no longer a heading."""
    return [m.group(1) for m in _BLOCK_MARK.finditer(text)]


def chunk_problems(
    ch: Chunk,
    output: str,
    finish_reason: str | None,
    examples: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Everything wrong with ``output`` as the translation of ``ch`` (``[]``: keep it).

    ``examples`` are the prompt's few-shot pairs: an answer that is one of their
    translations, for a source that is not that example, copied the prompt."""
    problems = validate(ch, output) + markup_problems(ch.text, output)
    copied = copycheck.copied_pair(output, ch.text, examples) if examples else None
    if copied is not None:
        problems.append(f"the answer copied the prompt's example ({copied!r})")
    if finish_reason == "length":
        problems.append("the answer was cut off (finish_reason=length)")
    elif finish_reason != "stop":
        problems.append(f"the answer did not finish (finish_reason={finish_reason})")
    return problems


def _fill(text: str, ch: Chunk) -> str:
    return tok_re(ch.delims).sub(lambda m: ch.placeholders.get(m.group(), m.group()), text)


def _restore(slot: Slot, output: str, newline: str) -> str:
    ch = slot.chunk
    problems = _placeholder_problems(ch, output)
    if problems:
        raise ValueError(f"chunk {ch.index}: " + "; ".join(problems))
    out = output.replace("\r\n", "\n").replace("\r", "\n").strip(" \t\n")
    if slot.style is not None:
        return field_value(out, ch.text, slot.style, lambda s: _fill(s, ch))
    lines = [line.rstrip(" \t") for line in out.split("\n")]
    seps = slot.breaks if len(lines) - 1 == len(slot.breaks) else (newline,) * (len(lines) - 1)
    return _fill(lines[0] + "".join(s + line for s, line in zip(seps, lines[1:], strict=True)), ch)


def _placeholder_problems(ch: Chunk, output: str) -> list[str]:
    tok = tok_re(ch.delims)
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
    """A unit of 8-200 characters repeated 6 times in a row (a model stuck in a loop):
    the same as ``re.search(r"(.{8,200}?)\1{5,}", text, re.S)``, which backtracks through
    every start and length (milliseconds per chunk), but only units that begin with an
    8-character window seen 6 times or more are tried."""
    if len(text) < 48:
        return None
    seen: dict[str, list[int]] = {}
    for i in range(len(text) - 7):
        seen.setdefault(text[i : i + 8], []).append(i)
    for positions in seen.values():
        if len(positions) < 6:
            continue
        at = set(positions)
        for k, i in enumerate(positions):
            for j in positions[k + 1 :]:
                period = j - i
                if period > 200:
                    break
                if (
                    period >= 8
                    and all(i + r * period in at for r in range(2, 6))
                    and text.startswith(text[i:j] * 5, j)
                ):
                    return f"runaway repetition of {text[i:j][:30]!r}"
    return None


def _repeated_line(text: str) -> str | None:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    run = 1
    for a, b in pairwise(lines):
        run = run + 1 if a == b else 1
        if run >= 4:
            return f"line repeated {run} times: {a[:30]!r}"
    return None
