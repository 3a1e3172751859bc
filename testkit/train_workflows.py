"""API-format workflows for ``LoraLabTrain`` (end-to-end tests, demo, benchmarks), and the training data and
settings the in-process training tests share.

:func:`train_graph`: CheckpointLoaderSimple -> LoadImage -> LoraLabTrain -> (its MODEL) CLIPTextEncode x2 ->
KSampler -> VAEDecode -> SaveImage, plus SaveImage nodes for the loss curve and the previews, so one
prompt trains, saves the LoRA, checks parity and renders with the trained model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

TRAIN_DEFAULTS: dict[str, Any] = {
    "image_folder": "", "output_name": "e2e_lora", "rank": 4, "alpha": 4.0, "algorithm": "lora",
    "targets": "attention+mlp", "target_blocks": "", "steps": 2, "learning_rate": 1e-3, "lr_schedule": "constant",
    "warmup_steps": 0, "optimizer": "AdamW", "batch_size": 1, "gradient_accumulation": 1, "resolution": 64,
    "buckets": False, "caption_dropout": 0.0, "shuffle_captions": False, "flip": False, "noise_offset": 0.0,
    "min_snr_gamma": 0.0, "seed": 0, "training_dtype": "fp32", "gradient_checkpointing": False,
    "preview_every": 2, "preview_prompt": "a red square", "preview_seed": 3, "preview_steps": 2, "save_every": 0,
    "save_precision": "fp32", "resume_from": "none", "overwrite": False, "dora": False, "dropout": 0.0,
    "rank_dropout": 0.0, "module_dropout": 0.0, "text_encoders": "", "text_encoder_lr": 0.0,
    "max_grad_norm": 0.0,
}


def train_inputs(**overrides: Any) -> dict[str, Any]:
    """Every widget input of LoraLabTrain, defaults small enough for a CPU test."""
    unknown = set(overrides) - set(TRAIN_DEFAULTS) - {"captions"}
    if unknown:
        raise KeyError(f"unknown LoraLabTrain inputs {sorted(unknown)}")
    inputs = dict(TRAIN_DEFAULTS, captions="")
    inputs.update(overrides)
    return inputs


def train_graph(checkpoint: str, image: str, caption: str, prefix: str, **overrides: Any) -> dict:
    """Train on one image from the input folder, then sample with the trained MODEL output."""
    g: dict[str, dict] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
    g["image"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    inputs = train_inputs(captions=caption, **overrides)
    inputs.update(model=["ckpt", 0], clip=["ckpt", 1], vae=["ckpt", 2], images=["image", 0])
    g["train"] = {"class_type": "LoraLabTrain", "inputs": inputs}
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": inputs["preview_prompt"]}}
    g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}}
    g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": inputs["resolution"],
                                                                "height": inputs["resolution"], "batch_size": 1}}
    g["sample"] = {"class_type": "KSampler", "inputs": {
        "model": ["train", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": inputs["preview_seed"], "steps": inputs["preview_steps"], "cfg": 7.0, "sampler_name": "euler",
        "scheduler": "normal", "denoise": 1.0}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"{prefix}_sample"}}
    g["save_loss"] = {"class_type": "SaveImage", "inputs": {"images": ["train", 2], "filename_prefix": f"{prefix}_loss"}}
    g["save_previews"] = {"class_type": "SaveImage", "inputs": {"images": ["train", 4],
                                                                "filename_prefix": f"{prefix}_previews"}}
    return g


def pattern_images() -> torch.Tensor:
    """Two 64x64 images with large flat regions (easy to overfit, unlike noise), ``(2, 64, 64, 3)``."""
    imgs = torch.zeros(2, 64, 64, 3)
    imgs[0, :, :32, 0] = 1
    imgs[0, :, 32:, 2] = 1
    imgs[1, :32, :, 1] = 1
    imgs[1, 32:, :, :] = 0.5
    return imgs


@contextlib.contextmanager
def loras_folder(root: Path) -> Iterator[Path]:
    """An empty ``root/loras`` that ComfyUI uses as its loras folder for the block."""
    from testkit.host import use_model_dirs  # noqa: PLC0415 - imports the host

    folder = root / "loras"
    folder.mkdir()
    with use_model_dirs(loras_dir=folder):
        yield folder


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the block: on a shared 2-core machine two threads were up to 100x slower per
    step under load from other processes, and one thread keeps every figure reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
