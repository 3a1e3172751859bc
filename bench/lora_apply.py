"""Apply one LoRA to an fp16 UNet: LoRA Lab against core ComfyUI's patch path, same model, same file.

Two scenarios, each run for both paths in the same process, on the same ``ModelPatcher`` and the
same LoRA file, alternating core / LoRA Lab inside every repeat so drift hits both alike:

``apply``
    prepare: core ``comfy.sd.load_lora_for_models(model, None, sd, 1.0, 0)`` (key map, convert,
    ``add_patches`` on a clone); LoRA Lab ``nodes.loader.apply_lora(model, None, lora, 1.0, 1.0)``
    (key map, plan, checks, clone). Then ``clone.patch_model(device_to)`` (core: ``patch_weight_to_device``
    per weight; LoRA Lab: its injection merges in place) and ``clone.unpatch_model(offload)``.
    The parsed file is shared by every repeat, as the loaders' caches do in a real graph; reading it
    is timed on its own.
``strength_change``
    The same LoRA at 1.0 is loaded with ``comfy.model_management.load_models_gpu``; then the timed part:
    a new clone at 0.8 (``load_lora_for_models`` / ``apply_lora``) and ``load_models_gpu`` on it, so
    the host's own model management decides what to unpatch and re-patch.

``lora_apply_sdxl`` (:func:`sdxl_gpu`, GPU only)
    A full-size SDXL UNet built on the GPU in fp16 and its rank-32 LoRA (``rank32_lora`` layout):
    ``apply`` with the model resident on the GPU (:func:`run_resident`), the strength change, and the
    patch time over the memory-bandwidth floor measured on the same GPU in the same run.

Checks: after every restore (``unpatch_model`` or the host unloading the model) every parameter of
the model is compared bit for bit with a copy taken before the first run. A sample of patched
weights is kept from a core apply at 1.0 and at 0.8 to compare LoRA Lab against (max abs difference)
and to check that a strength change leaves the same bits as a fresh apply at that strength.

Memory is measured in one extra pass per path after the timed repeats, never during them: a
sampling thread contends for the GIL and slowed the timed code 5-25x in a first version, unevenly
between the paths. CPU: resident set size (RSS, psutil) sampled every ``SAMPLE_S`` seconds by a
thread while the call runs; the figure is the highest sample minus the RSS just before the call, taken
after ``gc.collect()`` and glibc ``malloc_trim(0)`` so memory freed by earlier runs does not hide
growth. "held" is the RSS right after the call minus the same baseline (what the patched state
keeps: a backup or a replaced weight per patched tensor). CUDA: ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``, minus the allocation before the call, minus the model's own bytes
when the call uploads the model (``apply`` starts from the model on its offload device, as ComfyUI
does), so the figure is what patching needs on top of the model.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .kit import (IMPLS, Impl, Snapshot, _timed, _unload_clones_of, bench_apply, bench_read, bench_strength_change,
                  check_half, cuda_patcher, lora_stats, make_impls, run_device, settle)

log = logging.getLogger(__name__)


def run(patcher, lora_path: Path, *, repeats: int = 5, warmup: int = 1, strength_repeats: int = 3,
        cuda: bool | None = None) -> dict[str, Any]:
    """Both scenarios on the CPU, and on CUDA when ``cuda`` (default: when a GPU is available)."""
    model = check_half(patcher)
    impls = make_impls(lora_path)
    parsed = {name: impl.read() for name, impl in impls.items()}
    snapshot = Snapshot(patcher.model)
    result: dict[str, Any] = {"model": model, "lora": lora_stats(lora_path),
                              "read": bench_read(impls, repeats), "devices": {}}
    result["devices"]["cpu"] = run_device(patcher, impls, parsed, snapshot, device=torch.device("cpu"),
                                          repeats=repeats, warmup=warmup, strength_repeats=strength_repeats)
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        gpu = cuda_patcher(patcher)
        result["devices"]["cuda"] = run_device(gpu, impls, parsed, snapshot, device=torch.device("cuda"),
                                               repeats=repeats, warmup=warmup, strength_repeats=strength_repeats)
        result["cuda_device"] = torch.cuda.get_device_name(0)
    result["patched_base_params"] = _patched_params(patcher, impls["core"], parsed["core"])
    return result


def _patched_params(patcher, core: Impl, lora_sd) -> int:
    clone = core.clone(patcher, lora_sd, 1.0)
    return sum(patcher.model.get_parameter(k).numel() for k in clone.patches)


def ratios(result: dict[str, Any], benchmark: str = "lora_apply") -> list[dict[str, Any]]:
    """Rows ``core / LoRA Lab`` for every figure both paths have (time and memory): > 1 means LoRA Lab
    is faster / smaller."""
    rows = []
    for dev, scenarios in result.get("devices", {}).items():
        for scenario, per in scenarios.items():
            core, mine = per["core"], per["lora_lab"]
            for metric, c in core["median_s"].items():
                m = mine["median_s"].get(metric)
                rows.append({"benchmark": benchmark, "device": dev, "scenario": scenario, "metric": f"{metric} s",
                             "core": c, "lora_lab": m, "ratio": c / m if m else None})
            for metric, c in core["peak_bytes_max"].items():
                m = mine["peak_bytes_max"].get(metric)
                rows.append({"benchmark": benchmark, "device": dev, "scenario": scenario,
                             "metric": f"{metric} MiB", "core": c / 2**20, "lora_lab": m / 2**20,
                             "ratio": c / m if m and m > 0 else None})
    if "read" in result:
        core_r, mine_r = result["read"]["core"]["median_s"]["read"], result["read"]["lora_lab"]["median_s"]["read"]
        rows.append({"benchmark": benchmark, "device": "cpu", "scenario": "read file", "metric": "read s",
                     "core": core_r, "lora_lab": mine_r, "ratio": core_r / mine_r})
    return rows


def bit_exact(result: dict[str, Any]) -> bool:
    return all(per[name]["restores_bit_exact"]
               for scenarios in result["devices"].values() for per in scenarios.values() for name in IMPLS)


def load_full_unet() -> tuple[Any, float]:
    """The full-size SD1.5-architecture UNet in fp16 through core's checkpoint loader, and the seconds it took."""
    from testkit import models  # noqa: PLC0415
    from testkit.host import import_comfy, import_pack  # noqa: PLC0415

    import_comfy()
    import_pack()
    import comfy.sd  # noqa: PLC0415

    t0 = time.perf_counter()
    patcher, *_ = comfy.sd.load_checkpoint_guess_config(
        str(models.sd15_checkpoint()), output_vae=False, output_clip=False, output_clipvision=False,
        model_options={"dtype": torch.float16})
    load_s = time.perf_counter() - t0
    settle()
    return patcher, load_s


