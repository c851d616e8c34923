"""Putting translations back (``assemble``: each line with its prefix) and every check on a
chunk's translation: placeholders, length, repetition (``validate``), visible markup
(``markup_problems``), chat wrappers, the target language, finish reason, copied prompt
examples and, last, the structure in context (``chunk_problems``) (pure)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from itertools import pairwise

from familiar import copycheck
from familiar.translate.markdown.checks import language_problems, wrapper_problems
from familiar.translate.markdown.cut import glue
from familiar.translate.markdown.frontmatter import field_value
from familiar.translate.markdown.model import Chunk, Chunking, Slot, tok_re
from familiar.translate.markdown.standard import signature_problems

_BLOCK_MARK = re.compile(r"^[ \t]*(#{1,6}(?=[ \t])|>|[-*+](?=[ \t])|\d{1,9}[.)](?=[ \t]))", re.M)
_MARKER = re.compile(r"(?:[-+*]|\d{1,9}[.)])(?=[ \t]|$)|\[[ xX]\]|\[\^[^\]\s]+\]:")
_LINKED = re.compile(r"\][^\s\]]{1,2}P\d+[^\s\]]")


def assemble(chunking: Chunking, translations: Mapping[int, str]) -> str:
    """The whole document with ``translations`` (chunk index -> text) put back.

    A missing index keeps that chunk's source.  Raises ``ValueError`` for an unknown index or
    a translation whose placeholders are missing, duplicated or invented.
    """
    return "".join(assemble_pieces(chunking, translations))


def assemble_pieces(chunking: Chunking, translations: Mapping[int, str]) -> Iterator[str]:
    """``assemble``'s document in pieces, in order, made as they are read (a big article is
    written out without a second copy of it in memory).  The ``ValueError`` for an unknown
    index comes before the first piece; one for a bad translation when its piece is made."""
    unknown = set(translations) - set(range(len(chunking.slots)))
    if unknown:
        raise ValueError(f"no chunk with index {sorted(unknown)}")
    return _pieces(chunking, translations)


def _pieces(chunking: Chunking, translations: Mapping[int, str]) -> Iterator[str]:
    prev: tuple[str, str] | None = None
    for piece in chunking.layout:
        if isinstance(piece, str):
            yield piece
            prev = None
            continue
        slot = chunking.slots[piece]
        original = text = slot.original
        if piece in translations:
            text = _restore(slot, translations[piece], chunking.newline)
            if prev:  # judged on the source's bytes (a placeholder's brackets may be CJK)
                yield glue(prev[0], prev[1], text, original)
        yield text
        prev = (original, text)


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
    for mark in ("[", "]", "**", "~~", "`"):
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
    *,
    dst: str | None = None,
) -> list[str]:
    """Everything wrong with ``output`` as the translation of ``ch`` (``[]``: keep it).

    ``examples`` are the prompt's few-shot pairs: an answer that is one of their
    translations, for a source that is not that example, copied the prompt.  ``dst``, the
    target language, when given: an answer mostly in another language is refused."""
    problems = validate(ch, output) + markup_problems(ch.text, output)
    problems += wrapper_problems(ch.text, output)
    copy = not ch.part and output.strip() == ch.text.strip()  # see ``language_problems``
    if not copy:
        problems += language_problems(ch.text, output, dst, tok_re(ch.delims).pattern)
    copied = copycheck.copied_pair(output, ch.text, examples) if examples else None
    if copied is not None:
        problems.append(f"the answer copied the prompt's example ({copied!r})")
    if finish_reason == "length":
        problems.append("the answer was cut off (finish_reason=length)")
    elif finish_reason != "stop":
        problems.append(f"the answer did not finish (finish_reason={finish_reason})")
    if not problems:
        problems = in_context_problems(ch, output)
    return problems


def in_context_problems(ch: Chunk, output: str) -> list[str]:
    """The translation put back into the top-level blocks around the chunk, read by a
    CommonMark parser: the block structure and every protected span (code, HTML, link and
    image targets) must be the source's.  Chunks without a frame (front matter values,
    split parts) are not checked here; a split chunk is, once its parts are joined."""
    f = ch.frame
    if f is None or _placeholder_problems(ch, output):
        return []
    if not lines_fit(ch.text, output, f.prefixes):
        return ["a heading's line merged with or split across other lines"]
    restored = _put_back(ch, output, f.breaks, f.prefixes, None, f.newline)
    region = f.source[f.a : f.b]
    return signature_problems(region, f.source[f.a : f.start] + restored + f.source[f.end : f.b])


def _fill(text: str, ch: Chunk) -> str:
    return tok_re(ch.delims).sub(lambda m: ch.placeholders.get(m.group(), m.group()), text)


def _restore(slot: Slot, output: str, newline: str) -> str:
    ch = slot.chunk
    problems = _placeholder_problems(ch, output)
    if problems:
        raise ValueError(f"chunk {ch.index}: " + "; ".join(problems))
    return _put_back(ch, output, slot.breaks, slot.prefixes, slot.style, newline)


def _put_back(
    ch: Chunk,
    output: str,
    breaks: tuple[str, ...],
    prefixes: tuple[str, ...],
    style: str | None,
    newline: str,
) -> str:
    """``output`` as it goes into the document: each line with its prefix, the source's
    line ends, the placeholders' bytes."""
    out = output.replace("\r\n", "\n").replace("\r", "\n").strip(" \t\n")
    if style is not None:
        return field_value(out, ch.text, style, lambda s: _fill(s, ch))
    lines = [line.rstrip(" \t") for line in out.split("\n")]
    return _fill(relines(ch.text.split("\n"), lines, prefixes, breaks, newline), ch)


