"""Checks on a translation's text alone: what chat models put around an answer (a preamble,
a closing remark, a fenced wrapper), and whether the answer is in the target language at
all (pure, cheap: a few regular expressions per chunk)."""

from __future__ import annotations

import re

from familiar.lang import NAMES

_HEAD = r"\A[\s*_#>\"'`]*"
_PREAMBLES = (
    # "Sure! Here is the translation:", "Here's the English version:", "Translation:"
    re.compile(
        _HEAD + r"(?:(?:sure|certainly|of course|okay|ok|absolutely|gladly)\b[^\n]{0,30}?)?"
        r"(?:(?:here(?:'s| is| are)|below is|this is|the following is)\b[^\n]{0,40}?)?"
        r"\b(?:translations?|translated(?: text| version)?|(?:english|japanese) version)\b"
        r"[^\n]{0,40}?[:\uff1a]",
        re.I,
    ),
    re.compile(_HEAD + r"(?:sure|certainly|of course|okay|absolutely)[!,.]?\s*\n", re.I),
    # "以下は翻訳です:", "こちらが英訳です。", "翻訳:" (full-width colons too)
    re.compile(
        _HEAD + r"(?:(?:はい|もちろん)[、。!\uff01]?\s*)?(?:(?:以下|こちら|下記)[^\n]{0,20}?)?"
        r"(?:翻訳|英訳|和訳|訳文)[^\n]{0,20}?[:\uff1a。\n]"
    ),
)
# only what a chat model says to its user, never what an article says to its reader
# ("feel free to contact us", "ご不明な点があれば" are kept)
_CLOSINGS = (
    re.compile(
        r"(?:i hope (?:this|that|the translation) helps|hope (?:this|that) helps"
        r"|let me know if you (?:need|have|want|would like)|is there anything else)[^\n]*\Z",
        re.I,
    ),
    re.compile(r"(?:お役に立てれば|他に何か(?:お手伝い|ご質問))[^\n]*\Z"),
)
_FENCED = re.compile(r"\A\s*(`{3,}|~{3,})[^\n]*\n.*\n\s*\1\s*\Z", re.S)
_JA = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_LOWER_WORD = re.compile(r"(?<![\w.@/-])[a-z]{2,}(?:'[a-z]+)?(?![\w@/-])")


def wrapper_problems(source: str, output: str) -> list[str]:
    """A preamble, a closing remark or a fence wrapped around the translation (what a chat
    model adds) that the source does not have."""
    problems = []
    tail = output.rstrip()[-200:]
    said = any(rx.search(source[:200]) for rx in _PREAMBLES)  # the article starts so
    if not said and any(rx.search(output[:200]) for rx in _PREAMBLES):
        problems.append("a chat preamble before the translation")
    closed = any(rx.search(source.rstrip()[-200:]) for rx in _CLOSINGS)  # the article ends so
    if not closed and any(rx.search(tail) for rx in _CLOSINGS):
        problems.append("a closing remark after the translation")
    if _FENCED.match(output) and not _FENCED.match(source):
        problems.append("the answer is wrapped in a code fence")
    return problems


def language_problems(source: str, output: str, dst: str | None, placeholder: str) -> list[str]:
    """An answer mostly in another language than ``dst`` (kana/kanji counted two to a word;
    for Japanese, only lower-case English words count against it: names and acronyms are
    capitalised).  ``placeholder`` is the pattern of the chunk's placeholders, left out.
    A source that is mostly in ``dst`` already may stay as it is.  (``chunk_problems`` does
    not ask this of a whole chunk given back unchanged: the test fleet's identity
    translator does that; a split part given back unchanged is refused.)"""
    if dst not in ("en", "ja"):
        return []
    if _share(re.sub(placeholder, " ", source), dst)[1] >= 0.5:
        return []
    foreign, native = _share(re.sub(placeholder, " ", output), dst)
    if foreign >= 4 and native < 0.5:
        return [f"the answer is mostly not {NAMES[dst]}"]
    return []


def _share(text: str, dst: str) -> tuple[float, float]:
    """(words in the other language, share of words in ``dst``)."""
    ja = len(_JA.findall(text)) / 2
    en = len(_WORD.findall(text)) if dst == "en" else len(_LOWER_WORD.findall(text))
    foreign, native = (ja, en) if dst == "en" else (en, ja)
    total = foreign + native
    return foreign, (native / total if total else 1.0)