def full_size() -> dict[str, Any]:
    """The benchmark as ``python -m bench`` runs it: full-size SD1.5 UNet, fp16, rank-32 LoRA."""
    from .rank32_lora import ensure_lora  # noqa: PLC0415

    lora = ensure_lora()
    patcher, load_s = load_full_unet()
    result = run(patcher, lora, repeats=9, strength_repeats=5)  # medians of many: a shared VM is noisy
    result["checkpoint_load_s"] = load_s
    result["model"]["family"] = type(patcher.model.model_config).__name__
    result["notes"] = notes(result)
    return result


def notes(result: dict[str, Any]) -> list[str]:
    """One-line facts that belong next to the table: what was patched, and whether restores were exact."""
    m, lora = result["model"], result["lora"]
    lines = [
        f"UNet {m['unet_params'] / 1e6:.0f}M params, all {m['unet_dtype']} in memory; "
        f"LoRA rank {lora['ranks'] or 'none (full factors)'}, "
        f"{lora['targets']} targets, {lora['lora_params'] / 1e6:.1f}M LoRA params, "
        f"{result['patched_base_params'] / 1e6:.0f}M base params patched",
    ]
    for dev, scenarios in result["devices"].items():
        apply = scenarios["apply"] if "apply" in scenarios else scenarios["apply_resident"]
        lines.append(
            f"{dev}: targets patched core {apply['core']['targets_patched']}, LoRA Lab {apply['lora_lab']['targets_patched']}; "
            f"restores bit-exact: " + ", ".join(
                f"{name} {per[name]['restores_checked']}/{per[name]['restores_checked']}"
                if per[name]["restores_bit_exact"] else f"{name} FAILED {per[name]['restore_mismatches'][:2]}"
                for scenario, per in scenarios.items() for name in IMPLS))
        agree = apply.get("lora_lab_vs_core_sampled") or {}
        if agree:
            lines.append(f"{dev}: LoRA Lab vs core merged weights ({agree['weights_sampled']} sampled): "
                         f"{agree['bit_identical']} bit-identical, max |diff| {agree['max_abs_diff']:.3g} "
                         f"(max |dW| {agree['max_abs_delta']:.3g})")
        lines.append(f"{dev}: after patch + unpatch: " + "; ".join(
            f"{n} {a['new_parameter_objects']} new Parameter objects, {a['weights_not_on_device']} weights not on "
            f"{a['device']}" + (f", {a['patch_allocated_bytes'] / 2**20:.0f} MiB allocated on {dev} by the patch, "
                                f"{a['unpatch_allocated_bytes'] / 2**20:.0f} MiB by the unpatch"
                                if "unpatch_allocated_bytes" in a else "")
            for n in IMPLS if (a := apply[n].get("after_unpatch"))))
        change = scenarios["strength_change"]
        lines.append(f"{dev}: strength change result equals a fresh apply at 0.8: "
                     + ", ".join(f"{n} {change[n]['result_equals_fresh_apply']}" for n in IMPLS))
    return lines


