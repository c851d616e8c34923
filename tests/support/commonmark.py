"""The CommonMark spec's examples as articles, what a CommonMark parser sees in them, and
fake translators that behave like models (identity, every prose word changed, a chat
preamble or a dropped indent).

``tests/fixtures/commonmark/spec.txt`` is commonmark/commonmark-spec's ``spec.txt``
(version 0.31.2, CC-BY-SA 4.0, see the LICENSE next to it). Its examples are fenced with
32 backticks and the word ``example``; ``→`` stands for a tab.

The structure and protected spans here are computed with markdown-it-py directly, not with
familiar's own helpers, so a test does not trust the code it checks.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

SPEC = Path(__file__).resolve().parents[1] / "fixtures" / "commonmark" / "spec.txt"
_FENCE = "`" * 32

#: a placeholder in a chunk, whatever delimiters the article needed
PLACEHOLDER = re.compile(
    "[\u27e6\u27ea\u2983\u3018\ue000-\uf8ff\U000f0000-\U000ffffd]P\\d+"
    "[\u27e7\u27eb\u2984\u3019\ue000-\uf8ff\U000f0000-\U000ffffd]"
)


@dataclass(frozen=True)
class Example:
    number: int
    markdown: str
    section: str


def examples(path: Path = SPEC) -> list[Example]:
    """Every example of the spec, in order (655 in version 0.31.2)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    out: list[Example] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"#+ (.*)", line):
            section = m[1]
        if line == _FENCE + " example":
            j = i + 1
            while lines[j] != ".":
                j += 1
            k = j + 1
            while lines[k] != _FENCE:
                k += 1
            body = "".join(x + "\n" for x in lines[i + 1 : j]).replace("\u2192", "\t")
            out.append(Example(len(out) + 1, body, section))
            i = k
        i += 1
    return out


def parser(gfm: bool = False) -> MarkdownIt:
    md = MarkdownIt("commonmark")
    return md.enable(["table", "strikethrough"]) if gfm else md


def structure(tokens: list[Token]) -> list[tuple[str, str, int]]:
    """The block token types in order (inline content left out)."""
    return [(t.type, t.tag, t.level) for t in tokens if t.type != "inline"]


def protected(tokens: list[Token]) -> list[str]:
    """Code, HTML and link targets, in order."""
    out: list[str] = []
    for t in tokens:
        if t.type in ("code_block", "fence", "html_block"):
            out.append(f"{t.type}:{t.info}:{t.content}")
        for c in t.children or ():
            if c.type == "code_inline":
                out.append(f"code:{c.markup}{c.content}")
            elif c.type == "html_inline":
                out.append(f"html:{c.content}")
            elif c.type == "link_open":
                out.append(f"href:{c.attrs.get('href')}")
            elif c.type == "image":
                out.append(f"src:{c.attrs.get('src')}")
    return out


def compare(source: str, output: str, md: MarkdownIt) -> tuple[bool, bool]:
    """(same block structure, same protected spans)."""
    a, b = md.parse(source), md.parse(output)
    return structure(a) == structure(b), protected(a) == protected(b)


# -- fake translators (handlers of the fake server: reply = f(request)) -------------------


def _last_user(body: Mapping[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _prose(text: str, change: Callable[[str], str]) -> str:
    """``change`` applied to the text between placeholders."""
    pieces = PLACEHOLDER.split(text)
    marks = [*PLACEHOLDER.findall(text), ""]
    return "".join(change(p) + m for p, m in zip(pieces, marks, strict=True))


def identity(body: dict[str, Any]) -> str:
    return _last_user(body)


def change_words(body: dict[str, Any]) -> str:
    """Every prose word changed: the case of each ASCII letter run swapped."""
    return _prose(_last_user(body), lambda s: re.sub(r"[A-Za-z]+", lambda m: m[0].swapcase(), s))


PREAMBLE = "Sure! Here is the translation:"


def hostile(body: dict[str, Any]) -> str:
    """What chat models do wrong: a preamble on the first line or as its own paragraph,
    every line's indentation dropped, or every paragraph after the first indented four
    spaces (as code). Asked again (warmer), three chunks in four come back clean; the
    fourth stays wrong."""
    text = _last_user(body)
    crc = zlib.crc32(text.encode())
    if body.get("temperature") and crc % 4:
        return text
    kind = crc % 4
    if kind == 0:
        return f"{PREAMBLE} {text}"
    if kind == 1:
        return f"{PREAMBLE}\n\n{text}"
    if kind == 2:
        return "\n".join(line.lstrip(" \t") for line in text.split("\n"))
    return text.replace("\n\n", "\n\n    ")


def two_words(body: dict[str, Any]) -> str:
    """The translator of issue 21's report: two words in front of every answer."""
    return "Sure thing " + _last_user(body)


TRANSLATORS: dict[str, Callable[[dict[str, Any]], str]] = {
    "identity": identity,
    "words": change_words,
    "hostile": hostile,
    "two_words": two_words,
}
