"""Tests for familiar.translate.markdown: what is translated, what is kept byte for byte."""

from __future__ import annotations

import re

import pytest

from familiar.translate.markdown import (
    Article,
    Chunk,
    Chunking,
    Segment,
    assemble,
    chunk,
    estimate_tokens,
    join_parts,
    parse,
    split_chunk,
    validate,
)

CODE = '''```python
# 設定ファイルを読み込む
def load(path: str) -> dict:
    """日本語のドキュメント文字列"""
    return {"キー": "値"}
```'''

ARTICLE = f"""---
title: "Pythonで始める非同期処理"
description: asyncioの基本を丁寧に解説します
tags: [python, asyncio]
date: 2024-05-01
---

# はじめに

この記事では`asyncio`の使い方を説明します。
詳しくは[公式ドキュメント](https://docs.python.org/ja/3/library/asyncio.html "asyncio")を参照。

![処理の流れ](./images/flow.png)

## コード例

次のコードを実行します。

{CODE}

| 関数 | 説明 |
|:-----|:----:|
| `run` | イベントループを起動する |
| `gather` | 複数のタスクを待つ |

- 準備
  - Pythonをインストールする
  - 仮想環境を作る
1. 実行する
2. 結果を確認する

> 非同期処理は難しくありません。
> > 慣れれば簡単です。

<!-- TODO: 図を差し替える
担当者に確認 -->

参考: https://example.com/guide と<br>注釈[^1]を見てください。&nbsp;以上です。
改行の前に空白  
最後の行です。

[^1]: 脚注の本文です。
"""

PROTECTED = [
    CODE,
    '(https://docs.python.org/ja/3/library/asyncio.html "asyncio")',
    "(./images/flow.png)",
    "https://example.com/guide",
    "|:-----|:----:|",
    "<!-- TODO: 図を差し替える\n担当者に確認 -->",
    "tags: [python, asyncio]\ndate: 2024-05-01",
]

PROSE = [
    "はじめに",
    "使い方を説明します",
    "公式ドキュメント",
    "処理の流れ",
    "コード例",
    "イベントループを起動する",
    "Pythonをインストールする",
    "慣れれば簡単です",
    "注釈",
    "脚注の本文です",
    "Pythonで始める非同期処理",
    "asyncioの基本を丁寧に解説します",
]


def tokens_of(ch: Chunk) -> re.Pattern[str]:
    return re.compile(re.escape(ch.delims[0]) + r"P\d+" + re.escape(ch.delims[1]))


def fake_translate(ch: Chunk) -> str:
    """Uppercase ASCII and turn kana/kanji into 'J', leaving placeholders alone."""
    pieces = tokens_of(ch).split(ch.text)
    tokens = [*tokens_of(ch).findall(ch.text), ""]

    def prose(s: str) -> str:
        return re.sub(r"[\u3040-\u30ff\u4e00-\u9fff]", "J", s.upper())

    return "".join(prose(p) + t for p, t in zip(pieces, tokens, strict=True))


def parsed(source: str = ARTICLE, budget: int = 4000) -> tuple[Chunking, list[Chunk]]:
    chunking = chunk(parse(source), budget)
    return chunking, list(chunking)


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1, 15, 60, 4000])
@pytest.mark.parametrize(
    "source",
    [
        ARTICLE,
        "[\u27e6\u27ea]()\u2983",  # the placeholders' brackets are CJK: glue reads the source
        ARTICLE.replace("\n", "\r\n"),
        ARTICLE.rstrip("\n"),
        "\ufeff" + ARTICLE,
        ARTICLE.replace("\n", "\r\n").rstrip("\r\n"),
        "",
        "\n",
        "text",
        "```\n",
        "---\n---\n",
    ],
)
def test_round_trip(source: str, budget: int) -> None:
    article = parse(source)
    assert rebuilt(article) == source  # the blocks hold every byte
    other = chunk(article, 4000 if budget < 4000 else 1)  # chunkings are independent
    chunks = chunk(article, budget)
    assert chunks == chunk(article, budget)
    assert assemble(chunks, {}) == source
    assert assemble(chunks, {c.index: c.text for c in chunks}) == source
    assert assemble(chunks, {c.index: "\n" + c.text + "\n\n" for c in chunks}) == source
    assert assemble(other, {c.index: c.text for c in other}) == source


