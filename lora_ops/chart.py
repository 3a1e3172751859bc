"""Small bar charts drawn with PIL alone (no matplotlib), shared by LoRA Lab's diagnostic images.

Bars run horizontally, one labelled row per item, so that 27 SD blocks or 61 Flux blocks stay
readable without rotated text. :func:`bar_chart` draws one chart; :func:`stack` puts several under
each other on one canvas. Colours are plain RGB tuples; a bar may be highlighted (an overflowing
block, say) with its own colour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (250, 250, 250)
INK = (30, 30, 30)
GRID = (215, 215, 215)
BAR = (70, 120, 200)
HIGHLIGHT = (210, 60, 50)
MUTED = (150, 150, 150)

_FONT_CACHE: dict[int, ImageFont.ImageFont] = {}


def font(size: int = 14) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (scalable when Pillow has FreeType, else the bitmap one)."""
    cached = _FONT_CACHE.get(size)
    if cached is None:
        try:
            cached = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: fixed-size bitmap font
            cached = ImageFont.load_default()
        _FONT_CACHE[size] = cached
    return cached


def _text_width(draw: ImageDraw.ImageDraw, text: str, fnt) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=fnt)
    return int(right - left)


@dataclass
class Bar:
    """One row: ``label`` on the left, a bar of length ``value``, ``note`` (the printed value) after it."""

    label: str
    value: float
    note: str = ""
    color: tuple[int, int, int] | None = None


def bar_chart(bars: Sequence[Bar], *, title: str, width: int = 720, row_height: int = 20,
              font_size: int = 13, empty_text: str = "nothing to show") -> Image.Image:
    """A horizontal bar chart: rows top to bottom in the order given, bars scaled to the largest value.

    Negative values are drawn as 0 (the charts here show norms and counts).
    """
    f_title, f_row = font(font_size + 3), font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = 10
    title_h = font_size + 3 + 2 * pad
    label_w = max((_text_width(probe, b.label, f_row) for b in bars), default=0) + pad
    note_w = max((_text_width(probe, b.note, f_row) for b in bars), default=0) + pad
    rows = max(len(bars), 1)
    height = title_h + rows * row_height + pad
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=INK, font=f_title)
    x0 = pad + label_w
    span = max(width - x0 - note_w - pad, 20)
    if not bars:
        draw.text((x0, title_h), empty_text, fill=MUTED, font=f_row)
        return img
    top = max(max(b.value for b in bars), 0.0)
    for i in range(5):
        gx = x0 + span * i / 4
        draw.line([(gx, title_h - 2), (gx, height - pad)], fill=GRID)
    for i, b in enumerate(bars):
        y = title_h + i * row_height
        draw.text((pad, y + 2), b.label, fill=INK, font=f_row)
        length = 0 if top <= 0 else span * max(b.value, 0.0) / top
        if length > 0:
            draw.rectangle([x0, y + 3, x0 + max(length, 1), y + row_height - 4], fill=b.color or BAR)
        draw.text((x0 + length + 4, y + 2), b.note, fill=b.color if b.color else INK, font=f_row)
    return img


def _wrap(draw: ImageDraw.ImageDraw, line: str, fnt, width: int) -> list[str]:
    """``line`` broken at spaces into pieces no wider than ``width`` pixels (a long word stays whole)."""
    out: list[str] = []
    current = ""
    for word in line.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and _text_width(draw, candidate, fnt) > width:
            out.append(current)
            current = "    " + word
        else:
            current = candidate
    out.append(current)
    return out


def text_panel(lines: Sequence[str], *, width: int = 720, font_size: int = 13,
               color: tuple[int, int, int] = INK) -> Image.Image:
    """Lines of text on the chart background (a caption or a warning under a chart), wrapped to ``width``."""
    f_row = font(font_size)
    line_h = font_size + 6
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [piece for line in lines for piece in _wrap(probe, line, f_row, width - 20)]
    img = Image.new("RGB", (width, 10 + line_h * max(len(lines), 1)), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((10, 5 + i * line_h), line, fill=color, font=f_row)
    return img


def stack(images: Sequence[Image.Image], *, gap: int = 6) -> Image.Image:
    """Images one under the other on one canvas as wide as the widest, left-aligned."""
    if not images:
        return Image.new("RGB", (1, 1), BACKGROUND)
    width = max(im.width for im in images)
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height + gap
    return canvas


def compact_number(value: float, fmt: Callable[[float], str] | None = None) -> str:
    """``1.23e+05`` for large or tiny values, ``0.0123`` otherwise; ``fmt`` overrides."""
    if fmt is not None:
        return fmt(value)
    if value == 0:
        return "0"
    if abs(value) >= 1e7 or abs(value) < 1e-3:
        return f"{value:.3g}"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"
