"""The bench chart: a valid PNG drawn by the standard library alone."""

from __future__ import annotations

import struct
import zlib

import pytest

from familiar.fleetcheck.plot import BLUE, FONT, GREEN, RED, Canvas, chart, nice_max, short_number
from familiar.fleetcheck.results import Level
from familiar.fleetcheck.stats import Summary


def _decode(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw RGB rows with their filter bytes) of an 8-bit RGB PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks[kind] = data
        pos += 12 + length
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color) == (8, 2)
    assert b"IEND" in chunks
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_font_glyphs_are_five_by_seven() -> None:
    assert {"0", "9", "a", "z", "T", "F", "/", ".", "=", " "} <= set(FONT)
    for char, rows in FONT.items():
        assert len(rows) == 7 and all(0 <= r < 32 for r in rows), char


def test_canvas_png_round_trips() -> None:
    c = Canvas(7, 3)
    c.dot(2, 1, RED)
    width, height, raw = _decode(c.png())
    assert (width, height) == (7, 3)
    assert len(raw) == 3 * (1 + 7 * 3)
    row1 = raw[22 : 22 + 22]
    assert row1[0] == 0 and row1[1 + 3 * 2 : 1 + 3 * 3] == bytes(RED)


def _level(c: int, tok_s: float, p99: float | None) -> Level:
    ttft = Summary() if p99 is None else Summary(p99, p99, p99)
    return Level(c, ok=8, failed=0, duration_s=1.0, output_tokens=round(tok_s), ttft=ttft)


def test_chart_draws_both_lines_and_the_knee() -> None:
    levels = [_level(1, 100, 20), _level(2, 200, 21), _level(4, 390, 25), _level(8, 400, 120)]
    width, height, raw = _decode(chart(levels, suggested=4, title="naughty: gemma (vllm)"))
    assert (width, height) == (960, 540)
    for color in (BLUE, RED, GREEN):
        assert raw.count(bytes(color)) > 100, color


def test_chart_of_one_level_and_of_none() -> None:
    _decode(chart([_level(4, 0, None)], suggested=None, title="x"))
    with pytest.raises(ValueError):
        chart([], suggested=None, title="x")


def test_axis_numbers() -> None:
    assert nice_max(0) == 1.0
    assert nice_max(343) == 500.0
    assert nice_max(1000) == 1000.0
    assert nice_max(0.3) == pytest.approx(0.5)
    assert [short_number(v) for v in (0, 2.5, 125, 1500, 2000, 25000)] == [
        "0", "2.5", "125", "1.5k", "2k", "25k",
    ]  # fmt: skip
