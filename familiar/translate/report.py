"""The per-article report of a batch: JSON, a rich table on a terminal, plain lines otherwise.

Plain lines (stdout not a terminal) are never cut: one line per article, tab-separated:
path, status, counts, seconds, then the whole error or note (the totals line goes to
stderr, so stdout stays one line per article for scripts). On a
terminal the table folds long paths and errors inside their cells (never an ellipsis).
``--json`` is an object (version 2): ``correlation_id``, ``totals`` and the rows under
``articles``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from familiar.listing import is_terminal, print_table


@dataclass
class ArticleReport:
    path: str
    out: str | None = None
    status: str = "pending"  # ok | failed | error | skipped | interrupted
    source_lang: str | None = None
    chunks: int = 0
    from_cache: int = 0
    retried: int = 0
    split: int = 0
    failed_chunks: list[int] = field(default_factory=list)
    glossary_misses: list[str] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None


def _note(r: ArticleReport) -> str:
    if r.error:
        return r.error
    if r.glossary_misses:
        return f"glossary misses: {', '.join(r.glossary_misses)}"
    return r.out or ""


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")).replace("\t", " ").replace("\r", "")


def plain_lines(reports: Sequence[ArticleReport]) -> list[str]:
    """One tab-separated line per article, nothing truncated."""
    return [
        "\t".join(
            (
                _one_line(r.path),
                r.status,
                f"chunks={r.chunks} cached={r.from_cache} retried={r.retried}"
                f" split={r.split} failed={len(r.failed_chunks)}",
                f"{r.seconds:.1f}s",
                _one_line(_note(r)),
            )
        )
        for r in reports
    ]


#: the terminal table's columns (retried and split chunks: in the plain lines and JSON)
HEADERS = ("article", "status", "chunks", "cached", "failed", "s", "note")


def _row(r: ArticleReport) -> list[str]:
    return [
        r.path,
        r.status,
        str(r.chunks),
        str(r.from_cache),
        str(len(r.failed_chunks)),
        f"{r.seconds:.1f}",
        _note(r),
    ]


def totals(reports: Sequence[ArticleReport]) -> dict[str, Any]:
    """The batch's totals: articles by status, chunks, cached, failed chunks, tokens."""
    by_status: dict[str, int] = {}
    for r in reports:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    return {
        "articles": len(reports),
        "by_status": dict(sorted(by_status.items())),
        "chunks": sum(r.chunks for r in reports),
        "from_cache": sum(r.from_cache for r in reports),
        "retried": sum(r.retried for r in reports),
        "failed_chunks": sum(len(r.failed_chunks) for r in reports),
        "tokens": sum(r.tokens for r in reports),
        "seconds": round(sum(r.seconds for r in reports), 1),
    }


def totals_line(reports: Sequence[ArticleReport], correlation_id: str | None = None) -> str:
    t = totals(reports)
    statuses = ", ".join(f"{n} {status}" for status, n in t["by_status"].items())
    batch = f"batch {correlation_id}: " if correlation_id else ""
    return (
        f"{batch}{t['articles']} article{'s' if t['articles'] != 1 else ''}"
        f" ({statuses or 'none'}); {t['chunks']} chunks, {t['from_cache']} cached,"
        f" {t['retried']} retried, {t['failed_chunks']} failed; {t['tokens']} tokens"
    )


#: the shape of ``translate --json``; 1 was a bare list of the rows
JSON_VERSION = 2


def report_json(
    reports: Sequence[ArticleReport], correlation_id: str | None = None
) -> dict[str, Any]:
    """``translate --json``: the batch's correlation id, its totals and the rows."""
    return {
        "version": JSON_VERSION,
        "correlation_id": correlation_id,
        "totals": totals(reports),
        "articles": [asdict(r) for r in reports],
    }


def print_report(
    reports: Sequence[ArticleReport],
    *,
    as_json: bool,
    stream: TextIO | None = None,
    correlation_id: str | None = None,
    terminal: bool | None = None,
    width: int | None = None,
    quiet: bool = False,
) -> None:
    """The report: JSON, a folding table on a terminal, or whole tab-separated lines
    (the plain lines, unchanged; the totals line then goes to stderr)."""
    out = stream or sys.stdout
    if as_json:
        data = report_json(reports, correlation_id)
        print(json.dumps(data, ensure_ascii=False, indent=2), file=out)
        out.flush()
        return
    if terminal is None:
        terminal = is_terminal(out)
    line = totals_line(reports, correlation_id)
    if not terminal:  # stdout stays one line per article for scripts; totals on stderr
        for text in plain_lines(reports):
            print(text, file=out)
        out.flush()
        if not quiet:  # -q: stderr holds errors only
            print(f"familiar: {line}", file=sys.stderr, flush=True)
        return
    colour = {"ok": "green", "skipped": "yellow"}
    print_table(
        HEADERS,
        [_row(r) for r in reports],  # every glossary miss too: the cell wraps
        totals=line,
        styles=[colour.get(r.status, "red") for r in reports],
        fold=(0, len(HEADERS) - 1),
        stream=out,
        terminal=True,
        width=width,
    )