def test_segments_and_front_matter() -> None:
    article = parse(ARTICLE)
    assert rebuilt(article) == ARTICLE
    assert article.newline == "\n"
    fm = article.front_matter
    assert fm is not None and fm.text.startswith("---\ntitle:") and fm.text.endswith("---\n")
    assert fm.fields == {
        "title": "Pythonで始める非同期処理",
        "description": "asyncioの基本を丁寧に解説します",
    }
    keeps = [s.text for s in article.body_segments if s.kind == "keep"]
    assert any(CODE in k for k in keeps)
    assert any("<!-- TODO" in k for k in keeps)
    assert Segment("text", "# はじめに\n") in article.body_segments
    assert parse(ARTICLE, front_matter_keys=()).front_matter is not None
    assert chunk(parse(ARTICLE, front_matter_keys=("tags",)), 4000)[0].front_matter_key is None


def test_chunks_hold_prose_and_no_protected_content() -> None:
    _, chunks = parsed()
    joined = "\n".join(c.text for c in chunks)
    for text in PROSE:
        assert text in joined
    hidden = [
        "設定ファイルを読み込む",
        "日本語のドキュメント文字列",
        "docs.python.org",
        "flow.png",
        "|",
        "&nbsp;",
        "<br>",
        "[^1]",
        "# ",
        "> ",
        "- ",
        "1. ",
        "TODO",
    ]
    for text in [*PROTECTED, *hidden]:
        assert text not in joined
    assert [c.front_matter_key for c in chunks[:2]] == ["title", "description"]
    body = chunks[2]
    assert body.text.startswith("はじめに")  # the heading mark stays out of the chunk
    assert "[公式ドキュメント]" in body.text and "![処理の流れ]" in body.text
    assert CODE in body.placeholders.values()
    assert "`asyncio`" in body.placeholders.values()
    assert "https://example.com/guide" in body.placeholders.values()
    assert all(c.tokens == estimate_tokens(c.text) for c in chunks)


def test_fake_translation_keeps_structure() -> None:
    for source in (ARTICLE, ARTICLE.replace("\n", "\r\n"), ARTICLE.rstrip("\n")):
        layout, chunks = parsed(source, 40)
        out = assemble(layout, {c.index: fake_translate(c) for c in chunks})
        newline = "\r\n" if "\r\n" in source else "\n"
        for text in PROTECTED:
            assert text.replace("\n", newline) in out
        assert out.count("|") == source.count("|")
        assert out.endswith("JJJ\u3002" + newline) == source.endswith("\n")
        assert '\ntitle: "PYTHONJJJJJJJJJ"' in out.replace("\r", "")
        assert "## JJJ" in out and "  - PYTHONJ" in out and "> > JJJJJJJJ" in out
        assert "JJJJJJJ  " + newline + "JJJJJJ\u3002" in out  # hard break kept
        assert "<br>JJ[^1]J" in out and "&nbsp;" in out
        assert out.count("\r\n") == source.count("\r\n")
        assert out.count("\n") == source.count("\n")


def test_translation_changing_line_count_uses_dominant_newline() -> None:
    layout, chunks = parsed("- a\r\n- b\r\n", 100)
    (ch,) = chunks
    assert ch.text == "a\nb"  # the list markers stay out of the chunk
    out = assemble(layout, {0: "a\nb\nc"})
    assert out == "- a\r\n- b\r\n  c\r\n"  # an added line continues the last item
    out = assemble(layout, {0: "x\ny"})
    assert out == "- x\r\n- y\r\n"  # the markers put back line by line


def test_constructs_are_protected() -> None:
    cases = {
        "    indented code\n    more\n": [],
        "para\n\n    indented code\n": ["indented code"],
        "- item\n\n    continued\n": [],
        "````md\n```\ninner\n```\n````\ntail\n": ["inner", "````"],
        "~~~\nunclosed\n\ntext": ["unclosed", "text"],
        "$$\nx^2\n$$\n": ["x^2"],
        '<div class="a">\n本文\n</div>\n': ["本文"],
        "<!--\nmulti\n-->\n": ["multi"],
        'a <span class="x">b</span> c': ["span", "class"],
        "see [text][id] and [id]\n\n[id]: https://e.com": ["[id]", "e.com"],
        "email <mailto:a@b.c> or <a@b.c>": ["a@b.c"],
        "```x``` is inline code": ["```x```"],
        "x &amp; y &#x3042; z": ["&amp;", "&#x3042;"],
        "[![badge](https://img.io/b.svg)](https://ci.io)": ["img.io", "ci.io"],
        "\\`not code\\` and `` a ` b ``": ["a ` b"],
        "> ```\n> quoted code\n> ```\n> after": ["quoted code"],
        "## Title ##\n": ["#"],
        "Title\n=====\n": ["="],
        "* * *\n": [],
    }
    for source, hidden in cases.items():
        layout, chunks = parsed(source)
        joined = "".join(c.text for c in chunks)
        for text in hidden:
            assert text not in joined, (source, joined)
        assert assemble(layout, {}) == source
    assert [c.text for c in parsed("    code\n")[1]] == []
    assert "continued" in parsed("- item\n\n    continued\n")[1][0].text
    assert "after" in parsed("> ```\n> quoted code\n> ```\n> after")[1][0].text
    assert parsed("see [text][id]\n\n[id]: x")[1][0].text.startswith("see [text]")


