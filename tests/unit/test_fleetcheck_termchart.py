"""The terminal chart after a bench: rendered at a fixed size with its axes and series
named; drawn only on a terminal it fits."""

from __future__ import annotations

import io
import math

import pytest

from familiar.fleetcheck import termchart
from familiar.fleetcheck.results import Level
from familiar.fleetcheck.stats import Summary


def sweep() -> list[Level]:
    return [
        Level(c, 8, 0, 1.0, 100 * min(c, 4), ttft=Summary(10.0, 10.0, 10.0 * c))
        for c in (1, 2, 4, 8)
    ]


def test_render_at_a_fixed_size_names_its_axes_and_series() -> None:
    text = termchart.render(sweep(), width=70, height=16, title="naughty: m")
    lines = text.splitlines()
    assert len(lines) == 16 and max(len(line) for line in lines) <= 70
    assert "\x1b[" not in text  # no colour unless asked
    assert "naughty: m" in lines[0]
    assert termchart.TOK in text and termchart.TTFT in text  # legend and both y labels
    assert text.count(termchart.TOK) == 2 and text.count(termchart.TTFT) == 2
    assert "concurrency" in lines[-1]
    ticks = lines[-2].split()
    assert ticks == ["1", "2", "4", "8"]
    assert "400" in text  # the left axis reaches the peak throughput


def test_an_open_loop_is_drawn_against_its_rates() -> None:
    levels = [
        Level(3, 8, 0, 1.0, 100 * i, ttft=Summary(1.0, 1.0, 5.0 * i), rate=r)
        for i, r in enumerate((math.inf, 0.5, 2.0), 1)
    ]
    text = termchart.render(levels, width=60, height=14)
    assert "request rate (req/s)" in text
    assert text.splitlines()[-2].split() == ["0.5", "2", "inf"]


def test_colour_is_kept_when_asked() -> None:
    assert "\x1b[" in termchart.render(sweep(), width=60, height=14, color=True)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_drawn_only_on_a_terminal_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("LINES", "40")
    monkeypatch.setenv("NO_COLOR", "1")
    pipe = io.StringIO()
    assert termchart.draw(sweep(), pipe) is False and pipe.getvalue() == ""
    tty = Tty()
    assert termchart.draw(sweep(), tty) is True
    assert termchart.TOK in tty.getvalue()
    lines = tty.getvalue().splitlines()
    assert len(lines) == termchart.MAX_HEIGHT and max(map(len, lines)) <= 100
    monkeypatch.setenv("COLUMNS", "40")  # too narrow: nothing rather than a mess
    small = Tty()
    assert termchart.draw(sweep(), small) is False and small.getvalue() == ""
    assert termchart.size_for(200, 10) is None and termchart.size_for(80, 24) == (79, 20)
    failed = [Level(1, 0, 8, 1.0, 0)]
    assert termchart.draw(failed, Tty()) is False  # nothing measured, nothing to draw
