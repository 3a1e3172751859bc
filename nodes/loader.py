"""``LoraLabLoader``: apply one LoRA to a model and its text encoder, with a report of what happened."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import folder_paths

from ..lora_ops import LoadedLora, LoraPlan, load_lora, load_report, plan_lora
from ..lora_ops.blocks import (
    BlockWeights,
    block_table,
    list_presets,
    load_user_presets,
    parse_block_weights,
    read_user_presets,
)
from ..lora_ops.errors import LoraFileError, LoraLabError
from ..lora_ops.safeio import file_digest
from . import bridge
from .changes import inputs_fingerprint

log = logging.getLogger(__name__)

# Optional inputs every node with a block_weights field shares.
BLOCK_EXTRA_INPUTS = {
    "block_a": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                          "tooltip": "Value of A in block_weights (for sweeps)."}),
    "block_b": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                          "tooltip": "Value of B in block_weights."}),
    "block_seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                           "tooltip": "Seed of the R/U random block weights."}),
}

_CACHE_SIZE = 8
_cache: "OrderedDict[tuple, LoadedLora]" = OrderedDict()


def cached_lora(path: str) -> LoadedLora:
    """Read and parse a LoRA file once per content (real path, SHA-256 of its bytes), so a strength change
    re-reads nothing and a file replaced by another, even of the same size and mtime, is read again. The
    digest is remembered per version of the file (``safeio.file_digest``): one ``stat`` re-checks it."""
    real = os.path.realpath(path)
    try:
        digest = file_digest(real)
    except OSError:
        return load_lora(path, convert=bridge.convert_lora)  # gone or unreadable: the reader names it
    key = (real, digest)
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit
    lora = load_lora(path, convert=bridge.convert_lora)
    if file_digest(real) != digest:  # replaced while it was read: serve it, remember nothing
        return lora
    lora.sha256 = digest
    _cache[key] = lora
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return lora


def resolve_lora_path(lora_name: str) -> str:
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise LoraFileError(f"LoRA '{lora_name}' is not in ComfyUI's loras folder(s).",
                            "put the file in models/loras (or a folder listed in extra_model_paths.yaml) and "
                            "refresh the page.")
    return path


def model_family_of(model) -> str:
    """The family key of ``model``, from its ComfyUI config class and ancestors (``bridge.model_family``)."""
    return bridge.model_family(model)


@dataclass
class AppliedLora:
    model: object
    clip: object | None
    plan: LoraPlan
    report: str


def user_presets_path() -> Path:
    """User block-weight presets live in ComfyUI's user folder: ``<user>/lora_lab/block_presets.json``."""
    return Path(folder_paths.get_user_directory()) / "lora_lab" / "block_presets.json"


def block_weights_tooltip() -> str:
    """The ``block_weights`` tooltip: the syntax in brief and every preset, the user's own included."""
    try:
        user = load_user_presets(user_presets_path())
    except LoraLabError as exc:
        user, note = {}, f" (user presets not loaded: {exc.problem})"
    else:
        note = ""
    lines = ["Per-block weights; empty means every block at 1. E.g. 'IN04-IN08=0.5, M00=0, OUT*=1', "
             "'IN05.attn=0', a preset, or a 17/26/12/20/58/61-value vector."]
    for family, label in (("sd1", "SD1.x"), ("sdxl", "SDXL"), ("flux", "Flux")):
        lines.append(f"Presets ({label}): " + ", ".join(p.name for p in list_presets(family, user)))
    lines.append(f"User presets: {user_presets_path()}{note}")
    return "\n".join(lines)


def resolve_block_weights(text: str, model, *, a: float | None = None, b: float | None = None,
                          seed: int = 0) -> BlockWeights | None:
    """Parse ``block_weights`` for this model's family; ``None`` when empty (every block at 1)."""
    if not text.strip():
        return None
    return parse_block_weights(text, model_family_of(model), a=a, b=b, seed=seed,
                               model_keys=list(bridge.weight_shapes(model.model)),
                               user_presets=read_user_presets(user_presets_path()))


def plan_for(model, clip, lora: LoadedLora, strength_model: float, strength_clip: float,
             allow_other_family: bool = False, block_weights: BlockWeights | None = None) -> tuple[LoraPlan, str]:
    """Match and check ``lora`` for ``model``/``clip``; return the plan and its report (no clone yet)."""
    if block_weights is not None and block_weights.reads_file:  # 'inspire:' reads the blocks this LoRA patches
        matched = plan_for(model, clip, lora, strength_model, strength_clip, allow_other_family)[0]
        block_weights = block_weights.for_targets(key for key, _ in matched.block_targets())
    family = model_family_of(model)
    model_shapes = bridge.weight_shapes(model.model)
    clip_shapes = bridge.weight_shapes(clip.cond_stage_model) if clip is not None else None
    plan = plan_lora(
        lora,
        model_keys=bridge.model_key_index(model.model, model_shapes), model_shapes=model_shapes,
        model_family=family, strength_model=strength_model,
        clip_keys=bridge.clip_key_index(clip, clip_shapes) if clip is not None else None,
        clip_shapes=clip_shapes,
        strength_clip=strength_clip, weight_fn=block_weights.factor if block_weights is not None else None,
        allow_other_family=allow_other_family, model_name=bridge.model_name(model))
    table = block_table(block_weights, plan.block_targets()) if block_weights is not None else None
    report = load_report(lora, plan, model_family=family, model_name=bridge.model_name(model),
                         strength_model=strength_model,
                         strength_clip=strength_clip, has_clip=clip is not None, block_table=table)
    return plan, report


def clones_with(model, clip, model_entries, clip_entries):
    """Clones of ``model`` and ``clip`` that carry the given patches (one patch pass each)."""
    new_model = bridge.with_patches(model, model_entries)
    new_clip = None
    if clip is not None:
        new_clip = clip.clone()
        new_clip.patcher = bridge.with_patches(clip.patcher, clip_entries)
    return new_model, new_clip


def apply_lora(model, clip, lora: LoadedLora, strength_model: float, strength_clip: float,
               allow_other_family: bool = False, block_weights: BlockWeights | None = None) -> AppliedLora:
    """Plan ``lora`` for ``model``/``clip``; return clones that carry it, the plan and the report."""
    plan, report = plan_for(model, clip, lora, strength_model, strength_clip, allow_other_family, block_weights)
    new_model, new_clip = clones_with(model, clip, plan.model_entries, plan.clip_entries)
    return AppliedLora(new_model, new_clip, plan, report)


class LoraLabLoader:
    """Load a LoRA onto a model (and its CLIP), from any common format, with a report."""

    DESCRIPTION = ("Applies a LoRA file (kohya, LyCORIS LoCon/LoHa/LoKr/DoRA, diffusers or PEFT) to the model "
                   "and text encoder, and reports what was applied. The input model is never changed.")
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
