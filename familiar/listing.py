"""Tables that never cut a value: every listing command prints through :func:`print_table`.

On a terminal: a rich table as wide as the terminal whose cells *fold* (a path, URL or
error longer than its column continues on the next line of the cell; rich's default
would end it with an ellipsis). Anywhere else (a pipe, a log, a cron mail): a header
line and one tab-separated line per row, every value whole, tabs and newlines inside a
value turned into spaces, so ``cut -f`` and ``awk -F'\\t'`` read it. A ``totals`` line
ends the table on a terminal; without one it goes to stderr, so stdout stays the header
and one line per row.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO


def one_line(value: object) -> str:
    """``value`` as one line: newlines, carriage returns and tabs become spaces."""
    return " ".join(str(value).replace("\t", " ").replace("\r", "").split("\n"))


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    totals: str | None = None,
    title: str | None = None,
    styles: Sequence[str | None] | None = None,
    fold: Sequence[int] | None = None,
    stream: TextIO | None = None,
    terminal: bool | None = None,
    width: int | None = None,
) -> None:
    """Print ``rows`` under ``headers`` (see the module docstring). ``styles``: one rich
    style per row on a terminal (None: none); ``terminal`` and ``width`` override what
    the stream says (tests); ``fold``: the columns that may wrap (paths, URLs, errors;
    None: every column), the others keep their width."""
    out = stream or sys.stdout
    if terminal is None:
        terminal = is_terminal(out)
    if not terminal:
        if title:
            print(one_line(title), file=out)
        print("\t".join(headers), file=out)
        for row in rows:
            print("\t".join(one_line(v) for v in row), file=out)
        out.flush()
        if totals:  # stdout stays the header and one line per row, for scripts
            print(f"familiar: {one_line(totals)}", file=sys.stderr, flush=True)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", expand=False)
    for index, name in enumerate(headers):
        wraps = fold is None or index in fold
        table.add_column(name, overflow="fold", no_wrap=not wraps, ratio=1 if wraps else None)
    for i, row in enumerate(rows):
        style = styles[i] if styles is not None and i < len(styles) else None
        table.add_row(*(Text(str(v)) for v in row), style=style)
    console = Console(file=out, width=width, soft_wrap=False)
    console.print(table)
    if totals:
        console.print(Text(totals), overflow="fold")
    out.flush()
