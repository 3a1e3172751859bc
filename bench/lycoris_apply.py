"""``lycoris_apply``: one LyCORIS LoHa, then one LoKr, on the full-size SD1.5 UNet, LoRA Lab against core.

The same scenarios as ``lora_apply`` (patch, unpatch, prepare, strength change through ComfyUI's model
management, memory; restores checked bit for bit), with files made by lycoris-lora itself:
``create_lycoris(algo=...)`` with LyCORIS' defaults otherwise, on the full-size diffusers twin of the
benchmark checkpoint, rank 8, factors seeded and scaled so that ``||dW|| = 0.1 ||W||`` per layer
(``testkit.fixtures``' rule), saved with ``save_weights`` in fp16. Built once, in a child process
(``python -m bench.lycoris_apply``: the fp32 twin needs several GB), cached under ``.cache/lora-lab/bench/``.
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
ALGOS = {"loha": 7100, "lokr": 7200}  # algorithm -> seed


def path(algo: str) -> Path:
    return models.cache_root() / "bench" / f"sd15_full_{algo}_r{RANK}-v{VERSION}-m{models.MODELS_VERSION}.safetensors"


def ensure_files() -> dict[str, Path]:
    if not all(path(a).exists() for a in ALGOS):
        repo = Path(__file__).resolve().parent.parent
        log.info("building the LyCORIS benchmark files (once)")
        subprocess.run([sys.executable, "-m", "bench.lycoris_apply"], cwd=repo, check=True)
    missing = [path(a) for a in ALGOS if not path(a).exists()]
    if missing:
        raise RuntimeError(f"building the LyCORIS benchmark files did not write {missing[0]}")
    return {a: path(a) for a in ALGOS}


def build() -> None:
    models.import_comfy()
    from lycoris import create_lycoris  # noqa: PLC0415

    from testkit import fixtures  # noqa: PLC0415

    from .rank32_lora import _full_unet_twin  # noqa: PLC0415

    unet = _full_unet_twin()
    for algo, seed in ALGOS.items():
        net = create_lycoris(unet, 1.0, linear_dim=RANK, linear_alpha=ALPHA, conv_dim=RANK, conv_alpha=ALPHA,
                             algo=algo)
        net.apply_to()
        fixtures._randomize_lycoris(net, algo, torch.Generator().manual_seed(seed))
        out = path(algo)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tmp-{out.name}")  # LyCORIS picks the format by the extension: keep it
        net.save_weights(str(tmp), torch.float16, {"lycoris_algo": algo, "ss_network_module": "lycoris.kohya",
                                                   "ss_network_dim": str(RANK), "ss_network_alpha": str(ALPHA)})
        tmp.replace(out)
        net.restore()  # the twin's own forward back, for the next network
        del net
        gc.collect()
        log.info("wrote %s", out)


def full_size() -> dict[str, Any]:
    """The benchmark as ``python -m bench`` runs it: full-size SD1.5 UNet, fp16, a rank-8 LoHa, then a
    rank-8 LoKr."""
    files = ensure_files()
    patcher, load_s = lora_apply.load_full_unet()
    result: dict[str, Any] = {"checkpoint_load_s": load_s, "algos": {}, "notes": []}
    for algo, file in files.items():
        r = lora_apply.run(patcher, file, repeats=5, strength_repeats=3)
        r["model"]["family"] = type(patcher.model.model_config).__name__
        result["algos"][algo] = r
        result["notes"] += [f"{algo}: {line}" for line in lora_apply.notes(r)]
    return result


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for algo, r in result.get("algos", {"": result}).items():
        for row in lora_apply.ratios(r, benchmark="lycoris_apply"):
            rows.append(row | {"scenario": f"{algo} {row['scenario']}".strip()})
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build()
