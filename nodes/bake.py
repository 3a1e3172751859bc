"""``LoraLabBake``: save a LoRA with its block weights folded in, as a kohya file any loader reads."""

from __future__ import annotations

from pathlib import Path

import folder_paths

from ..lora_ops.bake import bake_plan, kohya_metadata, network_module_for
from ..lora_ops.safeio import write_safetensors_atomic
from . import bridge
from .changes import inputs_fingerprint
from .lora_files import cached_lora, lora_output_path, resolve_lora_path
from .planning import BLOCK_EXTRA_INPUTS, apply_lora, model_family_of, resolve_block_weights


class LoraLabBake:
    """Fold block weights (and optionally the strengths) into a new kohya-format LoRA file."""

    DESCRIPTION = ("Saves the LoRA with its block weights folded in, as a standard kohya-format file in the loras "
                   "folder. Loading it at strength 1 equals the block-weighted load.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "bake"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("path", "report")
    OUTPUT_NODE = True

    @classmethod
    def IS_CHANGED(cls, **inputs):
        """The content of the files this node reads (``nodes.changes``): a changed file re-runs the node."""
        return inputs_fingerprint(inputs)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "lora_name": (folder_paths.get_filename_list("loras"),),
                "block_weights": ("STRING", {"default": "", "multiline": False}),
                "output_name": ("STRING", {"default": "baked_lora"}),
            },
            "optional": {
                "clip": ("CLIP",),
                "overwrite": ("BOOLEAN", {"default": False}),
                **BLOCK_EXTRA_INPUTS,
            },
        }

    def bake(self, model, lora_name, block_weights, output_name, clip=None, overwrite=False,
             block_a=1.0, block_b=1.0, block_seed=0):
        out_path = lora_output_path(output_name, overwrite=overwrite)
        weights = resolve_block_weights(block_weights, model, a=block_a, b=block_b, seed=block_seed)
        source = resolve_lora_path(lora_name)
        lora = cached_lora(source)
        applied = apply_lora(model, clip, lora, 1.0, 1.0, block_weights=weights)
        family = model_family_of(model)
        names = bridge.kohya_names_for(model, clip, family)
        plan = applied.plan

        def name_of(entry):
            return names.get(entry.target.key) or entry.module.replace(".", "_")

        entries = plan.model_entries + plan.clip_entries
        tensors = bake_plan(entries, name_of, bridge.base_weight_lookup(model, clip))
        meta = kohya_metadata(
            family=family, rank_values=[e.adapter.rank for e in entries], network_module=network_module_for(entries),
            extra={"lora_lab.baked_from": Path(source).name, "lora_lab.baked_from_sha256": lora.content_sha256(),
                   "lora_lab.block_weights": weights.describe() if weights is not None else ""})
        write_safetensors_atomic(tensors, out_path, meta)
        report = f"baked {len(entries)} targets ({len(plan.skipped_zero)} at weight 0 left out) into {out_path.name}\n"
        report += applied.report
        return {"ui": {"text": [report]}, "result": (str(out_path), report)}


NODE_CLASS_MAPPINGS = {"LoraLabBake": LoraLabBake}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabBake": "LoRA Lab Bake Block Weights"}