def test_table_cells_are_prose() -> None:
    source = "| 名前 | 値 |\n|---|:-:|\n| りんご | 赤い |\n"
    layout, (ch,) = parsed(source)
    lines = ch.text.split("\n")
    assert [tokens_of(ch).sub("|", line) for line in lines] == ["|名前|値|", "|", "|りんご|赤い|"]
    out = assemble(layout, {0: ch.text.replace("りんご", "apple").replace("赤い", "red")})
    assert out == "| 名前 | 値 |\n|---|:-:|\n| apple | red |\n"


def test_placeholder_delimiters_avoid_source_text() -> None:
    source = "記号⟦P0⟧と⟪X⟫を含む`code`\n"
    layout, (ch,) = parsed(source)
    assert ch.delims not in (("⟦", "⟧"), ("⟪", "⟫"))
    assert ch.text.startswith("記号⟦P0⟧と⟪X⟫を含む")
    assert list(ch.placeholders.values()) == ["`code`"]
    assert validate(ch, ch.text) == []
    assert assemble(layout, {0: ch.text}) == source


def test_front_matter_values_are_requoted() -> None:
    source = "---\ntitle: 'タイトル'\ndescription: \"説明\" # note\nsummary: 要約\n---\n本文\n"
    layout, chunks = parsed(source)
    assert [c.text for c in chunks] == ["タイトル", "説明", "要約", "本文"]
    out = assemble(layout, {0: "It's", 1: 'A "quoted"\nword', 2: "Note: yes"})
    assert out == (
        "---\ntitle: 'It''s'\ndescription: \"A \\\"quoted\\\" word\" # note\n"
        'summary: "Note: yes"\n---\n本文\n'
    )
    assert "title: yes" not in assemble(layout, {0: "x", 2: "yes"})


def test_long_paragraph_is_split_at_sentences() -> None:
    sentences = [f"これは{n}番目の文です。" for n in range(40)]
    source = "# 見出し\n\n" + "".join(sentences) + "\n\n次の段落。\n"
    layout, chunks = parsed(source, 40)
    assert all(c.tokens <= 40 for c in chunks)
    assert all(c.text.endswith(("。", "見出し")) for c in chunks)
    assert assemble(layout, {c.index: c.text for c in chunks}) == source
    out = assemble(layout, {c.index: "".join(c.placeholders) + "Sentence." for c in chunks})
    assert "Sentence. Sentence." in out and "Sentence.Sentence." not in out
    long_word = "x" * 400
    layout, chunks = parsed(long_word, 10)
    assert len(chunks) > 10 and all(c.tokens <= 10 for c in chunks)
    assert assemble(layout, {c.index: c.text for c in chunks}) == long_word
    english = "One two three. " * 30
    layout, chunks = parsed(english.strip(), 20)
    assert all(c.text.endswith(".") for c in chunks)


def test_headings_start_new_chunks() -> None:
    source = "# A\n\n" + "本文です。" * 8 + "\n\n## B\n\n短い。\n"
    _, chunks = parsed(source, 60)
    assert len(chunks) == 2 and chunks[1].text.endswith("B\n\n短い。")


# --- validate ----------------------------------------------------------------------------------