# ---------------------------------------------------------------------------------------------
# SDXL on the GPU: the model resident, the memory-bandwidth floor


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30, repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Copy bandwidth on ``device``: ``dst.copy_(src)`` of two ``nbytes`` fp16 buffers (on CUDA timed
    with events, else with the clock); bytes read + written (``2 * nbytes``) over the median time."""
    src = torch.ones(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            seconds = _timed(lambda: dst.copy_(src), device)[1]
        if i >= warmup:
            times.append(seconds)
    src = dst = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    median = statistics.median(times)
    return {"buffer_bytes": nbytes, "bytes_moved": 2 * nbytes, "median_s": median, "all_s": times,
            "bytes_per_s": 2 * nbytes / median}


def _lora_factor_bytes(path: Path) -> int:
    from safetensors import safe_open  # noqa: PLC0415

    total = 0
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            if k.endswith((".lora_down.weight", ".lora_up.weight")):
                t = f.get_slice(k)
                n = 1
                for d in t.get_shape():
                    n *= d
                total += n * {"F16": 2, "BF16": 2, "F32": 4}[t.get_dtype()]
    return total


def _largest_target(patcher, core: Impl, lora_sd) -> dict[str, Any]:
    clone = core.clone(patcher, lora_sd, 1.0)
    key = max(clone.patches, key=lambda k: patcher.model.get_parameter(k).numel())
    w = patcher.model.get_parameter(key)
    return {"key": key, "shape": list(w.shape), "bytes": w.numel() * w.element_size(), "fp32_bytes": w.numel() * 4}


def sdxl_gpu(*, repeats: int = 5, warmup: int = 1, strength_repeats: int = 3) -> dict[str, Any]:
    """``lora_apply_sdxl``: one rank-32 LoRA on a full-size SDXL UNet (2.567e9 parameters, fp16) built
    on the GPU (``testkit.models.sdxl_full_patcher``), the LoRA made there from the committed layout
    (``rank32_lora.ensure_lora_for``), then :func:`run_resident`. Without CUDA it returns at once with
    a note and no figures."""
    if not torch.cuda.is_available():
        return {"skipped": True, "notes": ["no GPU: skipped"]}
    from testkit import models  # noqa: PLC0415
    from testkit.host import import_comfy, import_pack  # noqa: PLC0415

    from .rank32_lora import ensure_lora_for  # noqa: PLC0415

    import_comfy()
    import_pack()
    device = torch.device("cuda", torch.cuda.current_device())
    bandwidth = copy_bandwidth(device)  # before the model is there: room for two 2 GiB buffers
    t0 = time.perf_counter()
    patcher = models.sdxl_full_patcher(device, torch.float16)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lora = ensure_lora_for(patcher, "sdxl")
    lora_s = time.perf_counter() - t0
    result = run_resident(patcher, lora, device=device, repeats=repeats, warmup=warmup,
                          strength_repeats=strength_repeats, bandwidth=bandwidth)
    result.update(model_build_s=build_s, lora_build_s=lora_s)
    del patcher
    _release(device)
    result["notes"] = notes(result) + sdxl_notes(result)
    return result


def _release(device: torch.device) -> None:
    import comfy.model_management as mm  # noqa: PLC0415

    mm.cleanup_models_gc()
    settle()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_resident(patcher, lora_path: Path, *, device: torch.device, repeats: int = 5, warmup: int = 1,
                 strength_repeats: int = 3, bandwidth: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both paths on a model that already sits on ``device`` (fp16), and the bandwidth floor.

    Scenarios: ``apply_resident`` (:func:`bench_apply` with ``resident=True``: the model on ``device``
    without LoRA, ``clone.patch_model(device_to=device)`` then ``unpatch_model(device_to=device)``,
    restores checked against a copy on ``device`` when there is room for one, else on the CPU) and
    ``strength_change`` (:func:`bench_strength_change` through ComfyUI's model management, whose unload
    sends the model to the patcher's offload device). Floor: ``(4 bytes x patched base parameters +
    LoRA factor bytes) / copy bandwidth``, the copy bandwidth measured on ``device`` in the same run
    (:func:`copy_bandwidth`, or ``bandwidth`` when given).
    """
    result: dict[str, Any] = {"devices": {}}
    if device.type == "cuda":
        result["cuda_device"] = torch.cuda.get_device_name(device)
    result["copy_bandwidth"] = bandwidth or copy_bandwidth(device)
    result["model"] = check_half(patcher) | {"family": type(patcher.model.model_config).__name__,
                                             "device": str(device)}
    result["lora"] = lora_stats(lora_path)
    impls = make_impls(lora_path)
    parsed = {name: impl.read() for name, impl in impls.items()}
    result["read"] = bench_read(impls, 3)
    result["patched_base_params"] = _patched_params(patcher, impls["core"], parsed["core"])
    result["largest_target"] = _largest_target(patcher, impls["core"], parsed["core"])

    on_device = device.type == "cuda" and (
        torch.cuda.mem_get_info(device)[0] > 2 * result["model"]["unet_bytes"] + (8 << 30))  # the copy + working room
    snapshot = Snapshot(patcher.model)
    near = Snapshot(patcher.model, device) if on_device else snapshot
    result["snapshot_device"] = str(device) if on_device else "cpu"
    apply = bench_apply(patcher, impls, parsed, near, device=device, repeats=repeats, warmup=warmup, resident=True)
    del near
    _release(device)
    change = bench_strength_change(patcher, impls, parsed, snapshot, device=device, repeats=strength_repeats,
                                   warmup=min(warmup, 1))
    result["devices"][device.type] = {"apply_resident": apply, "strength_change": change}
    _unload_clones_of(patcher)

    factor_bytes = _lora_factor_bytes(lora_path)
    floor_bytes = 4 * result["patched_base_params"] + factor_bytes
    floor_s = floor_bytes / result["copy_bandwidth"]["bytes_per_s"]
    result["floor"] = {"bytes": floor_bytes, "lora_factor_bytes": factor_bytes, "seconds": floor_s,
                       "core_patch_over_floor": apply["core"]["median_s"]["patch"] / floor_s,
                       "lora_lab_patch_over_floor": apply["lora_lab"]["median_s"]["patch"] / floor_s}
    return result


