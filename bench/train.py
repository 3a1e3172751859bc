"""Training speed and memory: LoraLabTrain's loop against core ``TrainLoraNode``
(comfy_extras/nodes_train.py), on the full-size SD1.5 architecture and, one row per family LoraLabTrain
trains, on the small models of ``testkit`` (:func:`families`: SD1.5, SDXL, Flux, Chroma, Z-Image, Wan T2V).

Same process, same ``ModelPatcher``, same latent size and caption, batch 1, AdamW at the same learning
rate, rank 8, fp32 compute and fp32 LoRA weights for both (core's defaults are bf16; on a CPU fp32 is the
fair common ground), gradient checkpointing on for both (core's default).

Targets cannot be made identical: core trains every weight of the UNet (a LoRA on each Linear and conv,
plus a full-size trainable difference on each bias and norm weight). LoRA Lab is measured twice: ``locon``
on ``all linear and conv`` (the closest: every Linear and conv of the UNet's blocks) and its default
``lora`` on ``attention+mlp``. Both rows are against the same core figure.

Steps per second exclude set-up: each path runs ``1`` and ``1 + n`` steps, and the rate is
``n / (t(1 + n) - t(1))``. Memory is a separate pass (a sampling thread slows timed code, see
``bench.lora_apply``): peak RSS growth during one ``1 + n``-step call (set-up included: core's per-weight
wrappers, LoRA Lab's latents, text encoding and saving), after ``gc.collect`` and ``malloc_trim``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .kit import RssSampler, settle

log = logging.getLogger(__name__)

RANK = 8
LR = 1e-4
CAPTION = "zxq style, a red square"


def _core_run(patcher, latents: torch.Tensor, cond, steps: int, rank: int = RANK) -> None:
    from comfy_extras.nodes_train import TrainLoraNode  # noqa: PLC0415

    from testkit.host import accepts_argument  # noqa: PLC0415

    # ComfyUI 0.8.0 added bucket_mode (aspect-ratio buckets); off is 0.3.75's behaviour.
    newer = {"bucket_mode": [False]} if accepts_argument(TrainLoraNode.execute, "bucket_mode") else {}
    with torch.inference_mode():
        TrainLoraNode.execute(
            # Two one-image latent dicts: with a single LATENT input core 0.3.75 fails before training
            # (``multi_res`` is only set on its list path), so the data set is the image twice.
            model=[patcher], latents=[{"samples": latents}, {"samples": latents}], positive=[cond], batch_size=[1],
            grad_accumulation_steps=[1], steps=[steps], learning_rate=[LR], rank=[rank], optimizer=["AdamW"],
            loss_function=["MSE"], seed=[0], training_dtype=["fp32"], lora_dtype=["fp32"], algorithm=["LoRA"],
            gradient_checkpointing=[True], existing_lora=["[None]"], **newer)


def _lab_run(patcher, clip, vae, image: torch.Tensor, steps: int, algorithm: str, targets: str, folder: Path,
             rank: int = RANK) -> None:
    from lora_lab.nodes.train import prepare  # noqa: PLC0415
    from lora_lab.nodes.train_host import ComfyTrainHost  # noqa: PLC0415
    from lora_lab.train.session import run_training  # noqa: PLC0415
    from lora_lab.train.settings import TrainSettings  # noqa: PLC0415
    from testkit.host import use_model_dirs  # noqa: PLC0415

    s = TrainSettings(output_name=f"bench_{algorithm}_{steps}", rank=rank, alpha=float(rank),
                      algorithm=algorithm, targets=targets, steps=steps, learning_rate=LR,
                      resolution=image.shape[1], gradient_checkpointing=True)
    with use_model_dirs(loras_dir=folder), torch.inference_mode():
        plan = prepare(patcher, s, images=image.repeat(2, 1, 1, 1), captions=f"{CAPTION}\n{CAPTION}", overwrite=True)
        run_training(patcher, clip, vae, plan, host=ComfyTrainHost())


def _timed(fn) -> float:
    settle()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(patcher, clip, vae, *, size: int = 64, steps: int = 3, rank: int = RANK) -> dict[str, Any]:
    """Both paths on ``patcher`` at ``size`` x ``size`` pixels; ``steps`` timed steps after one."""
    import comfy.model_management  # noqa: PLC0415

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, size, size, 3, generator=gen)
    with torch.inference_mode():
        latents = vae.encode(image)
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(CAPTION))
    folder = Path(tempfile.mkdtemp(prefix="lora-lab-bench-train-"))
    impls = {
        "core": lambda n: _core_run(patcher, latents, cond, n, rank),
        "lora_lab_locon_all": lambda n: _lab_run(patcher, clip, vae, image, n, "locon", "all linear and conv",
                                                 folder, rank),
        "lora_lab_lora_attn_mlp": lambda n: _lab_run(patcher, clip, vae, image, n, "lora", "attention+mlp",
                                                     folder, rank),
    }
    result: dict[str, Any] = {"size": size, "timed_steps": steps, "rank": rank, "impls": {}}
    for name, fn in impls.items():
        fn(1)  # warm-up: first-call allocations, lazy imports
        t1 = _timed(lambda: fn(1))
        tn = _timed(lambda: fn(1 + steps))
        comfy.model_management.unload_all_models()
        with RssSampler() as mem:
            fn(1 + steps)
        comfy.model_management.unload_all_models()
        per_step = max(tn - t1, 1e-9) / steps
        result["impls"][name] = {"t_1_s": t1, f"t_{1 + steps}_s": tn, "step_s": per_step,
                                 "steps_per_s": 1.0 / per_step, "peak_extra_bytes": mem.peak_extra}
        log.info("%s: %.3f s/step, peak +%.0f MiB", name, per_step, mem.peak_extra / 2**20)
    result["unet_params"] = sum(p.numel() for p in patcher.model.diffusion_model.parameters())
    return result


def full_size() -> dict[str, Any]:
    """The full-size SD1.5-architecture checkpoint (fp32 on the CPU), 64x64 images, 3 timed steps."""
    from testkit import models  # noqa: PLC0415
    from testkit.host import import_comfy, import_pack  # noqa: PLC0415

    import_comfy()
    import_pack()
    import comfy.sd  # noqa: PLC0415

    with torch.inference_mode():
        patcher, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(models.sd15_checkpoint()))
    result = run(patcher, clip, vae)
    result["model"] = "full-size SD1.5 architecture"
    result["notes"] = notes(result)
    result["families"] = families()
    return result


FAMILIES = ("sd15", "sdxl", "flux", "chroma", "z_image", "wan21_t2v")
"""The families LoraLabTrain trains, as small testkit models (SD1.5: ``testkit.models``; the others
``testkit.families`` with ``testkit.small_text`` encoders)."""
FAMILY_RANK = 4  # the small models' layers are 32 to 256 wide


def family_model(name: str) -> tuple[Any, Any, Any]:
    """``(MODEL, CLIP, VAE)`` of the small ``name`` model."""
    from testkit import models  # noqa: PLC0415
    from testkit.families import small_family_model  # noqa: PLC0415
    from testkit.small_text import small_family_clip  # noqa: PLC0415
    from testkit.small_vae import small_taesd, small_vae, small_wan_vae  # noqa: PLC0415

    # Built outside inference mode: core's TrainLoraNode 0.3.75 fails on DiTs whose weights are inference
    # tensors ("Inference tensors cannot be saved for backward", from Flux's RMSNorm scales), which LoRA Lab's
    # host adapter replaces; with normal tensors both paths run.
    with torch.no_grad():
        if name == "sd15":
            patcher, clip = models.small_sd15()
            return patcher, clip, small_vae()
        vae = {"sdxl": small_vae, "wan21_t2v": small_wan_vae}.get(name, lambda: small_taesd(16))()
        return small_family_model(name), small_family_clip(name), vae


def families(*, size: int = 64, steps: int = 30) -> dict[str, Any]:
    """:func:`run` on the small model of every family in :data:`FAMILIES` (one thread, rank 4; a step takes
    tens of milliseconds, so 30 timed steps keep the rates steady)."""
    from testkit.host import import_comfy, import_pack  # noqa: PLC0415

    import_comfy()
    import_pack()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name in FAMILIES:
            patcher, clip, vae = family_model(name)
            out[name] = run(patcher, clip, vae, size=size, steps=steps, rank=FAMILY_RANK)
            out[name]["model"] = f"small {name}"
    finally:
        torch.set_num_threads(threads)
    return out


def family_ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`ratios` of each family's run, scenarios named by family."""
    rows = []
    for name, figures in result.items():
        for row in ratios(figures):
            rows.append({**row, "scenario": f"{row['scenario']} (small {name})"})
    return rows


