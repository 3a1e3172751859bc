"""``lycoris_apply``: one LyCORIS LoHa on the full-size SD1.5 UNet, LoRA Lab against core.

The same scenarios as ``lora_apply`` (patch, unpatch, prepare, strength change through ComfyUI's model
management, memory; restores checked bit for bit), with a LoHa file made by lycoris-lora itself:
``create_lycoris(algo="loha")`` on the full-size diffusers twin of the benchmark checkpoint, rank 8,
factors seeded and scaled so that ``||dW|| = 0.1 ||W||`` per layer (``testkit.fixtures``' rule),
saved with ``save_weights`` in fp16. Built once, in a child process (``python -m bench.lycoris_apply``:
the fp32 twin needs several GB), cached under ``.cache/lora-lab/bench/``.
"""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from testkit import models

from . import lora_apply

log = logging.getLogger(__name__)

VERSION = "1"
RANK = 8
ALPHA = 8.0
SEED = 7100


def path() -> Path:
    return models.cache_root() / "bench" / f"sd15_full_loha_r{RANK}-v{VERSION}-m{models.MODELS_VERSION}.safetensors"


def ensure_loha() -> Path:
    if not path().exists():
        repo = Path(__file__).resolve().parent.parent
        log.info("building the LoHa benchmark file (once)")
        subprocess.run([sys.executable, "-m", "bench.lycoris_apply"], cwd=repo, check=True)
    if not path().exists():
        raise RuntimeError(f"building the LoHa benchmark file did not write {path()}")
    return path()


def build() -> None:
    models.import_comfy()
    from lycoris import create_lycoris  # noqa: PLC0415

    from testkit import fixtures  # noqa: PLC0415

    from .rank32_lora import _full_unet_twin  # noqa: PLC0415

    unet = _full_unet_twin()
    net = create_lycoris(unet, 1.0, linear_dim=RANK, linear_alpha=ALPHA, conv_dim=RANK, conv_alpha=ALPHA, algo="loha")
    net.apply_to()
    fixtures._randomize_lycoris(net, "loha", torch.Generator().manual_seed(SEED))
    out = path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")  # LyCORIS picks the format by the extension: keep it
    net.save_weights(str(tmp), torch.float16, {"lycoris_algo": "loha", "ss_network_module": "lycoris.kohya",
                                               "ss_network_dim": str(RANK), "ss_network_alpha": str(ALPHA)})
    tmp.replace(out)
    del net, unet
    gc.collect()
    log.info("wrote %s", out)


def full_size() -> dict[str, Any]:
    """The benchmark as ``python -m bench`` runs it: full-size SD1.5 UNet, fp16, rank-8 LoHa."""
    loha = ensure_loha()
    patcher, load_s = lora_apply.load_full_unet()
    result = lora_apply.run(patcher, loha, repeats=5, strength_repeats=3)
    result["checkpoint_load_s"] = load_s
    result["model"]["family"] = type(patcher.model.model_config).__name__
    result["notes"] = lora_apply.notes(result)
    return result


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    return lora_apply.ratios(result, benchmark="lycoris_apply")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build()
