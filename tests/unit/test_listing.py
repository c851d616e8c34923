"""print_table: a terminal table folds long values inside their cells (never an
ellipsis) and fits the width; without a terminal, whole tab-separated lines and the
totals on stderr."""

from __future__ import annotations

import io
import re

import pytest

from familiar.listing import one_line, print_table

URL = "https://gateway.example.org/" + "segment/" * 12 + "v1"


def test_a_terminal_table_folds_and_fits() -> None:
    out = io.StringIO()
    rows = [("naughty", URL, "4"), ("kg", "http://x/v1", "16")]
    print_table(("slot", "url", "parallel"), rows, totals="2 slots", stream=out,
                terminal=True, width=60, fold=(1,))  # fmt: skip
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 60
    pieces = [line.split("│")[2].strip() for line in text.splitlines() if line.startswith("│")]
    assert "".join(pieces).startswith(URL)  # the URL's pieces, in order, make it whole
    assert text.rstrip().endswith("2 slots")


def test_without_a_terminal_values_are_whole_and_totals_go_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    print_table(("a", "b"), [(URL, "two\nlines\tand tab")], totals="1 row", stream=out,
                terminal=False)  # fmt: skip
    assert out.getvalue() == f"a\tb\n{URL}\ttwo lines and tab\n"
    assert capsys.readouterr().err == "familiar: 1 row\n"
    assert one_line("a\r\nb") == "a b"
