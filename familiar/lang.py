"""Language helpers: detect Japanese vs English text (pure)."""

from __future__ import annotations

import re
from typing import Literal

Lang = Literal["en", "ja"]
NAMES: dict[str, str] = {"en": "English", "ja": "Japanese"}
_JA = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]+")
_LATIN = re.compile(r"[A-Za-z]+")


def detect_lang(text: str) -> Lang:
    """``ja`` when kana/kanji make up a real share of the letters, else ``en``.

    Counted run by run: a list of every character (``findall`` of one) took 1.4 GB
    for a 50 MB article."""
    ja = _count(_JA, text)
    latin = _count(_LATIN, text)
    return "ja" if ja and ja * 3 >= latin * 0.5 else "en"


def _count(pattern: re.Pattern[str], text: str) -> int:
    """How many characters of ``text`` the runs of ``pattern`` cover."""
    return sum(m.end() - m.start() for m in pattern.finditer(text))
