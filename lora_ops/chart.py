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


@dataclass
class Series:
    """One line of an :func:`xy_chart`: ``values[i]`` at ``x[i]`` (``None`` leaves a gap)."""

    label: str
    values: Sequence[float | None]
    color: tuple[int, int, int] = BAR


SERIES_COLORS = ((70, 120, 200), (230, 140, 30), (60, 160, 90), (140, 90, 180))


def xy_chart(x: Sequence[float], series: Sequence[Series], *, title: str, x_label: str = "",
               width: int = 720, height: int = 300, font_size: int = 13, y_range: tuple[float, float] | None = None,
               marker_x: float | None = None, marker_label: str = "",
               flagged: Sequence[int] = ()) -> Image.Image:
    """Lines through the points ``(x[i], s.values[i])`` for each series, on shared axes.

    ``y_range`` fixes the y axis (default: 0 to the largest value). ``marker_x`` draws a vertical
    line in the highlight colour with ``marker_label`` (the sweep's break point); indices in
    ``flagged`` get a highlight ring on every series (cells with NaN/black/overflow flags).
    """
    f_title, f_row = font(font_size + 3), font(font_size)
    pad = 10
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_h = font_size + 3 + 2 * pad
    legend_h = font_size + 8
    axis_w = _text_width(probe, "0.000", f_row) + pad
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=INK, font=f_title)
    x0, x1 = pad + axis_w, width - pad - 10
    y0, y1 = title_h + legend_h, height - 2 * (font_size + 6)
    finite = [v for s in series for v in s.values if v is not None and v == v and abs(v) != float("inf")]
    lo, hi = y_range if y_range is not None else (0.0, max(finite, default=1.0))
    if hi <= lo:
        hi = lo + 1.0
    xs = list(x)
    xmin, xmax = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if xmax <= xmin:
        xmin, xmax = xmin - 0.5, xmax + 0.5

    def px(v: float) -> float:
        return x0 + (x1 - x0) * (v - xmin) / (xmax - xmin)

    def py(v: float) -> float:
        v = min(max(v, lo), hi)
        return y1 - (y1 - y0) * (v - lo) / (hi - lo)

    for i in range(5):
        gy = y0 + (y1 - y0) * i / 4
        draw.line([(x0, gy), (x1, gy)], fill=GRID)
        draw.text((pad, gy - font_size / 2), f"{hi - (hi - lo) * i / 4:.3g}", fill=MUTED, font=f_row)
    for v in xs:
        draw.line([(px(v), y1), (px(v), y1 + 4)], fill=INK)
        draw.text((px(v) - _text_width(probe, f"{v:g}", f_row) / 2, y1 + 6), f"{v:g}", fill=INK, font=f_row)
    if x_label:
        draw.text((x1 - _text_width(probe, x_label, f_row), height - font_size - 6), x_label, fill=MUTED, font=f_row)
    lx = x0
    for s in series:
        draw.line([(lx, title_h + 8), (lx + 18, title_h + 8)], fill=s.color, width=3)
        draw.text((lx + 22, title_h + 1), s.label, fill=INK, font=f_row)
        lx += 22 + _text_width(probe, s.label, f_row) + 16
    if marker_x is not None:
        mx = px(marker_x)
        draw.line([(mx, y0), (mx, y1)], fill=HIGHLIGHT, width=2)
        if marker_label:
            tw = _text_width(probe, marker_label, f_row)
            draw.text((min(mx + 4, x1 - tw), y0 + 2), marker_label, fill=HIGHLIGHT, font=f_row)
    for s in series:
        points = [(px(xv), py(v)) if v is not None and v == v else None for xv, v in zip(xs, s.values)]
        for a, b in zip(points, points[1:]):
            if a is not None and b is not None:
                draw.line([a, b], fill=s.color, width=2)
        for i, p in enumerate(points):
            if p is None:
                continue
            r = 3
            draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=s.color)
            if i in flagged:
                draw.ellipse([p[0] - 6, p[1] - 6, p[0] + 6, p[1] + 6], outline=HIGHLIGHT, width=2)
    return img


def line_chart(values: Sequence[float], *, title: str, width: int = 720, height: int = 320,
               font_size: int = 13, smooth: int = 0, x_label: str = "step", x_start: int = 1,
               empty_text: str = "nothing to show") -> Image.Image:
    """A line chart of ``values`` against ``x_start, x_start + 1, ...`` (a loss curve), y axis from the
    smallest to the largest finite value, with min/max/last printed. ``smooth > 1`` adds a moving average
    over that many points in the highlight colour."""
    f_title, f_row = font(font_size + 3), font(font_size)
    pad = 10
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=INK, font=f_title)
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    top_y = font_size + 3 + 3 * pad
    bottom_y = height - (font_size + 2 * pad)
    label_w = max(_text_width(draw, compact_number(v), f_row) for v in finite) + pad if finite else 0
    x0, x1 = pad + label_w, width - pad
    if not finite:
        draw.text((x0, top_y), empty_text, fill=MUTED, font=f_row)
        return img
    lo, hi = min(finite), max(finite)
    if hi == lo:
        hi = lo + (abs(lo) or 1.0) * 0.01
    for i in range(5):
        gy = top_y + (bottom_y - top_y) * i / 4
        draw.line([(x0, gy), (x1, gy)], fill=GRID)
        value = hi - (hi - lo) * i / 4
        draw.text((pad, gy - font_size / 2), compact_number(value), fill=MUTED, font=f_row)
    n = len(values)

    def point(i: int, v: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (i / (n - 1) if n > 1 else 0.5)
        return x, bottom_y - (bottom_y - top_y) * (v - lo) / (hi - lo)

    def polyline(series: Sequence[float], color, line_width: int) -> None:
        pts = [point(i, v) for i, v in enumerate(series) if v == v and abs(v) != float("inf")]
        if len(pts) == 1:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        elif pts:
            draw.line(pts, fill=color, width=line_width)

    polyline(values, BAR, 1)
    if smooth > 1 and n > smooth:
        averaged, acc = [], 0.0
        for i, v in enumerate(values):
            acc += v
            if i >= smooth:
                acc -= values[i - smooth]
            averaged.append(acc / min(i + 1, smooth))
        polyline(averaged, HIGHLIGHT, 2)
    caption = (f"{x_label} {x_start}-{x_start + n - 1}   min {compact_number(min(finite))}   "
               f"max {compact_number(max(finite))}   last {compact_number(values[-1])}")
    draw.text((x0, bottom_y + pad / 2), caption, fill=INK, font=f_row)
    return img