def test_validate() -> None:
    ch = Chunk(
        0,
        "⟦P0⟧これはテストの文章です。⟦P1⟧を見てください。これは長めの文です。",
        {"⟦P0⟧": "# ", "⟦P1⟧": "`x`"},
        30,
    )
    good = "⟦P0⟧This is a test sentence. Please see ⟦P1⟧. This is a longer sentence."
    assert validate(ch, good) == []
    assert validate(ch, good.replace("⟦P1⟧", "")) == ["missing placeholder ⟦P1⟧"]
    assert validate(ch, good + " ⟦P1⟧") == ["placeholder ⟦P1⟧ appears 2 times"]
    assert validate(ch, good + " ⟦P7⟧") == ["unknown placeholder ⟦P7⟧"]
    assert validate(ch, good + " ⟦P") == ["stray placeholder delimiter"]
    assert any("length ratio" in p for p in validate(ch, "⟦P0⟧⟦P1⟧ Hi."))
    assert any("length ratio" in p for p in validate(ch, good * 4))
    assert validate(ch, "⟦P0⟧⟦P1⟧") == ["empty translation"]
    loop = good + " and so on" * 8
    assert any("repetition" in p for p in validate(ch, loop))
    lines = "⟦P0⟧⟦P1⟧ A sentence here.\n" + "Same line again.\n" * 4
    assert any("line repeated" in p for p in validate(ch, lines))
    repeated = Chunk(1, "同じ行\n同じ行\n同じ行\n同じ行", {}, 8)
    assert validate(repeated, "Same\nSame\nSame\nSame") == []


def test_assemble_rejects_bad_translations() -> None:
    layout, _ = parsed()
    with pytest.raises(ValueError, match="missing placeholder"):
        assemble(layout, {2: "no placeholders"})
    with pytest.raises(ValueError, match="no chunk with index"):
        assemble(layout, {99: "x"})
    with pytest.raises(ValueError, match="chunk"):
        assemble(chunk(parse("    code\n"), 4000), {0: "x"})  # nothing to translate
    with pytest.raises(ValueError):
        chunk(parse(ARTICLE), 0)


# --- split_chunk / join_parts -----------------------------------------------------------------


def test_split_chunk_halves_reassemble() -> None:
    layout, chunks = parsed()
    body = chunks[2]
    first, second = split_chunk(body)
    assert (first.index, first.part, second.part) == (2, (0,), (1,))
    assert first.text + first.joiner + second.text == body.text
    assert first.joiner.startswith("\n\n") and second.joiner == ""
    assert {**first.placeholders, **second.placeholders} == body.placeholders
    assert not set(first.placeholders) & set(second.placeholders)
    assert abs(len(first.text) - len(second.text)) < len(body.text) / 2
    parts = [*split_chunk(first), second]
    assert [p.part for p in parts] == [(0, 0), (0, 1), (1,)]
    assert join_parts(parts[::-1], [p.text for p in parts][::-1]) == body.text
    joined = join_parts(parts, [fake_translate(p) for p in parts])
    assert validate(body, joined) == []
    out = assemble(layout, {2: joined})
    assert CODE in out and "https://example.com/guide" in out
    assert out == assemble(layout, {2: fake_translate(body)})


def test_split_chunk_sentences_and_limits() -> None:
    ch = parsed("最初の文です。二番目の文です。三番目。四番目の文。")[1][0]
    a, b = split_chunk(ch)
    assert (a.text, a.joiner) == ("最初の文です。二番目の文です。", "")
    assert b.text == "三番目。四番目の文。"
    assert join_parts([a, b], ["First.", "Third."]) == "First. Third."
    single = Chunk(0, "⟦P0⟧", {"⟦P0⟧": "x"}, 1)
    assert split_chunk(single) == [single]
    with pytest.raises(ValueError):
        join_parts([a, b], ["x"])


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("日本語") == 3
    assert estimate_tokens("abcdefgh") == 2
    assert estimate_tokens("abc日本") == 3


def test_split_never_separates_link_text_from_its_target() -> None:
    from familiar.translate import markdown as md

    article = md.parse("詳しくは[公式サイト](https://example.com/tea)を見てください\n")
    (ch,) = md.chunk(article, 40)
    parts = md.split_chunk(ch)
    assert any("[公式サイト]⟦P0⟧" in p.text for p in parts)


def test_a_translation_that_runs_a_heading_into_a_sentence_is_rejected() -> None:
    from familiar.translate.markdown import markup_problems

    source = "急須を温めます。\n\n## よくある失敗\n\n- 茶葉\n- お湯"
    good = "Warm the pot.\n\n## Common mistakes\n\n- tea leaves\n- water"
    assert markup_problems(source, good) == []
    run_in = "Warm the pot. ## common mistakes\n\n- tea leaves\n- water"
    assert any("block markup" in p for p in markup_problems(source, run_in))
    merged = "Warm the pot.\n## Common mistakes\n- tea leaves\n- water"
    assert any("paragraph(s)" in p for p in markup_problems(source, merged))


def rebuilt(article: Article) -> str:
    """The source again, from the front matter and the body's blocks."""
    front = article.front_matter.text if article.front_matter else ""
    return article.bom + front + "".join(s.text for s in article.body_segments)
