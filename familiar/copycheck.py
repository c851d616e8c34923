"""Did the model copy a prompt's example instead of doing the task? (pure)

Small base models (the embedded Gemma 3 270M) continue few-shot prompts by
reproducing the example answer. The shipped examples are about a made-up topic (the
Zorblats of Quuxville) so that a copy is obvious; this module makes it detectable.

A prompt marks each example block with lines of its own::

    <!-- example -->
    Example answer: {{"output": "...", ...}}
    <!-- /example -->

:func:`examples` turns the blocks of a prompt's *template* text (``Prompt.text``, not
the rendered prompt, which holds user data) into answer-like snippets: every JSON
string value (and each line of it) and every line of prose, of at least
:data:`MIN_CHARS` normalised characters. :func:`copied` says which snippet an answer
reproduces: verbatim after :func:`normalise`, or through a share of at least
:data:`OVERLAP` of the answer's word 4-grams. Text in ``allowed`` (the task, the
subtask, the dependencies' outputs) never counts as copied. :func:`copied_pair` does
the same for the translation few-shot pairs.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "MIN_CHARS",
    "MIN_WORDS",
    "OVERLAP",
    "copied",
    "copied_pair",
    "examples",
    "normalise",
    "without_markers",
]

MIN_CHARS = 12  # a snippet shorter than this ("s1", "easy", "Summary") proves nothing
MIN_WORDS = 8  # below this an answer has too few 4-grams for a share to mean anything
OVERLAP = 0.5  # share of the answer's word 4-grams found in the examples
GRAM = 4

_BLOCK = re.compile(r"<!--\s*example\s*-->(.*?)<!--\s*/example\s*-->", re.S | re.I)
_MARKER = re.compile(r"[ \t]*<!--\s*/?example\s*-->[ \t]*\n?", re.I)
_LABEL = re.compile(r"^\s*example(?:\s+\w+){0,2}\s*:\s*", re.I)
# Markdown structure at a line start: headings, quotes, bullets, numbers, task boxes
_LINE_MARK = re.compile(r"^\s*(?:(?:#{1,6}|>|[-*+]|\d{1,3}[.)])(?:\s+|$)|\[[ xX]\]\s+)+")
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """Case-folded, Markdown heading/list/quote markers stripped, whitespace collapsed."""
    lines = (_LINE_MARK.sub("", line) for line in text.casefold().splitlines())
    return " ".join(" ".join(lines).split())


def without_markers(text: str) -> str:
    """``text`` with the example marker lines removed (what a model need not see)."""
    return _MARKER.sub("", text)


def examples(prompt_text: str) -> list[str]:
    """The answer-like snippets of the example blocks in a prompt's template text.

    JSON in a block may be written with the template's ``{{``/``}}`` escapes. Keys are
    not snippets (every honest answer repeats them); values are, whole and line by line.
    """
    found: list[str] = []
    for block in _BLOCK.findall(prompt_text):
        if "{{" in block:  # template escapes: "{{" is never valid JSON outside strings
            block = block.replace("{{", "{").replace("}}", "}")
        values, prose = _json_values(block)
        for value in values:
            found.append(value)
            found.extend(value.splitlines())
        found.extend(_LABEL.sub("", line) for line in prose.splitlines())
    kept: dict[str, None] = {}
    for snippet in (s.strip() for s in found):
        if len(normalise(snippet)) >= MIN_CHARS:
            kept.setdefault(snippet)
    return list(kept)


def copied(answer: str, examples: Sequence[str], allowed: str = "") -> str | None:
    """The example snippet ``answer`` reproduces, or None.

    A reproduction is a snippet of at least :data:`MIN_CHARS` normalised characters
    found verbatim in the normalised answer (the longest one is returned), or, for an
    answer of at least :data:`MIN_WORDS` words, :data:`OVERLAP` or more of its word
    4-grams taken from the snippets (the snippet sharing most is returned). Snippets
    and 4-grams that also occur in ``allowed`` do not count.
    """
    text, permitted = normalise(answer), normalise(allowed)
    if not text:
        return None
    best: tuple[int, str] | None = None
    for snippet in examples:
        norm = normalise(snippet)
        if len(norm) < MIN_CHARS or norm in permitted or not _contains(text, norm):
            continue
        if best is None or len(norm) > best[0]:
            best = (len(norm), snippet)
    if best is not None:
        return best[1]
    words = _WORD.findall(text)
    if len(words) < MIN_WORDS:
        return None
    grams = list(_grams(words))
    excluded = set(_grams(_WORD.findall(permitted)))
    owners: dict[tuple[str, ...], str] = {}
    for snippet in examples:
        for gram in _grams(_WORD.findall(normalise(snippet))):
            if gram not in excluded:
                owners.setdefault(gram, snippet)
    hits = [owners[g] for g in grams if g in owners]
    if len(hits) < OVERLAP * len(grams):
        return None
    return Counter(hits).most_common(1)[0][0]


def copied_pair(answer: str, source: str, example_pairs: Iterable[tuple[str, str]]) -> str | None:
    """The example target ``answer`` equals (normalised) while ``source`` is not that
    example's source -- a few-shot translation that copied an example -- or None."""
    text, src = normalise(answer), normalise(source)
    if not text:
        return None
    for ex_source, ex_target in example_pairs:
        if normalise(ex_target) == text and normalise(ex_source) != src:
            return ex_target
    return None


def _json_values(block: str) -> tuple[list[str], str]:
    """Every string value of the JSON objects in ``block``, and the text around them."""
    decoder = json.JSONDecoder()
    values: list[str] = []
    rest: list[str] = []
    pos = 0
    start = block.find("{")
    while start >= 0:
        try:
            obj, end = decoder.raw_decode(block, start)
        except json.JSONDecodeError:
            start = block.find("{", start + 1)
            continue
        values.extend(_strings(obj))
        rest.append(block[pos:start])
        pos = end
        start = block.find("{", end)
    rest.append(block[pos:])
    return values, "\n".join(rest)


def _strings(obj: object) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _strings(item)


def _contains(text: str, snippet: str) -> bool:
    """``snippet`` in ``text``, not inside a longer ASCII word or number at either end."""
    head = r"(?<![0-9a-z])" if snippet[0].isascii() and snippet[0].isalnum() else ""
    tail = r"(?![0-9a-z])" if snippet[-1].isascii() and snippet[-1].isalnum() else ""
    return re.search(head + re.escape(snippet) + tail, text) is not None


def _grams(words: Sequence[str]) -> Iterator[tuple[str, ...]]:
    return (tuple(words[i : i + GRAM]) for i in range(len(words) - GRAM + 1))
