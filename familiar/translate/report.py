"""The per-article report of a batch: JSON, a rich table on a terminal, plain lines otherwise.

Plain lines (stdout not a terminal) are never cut: one line per article, tab-separated:
path, status, counts, seconds, then the whole error or note.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TextIO


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


def _note(r: ArticleReport, misses: int | None = None) -> str:
    if r.error:
        return r.error
    if r.glossary_misses:
        shown = r.glossary_misses if misses is None else r.glossary_misses[:misses]
        return f"glossary misses: {', '.join(shown)}"
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


def _table(reports: Sequence[ArticleReport], stream: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("article", "status", "chunks", "cached", "retried", "failed", "seconds", "note")
    for r in reports:
        colour = {"ok": "green", "skipped": "yellow"}.get(r.status, "red")
        table.add_row(
            Text(r.path),
            Text(r.status, style=colour),
            str(r.chunks),
            str(r.from_cache),
            str(r.retried),
            str(len(r.failed_chunks)),
            f"{r.seconds:.1f}",
            Text(_note(r, misses=3)),
        )
    Console(file=stream).print(table)


def print_report(
    reports: Sequence[ArticleReport], *, as_json: bool, stream: TextIO | None = None
) -> None:
    out = stream or sys.stdout
    if as_json:
        print(json.dumps([asdict(r) for r in reports], ensure_ascii=False, indent=2), file=out)
    elif out.isatty():
        _table(reports, out)
    else:
        for line in plain_lines(reports):
            print(line, file=out)
    out.flush()
