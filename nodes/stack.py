"""Stacks: ``LoraLabStack`` builds a stack (``stack_types.STACK_TYPE``); ``LoraLabApplyStack`` applies it in one
patch pass. Every stack input also takes the ``LORA_STACK`` lists of other packs (``stack_types.read_stack``)."""

from __future__ import annotations

from dataclasses import dataclass

import folder_paths

from ..lora_ops import family_label
from ..lora_ops.errors import LoraLabError
from ..lora_ops.patching import PatchEntry
from ..lora_ops.plan import LoadedLora, LoraPlan
from ..lora_ops.blocks import block_of, family_blocks
from ..lora_ops.stack import LoraStack, StackRow, conflict_chart, conflicts, normalize_strengths, scaled
from . import bridge
from .changes import inputs_fingerprint
from .images import image_tensor
from .stack_types import STACK_INPUT, STACK_TYPE, read_stack
from .lora_files import cached_lora, resolve_lora_path
from .planning import BLOCK_EXTRA_INPUTS, clones_with, model_family_of, plan_for, resolve_block_weights

NORMALIZATIONS = ["none", "sum", "norm"]


@dataclass
class PlannedRow:
    row: StackRow
    lora: LoadedLora
    plan: LoraPlan
    report: str


def plan_stack(model, clip, stack: LoraStack | None) -> list[PlannedRow]:
    """Read, match and check every enabled row; refuse an empty stack and mixed families. ``stack`` may be
    another pack's ``LORA_STACK`` list (``stack_types.read_stack``)."""
    rows = read_stack(stack).enabled
    if not rows:
        raise LoraLabError("The LoRA stack has no enabled rows.",
                           "add a LoRA with a LoRA Lab Stack node, or enable one of its rows.")
    loaded = []
    for row in rows:
        lora = cached_lora(resolve_lora_path(row.lora_name))
        loaded.append((row, lora))
    families = {lora.family.family for _, lora in loaded if lora.family.family}
    if len(families) > 1:
        listing = ", ".join(f"{row.lora_name} ({family_label(lora.family.family)})" for row, lora in loaded)
        raise LoraLabError(f"The stack mixes LoRAs made for different base models: {listing}.",
                           "keep only LoRAs made for the model in this stack.")
    planned = []
    for row, lora in loaded:
        weights = resolve_block_weights(row.block_weights, model, a=row.block_a, b=row.block_b, seed=row.block_seed)
        plan, report = plan_for(model, clip, lora, row.strength_model, row.strength_clip, block_weights=weights)
        planned.append(PlannedRow(row, lora, plan, report))
    return planned


def stack_entries(model, planned: list[PlannedRow], normalization: str, target: float
                  ) -> tuple[list[PatchEntry], list[PatchEntry], str]:
    """All rows' model and clip entries, scaled by the normalisation factor, and its report line."""
    shapes = bridge.weight_shapes(model.model)
    factor, line = normalize_strengths(
        [p.row.strength_model for p in planned], [p.plan.model_entries for p in planned], normalization, target,
        shapes, base_of=lambda key: bridge.unpatched_weight(model.model, key))
    model_entries = scaled([e for p in planned for e in p.plan.model_entries], factor)
    clip_entries = scaled([e for p in planned for e in p.plan.clip_entries], factor)
    return model_entries, clip_entries, line


class LoraLabStack:
    """Add one LoRA to a stack (chain these nodes to build a stack of several)."""

    DESCRIPTION = "Adds a LoRA row (name, strengths, block weights, on/off) to a LoRA stack."
    CATEGORY = "LoRA Lab"
    FUNCTION = "add"
    RETURN_TYPES = (STACK_TYPE,)
    RETURN_NAMES = ("lora_stack",)

    @classmethod
    def IS_CHANGED(cls, **inputs):
        """The content of the files this node reads (``nodes.changes``): a changed file re-runs the node."""
        return inputs_fingerprint(inputs)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_name": (folder_paths.get_filename_list("loras"),),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                "block_weights": ("STRING", {"default": ""}),
                "enabled": ("BOOLEAN", {"default": True}),
            },
            "optional": {"lora_stack": (STACK_INPUT, {"tooltip": "Rows to add this LoRA to: a LoRA Lab stack or another "
                                                                 "pack's LORA_STACK."}), **BLOCK_EXTRA_INPUTS},
        }

    def add(self, lora_name, strength_model, strength_clip, block_weights, enabled, lora_stack=None,
            block_a=1.0, block_b=1.0, block_seed=0):
        row = StackRow(lora_name, float(strength_model), float(strength_clip), block_weights, bool(enabled),
                       float(block_a), float(block_b), int(block_seed))
        return (read_stack(lora_stack).add(row),)


class LoraLabApplyStack:
    """Apply a whole stack to model and CLIP: one clone, one patch pass, a report per row."""

    DESCRIPTION = ("Applies every enabled LoRA of a stack in one patch pass (order does not matter, DoRA "
                   "included), with optional strength normalisation against oversaturation.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "report")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "lora_stack": (STACK_INPUT,),
                "normalization": (NORMALIZATIONS, {"default": "none", "tooltip":
                                  "none: plain sum; sum: strengths scaled to sum to the target; norm: the combined "
                                  "delta's norm scaled to target x the strongest single LoRA's."}),
                "normalization_target": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 10.0, "step": 0.01}),
            },
            "optional": {"clip": ("CLIP",)},
        }

    def apply(self, model, lora_stack, normalization, normalization_target, clip=None):
        planned = plan_stack(model, clip, lora_stack)
        model_entries, clip_entries, line = stack_entries(model, planned, normalization, normalization_target)
        new_model, new_clip = clones_with(model, clip, model_entries, clip_entries)
        parts = [f"[{i + 1}/{len(planned)}] {p.report}" for i, p in enumerate(planned)]
        if line:
            parts.append(line)
        report = "\n\n".join(parts)
        return {"ui": {"text": [report]}, "result": (new_model, new_clip, report)}




class LoraLabConflicts:
    """Where the LoRAs of a stack overlap, agree or fight, per block."""

    DESCRIPTION = ("Per block and pair of LoRAs: cosine similarity of their deltas (negative: they pull the "
                   "weights in opposite directions) and the share of entries with opposite signs.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "analyse"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "chart")
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "lora_stack": (STACK_INPUT,)}}

    def analyse(self, model, lora_stack):
        planned = plan_stack(model, None, lora_stack)
        family = model_family_of(model)
        shapes = bridge.weight_shapes(model.model)
        result = conflicts([p.row.lora_name for p in planned], [p.plan.model_entries for p in planned],
                           lambda key: block_of(family, key), shapes,
                           base_of=lambda key: bridge.unpatched_weight(model.model, key),
                           block_order=family_blocks(family, list(shapes)))
        report = result.to_text()
        chart = image_tensor(conflict_chart(result))
        return {"ui": {"text": [report]}, "result": (report, chart)}


NODE_CLASS_MAPPINGS = {"LoraLabStack": LoraLabStack, "LoraLabApplyStack": LoraLabApplyStack,
                       "LoraLabConflicts": LoraLabConflicts}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabStack": "LoRA Lab Stack (block weights)",
                              "LoraLabApplyStack": "LoRA Lab Apply Stack",
                              "LoraLabConflicts": "LoRA Lab Stack Conflicts"}
