"""``LoraLabLoader``: apply one LoRA to a model and its text encoder, with a report of what happened."""

from __future__ import annotations

import logging

import folder_paths

from .changes import inputs_fingerprint
from .lora_files import cached_lora, resolve_lora_path
from .planning import BLOCK_EXTRA_INPUTS, apply_lora, block_weights_tooltip, resolve_block_weights

log = logging.getLogger(__name__)


class LoraLabLoader:
    """Load a LoRA onto a model (and its CLIP), from any common format, with a report."""

    DESCRIPTION = ("Applies a LoRA file to the model and text encoder, on any model family ComfyUI runs (SD, SDXL, "
                   "Flux, Chroma, Qwen-Image, Wan, HunyuanVideo, ... fp8 models included), in any format (kohya, "
                   "LyCORIS LoCon/LoHa/LoKr/OFT/BOFT/GLoRA/DoRA, diffusers, PEFT, full diffs), with per-block "
                   "weights, and reports what was applied. The input model is never changed.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "report")
    OUTPUT_NODE = False

    @classmethod
    def IS_CHANGED(cls, **inputs):
        """The content of the files this node reads (``nodes.changes``): a changed file re-runs the node."""
        return inputs_fingerprint(inputs)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "lora_name": (folder_paths.get_filename_list("loras"), {"tooltip": "A file in models/loras."}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                "block_weights": ("STRING", {"default": "", "multiline": False, "tooltip": block_weights_tooltip()}),
            },
            "optional": {
                "clip": ("CLIP",),
                "lora": ("LORA", {"tooltip": "A LoRA from another LoRA Lab node (a merge); used instead of "
                                            "lora_name when connected."}),
                "allow_other_family": ("BOOLEAN", {"default": False, "tooltip":
                                       "Apply the layers that fit even if the LoRA was made for another "
                                       "base model family."}),
                **BLOCK_EXTRA_INPUTS,
            },
        }

    def load(self, model, lora_name, strength_model, strength_clip, block_weights="", clip=None, lora=None,
             allow_other_family=False, block_a=1.0, block_b=1.0, block_seed=0):
        weights = resolve_block_weights(block_weights, model, a=block_a, b=block_b, seed=block_seed)
        if lora is None:
            lora = cached_lora(resolve_lora_path(lora_name))
        applied = apply_lora(model, clip, lora, strength_model, strength_clip, allow_other_family=allow_other_family,
                             block_weights=weights)
        log.info("LoRA Lab: %s", applied.report.replace("\n", " | "))
        return {"ui": {"text": [applied.report]}, "result": (applied.model, applied.clip, applied.report)}


NODE_CLASS_MAPPINGS = {"LoraLabLoader": LoraLabLoader}
# "block weights" in the name: the page's node search looks at names only (Inspire's "Lora Loader (Block Weight)").
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabLoader": "LoRA Lab Loader (block weights)"}
