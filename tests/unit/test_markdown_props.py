"""Property tests for familiar.translate.markdown: exact round trips, protected spans survive."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from familiar.translate.markdown import (
    Article,
    Chunk,
    Chunking,
    assemble,
    chunk,
    join_parts,
    parse,
    split_chunk,
    validate,
)

PROPS = settings(max_examples=200, deadline=None, database=None)

# --- arbitrary text --------------------------------------------------------------------------

PIECES = [
    *"ab Z1.\t:;'\"&!?#-*+=_|`~$<>()[]^\\\u3042\u3002\u3001\u27e6\u27e7\u27ea\u27eb\ufeff",
    "\n",
    "\r\n",
    "\r",
    "```",
    "~~~",
    "---",
    "$$",
    "<!--",
    "-->",
    "<div>",
    "<br>",
    "    ",
    "> ",
    "- ",
    "1. ",
    "# ",
    "| a |",
    "|---|",
    "https://x.io/p",
    "[t](u)",
    '![a](s "t")',
    "[^1]",
    "[id]: http://e.com",
    "&amp;",
    "\u65e5\u672c\u8a9e",
    "\u2983",
    "\u3018",
]
weird_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(PIECES), max_size=60).map("".join),
)


def tok_re(ch: Chunk) -> re.Pattern[str]:
    return re.compile(re.escape(ch.delims[0]) + r"P\d+" + re.escape(ch.delims[1]))


def mark(ch: Chunk) -> str:
    """Replace every character outside placeholders (except line breaks) with X."""
    pieces = tok_re(ch).split(ch.text)
    tokens = tok_re(ch).findall(ch.text)
    out = re.sub(r"[^\n]", "X", pieces[0])
    for token, piece in zip(tokens, pieces[1:], strict=True):
        out += token + re.sub(r"[^\n]", "X", piece)
    return out


def check_identity(source: str, budget: int) -> Chunking:
    article = parse(source)
    assert rebuilt(article) == source  # the blocks hold every byte
    other = chunk(article, 10_000 if budget < 10_000 else 1)  # chunkings are independent
    chunks = chunk(article, budget)
    assert chunks == chunk(article, budget)
    assert assemble(chunks, {}) == source
    assert assemble(chunks, {c.index: c.text for c in chunks}) == source
    assert assemble(other, {c.index: c.text for c in other}) == source
    for c in chunks:
        assert c.text == c.text.strip(" \t\r\n") and c.text
        assert validate(c, c.text) == []
        parts = split_chunk(c)
        assert join_parts(parts, [p.text for p in parts]) == c.text
        assert sorted(t for p in parts for t in p.placeholders) == sorted(c.placeholders)
    marked = assemble(chunks, {c.index: mark(c) for c in chunks})
    assert all(s.text in marked for s in article.body_segments if s.kind == "keep")
    return chunks


@PROPS
@given(weird_text, st.sampled_from([1, 7, 40, 10_000]))
def test_any_text_round_trips(source: str, budget: int) -> None:
    check_identity(source, budget)


# --- generated Markdown ------------------------------------------------------------------------

WORDS = st.sampled_from(
    [
        "\u65e5\u672c\u8a9e",
        "\u7ffb\u8a33\u3059\u308b",
        "\u8a18\u4e8b\u3067\u3059\u3002",
        "\u30c6\u30ad\u30b9\u30c8",
        "\u3001",
        "hello",
        "world",
        "the text",
        "is fine.",
        "Really?",
    ]
)
prose = st.lists(WORDS, min_size=1, max_size=6).map(" ".join)
url = st.builds(
    "https://{}.example.com/{}".format,
    st.sampled_from(["docs", "a-b", "x"]),
    st.sampled_from(["", "p", "a/b?x=1&y=2", "wiki/A_(b)", "%E3%81%82#top"]),
)
target = st.builds(
    lambda u, title: f"({u}{title})",
    url | st.sampled_from(["./img/a.png", "../b.md"]),
    st.sampled_from(["", ' "title"', " '\u984c'"]),
)
inline = st.one_of(
    prose,
    prose,
    st.sampled_from(
        [
            "`x = 1`",
            "``a ` b``",
            "`\u30b3\u30fc\u30c9`",
            "<br>",
            "&nbsp;",
            "[^1]",
            '<span class="x">',
            "</span>",
        ]
    ),
    st.builds("[{}]{}".format, prose, target),
    st.builds("![{}]{}".format, prose, target),
    st.builds(" {} ".format, url),
    st.builds("<{}>".format, url),
)
line = st.lists(inline, min_size=1, max_size=5).map("".join).map(str.strip).filter(bool)
paragraph = st.lists(line, min_size=1, max_size=3).map("\n".join)
heading = st.builds("{} {}".format, st.sampled_from(["#", "##", "###"]), line)
CODE_LINES = [
    "x = 1",
    "# \u30b3\u30e1\u30f3\u30c8: \u65e5\u672c\u8a9e",
    "print('[a](b)')",
    "    return `x`",
    "| a | b |",
    "<div>",
    "$$",
    "---",
    "https://x.example.com/c",
]


@st.composite
def fence(draw: st.DrawFn) -> str:
    char = draw(st.sampled_from("`~"))
    size = draw(st.integers(3, 5))
    body = draw(st.lists(st.sampled_from(CODE_LINES), max_size=4))
    if size > 3 and draw(st.booleans()):
        body = [char * 3 + "inner", *body, char * 3]
    info = draw(st.sampled_from(["", "python", " js title=a.js"]))
    return "\n".join([char * size + info, *body, char * size])


@st.composite
def table(draw: st.DrawFn) -> str:
    cols = draw(st.integers(1, 3))
    rows = draw(st.lists(st.lists(line, min_size=cols, max_size=cols), min_size=1, max_size=3))
    align = draw(
        st.lists(st.sampled_from(["---", ":---", "---:", ":-:"]), min_size=cols, max_size=cols)
    )
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([lines[0], "|" + "|".join(align) + "|", *lines[1:]])


@st.composite
def listing(draw: st.DrawFn) -> str:
    items = draw(
        st.lists(
            st.tuples(st.integers(0, 2), st.sampled_from(["- ", "* ", "1. "]), line),
            min_size=1,
            max_size=4,
        )
    )
    return "\n".join("  " * depth + marker + text for depth, marker, text in items)


quote = st.lists(st.tuples(st.sampled_from(["> ", "> > ", ">"]), line), min_size=1, max_size=3).map(
    lambda ls: "\n".join(p + t for p, t in ls)
)
other = st.sampled_from(
    [
        "<!-- \u30e1\u30e2\n\u8907\u6570\u884c -->",
        "$$\nE = mc^2\n$$",
        "---",
        "<details>\n<summary>\u8a73\u7d30</summary>",
        "[ref]: https://r.example.com",
    ]
)
block = st.one_of(paragraph, heading, fence(), table(), listing(), quote, other)


@st.composite
def document(draw: st.DrawFn) -> tuple[str, list[str], bool]:
    blocks = draw(st.lists(block, min_size=1, max_size=8))
    if blocks[0] == "---":  # a leading rule would open front matter
        blocks[0] = "***"
    head = ""
    if draw(st.booleans()):
        plain = line.filter(lambda s: not re.search("[\"'#:`<>\\[\\]&*!|%@{}-]", s))
        title = draw(st.sampled_from(['"{}"', "'{}'", "{}"])).format(draw(plain))
        head = (
            f"---\ntitle: {title}\ndescription: {draw(prose)}\n"
            "tags: [a, b]\ndate: 2024-01-02\n---\n"
        )
    text = head + "\n\n".join(blocks) + draw(st.sampled_from(["", "\n"]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return text.replace("\n", newline), [b.replace("\n", newline) for b in blocks], bool(head)


@PROPS
@given(document(), st.sampled_from([5, 30, 4000]))
def test_markdown_round_trips_and_keeps_protected_spans(
    doc: tuple[str, list[str], bool], budget: int
) -> None:
    source, blocks, front_matter = doc
    chunks = check_identity(source, budget)
    article = parse(source)
    chunks = chunk(article, budget)
    marked = assemble(chunks, {c.index: mark(c) for c in chunks})
    for blk in blocks:
        if blk.startswith(("```", "~~~", "$$", "<!--", "<details>", "[ref]:")):
            assert blk in marked
            assert not any(blk in c.text for c in chunks)
    protected = re.findall(r"https://[a-z.-]+example\.com/[^\s<>()]*(?:\(b\))?", source)
    protected += re.findall(r"(?<=\])\((?:[^()\s]|\([^()]*\))*(?: \"title\"| '[^']*')?\)", source)
    for span in protected:
        assert span in marked
    if front_matter:
        assert re.search(r"^---\r?\ntitle: ", marked)
        assert "\ntags: [a, b]" in marked.replace("\r", "") and "date: 2024-01-02" in marked
    assert marked.count("|") == source.count("|")
    split_all = {
        c.index: join_parts(split_chunk(c), [mark(p) for p in split_chunk(c)]) for c in chunks
    }
    split_marked = assemble(chunks, split_all)
    assert all(span in split_marked for span in protected)
    assert all(blk in split_marked for blk in blocks if blk.startswith(("```", "~~~")))


def rebuilt(article: Article) -> str:
    """The source again, from the front matter and the body's blocks."""
    front = article.front_matter.text if article.front_matter else ""
    return article.bom + front + "".join(s.text for s in article.body_segments)
