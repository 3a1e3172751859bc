"""``LoraLabInspect``: what a LoRA file is, what it was made for, whether it is healthy, where it acts."""

from __future__ import annotations

import logging

import folder_paths
import torch

from ..lora_ops.errors import LoraLabError
from ..lora_ops.inspection import inspect_lora, plan_for_inspection, render_chart
from ..lora_ops.plan import LoadedLora
from . import bridge
from .changes import inputs_fingerprint
from .images import image_tensor
from .lora_files import cached_lora, resolve_lora_path
from .planning import model_family_of

log = logging.getLogger(__name__)


def _base_weights(model, clip):
    """``key -> unpatched weight`` over the model's and the text encoder's parameters."""
    model_keys = set(bridge.weight_shapes(model.model))

    def base_weight(key: str) -> torch.Tensor:
        if key in model_keys:
            return bridge.unpatched_weight(model.model, key)
        if clip is None:
            raise KeyError(key)
        return bridge.unpatched_weight(clip.cond_stage_model, key)

    return base_weight


def inspect_for_host(lora: LoadedLora, model=None, clip=None):
    """Inspect ``lora``, against ``model`` (and ``clip``) when given; returns the :class:`Inspection`."""
    if model is None:
        return inspect_lora(lora)
    family = model_family_of(model)
    model_shapes = bridge.weight_shapes(model.model)
    clip_shapes = bridge.weight_shapes(clip.cond_stage_model) if clip is not None else None
    plan = plan_for_inspection(
        lora, model_keys=bridge.model_key_index(model.model, model_shapes), model_shapes=model_shapes,
        model_family=family, clip_keys=bridge.clip_key_index(clip, clip_shapes) if clip is not None else None,
        clip_shapes=clip_shapes)
    return inspect_lora(lora, plan=plan, model_family=family, base_weights=_base_weights(model, clip),
                        model_name=bridge.model_name(model))


class LoraLabInspect:
    """Report what a LoRA is, its health, and a per-block energy chart; optionally checked against a model."""

    DESCRIPTION = ("Inspects a LoRA: format and algorithm, ranks, the base-model family it was made for (from its "
                   "layers and its metadata), training metadata, health (NaN/Inf, all-zero layers, fp16 overflow "
                   "and underflow) and the energy of its delta per model block. With a model: which targets "
                   "match, a verdict, and the largest |W + dW| per block against fp16's limit.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "inspect"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "chart")
    OUTPUT_NODE = True

    @classmethod
    def IS_CHANGED(cls, **inputs):
        """The content of the files this node reads (``nodes.changes``): a changed file re-runs the node."""
        return inputs_fingerprint(inputs)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {},
            "optional": {
                "lora_name": (folder_paths.get_filename_list("loras"),
                              {"tooltip": "A file in models/loras (ignored when the lora input is connected)."}),
                "lora": ("LORA", {"tooltip": "A LoRA from another LoRA Lab node (training, merging)."}),
                "model": ("MODEL", {"tooltip": "Check the LoRA against this model: matches, verdict, W + dW."}),
                "clip": ("CLIP", {"tooltip": "Also match the text-encoder layers."}),
            },
        }

    def inspect(self, lora_name=None, lora=None, model=None, clip=None):
        if lora is None:
            if not lora_name:
                raise LoraLabError("LoraLabInspect has no LoRA to inspect.",
                                   "pick a lora_name or connect a lora input.")
            lora = cached_lora(resolve_lora_path(lora_name))
        elif not isinstance(lora, LoadedLora):
            raise LoraLabError(f"The lora input holds a {type(lora).__name__}, not a LoRA Lab LoRA.",
                               "connect the LORA output of a LoRA Lab node.")
        inspection = inspect_for_host(lora, model, clip)
        report = inspection.to_text()
        chart = image_tensor(render_chart(inspection))
        log.info("LoRA Lab inspect: %s", report.split("\n", 1)[0])
        return {"ui": {"text": [report]}, "result": (report, chart)}


NODE_CLASS_MAPPINGS = {"LoraLabInspect": LoraLabInspect}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabInspect": "LoRA Lab Inspect"}