def sdxl_ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`ratios` of ``lora_apply_sdxl``, plus each path's patch time over the bandwidth floor."""
    if result.get("skipped"):
        return []
    rows = ratios(result, "lora_apply_sdxl")
    f = result["floor"]
    rows.append({"benchmark": "lora_apply_sdxl", "device": next(iter(result["devices"])), "scenario": "apply_resident",
                 "metric": "patch / floor", "core": f["core_patch_over_floor"], "lora_lab": f["lora_lab_patch_over_floor"],
                 "ratio": f["core_patch_over_floor"] / f["lora_lab_patch_over_floor"]})
    return rows


def sdxl_notes(result: dict[str, Any]) -> list[str]:
    bw, f, big = result["copy_bandwidth"], result["floor"], result["largest_target"]
    dev, scenarios = next(iter(result["devices"].items()))
    apply = scenarios["apply_resident"]
    peak = {n: apply[n]["peak_bytes_max"]["patch_peak_extra"] / 2**20 for n in IMPLS}
    lines = [
        f"{dev}: {result.get('cuda_device', dev)}; copy {bw['bytes_per_s'] / 1e9:.0f} GB/s (read + write, "
        f"{bw['buffer_bytes'] >> 20} MiB buffers); floor {f['bytes'] / 1e9:.2f} GB / that = {f['seconds'] * 1e3:.2f} ms; "
        f"patch / floor: core {f['core_patch_over_floor']:.1f}, LoRA Lab {f['lora_lab_patch_over_floor']:.1f}",
        f"{dev}: peak extra memory while patching: core {peak['core']:.0f} MiB, LoRA Lab {peak['lora_lab']:.0f} MiB; "
        f"largest patched weight {big['key']} {big['shape']}: {big['bytes'] / 2**20:.1f} MiB as stored, "
        f"{big['fp32_bytes'] / 2**20:.1f} MiB in fp32",
        f"{dev}: restores checked against a copy on {result['snapshot_device']} (apply_resident) and on the cpu "
        "(strength_change)",
    ]
    if "model_build_s" in result:
        lines.append(f"{dev}: model built in {result['model_build_s']:.1f} s, LoRA in {result['lora_build_s']:.1f} s")
    return lines
