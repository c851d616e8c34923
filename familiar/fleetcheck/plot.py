"""Pure: the bench chart as PNG bytes, drawn without any plotting library.

Throughput (output tok/s, blue, left axis) and TTFT p99 (red, right axis) against
concurrency (log2 axis, one tick per level), with the knee marked (green, dashed). A
PNG is a few zlib-compressed RGB rows in three chunks, so the standard library is
enough; text uses a built-in 5x7 pixel font (digits, lower-case letters and a few
signs; other characters print lower-cased or as blanks).
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence

from familiar.fleetcheck.results import Level

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (40, 40, 40)
GREY: Color = (220, 220, 220)
BLUE: Color = (31, 119, 180)
RED: Color = (214, 39, 40)
GREEN: Color = (44, 160, 44)

# 5x7 glyphs: a character, then seven rows of two hex digits (bit 4 the leftmost pixel)
_FONT_DATA = """
00E11131519110E 1040C040404040E 20E11010204081F 31F02040201110E 402060A121F0202
51F101E0101110E 60608101E11110E 71F010204080808 80E11110E11110E 90E11110F01020C
a00000E010F110F b1010161911111E c00000E1010110E d01010D1311110F e00000E111F100E
f0609081C080808 g000F11110F010E h10101619111111 i04000C0404040E j0200060202120C
k10101214181412 l0C04040404040E m00001A15151111 n00001619111111 o00000E1111110E
p00001E111E1010 q00000D130F0101 r00001619101010 s00000E100E011E t08081C08080906
u0000111111130D v00001111110A04 w0000111115150A x0000110A040A11 y000011110F010E
z00001F0204081F T1F040404040404 F1F10101E101010 .00000000000C0C /01010204081010
=00001F001F0000 -0000001F000000 (02040808080402 )08040202020408 :000C0C000C0C00
,000000000C0408 %18190204081303 _0000000000001F @0E11171517100E
"""


def _font() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {" ": (0,) * 7}
    for item in _FONT_DATA.split():
        char, hexes = item[0], item[1:]
        out[char] = tuple(int(hexes[i : i + 2], 16) for i in range(0, 14, 2))
    return out


FONT = _font()


class Canvas:
    """An RGB image in memory."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, color: Color, size: int = 1) -> None:
        half = size // 2
        for yy in range(y - half, y - half + size):
            if 0 <= yy < self.height:
                for xx in range(x - half, x - half + size):
                    if 0 <= xx < self.width:
                        i = 3 * (yy * self.width + xx)
                        self.pixels[i : i + 3] = bytes(color)

    def line(
        self, x0: int, y0: int, x1: int, y1: int, color: Color, size: int = 1, dash: int = 0
    ) -> None:
        """Bresenham's line; ``dash`` > 0 draws ``dash`` pixels on, ``dash`` off."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dash or (n // dash) % 2 == 0:
                self.dot(x0, y0, color, size)
            n += 1
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 2) -> int:
        """Draw ``text`` with its top-left at (x, y); returns its width in pixels."""
        for n, char in enumerate(text):
            glyph = FONT.get(char) or FONT.get(char.lower()) or FONT[" "]
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (0x10 >> col):
                        for yy in range(scale):
                            for xx in range(scale):
                                px = x + (n * 6 + col) * scale + xx
                                self.dot(px, y + row * scale + yy, color)
        return text_width(text, scale)

    def png(self) -> bytes:
        """The image as a PNG file (8-bit RGB, no filter, zlib level 9)."""
        stride = 3 * self.width
        raw = b"".join(
            b"\x00" + bytes(self.pixels[r * stride : (r + 1) * stride]) for r in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b"")
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def text_width(text: str, scale: int = 2) -> int:
    return max(len(text) * 6 - 1, 0) * scale


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (> 0)."""
    if value <= 0:
        return 1.0
    power = math.pow(10.0, math.floor(math.log10(value)))
    return next(step * power for step in (1.0, 2.0, 5.0, 10.0) if step * power >= value * 0.9999)


def short_number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k".replace(".0k", "k")
    if value >= 10 or value == 0:
        return f"{value:.0f}"
    return f"{value:.1f}"


def chart(
    levels: Sequence[Level], *, suggested: int | None, title: str, width: int = 960,
    height: int = 540,
) -> bytes:  # fmt: skip
    """The bench chart of ``levels`` (at least one) as PNG bytes."""
    if not levels:
        raise ValueError("nothing to plot")
    ordered = sorted(levels, key=lambda lv: lv.concurrency)
    canvas = Canvas(width, height)
    left, right, top, bottom = 90, width - 100, 70, height - 70
    tok_max = nice_max(max(lv.output_tok_per_s for lv in ordered) * 1.05)
    lat_values = [lv.ttft.p99 for lv in ordered if lv.ttft.p99 is not None]
    lat_max = nice_max(max(lat_values, default=1.0) * 1.05)
    lows, highs = math.log2(ordered[0].concurrency), math.log2(ordered[-1].concurrency)
    span = highs - lows or 1.0

    def px(concurrency: int) -> int:
        if highs == lows:
            return (left + right) // 2
        return round(left + (math.log2(concurrency) - lows) / span * (right - left))

    def py(value: float, top_value: float) -> int:
        return round(bottom - value / top_value * (bottom - top))

    steps = 4 if f"{tok_max:e}"[0] == "2" else 5
    for i in range(steps + 1):  # grid and both axes' labels
        y = round(bottom - i / steps * (bottom - top))
        canvas.line(left, y, right, y, GREY)
        label = short_number(tok_max * i / steps)
        canvas.text(left - 8 - text_width(label), y - 7, label, BLUE)
        canvas.text(right + 8, y - 7, short_number(lat_max * i / steps), RED)
    canvas.line(left, top, left, bottom, BLACK)
    canvas.line(right, top, right, bottom, BLACK)
    canvas.line(left, bottom, right, bottom, BLACK)
    last_label_end = -1
    for lv in ordered:
        x = px(lv.concurrency)
        canvas.line(x, bottom, x, bottom + 5, BLACK)
        label = str(lv.concurrency)
        start = x - text_width(label) // 2
        if start > last_label_end + 4:
            last_label_end = start + canvas.text(start, bottom + 10, label)
    axis = "concurrency"
    canvas.text((left + right - text_width(axis)) // 2, bottom + 36, axis)
    if suggested is not None and ordered[0].concurrency <= suggested <= ordered[-1].concurrency:
        x = px(suggested)
        canvas.line(x, top, x, bottom, GREEN, size=2, dash=6)
        canvas.text(x + 6, top + 4, f"parallel = {suggested}", GREEN)
    _polyline(
        canvas, [(px(lv.concurrency), py(lv.output_tok_per_s, tok_max)) for lv in ordered], BLUE
    )
    _polyline(
        canvas,
        [
            (px(lv.concurrency), py(lv.ttft.p99, lat_max))
            for lv in ordered
            if lv.ttft.p99 is not None
        ],
        RED,
    )
    canvas.text(left, 14, title[:70])
    x = left + canvas.text(left, 40, "output tok/s", BLUE) + 30
    canvas.text(x, 40, "TTFT p99 ms", RED)
    return canvas.png()


def _polyline(canvas: Canvas, points: list[tuple[int, int]], color: Color) -> None:
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        canvas.line(x0, y0, x1, y1, color, size=3)
    for x, y in points:
        canvas.dot(x, y, color, size=9)
