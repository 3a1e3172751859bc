"""Planning and clones, for every node that applies LoRAs: block weights for the connected model, a LoRA
planned against the model's and text encoder's key maps (with its report), and the clones that carry it."""

from __future__ import annotations

from dataclasses import dataclass

from ..lora_ops import LoadedLora, LoraPlan, load_report, plan_lora
from ..lora_ops.blocks import (
    BlockWeights,
    block_table,
    list_presets,
    load_user_presets,
    parse_block_weights,
    read_user_presets,
)
from ..lora_ops.errors import LoraLabError
from . import bridge
from .lora_files import user_presets_path

# Optional inputs every node with a block_weights field shares.
BLOCK_EXTRA_INPUTS = {
    "block_a": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                          "tooltip": "Value of A in block_weights (for sweeps)."}),
    "block_b": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                          "tooltip": "Value of B in block_weights."}),
    "block_seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                           "tooltip": "Seed of the R/U random block weights."}),
}


def model_family_of(model) -> str:
    """The family key of ``model``, from its ComfyUI config class and ancestors (``bridge.model_family``)."""
    return bridge.model_family(model)


@dataclass
class AppliedLora:
    model: object
    clip: object | None
    plan: LoraPlan
    report: str


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
