"""The bench chart (``bench --plot FILE.png``), drawn by matplotlib (the ``plot`` extra).

Throughput (output tok/s, blue, left axis) and TTFT p99 (red, right axis) against
concurrency (log2 axis, one tick per level). The knee (the suggested ``parallel``,
green, dashed) and the server's own capacity (grey, dotted: llama.cpp ``total_slots``)
are vertical lines labelled *inside* the plot: a label right of the middle is written
leftwards from its line, so none runs off an edge; the two labels sit at different
heights, and the legend is below the axes, so nothing overlaps.

Drawn on a ``Figure`` with the Agg canvas: no pyplot, no display, no global state.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from familiar.errors import ConfigError
from familiar.fleetcheck.results import Level

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BLUE = "#1f77b4"
RED = "#d62728"
GREEN = "#2ca02c"
GREY = "#555555"
HINT = "--plot needs matplotlib: pip install 'familiar[plot]' (or pip install matplotlib)"


def require() -> None:
    """``ConfigError`` with the one-line install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(HINT) from None


def figure(
    levels: Sequence[Level],
    *,
    suggested: int | None,
    title: str,
    server_parallel: int | None = None,
    size_px: tuple[int, int] = (960, 540),
    dpi: int = 96,
) -> Figure:
    """The chart as a matplotlib ``Figure`` (``ValueError`` when there is no level)."""
    if not levels:
        raise ValueError("no level to draw")
    from matplotlib.figure import Figure

    ordered = sorted(levels, key=lambda lv: lv.concurrency)
    xs = [lv.concurrency for lv in ordered]
    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tok/s", color=BLUE)
    tok = [lv.output_tok_per_s for lv in ordered]
    (tok_line,) = ax.plot(xs, tok, "o-", color=BLUE, label="output tok/s")
    ax.set_ylim(0, max(1.0, max(tok)) * 1.25)  # room above the line for the labels
    ttft = ax.twinx()
    ttft.set_ylabel("TTFT p99 ms", color=RED)
    points = [(lv.concurrency, lv.ttft.p99) for lv in ordered if lv.ttft.p99 is not None]
    handles = [tok_line]
    if points:
        (ttft_line,) = ttft.plot(
            [p[0] for p in points], [p[1] for p in points], "s--", color=RED, label="TTFT p99"
        )
        handles.append(ttft_line)
        ttft.set_ylim(0, max(1.0, max(p[1] for p in points)) * 1.25)
    ticks = sorted({*xs, *(v for v in (suggested, server_parallel) if v is not None)})
    low, high = ticks[0], ticks[-1]
    span = (low / 1.4, high * 1.4) if low != high else (low / 2, high * 2)
    ax.set_xlim(*span)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)
    middle = math.sqrt(span[0] * span[1])  # the middle of a log axis
    marks = []
    if server_parallel is not None:
        marks.append((server_parallel, f"server runs {server_parallel} at once", GREY, ":", 0.96))
    if suggested is not None:
        marks.append((suggested, f"knee: suggested parallel = {suggested}", GREEN, "--", 0.86))
    for x, label, color, style, height in marks:
        ax.axvline(x, color=color, linestyle=style, linewidth=1.5)
        right = x > middle
        ax.text(
            x * (0.97 if right else 1.03),
            height,
            label,
            color=color,
            ha="right" if right else "left",
            va="top",
            transform=ax.get_xaxis_transform(),
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5},
        )
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.subplots_adjust(left=0.09, right=0.91, top=0.92, bottom=0.18)
    return fig


def chart(
    levels: Sequence[Level],
    *,
    suggested: int | None,
    title: str,
    server_parallel: int | None = None,
    size_px: tuple[int, int] = (960, 540),
) -> bytes:
    """The chart as PNG bytes (``size_px`` wide and high)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure(
        levels, suggested=suggested, title=title, server_parallel=server_parallel, size_px=size_px
    )
    FigureCanvasAgg(fig)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=fig.dpi)
    return out.getvalue()
