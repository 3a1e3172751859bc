"""The weight sweep's host-free parts: the weights, the second axis, the checks, the metrics and the
break point, the labelled grid.

A sweep renders one LoRA at ``weight_count`` weights from ``weight_start`` to ``weight_end``
(descending when start > end) next to a no-LoRA reference, optionally for several rows (prompts,
block presets, or strengths of a second LoRA). Per cell it measures, on the decoded images in
[0, 1], with kornia's SSIM and PSNR:

* ``change_ref``  = 1 - SSIM(cell, reference of its row)
* ``change_prev`` = 1 - SSIM(cell, the next weaker cell of its row; the reference for the weakest)
* ``psnr_ref``    = PSNR(cell, reference) in dB

and flags ``nan`` (non-finite latent or pixels), ``black`` (mean < 0.03 and 99th percentile < 0.1),
``saturated`` (over half of the pixel values at 0 or 1) and ``overflow`` (merging the LoRA at this
weight into the model's half-precision weights would overflow: LoRA Lab's loader refuses it and
other loaders make black images).

Break point of a row (``BREAK_RULE``): the first cell, from the weakest weight up, that has a flag, or whose
change per unit of weight, ``change_prev / |w - w_prev|`` (``w_prev`` = 0 for the step from the reference), is
more than ``JUMP_FACTOR`` times the median of the steps before it while ``change_prev`` is above
``JUMP_FLOOR``. Dividing by the weight step keeps uneven steps (a sweep from 0.5 after a reference at 0, or
from -1 to 1 taken from the weakest up) from reading as a jump.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageDraw

from .chart import BACKGROUND, HIGHLIGHT, INK, MUTED, SERIES_COLORS, Series, _text_width, font, xy_chart
from .errors import LoraLabError

MAX_WEIGHTS = 64
MAX_ROWS = 16
MAX_CELLS = 256
MAX_GRID_SIDE = 16384  # pixels; larger grids are unreadable and hit image-library limits
JUMP_FACTOR = 2.5
JUMP_FLOOR = 0.05
BREAK_RULE = (f"first weight with a flag (nan, black, saturated, overflow), or whose change against the previous "
              f"weight (1 - SSIM), per unit of weight step, is more than {JUMP_FACTOR}x the median of the earlier "
              f"steps, with a change above {JUMP_FLOOR}")
AXES = ("none", "prompts", "block_presets", "lora_b_strength")


class SweepInputError(LoraLabError):
    """A sweep setting that cannot run; raised before any sampling starts."""


def sweep_weights(start: float, end: float, count: int) -> list[float]:
    """``count`` evenly spaced weights from ``start`` to ``end`` inclusive (descending if start > end),
    rounded to 6 decimals so labels read 0.3, not 0.30000000000000004."""
    if not isinstance(count, int) or count < 1:
        raise SweepInputError(f"weight_count is {count}; a sweep needs at least 1 weight.",
                              "set weight_count to 1 or more (10 gives 0.1, 0.2 ... 1.0).")
    if count > MAX_WEIGHTS:
        raise SweepInputError(f"weight_count is {count}, more than the {MAX_WEIGHTS} a sweep renders.",
                              f"use at most {MAX_WEIGHTS} weights, or split the range over two sweeps.")
    for name, v in (("weight_start", start), ("weight_end", end)):
        if not math.isfinite(v):
            raise SweepInputError(f"{name} is {v}.", f"set {name} to a finite number.")
    if count == 1:
        return [round(float(start), 6)]
    if start == end:
        raise SweepInputError(f"weight_start and weight_end are both {start}: {count} identical cells.",
                              "set different ends, or weight_count to 1.")
    step = (end - start) / (count - 1)
    return [round(start + i * step, 6) for i in range(count)]


def parse_axis(kind: str, text: str) -> list[str]:
    """The second axis' row values from ``axis_values``: one prompt / block preset per line, or
    comma- or line-separated strengths of LoRA B. ``none`` gives one row."""
    if kind not in AXES:
        raise SweepInputError(f"axis '{kind}' is not one of {', '.join(AXES)}.", "pick one from the list.")
    if kind == "none":
        return [""]
    if kind == "lora_b_strength":
        items = [p.strip() for line in text.splitlines() for p in line.split(",") if p.strip()]
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    what = {"prompts": "prompts", "block_presets": "block presets", "lora_b_strength": "strengths of LoRA B"}[kind]
    if not items:
        raise SweepInputError(f"axis is '{kind}' but axis_values holds no {what}.",
                              f"write the {what} into axis_values, one per line"
                              + (" or comma-separated" if kind == "lora_b_strength" else "")
                              + ", or set axis to none.")
    if len(items) > MAX_ROWS:
        raise SweepInputError(f"axis_values has {len(items)} rows; a sweep renders at most {MAX_ROWS}.",
                              f"keep at most {MAX_ROWS} rows, or run several sweeps.")
    if kind == "lora_b_strength":
        for item in items:
            try:
                value = float(item)
            except ValueError:
                raise SweepInputError(f"'{item}' in axis_values is not a number.",
                                      "write strengths of LoRA B as numbers, e.g. '0.3, 0.5, 0.7'.") from None
            if not math.isfinite(value):
                raise SweepInputError(f"'{item}' in axis_values is not finite.", "use finite strengths.")
    return items


@dataclass(frozen=True)
class GridGeometry:
    """Pixel layout of the grid image: cell (r, c) is at ``(left + c*(cell_w+gap), top + r*(cell_h+gap))``."""

    cols: int
    rows: int
    cell_w: int
    cell_h: int
    left: int
    top: int
    gap: int
    width: int
    height: int

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x = self.left + col * (self.cell_w + self.gap)
        y = self.top + row * (self.cell_h + self.gap)
        return x, y, x + self.cell_w, y + self.cell_h

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("width", "height", "left", "top", "cell_w", "cell_h", "gap", "cols", "rows")}


LABEL_FONT = 14
TITLE_FONT = 16
ROW_LABEL_WIDTH = 220  # pixels: longer row labels wrap onto more lines
ROW_LABEL_LINES = 3


def grid_geometry(cols: int, rows: int, cell_w: int, cell_h: int, row_labels: Sequence[str],
                  title: str = "") -> GridGeometry:
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f = font(LABEL_FONT)
    gap = 4
    label_w = max((_text_width(probe, line, f) for t in row_labels if t for line in label_lines(t, probe, f)),
                  default=0)
    left = 8 + (label_w + 10 if label_w else 0)
    top = 8 + TITLE_FONT + 8 + LABEL_FONT + 8
    width = max(left + cols * cell_w + (cols - 1) * gap + 8, _text_width(probe, title, font(TITLE_FONT)) + 16)
    height = top + rows * cell_h + (rows - 1) * gap + 8
    return GridGeometry(cols, rows, cell_w, cell_h, left, top, gap, width, height)


def check_budget(cols: int, rows: int, width: int, height: int) -> None:
    """Refuse grids beyond the stated budget before anything is sampled."""
    cells = cols * rows
    if cells > MAX_CELLS:
        raise SweepInputError(f"the sweep has {cells} cells ({rows} rows x {cols} columns); the limit is {MAX_CELLS}.",
                              "use fewer weights or fewer rows.")
    g = grid_geometry(cols, rows, width, height, [])
    if g.width > MAX_GRID_SIDE or g.height > MAX_GRID_SIDE:
        raise SweepInputError(f"the grid would be {g.width}x{g.height} pixels; the limit is {MAX_GRID_SIDE} per side.",
                              "lower width/height, or use fewer weights or rows.")


def _pieces(text: str) -> list[str]:
    """``text`` cut after spaces, underscores, hyphens, dots and commas (the places a label may wrap)."""
    out, start = [], 0
    for i, ch in enumerate(text):
        if ch in " _-.,/":
            out.append(text[start:i + 1])
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return out


def _fit(text: str, draw, f, width: int, keep_end: bool) -> str:
    """``text`` cut with an ellipsis to at most ``width`` pixels, keeping its start (or its end)."""
    if _text_width(draw, text, f) <= width:
        return text
    for n in range(len(text) - 1, 0, -1):
        cut = "…" + text[-n:] if keep_end else text[:n] + "…"
        if _text_width(draw, cut, f) <= width:
            return cut
    return "…"


def label_lines(text: str, draw, f, width: int = ROW_LABEL_WIDTH, max_lines: int = ROW_LABEL_LINES) -> list[str]:
    """A row label as lines of at most ``width`` pixels, wrapped at word and name boundaries.

    The end of a label is what tells rows apart (``lora_b.safetensors 0.3`` vs ``... 0.7``), so a label
    that needs more than ``max_lines`` lines loses its middle, never its last line.
    """
    lines: list[str] = []
    for piece in _pieces(text.strip()):
        if lines and _text_width(draw, lines[-1] + piece, f) <= width:
            lines[-1] += piece
        else:
            lines.append(piece)
    lines = [line.strip() for line in lines if line.strip()]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 2] + ["…", lines[-1]] if max_lines >= 3 else ["…", lines[-1]]
    return [_fit(line, draw, f, width, keep_end=i == len(lines) - 1 and i > 0) for i, line in enumerate(lines)]


def compose_grid(images: Sequence[Sequence[Image.Image | None]], col_labels: Sequence[str], row_labels: Sequence[str],
                 title: str, flags: Sequence[Sequence[Sequence[str]]], break_cols: Sequence[int | None],
                 cell_size: tuple[int, int]) -> tuple[Image.Image, GridGeometry]:
    """The labelled grid: ``images[r][c]`` (``None`` draws a flagged placeholder), weights as column
    labels, row labels on the left, the title on top; flagged cells get a red frame and their flags,
    the break point cell a thick red frame."""
    cols, rows = len(col_labels), len(row_labels)
    geo = grid_geometry(cols, rows, cell_size[0], cell_size[1], row_labels, title)
    canvas = Image.new("RGB", (geo.width, geo.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    f_title, f = font(TITLE_FONT), font(LABEL_FONT)
    draw.text((8, 8), title, fill=INK, font=f_title)
    label_y = 8 + TITLE_FONT + 8
    for c, label in enumerate(col_labels):
        x0, _, x1, _ = geo.cell_box(0, c)
        tw = _text_width(draw, label, f)
        draw.text(((x0 + x1 - tw) / 2, label_y), label, fill=INK, font=f)
    for r, label in enumerate(row_labels):
        _, y0, _, y1 = geo.cell_box(r, 0)
        if label:
            lines = label_lines(label, draw, f)
            top = (y0 + y1) / 2 - len(lines) * (LABEL_FONT + 3) / 2
            for i, line in enumerate(lines):
                draw.text((8, top + i * (LABEL_FONT + 3)), line, fill=INK, font=f)
        for c in range(cols):
            box = geo.cell_box(r, c)
            im = images[r][c]
            cell_flags = list(flags[r][c])
            if im is None:
                draw.rectangle(box, fill=(60, 20, 20))
                draw.text((box[0] + 6, box[1] + 6), "not rendered", fill=(255, 220, 220), font=f)
            else:
                canvas.paste(im.convert("RGB").resize(cell_size), box[:2])
            if cell_flags:
                draw.rectangle(box, outline=HIGHLIGHT, width=2)
                text = ", ".join(cell_flags)
                draw.rectangle((box[0], box[3] - LABEL_FONT - 6, box[0] + _text_width(draw, text, f) + 8, box[3]),
                               fill=(0, 0, 0))
                draw.text((box[0] + 4, box[3] - LABEL_FONT - 4), text, fill=(255, 120, 100), font=f)
            if break_cols[r] == c:
                draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), outline=HIGHLIGHT, width=4)
    return canvas, geo


# --- metrics ---------------------------------------------------------------------------------------

def flags_of(image: torch.Tensor, latent_finite: bool = True) -> list[str]:
    """Flags of one decoded image ``(H, W, 3)`` in [0, 1] (before any clamping to 8 bits)."""
    flags = []
    if not latent_finite or not bool(torch.isfinite(image).all()):
        return ["nan"]
    img = image.float()
    if img.mean().item() < 0.03 and torch.quantile(img.flatten()[:1_000_000], 0.99).item() < 0.1:
        flags.append("black")
    extreme = ((img <= 1 / 255) | (img >= 254 / 255)).float().mean().item()
    if extreme > 0.5 and "black" not in flags:
        flags.append("saturated")
    return flags


def _to_nchw(images: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(images.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1).permute(0, 3, 1, 2)


def pair_metrics(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``(1 - SSIM, PSNR dB)`` between two images ``(H, W, 3)`` in [0, 1], with kornia."""
    import kornia.metrics

    x, y = _to_nchw(a[None]), _to_nchw(b[None])
    window = max(3, min(11, (min(x.shape[-2:]) // 2) * 2 - 1))
    ssim = kornia.metrics.ssim(x, y, window_size=window).mean().item()
    mse = torch.mean((x - y) ** 2).item()
    psnr = math.inf if mse == 0 else kornia.metrics.psnr(x, y, max_val=1.0).item()
    return max(0.0, 1.0 - ssim), psnr


@dataclass
class Cell:
    row: int
    col: int
    weight: float | None  # None: the reference
    label: str
    image_index: int | None
    flags: list[str] = field(default_factory=list)
    change_ref: float | None = None
    change_prev: float | None = None
    psnr_ref: float | None = None

    def as_dict(self) -> dict:
        def num(v):
            return None if v is None or not math.isfinite(v) else round(v, 6)
        return {"row": self.row, "col": self.col, "weight": self.weight, "label": self.label,
                "image_index": self.image_index, "flags": self.flags,
                "metrics": {"change_ref": num(self.change_ref), "change_prev": num(self.change_prev),
                            "psnr_ref": num(self.psnr_ref) if self.psnr_ref is None or math.isfinite(self.psnr_ref)
                            else None}}


def sweep_order(cells: Sequence[Cell]) -> list[Cell]:
    """A row's LoRA cells from the weakest to the strongest (by absolute weight), whatever the column order."""
    return sorted((c for c in cells if c.weight is not None), key=lambda c: abs(c.weight))


def measure_row(cells: Sequence[Cell], images: dict[int, torch.Tensor], reference: torch.Tensor | None) -> None:
    """Fill the metrics of one row's LoRA cells (in sweep order) against the reference and the cell before."""
    prev = reference
    for cell in sweep_order(cells):
        img = images.get(cell.image_index) if cell.image_index is not None else None
        if img is None or "nan" in cell.flags:
            prev = None
            continue
        if reference is not None:
            cell.change_ref, cell.psnr_ref = pair_metrics(reference, img)
        if prev is not None:
            cell.change_prev, _ = pair_metrics(prev, img)
        prev = img


def break_point(cells: Sequence[Cell]) -> tuple[Cell, str] | None:
    """The row's break point by :data:`BREAK_RULE` (cells in sweep order), with the reason.

    Each step's change is compared per unit of weight: ``rate = change_prev / |w - w_prev|`` with
    ``w_prev`` the previous cell's weight in sweep order (0, the reference, for the first)."""
    rates: list[float] = []
    prev_weight = 0.0
    for cell in sweep_order(cells):
        if cell.flags:
            return cell, f"{', '.join(cell.flags)} at weight {cell.weight:g}"
        d = cell.change_prev
        step = abs(cell.weight - prev_weight)
        prev_weight = cell.weight
        if d is None or step <= 0:
            continue
        rate = d / step
        if rates:
            trend = statistics.median(rates)
            if d > JUMP_FLOOR and rate > JUMP_FACTOR * trend:
                return cell, (f"change against the previous weight jumps to {d:.3f} (1 - SSIM) over a step of "
                              f"{step:g}, {rate / trend if trend > 0 else math.inf:.1f}x the median change per "
                              f"unit of weight before it")
        rates.append(rate)
    return None


def metrics_chart(weights: Sequence[float], rows: Sequence[Sequence[Cell]], row_labels: Sequence[str],
                  breaks: Sequence[tuple[Cell, str] | None], title: str) -> Image.Image:
    """Change against the reference and against the previous weight, per row, with break points marked."""
    from .chart import stack, text_panel

    charts = []
    for r, cells in enumerate(rows):
        by_w = {c.weight: c for c in cells if c.weight is not None}
        xs = list(weights)
        series = [Series("change vs reference (1-SSIM)", [by_w[w].change_ref if w in by_w else None for w in xs],
                         SERIES_COLORS[0]),
                  Series("change vs previous weight", [by_w[w].change_prev if w in by_w else None for w in xs],
                         SERIES_COLORS[1])]
        flagged = [i for i, w in enumerate(xs) if w in by_w and by_w[w].flags]
        bp = breaks[r]
        name = f"{title} — {row_labels[r]}" if row_labels[r] else title
        values = [v for ser in series for v in ser.values if v is not None and math.isfinite(v)]
        top = min(1.0, max(0.05, 1.15 * max(values, default=0.0)))  # small changes stay visible
        charts.append(xy_chart(xs, series, title=name, x_label="LoRA weight", y_range=(0.0, top),
                                 marker_x=bp[0].weight if bp else None,
                                 marker_label=f"break {bp[0].weight:g}" if bp else "", flagged=flagged))
        if bp:
            charts.append(text_panel([f"break point: {bp[1]}"], color=HIGHLIGHT))
    charts.append(text_panel([f"break rule: {BREAK_RULE}."], color=MUTED))
    return stack(charts)
