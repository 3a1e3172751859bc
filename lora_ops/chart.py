"""Small charts drawn with PIL alone (no matplotlib), shared by LoRA Lab's diagnostic images.

:func:`bar_chart`: bars run horizontally, one labelled row per item, so that 27 SD blocks or 61 Flux
blocks stay readable without rotated text; a bar may be highlighted (an overflowing block, say) with
its own colour. :func:`xy_chart`: lines on shared axes (the sweep's metrics against the LoRA weight);
:func:`line_chart` is the one-series case with a moving average (a training loss curve).
:func:`text_panel` and :func:`stack` put captions and several charts on one canvas. Colours are plain
RGB tuples.
"""

from __future__ import annotations

import math
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


@dataclass
class Series:
    """One line of an :func:`xy_chart`: ``values[i]`` at ``x[i]`` (``None``, NaN or Inf leave a gap)."""

    label: str
    values: Sequence[float | None]
    color: tuple[int, int, int] = BAR
    line_width: int = 2


SERIES_COLORS = ((70, 120, 200), (230, 140, 30), (60, 160, 90), (140, 90, 180))
MAX_MARKERS = 40  # more points than this are drawn as lines only (a loss curve of thousands of steps)
MAX_X_TICKS = 12  # more x values than this get ticks at round steps (:func:`_round_ticks`) instead of one each


def _finite(v: float | None) -> bool:
    return v is not None and v == v and abs(v) != float("inf")


def _round_ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """``lo`` and the multiples of a round step (1, 2 or 5 times a power of ten) after it, up to ``hi``."""
    span = hi - lo
    base = 10 ** math.floor(math.log10(span / most))
    step = next(base * m for m in (1, 2, 5, 10) if span / (base * m) <= most)
    first = math.floor(lo / step) * step + step
    if first - lo < step / 3:
        first += step
    return [lo] + [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def xy_chart(x: Sequence[float], series: Sequence[Series], *, title: str, x_label: str = "",
             width: int = 720, height: int = 300, font_size: int = 13, y_range: tuple[float, float] | None = None,
             marker_x: float | None = None, marker_label: str = "", flagged: Sequence[int] = (),
             caption: str = "", empty_text: str = "nothing to show") -> Image.Image:
    """Lines through the points ``(x[i], s.values[i])`` for each series, on shared axes.

    ``y_range`` fixes the y axis (default: 0 to the largest finite value). ``marker_x`` draws a
    vertical line in the highlight colour with ``marker_label`` (the sweep's break point); indices in
    ``flagged`` get a highlight ring on every series (cells with NaN/black/overflow flags). Points get
    dots up to :data:`MAX_MARKERS` values; ``caption`` is printed under the axis, at the left.
    """
    f_title, f_row = font(font_size + 3), font(font_size)
    pad = 10
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=INK, font=f_title)
    title_h = font_size + 3 + 2 * pad
    legend_h = font_size + 8
    finite = [v for s in series for v in s.values if _finite(v)]
    lo, hi = y_range if y_range is not None else (0.0, max(finite, default=1.0))
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.01
    y_ticks = [hi - (hi - lo) * i / 4 for i in range(5)]
    axis_w = max(_text_width(draw, f"{v:.3g}", f_row) for v in y_ticks) + pad
    x0, x1 = pad + axis_w, width - pad - 10
    y0, y1 = title_h + legend_h, height - 2 * (font_size + 6)
    if not finite:
        draw.text((x0, y0), empty_text, fill=MUTED, font=f_row)
        return img
    xs = list(x)
    xmin, xmax = min(xs), max(xs)
    if xmax <= xmin:
        xmin, xmax = xmin - 0.5, xmax + 0.5

    def px(v: float) -> float:
        return x0 + (x1 - x0) * (v - xmin) / (xmax - xmin)

    def py(v: float) -> float:
        v = min(max(v, lo), hi)
        return y1 - (y1 - y0) * (v - lo) / (hi - lo)

    for i, v in enumerate(y_ticks):
        gy = y0 + (y1 - y0) * i / 4
        draw.line([(x0, gy), (x1, gy)], fill=GRID)
        draw.text((pad, gy - font_size / 2), f"{v:.3g}", fill=MUTED, font=f_row)
    ticks = xs if len(xs) <= MAX_X_TICKS else _round_ticks(xmin, xmax)
    for v in ticks:
        label = f"{v:g}"
        draw.line([(px(v), y1), (px(v), y1 + 4)], fill=INK)
        draw.text((px(v) - _text_width(draw, label, f_row) / 2, y1 + 6), label, fill=INK, font=f_row)
    bottom = height - font_size - 6
    if x_label:
        draw.text((x1 - _text_width(draw, x_label, f_row), bottom), x_label, fill=MUTED, font=f_row)
    if caption:
        draw.text((x0, bottom), caption, fill=INK, font=f_row)
    lx = x0
    for s in series:
        draw.line([(lx, title_h + 8), (lx + 18, title_h + 8)], fill=s.color, width=3)
        draw.text((lx + 22, title_h + 1), s.label, fill=INK, font=f_row)
        lx += 22 + _text_width(draw, s.label, f_row) + 16
    if marker_x is not None:
        mx = px(marker_x)
        draw.line([(mx, y0), (mx, y1)], fill=HIGHLIGHT, width=2)
        if marker_label:
            tw = _text_width(draw, marker_label, f_row)
            draw.text((min(mx + 4, x1 - tw), y0 + 2), marker_label, fill=HIGHLIGHT, font=f_row)
    for s in series:
        points = [(px(xv), py(v)) if _finite(v) else None for xv, v in zip(xs, s.values)]
        for a, b in zip(points, points[1:]):
            if a is not None and b is not None:
                draw.line([a, b], fill=s.color, width=s.line_width)
        dots = len(points) <= MAX_MARKERS
        for i, p in enumerate(points):
            if p is None:
                continue
            alone = (i == 0 or points[i - 1] is None) and (i + 1 == len(points) or points[i + 1] is None)
            if dots or alone:
                draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=s.color)
            if i in flagged:
                draw.ellipse([p[0] - 6, p[1] - 6, p[0] + 6, p[1] + 6], outline=HIGHLIGHT, width=2)
    return img


def line_chart(values: Sequence[float], *, title: str, width: int = 720, height: int = 320,
               font_size: int = 13, smooth: int = 0, x_label: str = "step", x_start: int = 1,
               empty_text: str = "nothing to show") -> Image.Image:
    """One series against ``x_start, x_start + 1, ...`` (a loss curve) as an :func:`xy_chart`, the y axis
    from the smallest to the largest finite value, min/max/last printed under it. ``smooth > 1`` adds a
    moving average over that many points in the highlight colour."""
    finite = [v for v in values if _finite(v)]
    xs = list(range(x_start, x_start + len(values)))
    series = [Series("loss", values, line_width=1 if len(values) > MAX_MARKERS else 2)]
    if smooth > 1 and len(values) > smooth:
        window: list[float] = []
        averaged: list[float | None] = []
        for v in values:
            if _finite(v):
                window = (window + [v])[-smooth:]
            averaged.append(sum(window) / len(window) if window else None)
        series.append(Series(f"mean of {smooth}", averaged, HIGHLIGHT))
    caption = ""
    y_range = None
    if finite:
        y_range = (min(finite), max(finite))
        caption = (f"min {compact_number(min(finite))}   max {compact_number(max(finite))}   "
                   f"last {compact_number(values[-1])}")
    return xy_chart(xs, series, title=title, x_label=x_label, width=width, height=height, font_size=font_size,
                    y_range=y_range, caption=caption, empty_text=empty_text)