def notes(result: dict[str, Any]) -> list[str]:
    return [f"UNet {result['unet_params'] / 1e6:.0f}M params, {result['size']}x{result['size']} images, rank "
            f"{result['rank']}, batch 1, AdamW, fp32, gradient checkpointing; core trains every UNet weight, "
            "LoRA Lab rows name their targets; steps/s excludes set-up (t(1+n) - t(1))"]


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    core = result["impls"]["core"]
    rows = []
    for name in ("lora_lab_locon_all", "lora_lab_lora_attn_mlp"):
        mine = result["impls"][name]
        scenario = "train: " + name[len("lora_lab_"):].replace("_", " ")
        rows.append({"benchmark": "train", "device": "cpu", "scenario": scenario, "metric": "steps/s",
                     "core": core["steps_per_s"], "lora_lab": mine["steps_per_s"],
                     "ratio": mine["steps_per_s"] / core["steps_per_s"]})
        rows.append({"benchmark": "train", "device": "cpu", "scenario": scenario, "metric": "peak extra MiB",
                     "core": core["peak_extra_bytes"] / 2**20, "lora_lab": mine["peak_extra_bytes"] / 2**20,
                     "ratio": core["peak_extra_bytes"] / mine["peak_extra_bytes"] if mine["peak_extra_bytes"] > 0
                     else None})
    if "families" in result:
        rows += family_ratios(result["families"])
    return rows
