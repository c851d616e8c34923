"""The batch report: whole plain lines without a terminal, a table on one, JSON on demand."""

from __future__ import annotations

import io
import json
import re

import pytest

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


def column(text: str, index: int) -> list[str]:
    """The cells of column ``index`` of a rich table's body, one per row, folded pieces
    joined again (a row's continuation lines have an empty first column)."""
    cells: list[str] = []
    body = False
    for line in text.splitlines():
        if line.startswith("┡"):
            body = True
            continue
        if not body or not line.startswith("│"):
            continue
        parts = [p.strip() for p in line.split("│")[1:-1]]
        if parts[0] and not (index and cells and not parts[0]):
            if parts[1]:  # a new row starts where the status column has text
                cells.append(parts[index])
                continue
        cells[-1] += parts[index]
    return cells


def test_a_terminal_gets_a_table_that_folds_never_cuts() -> None:
    out = Terminal()
    print_report(reports(), as_json=False, stream=out, width=80, correlation_id="c" * 32)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # colours off
    assert "article" in text and "status" in text and "┃" in text
    assert "…" not in text and "..." not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert column(text, 0) == [LONG, "b.md", "c.md", "d.md"]
    notes = column(text, 6)
    assert notes[0].replace(" ", "") == ERROR.replace(" ", "")  # whole (wrapped at spaces)
    assert notes[2].replace(" ", "") == "glossarymisses:t0,t1,t2,t3,t4,t5"
    assert f"batch {'c' * 32}: 4 articles (2 error, 2 ok); 3 chunks, 1 cached" in " ".join(
        text.split()
    )


def test_without_a_terminal_the_totals_line_goes_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    print_report(reports(), as_json=False, stream=out, correlation_id="abc")
    assert out.getvalue().splitlines() == plain_lines(reports())
    assert capsys.readouterr().err == (
        "familiar: batch abc: 4 articles (2 error, 2 ok); 3 chunks, 1 cached, 0 retried,"
        " 0 failed; 0 tokens\n"
    )


def test_json_is_an_object_with_the_batch_id_totals_and_rows() -> None:
    out = Terminal()
    rows = reports()
    rows[1].tokens, rows[1].failed_chunks = 120, [2]
    print_report(rows, as_json=True, stream=out, correlation_id="abc")
    data = json.loads(out.getvalue())
    assert data["version"] == 2 and data["correlation_id"] == "abc"
    assert data["totals"] == {
        "articles": 4,
        "by_status": {"error": 2, "ok": 2},
        "chunks": 3,
        "from_cache": 1,
        "retried": 0,
        "failed_chunks": 1,
        "tokens": 120,
        "seconds": 0.0,
    }
    assert data["articles"][0]["path"] == LONG and data["articles"][0]["error"] == ERROR
    assert [r["path"] for r in data["articles"]] == [LONG, "b.md", "c.md", "d.md"]
