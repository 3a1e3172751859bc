"""The loader's plain-text report: what the file is and what was applied."""

from __future__ import annotations

from collections import Counter

from .families import family_label
from .plan import LoadedLora, LoraPlan


def _summary(values: list[float | int | None], what: str) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return f"{what}: n/a"
    counts = Counter(known)
    if len(counts) == 1:
        return f"{what}: {_fmt(known[0])}"
    common = ", ".join(f"{_fmt(v)} (x{n})" for v, n in counts.most_common(4))
    return f"{what}: {min(known):g}-{max(known):g} ({common}{', ...' if len(counts) > 4 else ''})"


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def load_report(lora: LoadedLora, plan: LoraPlan, *, model_family: str | None, strength_model: float,
                strength_clip: float, has_clip: bool, block_table: str | None = None) -> str:
    parsed = lora.parsed
    adapters = list(parsed.modules.values())
    total = len(parsed.modules) + len(parsed.bias_diffs)
    fam = lora.family
    meta = f"; metadata says {family_label(fam.metadata_family)}" if fam.metadata_family else ""
    evidence = f" ({'; '.join(fam.evidence)})" if fam.evidence else ""
    lines = [
        f"LoRA: {lora.name}",
        f"format: {parsed.format}; algorithm: {', '.join(parsed.algorithms)}",
        _summary([a.rank for a in adapters], "rank") + "; " + _summary([a.alpha for a in adapters], "alpha"),
        f"made for: {family_label(fam.family)}{evidence}{meta}",
        f"model: {family_label(model_family)}",
        f"targets: {len({e.module for e in plan.model_entries + plan.clip_entries})} of {total} applied"
        f" (model {len({e.module for e in plan.model_entries})} at strength {strength_model:g}, "
        f"text encoder {len({e.module for e in plan.clip_entries})} at strength {strength_clip:g}"
        + ("" if has_clip else ", no CLIP connected") + ")",
    ]
    if plan.skipped_zero:
        lines.append(f"weight 0 (left out): {len(plan.skipped_zero)}")
    if plan.unmatched:
        shown = ", ".join(plan.unmatched[:8]) + (f", ... ({len(plan.unmatched) - 8} more)" if len(plan.unmatched) > 8 else "")
        lines.append(f"unmatched: {len(plan.unmatched)}: {shown}")
    for w in plan.warnings:
        lines.append(f"WARNING: {w}")
    if block_table:
        lines.append("block weights:")
        lines.append(block_table)
    return "\n".join(lines)
