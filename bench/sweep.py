"""A 10-weight sweep plus reference: ``LoraLabSweep`` against the same 11 images made the way users
make them today, core ``LoraLoader`` + ``KSampler`` once per cell.

Same process, same full-size SD1.5-architecture checkpoint (UNet, CLIP and VAE), same rank-32 kohya
LoRA (``rank32_lora``), same seed, sampler and size. Core: for each weight ``LoraLoader`` (the node
class, which caches the file between cells as it does in a graph) on model and CLIP, two
``CLIPTextEncode``, ``KSampler`` (``nodes.common_ksampler``) and ``VAEDecode``; plus one plain image.
LoRA Lab: one ``LoraLabSweep`` call (reference + one batch of 10). Wall time per sweep, best of
``repeats``; the largest pixel difference between the two sets of images is reported next to it. Also
timed: one plain image at the same settings (LoRA Lab's yardstick: a sweep in at most 3x its time
on a GPU), and both sweeps as multiples of it.
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import Any

import torch

WEIGHTS = [round(0.1 * i, 1) for i in range(1, 11)]
SETTINGS = {"cpu": {"size": 128, "steps": 4}, "cuda": {"size": 512, "steps": 20}}
PROMPT, NEGATIVE, SEED, CFG = "a lighthouse on a cliff at dawn", "blurry", 7, 5.0


def _core_image(model, clip, vae, size: int, steps: int) -> torch.Tensor:
    """One image the way a plain graph makes it: two ``CLIPTextEncode``, ``KSampler``, ``VAEDecode``."""
    import nodes  # ComfyUI's nodes.py  # noqa: PLC0415

    pos = nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    neg = nodes.CLIPTextEncode().encode(clip, NEGATIVE)[0]
    latent = nodes.EmptyLatentImage().generate(size, size, 1)[0]
    out = nodes.common_ksampler(model, SEED, steps, CFG, "euler", "normal", pos, neg, latent, disable_noise=False)[0]
    return vae.decode(out["samples"])[0].float().cpu()


def _core_sweep(model, clip, vae, lora_name: str, weights: list[float], size: int, steps: int) -> torch.Tensor:
    import nodes  # ComfyUI's nodes.py  # noqa: PLC0415

    loader, images = nodes.LoraLoader(), []
    for w in [0.0] + weights:
        m, c = (model, clip) if w == 0.0 else loader.load_lora(model, clip, lora_name, w, w)
        images.append(_core_image(m, c, vae, size, steps))
    return torch.stack(images)


def _lab_sweep(model, clip, vae, lora_name: str, weights: list[float], size: int, steps: int
               ) -> tuple[torch.Tensor, dict]:
    from lora_lab.nodes.sweep import LoraLabSweep  # noqa: PLC0415

    res = LoraLabSweep().sweep(model, clip, vae, lora_name, PROMPT, NEGATIVE, SEED, steps, CFG, "euler", "normal",
                               size, size, weights[0], weights[-1], len(weights), True, "", "none", "")
    return res["result"][1], json.loads(res["result"][3])


def _timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run(checkpoint, lora_path, *, repeats: int = 1, settings: dict | None = None,
        weights: list[float] = WEIGHTS) -> dict[str, Any]:
    """Both sweeps on the device ComfyUI picked (the GPU when there is one), ``repeats`` times each."""
    from testkit.host import import_pack, use_model_dirs  # noqa: PLC0415

    import_pack()
    import comfy.model_management as mm  # noqa: PLC0415
    import comfy.sd  # noqa: PLC0415

    settings = settings or SETTINGS
    result: dict[str, Any] = {"weights": weights, "lora": lora_path.name, "devices": {}}
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)[:3]
    with use_model_dirs(loras_dir=lora_path.parent, output_dir=tempfile.mkdtemp(prefix="lora-lab-bench-")):
        for device in [mm.get_torch_device().type]:
            s = settings[device]
            core_t, lab_t, one_t, core_imgs, lab_imgs, report = [], [], [], None, None, None
            for _ in range(repeats):
                core_imgs, t = _timed(lambda: _core_sweep(model, clip, vae, lora_path.name, weights, s["size"], s["steps"]),
                                      device)
                core_t.append(t)
                (lab_imgs, report), t = _timed(lambda: _lab_sweep(model, clip, vae, lora_path.name, weights,
                                                                  s["size"], s["steps"]), device)
                lab_t.append(t)
                # the yardstick: one plain image at the same settings, no LoRA, timed warm (after
                # the sweeps, so that no first-run cost of the model or the sampler falls on it)
                _, t = _timed(lambda: _core_image(model, clip, vae, s["size"], s["steps"]), device)
                one_t.append(t)
            mm.soft_empty_cache()
            result["devices"][device] = {
                **s, "core_s": min(core_t), "lora_lab_s": min(lab_t), "all_core_s": core_t, "all_lora_lab_s": lab_t,
                "single_image_s": min(one_t), "all_single_image_s": one_t,
                "mode": report["mode"], "max_pixel_diff": (core_imgs - lab_imgs).abs().max().item(),
                "reference_bit_exact": bool(torch.equal(core_imgs[0], lab_imgs[0])),
                "break_point": report["break_points"][0]}
    return result


def full_size() -> dict[str, Any]:
    from testkit import models  # noqa: PLC0415

    from .rank32_lora import ensure_lora  # noqa: PLC0415

    result = run(models.sd15_checkpoint(), ensure_lora())
    result["notes"] = [
        f"{d}: {r['size']}x{r['size']}, {r['steps']} steps, mode {r['mode']}; largest pixel difference to core "
        f"{r['max_pixel_diff']:.2e}, reference bit-exact {r['reference_bit_exact']}"
        for d, r in result["devices"].items()]
    return result


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for dev, r in result["devices"].items():
        rows.append({"benchmark": "sweep", "device": dev,
                     "scenario": f"{len(result['weights'])} weights + reference, {r['size']}px {r['steps']} steps",
                     "metric": "wall s", "core": r["core_s"], "lora_lab": r["lora_lab_s"],
                     "ratio": r["core_s"] / r["lora_lab_s"]})
        if "single_image_s" in r:
            one = r["single_image_s"]
            rows.append({"benchmark": "sweep", "device": dev, "scenario": f"the sweep / one plain image ({one:.2f} s)",
                         "metric": "x one image", "core": r["core_s"] / one, "lora_lab": r["lora_lab_s"] / one,
                         "ratio": r["core_s"] / r["lora_lab_s"]})
    return rows
