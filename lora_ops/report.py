"""The loader's plain-text report: what the file is and what was applied.

The description of the file (format, algorithm, rank/alpha, family) comes from the inspector's
analysis (:func:`lora_ops.inspection.inspect_lora`, without the per-weight pass), so the loader and
``LoraLabInspect`` never disagree about what a file is.
"""

from __future__ import annotations

from .families import family_label
from .plan import LoadedLora, LoraPlan


def load_report(lora: LoadedLora, plan: LoraPlan, *, model_family: str | None, strength_model: float,
                strength_clip: float, has_clip: bool, block_table: str | None = None,
                model_name: str | None = None) -> str:
    """The report: what the file is, what it was made for, the model (``model_name``, default the
    family's label), and how many of the weights it patches were applied (a module's weight and its
    bias delta count as two: each is a weight patched)."""
    from .inspection import inspect_lora  # the inspection package imports this module's neighbours

    info = inspect_lora(lora, plan=plan, model_family=model_family, analyse_weights=False)
    lines = [f"LoRA: {lora.name}", *info.summary_lines(), f"model: {model_name or family_label(model_family)}"]
    lines.append(
        f"targets: {plan.applied_count} of {info.targets} applied"
        f" (model {len(plan.model_entries)} at strength {strength_model:g}, "
        f"text encoder {len(plan.clip_entries)} at strength {strength_clip:g}"
        + ("" if has_clip else ", no CLIP connected") + ")")
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
