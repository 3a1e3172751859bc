"""A 5-LoRA stack: ``LoraLabApplyStack``'s path against five chained core ``LoraLoader`` nodes.

Same fp16 full-size SD1.5-architecture UNet and the same five rank-8 PEFT LoRAs (``stack_loras``) in
one process. Core: ``comfy.sd.load_lora_for_models`` five times on the chained clones (what five
``LoraLoader`` nodes do), then ``patch_model``. LoRA Lab: every file planned (``nodes.loader.plan_for``,
as ``LoraLabApplyStack`` does per row) and one clone carrying all entries, merged in one pass. Timing,
memory and the bit-exact restore checks are those of :mod:`bench.kit`.
"""

from __future__ import annotations

from typing import Any

import torch

from . import kit, lora_apply
from .kit import Impl, Snapshot, bench_apply, check_half


def _core_read(paths):
    import comfy.utils  # noqa: PLC0415

    return [comfy.utils.load_torch_file(str(p), safe_load=True) for p in paths]


def _core_chain(patcher, sds, strength):
    import comfy.sd  # noqa: PLC0415

    model = patcher
    for sd in sds:
        model, _ = comfy.sd.load_lora_for_models(model, None, sd, strength, 0)
    return model


def _lab_read(paths):
    from lora_lab.lora_ops import load_lora  # noqa: PLC0415

    return [load_lora(p) for p in paths]


def _lab_stack(patcher, loras, strength):
    from lora_lab.nodes.planning import clones_with, plan_for  # noqa: PLC0415

    entries = []
    for lora in loras:
        plan, _ = plan_for(patcher, None, lora, strength, strength)
        entries += plan.model_entries
    return clones_with(patcher, None, entries, [])[0]


def make_impls(paths) -> dict[str, Impl]:
    return {
        "core": Impl("core", lambda: _core_read(paths), _core_chain, lambda c: len(c.patches)),
        "lora_lab": Impl("lora_lab", lambda: _lab_read(paths), _lab_stack, kit._lora_lab_targets),
    }


def run(patcher, paths, *, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    model = check_half(patcher)
    impls = make_impls(paths)
    parsed = {name: impl.read() for name, impl in impls.items()}
    snapshot = Snapshot(patcher.model)
    result = {"model": model, "loras": len(paths), "devices": {}}
    result["devices"]["cpu"] = {"apply": bench_apply(patcher, impls, parsed, snapshot, device=torch.device("cpu"),
                                                     repeats=repeats, warmup=warmup)}
    if torch.cuda.is_available():
        gpu = kit.cuda_patcher(patcher)
        result["devices"]["cuda"] = {"apply": bench_apply(gpu, impls, parsed, snapshot, device=torch.device("cuda"),
                                                          repeats=repeats, warmup=warmup)}
    return result


def full_size() -> dict[str, Any]:
    from .stack_loras import ensure_loras  # noqa: PLC0415

    paths = ensure_loras()
    patcher, load_s = lora_apply.load_full_unet()
    result = run(patcher, paths, repeats=5)
    result["checkpoint_load_s"] = load_s
    apply = result["devices"]["cpu"]["apply"]
    result["notes"] = [f"{len(paths)} rank-8 LoRAs stacked; targets patched core {apply['core']['targets_patched']}, "
                       f"LoRA Lab {apply['lora_lab']['targets_patched']}; restores bit-exact: "
                       f"core {apply['core']['restores_bit_exact']}, LoRA Lab {apply['lora_lab']['restores_bit_exact']}"]
    return result


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for dev, scenarios in result["devices"].items():
        per = scenarios["apply"]
        core, mine = per["core"], per["lora_lab"]
        for metric, c in core["median_s"].items():
            m = mine["median_s"].get(metric)
            rows.append({"benchmark": "stack_apply", "device": dev, "scenario": f"{result['loras']}-LoRA stack",
                         "metric": f"{metric} s", "core": c, "lora_lab": m, "ratio": c / m if m else None})
        for metric, c in core["peak_bytes_max"].items():
            m = mine["peak_bytes_max"].get(metric)
            rows.append({"benchmark": "stack_apply", "device": dev, "scenario": f"{result['loras']}-LoRA stack",
                         "metric": f"{metric} MiB", "core": c / 2**20, "lora_lab": m / 2**20,
                         "ratio": c / m if m and m > 0 else None})
    return rows
