"""Five LoRAs for the stack benchmark, made by PEFT on the full-size SD1.5-architecture twin.

One diffusers twin carries five PEFT adapters (rank 8, alpha 8, the attention and resnet layers of
each with its own seed), saved as five kohya files through
``convert_state_dict_to_kohya``, fp16, cached under ``.cache/lora-lab/bench/``. Built once, in a
child process (``python -m bench.stack_loras``), since the fp32 twin needs about 6 GB.
"""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
from pathlib import Path

import torch

from testkit import models

from .rank32_lora import TARGET_MODULES, _full_unet_twin, _seed_factors

log = logging.getLogger(__name__)

VERSION = "1"
COUNT = 5
RANK = 8
ALPHA = 8.0


def paths() -> list[Path]:
    folder = models.cache_root() / "bench"
    return [folder / f"sd15_full_stack{i}_r{RANK}-v{VERSION}-m{models.MODELS_VERSION}.safetensors" for i in range(COUNT)]


def ensure_loras() -> list[Path]:
    if not all(p.exists() for p in paths()):
        repo = Path(__file__).resolve().parent.parent
        log.info("building %d stack benchmark LoRAs (once)", COUNT)
        subprocess.run([sys.executable, "-m", "bench.stack_loras"], cwd=repo, check=True)
    missing = [p for p in paths() if not p.exists()]
    if missing:
        raise RuntimeError(f"building the stack LoRAs did not write {missing[0]}")
    return paths()


def build() -> None:
    models.import_comfy()
    from diffusers.utils import convert_state_dict_to_kohya  # noqa: PLC0415
    from peft import LoraConfig  # noqa: PLC0415
    from peft.utils import get_peft_model_state_dict  # noqa: PLC0415

    unet = _full_unet_twin()
    for i, path in enumerate(paths()):
        name = f"stack{i}"
        unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGET_MODULES), adapter_name=name)
        _seed_factors(unet, torch.Generator().manual_seed(5000 + i), adapter=name, scale=ALPHA / RANK)
        peft_sd = {f"unet.{k}": v.detach().clone()
                   for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}
        kohya = {k: (v.to(torch.float16) if v.is_floating_point() else v)
                 for k, v in convert_state_dict_to_kohya(peft_sd).items()}
        models.save_safetensors(kohya, path, metadata={"ss_network_module": "networks.lora",
                                                       "ss_network_dim": str(RANK), "ss_network_alpha": str(ALPHA)})
        unet.delete_adapters(name)
        del peft_sd, kohya
        gc.collect()
        log.info("wrote %s", path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build()