def relines(
    src: list[str],
    out: list[str],
    prefixes: tuple[str, ...],
    breaks: tuple[str, ...],
    newline: str,
) -> str:
    """The translated lines ``out`` of the source lines ``src`` with the source's prefixes
    and line ends put back.  The same number of lines: line by line.  Else paragraph by
    paragraph (runs of non-blank lines): a paragraph's extra lines get its continuation
    prefix, the blank lines between paragraphs come back as in the source."""
    pre = prefixes if len(prefixes) == len(src) else ("",) * len(src)
    ends = (*breaks, "") if len(breaks) == len(src) - 1 else (*(newline,) * (len(src) - 1), "")
    if len(out) == len(src):
        return "".join(p + line + e for p, line, e in zip(pre, out, ends, strict=True))
    want, got = _paragraphs(src), _paragraphs(out)
    if len(want) != len(got):  # refused by the checks; put back as plain lines
        return newline.join(pre[min(k, len(pre) - 1)] + line for k, line in enumerate(out))
    parts: list[str] = []
    for n, (rows, lines) in enumerate(zip(want, got, strict=True)):
        texts = [out[k] for k in lines]
        if len(rows) == 1 and "#" in pre[rows[0]]:  # a heading stays on one line
            texts = [" ".join(texts)]
        for j, text in enumerate(texts):
            parts.append((pre[rows[j]] if j < len(rows) else _continuation(pre, rows)) + text)
            if j == len(texts) - 1:
                parts.append(ends[rows[-1]])
            else:
                parts.append(ends[rows[j]] if j < len(rows) - 1 else newline)
        if n + 1 < len(want):  # the blank lines up to the next paragraph, as in the source
            for k in range(rows[-1] + 1, want[n + 1][0]):
                parts.append(pre[k] + ends[k])
    return "".join(parts)


def lines_fit(source: str, output: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``output``'s lines can take the source's prefixes: the same number of lines,
    or the same paragraphs where each paragraph holding a heading keeps its line count."""
    src = source.split("\n")
    out = output.replace("\r\n", "\n").replace("\r", "\n").strip(" \t\n").split("\n")
    if len(src) == len(out) or len(prefixes) != len(src):
        return True
    want, got = _paragraphs(src), _paragraphs(out)
    return len(want) == len(got) and all(
        len(rows) == len(lines) or not any("#" in prefixes[k] for k in rows)
        for rows, lines in zip(want, got, strict=True)
    )


def _paragraphs(lines: list[str]) -> list[list[int]]:
    groups: list[list[int]] = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        if groups and groups[-1][-1] == k - 1:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def _continuation(prefixes: tuple[str, ...], rows: list[int]) -> str:
    """The prefix of a paragraph's further lines: its last line's with list markers, task
    boxes and footnote labels blanked out (quote markers stay)."""
    return _MARKER.sub(lambda m: " " * len(m.group()), prefixes[rows[-1]])


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
