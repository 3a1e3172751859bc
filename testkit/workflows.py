"""ComfyUI API-format workflows used by the end-to-end tests and the demo.

Each builder returns the ``prompt`` dict that ``/prompt`` takes: node id -> ``class_type`` + inputs,
with links written as ``[node_id, output_index]``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    positive: str = "a lighthouse on a cliff at dawn"
    negative: str = "blurry"
    seed: int = 7
    steps: int = 3
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "normal"
    width: int = 64
    height: int = 64


def txt2img(checkpoint: str, prefix: str, *, lora: str | None = None, strength_model: float = 1.0,
            strength_clip: float = 1.0, block_weights: str = "", core_lora: str | None = None,
            sampling: Sampling = Sampling()) -> dict:
    """Checkpoint -> [core LoraLoader] -> [LoraLabLoader] -> CLIPTextEncode x2 -> KSampler -> VAEDecode -> SaveImage."""
    s = sampling
    g: dict[str, dict] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
    model, clip = ["ckpt", 0], ["ckpt", 1]
    if core_lora:
        g["core_lora"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": core_lora,
            "strength_model": strength_model, "strength_clip": strength_clip}}
        model, clip = ["core_lora", 0], ["core_lora", 1]
    if lora:
        g["lora"] = {"class_type": "LoraLabLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": lora, "strength_model": strength_model,
            "strength_clip": strength_clip, "block_weights": block_weights}}
        model, clip = ["lora", 0], ["lora", 1]
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": s.positive}}
    g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": s.negative}}
    g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": s.width, "height": s.height, "batch_size": 1}}
    g["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": s.seed, "steps": s.steps, "cfg": s.cfg, "sampler_name": s.sampler, "scheduler": s.scheduler,
        "denoise": 1.0}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    return g


def stack_nodes(g: dict, rows: list[tuple[str, float, float]]) -> list:
    """LoraLabStack nodes chained in ``g``; returns the link to the last one's LORA_STACK."""
    link = None
    for i, (name, sm, sc) in enumerate(rows):
        inputs = {"lora_name": name, "strength_model": sm, "strength_clip": sc, "block_weights": "", "enabled": True}
        if link is not None:
            inputs["lora_stack"] = link
        g[f"stack{i}"] = {"class_type": "LoraLabStack", "inputs": inputs}
        link = [f"stack{i}", 0]
    return link


def stack_txt2img(checkpoint: str, prefix: str, rows: list[tuple[str, float, float]], *,
                  normalization: str = "none", sampling: Sampling = Sampling()) -> dict:
    """Checkpoint -> LoraLabStack x N -> LoraLabApplyStack -> the rest of :func:`txt2img`."""
    g = txt2img(checkpoint, prefix, sampling=sampling)
    link = stack_nodes(g, rows)
    g["apply"] = {"class_type": "LoraLabApplyStack", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_stack": link, "normalization": normalization,
        "normalization_target": 1.0}}
    g["pos"]["inputs"]["clip"] = g["neg"]["inputs"]["clip"] = ["apply", 1]
    g["sample"]["inputs"]["model"] = ["apply", 0]
    return g


def merge_and_save(checkpoint: str, rows: list[tuple[str, float, float]], output_name: str, *,
                   method: str = "concat", rank: int = 0, overwrite: bool = False) -> dict:
    """Checkpoint -> LoraLabStack x N -> LoraLabMerge -> LoraLabSave (a file in the loras folder)."""
    g: dict[str, dict] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
    link = stack_nodes(g, rows)
    g["merge"] = {"class_type": "LoraLabMerge", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_stack": link, "method": method, "rank": rank,
        "energy": 0.0, "density": 0.5, "seed": 0, "normalization": "none", "normalization_target": 1.0,
        "name": output_name}}
    g["save"] = {"class_type": "LoraLabSave", "inputs": {"lora": ["merge", 0], "output_name": output_name,
                                                         "overwrite": overwrite}}
    return g


def sweep(checkpoint: str, lora: str, prefix: str = "lora_lab/sweep", *, weight_start: float = 0.5,
          weight_end: float = 1.0, weight_count: int = 2, include_reference: bool = True, axis: str = "none",
          axis_values: str = "", lora_b: str | None = None, batch_mode: str = "auto",
          sampling: Sampling = Sampling()) -> dict:
    """Checkpoint -> LoraLabSweep (the grid is saved by the node itself)."""
    s = sampling
    inputs = {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "lora_name": lora,
        "positive": s.positive, "negative": s.negative, "seed": s.seed, "steps": s.steps, "cfg": s.cfg,
        "sampler_name": s.sampler, "scheduler": s.scheduler, "width": s.width, "height": s.height,
        "weight_start": weight_start, "weight_end": weight_end, "weight_count": weight_count,
        "include_reference": include_reference, "block_weights": "", "axis": axis, "axis_values": axis_values,
        "batch_mode": batch_mode, "filename_prefix": prefix}
    if lora_b:
        inputs["lora_name_b"] = lora_b
    return {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
            "sweep": {"class_type": "LoraLabSweep", "inputs": inputs}}
