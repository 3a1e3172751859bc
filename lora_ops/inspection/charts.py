"""The inspector's chart: per-block energy (problem blocks in red), ranks, largest |W + dW|."""

from __future__ import annotations

import math

from .. import chart
from ..families import family_label
from ..numerics import FP16_MAX, FP16_OVERFLOW
from .result import FINDING_TEXT, PROBLEM_KINDS, Inspection


def render_chart(inspection: Inspection, *, width: int = 760):
    """Per-block energy bars (problem blocks in red), a rank histogram when ranks vary, and a caption.

    Returns a ``PIL.Image.Image`` (RGB).
    """

    parts = []
    if inspection.energy is not None:
        touched = [e for e in inspection.energy if e.targets]
        total = math.sqrt(sum(e.norm ** 2 for e in touched)) if touched else 0.0
        problem = inspection.problem_blocks()
        bars = []
        for e in inspection.energy:
            if e.targets:
                share = e.norm ** 2 / total ** 2 if total > 0 else 0.0
                note = f"{chart.compact_number(e.norm)}  ({share:.0%}, {e.targets} target{'' if e.targets == 1 else 's'})"
            else:
                note = "-"
            bars.append(chart.Bar(e.block, e.norm, note, chart.HIGHLIGHT if e.block in problem else None))
        title = (f"{inspection.name}: per-block energy ||dW|| "
                 f"({family_label(inspection.block_family)} blocks, from the {inspection.block_source})")
        parts.append(chart.bar_chart(bars, title=title, width=width))
    if any(f.kind == "merged_overflow" for f in inspection.findings or ()):
        bars = [chart.Bar(e.block, e.max_merged, chart.compact_number(e.max_merged),
                          chart.HIGHLIGHT if e.max_merged >= FP16_OVERFLOW else None)
                for e in inspection.energy or () if e.max_merged is not None]
        parts.append(chart.bar_chart(bars, title=f"largest |W + dW| per block (fp16 max {FP16_MAX:g}, inf from {FP16_OVERFLOW:g}; red: "
                                                 "renders black in fp16)", width=width))
    if inspection.ranks_vary:
        ranks = sorted((r, n) for r, n in inspection.ranks.items() if r is not None)
        bars = [chart.Bar(f"rank {r}", n, f"{n} targets") for r, n in ranks]
        if None in inspection.ranks:
            bars.append(chart.Bar("no rank", inspection.ranks[None], f"{inspection.ranks[None]} targets",
                                  chart.MUTED))
        parts.append(chart.bar_chart(bars, title="rank histogram", width=width))
    caption = [f"{inspection.algorithm}, {inspection.format}, {inspection.targets} targets; made for "
               f"{family_label(inspection.family)}"
               + (f"; on {family_label(inspection.model_family)}: {inspection.verdict}" if inspection.verdict else "")]
    if inspection.findings is not None:
        problems = [f for f in inspection.findings if f.kind in PROBLEM_KINDS]
        caption.append("health: OK" if not problems else
                       f"health: {len(problems)} problem(s), e.g. {FINDING_TEXT[problems[0].kind]} in "
                       f"{problems[0].layer}")
    else:
        caption.append("weights not analysed")
    colour = chart.HIGHLIGHT if inspection.healthy is False else chart.INK
    parts.append(chart.text_panel(caption, width=width, color=colour))
    return chart.stack(parts)
