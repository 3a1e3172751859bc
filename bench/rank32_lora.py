"""The benchmark's LoRA: rank 32 on the full-size SD1.5-architecture UNet, made by PEFT, saved as kohya.

How it is made (the way users' files are made, not by LoRA Lab's own code):

1. The diffusers twin of ``testkit.models.sd15_checkpoint()``'s UNet (``UNet2DConditionModel`` with
   ``models.sd15_full_diffusers_config()``, the checkpoint's weights copied in, fp32).
2. ``unet.add_adapter(LoraConfig(r=32, lora_alpha=32, target_modules=FULL_UNET_PEFT_TARGETS))``:
   the attention and resnet layers (field notes §2).
3. PEFT initialises ``lora_B`` to zero, so every factor gets seeded values from one
   ``torch.Generator``: ``A ~ N(0, 1/fan_in)``, ``B ~ N(0, 1)`` rescaled per target so that
   ``||dW|| = RELATIVE_NORM * ||W||`` with ``dW = (alpha / r) * B @ A`` (keeps W + dW far from fp16's
   limit whatever the layer).
4. ``get_peft_model_state_dict`` -> keys prefixed ``unet.`` (as ``save_lora_weights`` writes them) ->
   ``diffusers.utils.convert_state_dict_to_kohya`` (``lora_unet_*``, ``.alpha`` = rank = lora_alpha),
   saved in fp16 (kohya's usual ``--save_precision fp16``), atomically (temp file, rename).

Building it takes the fp32 UNet (3.4 GB) plus the fp16 checkpoint UNet (1.7 GB) in memory at once;
:func:`ensure_lora` runs the build in a child process so the benchmark process never holds them.
Cached at ``<cache>/bench/``; bump ``LORA_VERSION`` when anything above changes.
"""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
from pathlib import Path

import torch

from testkit import models

log = logging.getLogger(__name__)

LORA_VERSION = "1"
RANK = 32
ALPHA = 32.0
RELATIVE_NORM = 0.1
SEED = 3232
# the attention and resnet layers of the UNet, as in field notes §2
TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "time_emb_proj",
]


def lora_path() -> Path:
    return models.cache_root() / "bench" / f"sd15_full_kohya_r{RANK}-v{LORA_VERSION}-m{models.MODELS_VERSION}.safetensors"


def ensure_lora() -> Path:
    """The cached LoRA file, built first (in a child process) if it is missing."""
    path = lora_path()
    if not path.exists():
        repo = Path(__file__).resolve().parent.parent
        log.info("building the rank-%d benchmark LoRA at %s (a few minutes, once)", RANK, path)
        subprocess.run([sys.executable, "-m", "bench.rank32_lora"], cwd=repo, check=True)
        if not path.exists():
            raise RuntimeError(f"building the benchmark LoRA did not write {path}")
    return path


def _full_unet_twin() -> torch.nn.Module:
    import comfy.supported_models  # noqa: PLC0415
    from diffusers import UNet2DConditionModel  # noqa: PLC0415

    unet_config = comfy.supported_models.SD15(models.sd15_unet_config()).unet_config
    unet = UNet2DConditionModel(**models.sd15_full_diffusers_config())
    comfy_sd = models.sd15_full_unet_state_dict()
    models.load_diffusers_unet_from_comfy(unet, comfy_sd, unet_config)
    del comfy_sd
    gc.collect()
    return unet.eval()


@torch.no_grad()
def _seed_factors(unet: torch.nn.Module, gen: torch.Generator, adapter: str = "default",
                  scale: float = ALPHA / RANK) -> int:
    """Seeded A and B for every PEFT LoRA layer of ``adapter``; returns the number of layers."""
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    layers = sorted(((n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer)), key=lambda x: x[0])
    for _, layer in layers:
        a = layer.lora_A[adapter].weight
        b = layer.lora_B[adapter].weight
        fan_in = a[0].numel()
        a.copy_(torch.randn(a.shape, generator=gen) * fan_in**-0.5)
        b.copy_(torch.randn(b.shape, generator=gen))
        delta = scale * (b.flatten(1) @ a.flatten(1))
        base = layer.get_base_layer().weight
        b.mul_(RELATIVE_NORM * base.norm() / delta.norm())
    return len(layers)


def build(path: Path) -> None:
    """Make the LoRA with PEFT + diffusers and write it to ``path`` atomically."""
    models.import_comfy()
    from diffusers.utils import convert_state_dict_to_kohya  # noqa: PLC0415
    from peft import LoraConfig  # noqa: PLC0415
    from peft.utils import get_peft_model_state_dict  # noqa: PLC0415

    unet = _full_unet_twin()
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGET_MODULES, init_lora_weights=True))
    n_layers = _seed_factors(unet, torch.Generator().manual_seed(SEED))
    peft_sd = {f"unet.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}
    del unet
    gc.collect()
    kohya = convert_state_dict_to_kohya(peft_sd)
    del peft_sd
    kohya = {k: (v.to(torch.float16) if v.is_floating_point() else v) for k, v in kohya.items()}
    n_down = sum(1 for k in kohya if k.endswith(".lora_down.weight"))
    if n_down != n_layers:
        raise RuntimeError(f"PEFT made {n_layers} LoRA layers but the kohya file has {n_down}")
    import diffusers  # noqa: PLC0415
    import peft  # noqa: PLC0415

    models.save_safetensors(kohya, path, metadata={
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": str(ALPHA),
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "lora_lab_bench": f"peft {peft.__version__} LoraConfig(r={RANK}, lora_alpha={ALPHA:g}) on the diffusers "
                          f"{diffusers.__version__} twin of testkit sd15_full, convert_state_dict_to_kohya, fp16",
    })
    log.info("wrote %s (%d targets)", path, n_down)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(lora_path())
