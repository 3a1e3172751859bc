"""``LoraLabMerge`` turns a stack into one ``LORA``; ``LoraLabSave`` writes a ``LORA`` to the loras folder."""

from __future__ import annotations

import json
from pathlib import Path


from ..lora_ops.bake import kohya_metadata, lora_state_dict, network_module_for
from ..lora_ops.errors import LoraLabError
from ..lora_ops.families import FamilyGuess
from ..lora_ops.formats import ParsedLora
from ..lora_ops.patching import PatchEntry
from ..lora_ops.plan import LoadedLora
from ..lora_ops.safeio import LoraFile, write_safetensors_atomic
from ..lora_ops.stackmerge import METHODS, merge_stack
from . import bridge
from .lora_files import lora_output_path
from .planning import model_family_of
from .stack import NORMALIZATIONS, plan_stack, stack_entries
from .stack_types import STACK_INPUT


def merged_lora(model, clip, merged, planned, *, method: str, normalization: str, name: str) -> LoadedLora:
    """The merge result as a ``LORA`` value: kohya module names, provenance in its metadata."""
    family = model_family_of(model)
    names = bridge.kohya_names_for(model, clip, family)
    modules = {names.get(layer.key, layer.key): layer.adapter for layer in merged.layers}
    biases = {names.get(layer.key.replace(".bias", ".weight"), layer.key): layer.adapter
              for layer in merged.bias_layers}
    sources = [{"name": p.row.lora_name, "sha256": p.lora.content_sha256(),
                "strength_model": p.row.strength_model, "strength_clip": p.row.strength_clip,
                "block_weights": p.row.block_weights} for p in planned]
    metadata = kohya_metadata(
        family=family, rank_values=[getattr(a, "rank", None) for a in modules.values()],
        network_module=network_module_for(PatchEntry(None, a, 1.0) for a in modules.values()),
        extra={"lora_lab.merge_method": method, "lora_lab.normalization": normalization,
               "lora_lab.sources": json.dumps(sources), "lora_lab.merge_error": f"{merged.overall_error:.6g}"})
    parsed = ParsedLora(modules=modules, bias_diffs=biases, formats={"kohya"})
    return LoadedLora(file=LoraFile(tensors={}, metadata=metadata, path=None), parsed=parsed,
                      family=FamilyGuess(family=family, evidence=["merged by LoRA Lab"], metadata_family=family),
                      display_name=name)


class LoraLabMerge:
    """Merge a stack into one LoRA (exact or approximate), with its error against the live stack."""

    DESCRIPTION = ("Merges every enabled LoRA of a stack into one LoRA: concat (exact, ranks add), svd (to a rank "
                   "or energy), sum (exact full deltas), ties, dare, magnitude_prune; reports the relative error "
                   "against the stack as applied.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "merge"
    RETURN_TYPES = ("LORA", "STRING")
    RETURN_NAMES = ("lora", "report")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "lora_stack": (STACK_INPUT,),
                "method": (list(METHODS), {"default": "concat"}),
                "rank": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": "svd/ties/dare/prune: rank cap; 0: none"}),
                "energy": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                    "tooltip": "svd: keep this fraction of the spectrum's energy; 0: use rank"}),
                "density": ("FLOAT", {"default": 0.5, "min": 0.01, "max": 1.0, "step": 0.01}),
                # No "control after generate" (the page adds one to any input named seed): a new seed per Run
                # would re-run the merge each time, and Save would then refuse the existing file.
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                                 "tooltip": "dare: seed of the random drop mask (the same seed gives the same merge)."}),
                "normalization": (NORMALIZATIONS, {"default": "none"}),
                "normalization_target": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 10.0, "step": 0.01}),
                "name": ("STRING", {"default": "merged_lora"}),
            },
            "optional": {"clip": ("CLIP",)},
        }

    def merge(self, model, lora_stack, method, rank, energy, density, seed, normalization, normalization_target,
              name, clip=None):
        planned = plan_stack(model, clip, lora_stack)
        model_entries, clip_entries, line = stack_entries(model, planned, normalization, normalization_target)
        shapes = bridge.weight_shapes(model.model)
        if clip is not None:
            shapes.update(bridge.weight_shapes(clip.cond_stage_model))
        merged = merge_stack(model_entries + clip_entries, method, rank=rank, energy=energy, density=density,
                             seed=seed, base_of=bridge.base_weight_lookup(model, clip), shape_of=shapes.__getitem__)
        if not merged.layers and not merged.bias_layers:
            raise LoraLabError("The stack applies nothing to merge: every row is disabled, at strength 0, or "
                               "blocked out by its block weights.", "enable a row with a non-zero strength.")
        lora = merged_lora(model, clip, merged, planned, method=method, normalization=normalization, name=name)
        report = "\n".join(x for x in (f"{len(planned)} LoRAs: " + ", ".join(p.row.lora_name for p in planned),
                                       line, merged.to_text()) if x)
        return {"ui": {"text": [report]}, "result": (lora, report)}


class LoraLabSave:
    """Write a LORA value as a kohya-format file into the loras folder, where every loader lists it."""

    DESCRIPTION = "Saves a LoRA (from a merge, or any LORA value) as a kohya-format safetensors file in models/loras."
    CATEGORY = "LoRA Lab"
    FUNCTION = "save"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"lora": ("LORA",), "output_name": ("STRING", {"default": "merged_lora"})},
                "optional": {"overwrite": ("BOOLEAN", {"default": False})}}

    def save(self, lora: LoadedLora, output_name, overwrite=False):
        path = lora_output_path(output_name, overwrite=overwrite)
        tensors = lora_state_dict(lora.parsed)
        metadata = {k: str(v) for k, v in lora.file.metadata.items()}
        metadata.setdefault("ss_network_module", "networks.lora")
        write_safetensors_atomic(tensors, path, metadata)
        text = f"saved {len(lora.parsed.modules)} layers to {Path(path).name}"
        return {"ui": {"text": [text]}, "result": (str(path),)}


NODE_CLASS_MAPPINGS = {"LoraLabMerge": LoraLabMerge, "LoraLabSave": LoraLabSave}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabMerge": "LoRA Lab Merge Stack", "LoraLabSave": "LoRA Lab Save LoRA"}
