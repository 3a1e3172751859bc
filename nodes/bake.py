"""``LoraLabBake``: save a LoRA with its block weights folded in, as a kohya file any loader reads."""

from __future__ import annotations

import os
import re
from pathlib import Path

import folder_paths

from ..lora_ops.bake import bake_plan, kohya_metadata, network_module_for
from ..lora_ops.errors import LoraLabError
from ..lora_ops.safeio import write_safetensors_atomic
from . import bridge
from .changes import inputs_fingerprint
from .loader import BLOCK_EXTRA_INPUTS, apply_lora, cached_lora, model_family_of, resolve_block_weights, resolve_lora_path

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,150}")
# Names Windows reserves for devices, with any extension: a file called NUL.safetensors cannot be written there.
_RESERVED_NAME = re.compile(r"(?:CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(?:\..*)?", re.IGNORECASE)


def output_stem(name: str) -> str:
    """``name`` without ``.safetensors``, when it is a plain file name; :class:`LoraLabError` otherwise.

    Allowed: letters, digits, space, ``. _ + -``; starting with a letter or digit; at most 151 characters;
    no ``..``, no dot or space at the end, no control characters (a name ending in a newline included),
    no name Windows reserves for a device. Spaces around the whole name are dropped.
    """
    stem = name.strip(" ")
    if stem.endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    if (not _SAFE_NAME.fullmatch(stem) or ".." in stem or stem.endswith((".", " "))
            or _RESERVED_NAME.fullmatch(stem)):
        raise LoraLabError(f"Output name {name[:200]!r} is not a plain file name (letters, digits, space, . _ + - "
                           "only; starting with a letter or digit; no folders, no '..', no dot or space at the end).",
                           "pick a simple name such as 'my_lora_baked'.")
    return stem


def existing_in_folders(kind: str, file_name: str) -> list[Path]:
    """Every file (or link, even a broken one) called ``file_name`` directly in a folder of ``kind``."""
    return [Path(folder) / file_name for folder in folder_paths.get_folder_paths(kind)
            if os.path.lexists(os.path.join(folder, file_name))]


def lora_output_path(name: str, *, overwrite: bool) -> Path:
    """Where a new LoRA called ``name`` goes: the first loras folder.

    The name is checked with :func:`output_stem` and against every loras folder (``extra_model_paths.yaml``
    may add several): a file of that name in the first folder is replaced only with ``overwrite``; one in
    any other folder is never shadowed (ComfyUI lists the first folder's file under that name).
    """
    stem = output_stem(name)
    folders = folder_paths.get_folder_paths("loras")
    if not folders:
        raise LoraLabError("ComfyUI has no loras folder to save into.",
                           "check the loras entries of extra_model_paths.yaml.")
    path = Path(folders[0]) / f"{stem}.safetensors"
    for found in existing_in_folders("loras", path.name):
        if os.path.realpath(found.parent) != os.path.realpath(path.parent):
            raise LoraLabError(f"'{path.name}' already exists in the loras folder {found.parent}; a new file in "
                               f"{path.parent} would hide it from every loader.",
                               "pick another output name (overwrite replaces only files in the first loras folder).")
        if not overwrite:
            raise LoraLabError(f"'{path.name}' already exists in the loras folder.",
                               "pick another output name, or enable overwrite.")
    return path


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
