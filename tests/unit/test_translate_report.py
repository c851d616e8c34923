"""The batch report: whole plain lines without a terminal, a table on one, JSON on demand."""

from __future__ import annotations

import io
import json

from familiar.translate.report import ArticleReport, plain_lines, print_report

LONG = "/srv/docs/" + "a-very-long-folder-name/" * 8 + "article.md"
ERROR = f"cannot write /out/{'x' * 150}.md: Is a directory"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def reports() -> list[ArticleReport]:
    return [
        ArticleReport(path=LONG, status="error", error=ERROR),
        ArticleReport(path="b.md", out="/out/b.md", status="ok", chunks=3, from_cache=1),
        ArticleReport(path="c.md", status="ok", glossary_misses=[f"t{i}" for i in range(6)]),
        ArticleReport(path="d.md", status="error", error="two\nlines\tand a tab"),
    ]


def test_plain_lines_are_whole_and_one_per_article() -> None:
    out = io.StringIO()
    print_report(reports(), as_json=False, stream=out)
    lines = out.getvalue().splitlines()
    assert lines == plain_lines(reports()) and len(lines) == 4
    assert lines[0].split("\t") == [
        LONG,
        "error",
        "chunks=0 cached=0 retried=0 split=0 failed=0",
        "0.0s",
        ERROR,
    ]
    assert lines[1].endswith("\t/out/b.md") and "chunks=3 cached=1" in lines[1]
    assert lines[2].endswith("glossary misses: t0, t1, t2, t3, t4, t5")
    assert lines[3].split("\t")[-1] == "two lines and a tab"


def test_a_terminal_gets_a_table() -> None:
    out = Terminal()
    print_report(reports(), as_json=False, stream=out)
    text = out.getvalue()
    assert "article" in text and "status" in text and "┃" in text
    assert LONG not in text  # a table fits the terminal; the plain lines keep it whole


def test_json_is_the_whole_report() -> None:
    out = Terminal()
    print_report(reports(), as_json=True, stream=out)
    rows = json.loads(out.getvalue())
    assert rows[0]["path"] == LONG and rows[0]["error"] == ERROR
