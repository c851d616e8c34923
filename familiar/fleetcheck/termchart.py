"""A chart in the terminal after a bench (plotext, from the optional ``plot`` extra).

Output tok/s (left axis) and TTFT p99 (right axis) per level: concurrency for a sweep,
request rate for an open loop (``--rate``), the levels evenly spaced and named on the x
axis. Drawn only when stdout is a terminal, the run is not ``--json``, plotext is
installed and the terminal is large enough (its width and height decide the size); a
pipe or a log never gets it. ``NO_COLOR`` draws it without colour.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from typing import TextIO

from familiar.fleetcheck.results import Level

MIN_WIDTH, MIN_HEIGHT = 50, 12  # smaller than this, the chart says nothing readable
MAX_WIDTH, MAX_HEIGHT = 110, 22
TOK = "output tok/s"
TTFT = "TTFT p99 ms"


def render(
    levels: Sequence[Level],
    *,
    width: int,
    height: int,
    title: str = "",
    color: bool = False,
) -> str:
    """The chart as text, ``width`` x ``height`` characters (``ImportError`` without
    plotext). Pure apart from plotext's own figure state, which it clears."""
    import plotext as plt  # type: ignore[import-untyped]

    rates = any(lv.rate is not None for lv in levels)
    ordered = sorted(levels, key=lambda lv: lv.rate if lv.rate is not None else lv.concurrency)
    xs = list(range(1, len(ordered) + 1))
    names = [_x_name(lv) for lv in ordered]
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")  # the terminal's own background and text colour
    plt.plot(xs, [lv.output_tok_per_s for lv in ordered], label=TOK, marker="hd", color="cyan")
    ttft = [(x, lv.ttft.p99) for x, lv in zip(xs, ordered, strict=True) if lv.ttft.p99]
    if ttft:
        plt.plot(
            [x for x, _ in ttft],
            [y for _, y in ttft],
            label=TTFT,
            marker="dot",
            color="orange",
            yside="right",
        )
        plt.ylabel(TTFT, yside="right")
    plt.xticks(xs, names)
    plt.xlabel("request rate (req/s)" if rates else "concurrency")
    plt.ylabel(TOK, yside="left")
    if title:
        plt.title(title)
    text: str = plt.build()
    plt.clear_figure()
    return (text if color else str(plt.uncolorize(text))).rstrip("\n")


def _x_name(lv: Level) -> str:
    if lv.rate is None:
        return str(lv.concurrency)
    return "inf" if math.isinf(lv.rate) else f"{lv.rate:g}"


def size_for(columns: int, lines: int) -> tuple[int, int] | None:
    """The chart's size in a terminal of ``columns`` x ``lines``, or None when it does
    not fit."""
    width, height = min(columns - 1, MAX_WIDTH), min(lines - 4, MAX_HEIGHT)
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return None
    return width, height


def draw(levels: Sequence[Level], stream: TextIO, *, title: str = "") -> bool:
    """Print the chart to ``stream`` when it is a terminal the chart fits in and plotext
    is installed; whether it was drawn."""
    from familiar.listing import is_terminal

    if not is_terminal(stream) or not any(lv.ok for lv in levels):
        return False
    size = size_for(*shutil.get_terminal_size())
    if size is None:
        return False
    try:
        text = render(
            levels, width=size[0], height=size[1], title=title, color="NO_COLOR" not in os.environ
        )
    except (ImportError, AttributeError):  # no plotext, or its 6.x API (another one)
        return False  # the plot extra is optional: the table said everything
    print(text, file=stream, flush=True)
    return True
