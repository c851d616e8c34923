"""Language helpers: detect Japanese vs English text (pure)."""

from __future__ import annotations

import re
from typing import Literal

Lang = Literal["en", "ja"]
NAMES: dict[str, str] = {"en": "English", "ja": "Japanese"}
_JA = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_lang(text: str) -> Lang:
    """``ja`` when kana/kanji make up a real share of the letters, else ``en``."""
    ja = len(_JA.findall(text))
    latin = len(_LATIN.findall(text))
    return "ja" if ja and ja * 3 >= latin * 0.5 else "en"
