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
