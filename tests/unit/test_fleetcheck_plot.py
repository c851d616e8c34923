"""The bench chart, drawn by matplotlib: a valid PNG of the asked size whose pixels hold
both lines and the marks, with the knee's and the server's labels inside the axes; and
the one-line hint when matplotlib is missing."""

from __future__ import annotations

import io
import struct
import sys
import zlib

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from familiar.errors import ConfigError
from familiar.fleetcheck.plot import BLUE, GREEN, GREY, RED, chart, figure, require
from familiar.fleetcheck.results import Level
from familiar.fleetcheck.stats import Summary


def _chunks(png: bytes) -> dict[bytes, bytes]:
    """Every chunk of a PNG, each CRC checked."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + data
        pos += 12 + length
    assert b"IEND" in chunks
    return chunks


def _level(c: int, tok_s: float, p99: float | None) -> Level:
    ttft = Summary() if p99 is None else Summary(p99, p99, p99)
    return Level(c, ok=8, failed=0, duration_s=1.0, output_tokens=round(tok_s), ttft=ttft)


LEVELS = [_level(1, 100, 20), _level(2, 200, 21), _level(4, 390, 25), _level(8, 400, 120)]


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _count_near(image: Image.Image, color: tuple[int, int, int], tol: int = 30) -> int:
    pixels = np.asarray(image, dtype=np.int32)[:, :, :3]
    return int((np.abs(pixels - np.array(color)).max(axis=2) <= tol).sum())


def test_chart_is_a_png_of_the_asked_size_with_both_lines_and_the_marks() -> None:
    png = chart(LEVELS, suggested=4, title="naughty: gemma (vllm)", server_parallel=8)
    width, height = struct.unpack(">II", _chunks(png)[b"IHDR"][:8])
    assert (width, height) == (960, 540)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (960, 540)
    for color in (BLUE, RED, GREEN):
        assert _count_near(image, _rgb(color)) > 200, color
    small = chart(LEVELS, suggested=4, title="x", size_px=(640, 360))
    assert Image.open(io.BytesIO(small)).size == (640, 360)


@pytest.mark.parametrize(("suggested", "server"), [(8, 4), (1, 8), (4, 4), (8, 8)])
def test_labels_are_inside_the_axes_and_do_not_overlap(suggested: int, server: int) -> None:
    fig = figure(LEVELS, suggested=suggested, title="t", server_parallel=server)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    inside = ax.get_window_extent(renderer)
    labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    assert set(labels) == {
        f"knee: suggested parallel = {suggested}",
        f"server runs {server} at once",
    }
    for text, box in labels.items():
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, text
        assert inside.y0 <= box.y0 and box.y1 <= inside.y1, text
    knee, srv = labels.values()
    assert not knee.overlaps(srv)
    colors = {t.get_text(): t.get_color() for t in ax.texts}
    assert colors[f"server runs {server} at once"] == GREY
    assert colors[f"knee: suggested parallel = {suggested}"] == GREEN


def test_chart_of_one_level_of_no_knee_and_of_none() -> None:
    png = chart([_level(4, 0, None)], suggested=None, title="x")
    assert Image.open(io.BytesIO(png)).size == (960, 540)
    assert len(figure([_level(4, 0, None)], suggested=None, title="x").axes[0].texts) == 0
    with pytest.raises(ValueError, match="no level"):
        chart([], suggested=None, title="x")


def test_a_missing_matplotlib_is_one_line_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    require()  # installed here
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ConfigError) as info:
        require()
    assert "familiar[plot]" in str(info.value) and "\n" not in str(info.value)
