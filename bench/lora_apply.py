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

import ctypes
import ctypes.util
import gc
import logging
import statistics
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SAMPLE_S = 0.002
CHECK_SAMPLE = 12  # patched weights kept to compare the two paths' merged values
IMPLS = ("core", "lora_lab")


# ---------------------------------------------------------------------------------------------
# memory


def _libc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):
        trim = None
    return (lambda: trim(0)) if trim is not None else (lambda: None)


_malloc_trim = _libc_trim()


def settle() -> None:
    """Free what can be freed, and give freed heap pages back to the OS, before a baseline."""
    gc.collect()
    _malloc_trim()


class RssSampler:
    """Peak RSS growth of this process while the ``with`` block runs (a thread samples psutil)."""

    def __init__(self, interval: float = SAMPLE_S):
        import psutil  # noqa: PLC0415

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.baseline = self.peak = self.after = 0

    def _rss(self) -> int:
        return self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        settle()
        self.baseline = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.after = self._rss()
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.after)

    @property
    def peak_extra(self) -> int:
        return self.peak - self.baseline

    @property
    def held_extra(self) -> int:
        return self.after - self.baseline


class CudaSampler:
    """Peak CUDA allocation growth while the ``with`` block runs, minus ``minus`` bytes (the model
    itself, when the block uploads it)."""

    def __init__(self, device: torch.device, minus: int = 0):
        self.device = device
        self.minus = minus
        self.baseline = self.peak = self.after = 0

    def __enter__(self) -> CudaSampler:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)
        self.after = torch.cuda.memory_allocated(self.device)

    @property
    def peak_extra(self) -> int:
        return self.peak - self.baseline - self.minus

    @property
    def held_extra(self) -> int:
        return self.after - self.baseline - self.minus


def _sampler(device: torch.device, minus: int = 0):
    return CudaSampler(device, minus) if device.type == "cuda" else RssSampler()


class _NoSampler:
    """Stands in for a sampler in the timed repeats."""

    def __enter__(self) -> _NoSampler:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# bit-exact checks

_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_SAME_SIZE_INT[t.element_size()]) if t.is_floating_point() else t


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(_bits(a), _bits(b.to(a.device)))


class Snapshot:
    """A copy of every parameter of a module (on the CPU unless ``device`` says otherwise: a copy on
    the GPU makes each check of a GPU-resident model a few milliseconds), to check restores bit for bit."""

    def __init__(self, module: torch.nn.Module, device: torch.device | str = "cpu"):
        self.saved = {k: p.detach().to(device, copy=True) for k, p in module.named_parameters()}

    def mismatches(self, module: torch.nn.Module) -> list[str]:
        current = dict(module.named_parameters())
        bad = [k for k in self.saved if k not in current]
        bad += [k for k, p in current.items() if k not in self.saved or not same_bits(self.saved[k], p.detach())]
        return bad


# ---------------------------------------------------------------------------------------------
# the two paths


@dataclass
class Impl:
    """One way of putting a LoRA on a model: ``read`` parses the file, ``clone`` returns a patcher
    that carries it at a strength, ``targets`` counts the weights that clone patches."""

    name: str
    read: Callable[[], Any]
    clone: Callable[[Any, Any, float], Any]
    targets: Callable[[Any], int]


def _core_clone(patcher, lora_sd, strength):
    import comfy.sd  # noqa: PLC0415

    model, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, strength, 0)
    return model


def _lora_lab_clone(patcher, loaded, strength):
    from lora_lab.nodes.loader import apply_lora  # noqa: PLC0415

    return apply_lora(patcher, None, loaded, strength, strength).model


def _lora_lab_targets(clone) -> int:
    from lora_lab.nodes.bridge import entries_of  # noqa: PLC0415

    return len({e.weight_key for e in entries_of(clone)})


def make_impls(lora_path: Path) -> dict[str, Impl]:
    import comfy.utils  # noqa: PLC0415
    from lora_lab.lora_ops import load_lora  # noqa: PLC0415

    return {
        "core": Impl("core", lambda: comfy.utils.load_torch_file(str(lora_path), safe_load=True),
                     _core_clone, lambda c: len(c.patches)),
        "lora_lab": Impl("lora_lab", lambda: load_lora(lora_path), _lora_lab_clone, _lora_lab_targets),
    }


# ---------------------------------------------------------------------------------------------
# the runs


@dataclass
class Series:
    """Times and memory figures of one path in one scenario, one value per timed repeat."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    bytes: dict[str, list[int]] = field(default_factory=dict)
    restores_checked: int = 0
    restore_mismatches: list[str] = field(default_factory=list)

    def add_time(self, name: str, s: float) -> None:
        self.seconds.setdefault(name, []).append(s)

    def add_bytes(self, name: str, n: int) -> None:
        self.bytes.setdefault(name, []).append(int(n))

    def check_restore(self, snapshot: Snapshot, module: torch.nn.Module, when: str) -> None:
        bad = snapshot.mismatches(module)
        self.restores_checked += 1
        if bad:
            self.restore_mismatches.append(f"{when}: {len(bad)} weights differ, e.g. {bad[0]}")

    def summary(self) -> dict[str, Any]:
        return {
            "median_s": {k: statistics.median(v) for k, v in self.seconds.items()},
            "all_s": self.seconds,
            "peak_bytes_max": {k: max(v) for k, v in self.bytes.items()},
            "all_bytes": self.bytes,
            "restores_checked": self.restores_checked,
            "restores_bit_exact": not self.restore_mismatches and self.restores_checked > 0,
            "restore_mismatches": self.restore_mismatches,
        }


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _sample_keys(clone, n: int) -> list[str]:
    keys = sorted(k for k in clone.patches)
    step = max(1, len(keys) // n)
    return keys[::step][:n]


def _weights(module: torch.nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: module.get_parameter(k).detach().to("cpu", copy=True) for k in keys}


def model_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _unload_clones_of(patcher) -> None:
    """Unload (detach, unpatch) every model the host keeps loaded that shares ``patcher``'s module."""
    import comfy.model_management as mm  # noqa: PLC0415

    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is not None and loaded.model.is_clone(patcher):
            mm.current_loaded_models.pop(i)
            loaded.model_unload()


def _identities(module: torch.nn.Module) -> dict[str, weakref.ref]:
    """Which ``Parameter`` object each weight is (weak references: keeps nothing alive)."""
    return {k: weakref.ref(p) for k, p in module.named_parameters()}


def _swaps(before: dict[str, weakref.ref], module: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """What a patch + unpatch left behind: weights that are now another ``Parameter`` object (the path
    swapped tensors instead of writing into them) and weights that are not on ``device``."""
    params = dict(module.named_parameters())
    new_object = sum(1 for k, p in params.items() if k not in before or before[k]() is not p)
    off_device = sum(1 for p in params.values() if p.device != device)
    return {"new_parameter_objects": new_object, "weights_not_on_device": off_device, "device": str(device)}


def _allocated_total(device: torch.device) -> int | None:
    """Bytes the CUDA caching allocator has handed out so far (cumulative), ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0))


def bench_apply(patcher, impls: dict[str, Impl], parsed: dict[str, Any], snapshot: Snapshot, *,
                device: torch.device, repeats: int, warmup: int, resident: bool = False) -> dict[str, Any]:
    """``resident``: the model already sits on ``device`` (no upload is part of the patch) and every
    unpatch restores it there (``unpatch_model(device_to=device)``); otherwise patching uploads it from
    the offload device and the unpatch sends it back there, as ComfyUI's model management does."""
    series = {name: Series() for name in impls}
    targets: dict[str, int] = {}
    upload_minus = model_bytes(patcher.model) if device.type == "cuda" and not resident else 0
    offload = device if resident else patcher.offload_device
    swaps: dict[str, dict[str, Any]] = {}
    reference: dict[str, torch.Tensor] = {}
    agreement: dict[str, Any] = {}
    # timed repeats, then one pass per path with the memory sampler on (never both at once: a
    # sampling thread contends for the GIL and slows the timed code down, unevenly)
    for i in range(warmup + repeats + 1):
        timed, sampled = warmup <= i < warmup + repeats, i == warmup + repeats
        order = list(impls) if i % 2 == 0 else list(reversed(list(impls)))
        for name in order:
            impl, s = impls[name], series[name]
            clone, t_prep = _timed(lambda: impl.clone(patcher, parsed[name], 1.0), device)
            targets[name] = impl.targets(clone)
            before = _identities(patcher.model)
            alloc0 = _allocated_total(device)
            with _sampler(device, upload_minus) if sampled else _NoSampler() as mem_patch:
                _, t_patch = _timed(lambda: clone.patch_model(device_to=device), device)
            alloc1 = _allocated_total(device)
            if name == "core" and not reference:
                reference = _weights(clone.model, _sample_keys(clone, CHECK_SAMPLE))
            elif name == "lora_lab" and reference and not agreement:
                agreement = _agreement(reference, _weights(clone.model, list(reference)), snapshot)
            with _sampler(device) if sampled else _NoSampler() as mem_unpatch:
                _, t_unpatch = _timed(lambda: clone.unpatch_model(device_to=offload), device)
            swaps[name] = _swaps(before, patcher.model, offload)
            if alloc0 is not None:
                # device memory handed out during each call: an unpatch that re-uploads weights from a
                # backup on another device allocates them anew; one that writes in place allocates ~0
                swaps[name] |= {"patch_allocated_bytes": alloc1 - alloc0,
                                "unpatch_allocated_bytes": _allocated_total(device) - alloc1}
            del before
            s.check_restore(snapshot, patcher.model, f"apply repeat {i}")
            log.info("%s apply %s repeat %d%s: prepare %.3f s, patch %.3f s, unpatch %.3f s", device, name, i,
                     " (memory pass)" if sampled else "", t_prep, t_patch, t_unpatch)
            if timed:
                s.add_time("prepare", t_prep)
                s.add_time("patch", t_patch)
                s.add_time("unpatch", t_unpatch)
                s.add_time("apply_total", t_prep + t_patch)
            if sampled:
                s.add_bytes("patch_peak_extra", mem_patch.peak_extra)
                s.add_bytes("patched_held_extra", mem_patch.held_extra)
                s.add_bytes("unpatch_peak_extra", mem_unpatch.peak_extra)
            del clone
    out = {name: series[name].summary() | {"targets_patched": targets[name], "after_unpatch": swaps[name]}
           for name in impls}
    out["lora_lab_vs_core_sampled"] = agreement
    return out


def _agreement(core: dict[str, torch.Tensor], mine: dict[str, torch.Tensor], snapshot: Snapshot) -> dict[str, Any]:
    """How far LoRA Lab's merged weights are from core's, on a sample, against the size of dW."""
    worst = max(float((core[k].float() - mine[k].float()).abs().max()) for k in core)
    delta = max(float((core[k].float() - snapshot.saved[k].to("cpu").float()).abs().max()) for k in core)
    identical = sum(1 for k in core if same_bits(core[k], mine[k]))
    return {"weights_sampled": len(core), "bit_identical": identical, "max_abs_diff": worst, "max_abs_delta": delta}


def bench_strength_change(patcher, impls: dict[str, Impl], parsed: dict[str, Any], snapshot: Snapshot, *,
                          device: torch.device, repeats: int, warmup: int, start: float = 1.0,
                          to: float = 0.8) -> dict[str, Any]:
    import comfy.model_management as mm  # noqa: PLC0415

    series = {name: Series() for name in impls}
    fresh: dict[str, dict[str, torch.Tensor]] = {}
    same_as_fresh: dict[str, bool] = {}
    for name, impl in impls.items():
        # the bits a fresh apply at `to` gives, to compare the strength change's result with
        clone = impl.clone(patcher, parsed[name], to)
        keys = _sample_keys(clone, CHECK_SAMPLE) if name == "core" else _lab_sample_keys(clone)
        mm.load_models_gpu([clone])
        fresh[name] = _weights(patcher.model, keys)
        _unload_clones_of(patcher)
        series[name].check_restore(snapshot, patcher.model, "fresh apply")
        del clone
    for i in range(warmup + repeats + 1):
        timed, sampled = warmup <= i < warmup + repeats, i == warmup + repeats
        order = list(impls) if i % 2 == 0 else list(reversed(list(impls)))
        for name in order:
            impl, s = impls[name], series[name]
            first = impl.clone(patcher, parsed[name], start)
            mm.load_models_gpu([first])

            def change(impl=impl, name=name):
                second = impl.clone(patcher, parsed[name], to)
                mm.load_models_gpu([second])
                return second

            with _sampler(device) if sampled else _NoSampler() as mem:
                second, t = _timed(change, device)
            now = _weights(patcher.model, list(fresh[name]))
            same_as_fresh[name] = same_as_fresh.get(name, True) and all(
                same_bits(fresh[name][k], now[k]) for k in now)
            _unload_clones_of(patcher)
            s.check_restore(snapshot, patcher.model, f"strength change repeat {i}")
            log.info("%s strength change %s repeat %d%s: %.3f s", device, name, i,
                     " (memory pass)" if sampled else "", t)
            if timed:
                s.add_time("change", t)
            if sampled:
                s.add_bytes("change_peak_extra", mem.peak_extra)
            del first, second
    return {name: series[name].summary() | {"result_equals_fresh_apply": same_as_fresh[name]} for name in impls}


def _lab_sample_keys(clone) -> list[str]:
    from lora_lab.nodes.bridge import entries_of  # noqa: PLC0415

    keys = sorted({e.weight_key for e in entries_of(clone)})
    step = max(1, len(keys) // CHECK_SAMPLE)
    return keys[::step][:CHECK_SAMPLE]


def bench_read(impls: dict[str, Impl], repeats: int) -> dict[str, Any]:
    out = {}
    for name, impl in impls.items():
        times = [_timed(impl.read, torch.device("cpu"))[1] for _ in range(max(1, repeats))]
        out[name] = {"median_s": {"read": statistics.median(times)}, "all_s": {"read": times}}
    return out


# ---------------------------------------------------------------------------------------------
# one device, and the whole benchmark


def check_half(patcher, dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Raise unless every floating-point parameter of the diffusion model is ``dtype`` in memory."""
    params = list(patcher.model.diffusion_model.named_parameters())
    wrong = [(k, p.dtype) for k, p in params if p.is_floating_point() and p.dtype != dtype]
    if wrong:
        raise RuntimeError(f"{len(wrong)} UNet weights are not {dtype}, e.g. {wrong[0]}")
    return {"unet_params": sum(p.numel() for _, p in params), "unet_dtype": str(dtype).replace("torch.", ""),
            "unet_bytes": sum(p.numel() * p.element_size() for _, p in params)}


_TARGET_MARKS = (".lora_down.weight", ".hada_w1_b", ".lokr_w1", ".lokr_w1_a")  # one per target and kind
_RANK_KEYS = (".lora_down.weight", ".hada_w1_b")  # first dimension = rank


def lora_stats(path: Path) -> dict[str, Any]:
    """Targets, ranks and parameter count of a LoRA (LoRA/LoCon) or LyCORIS (LoHa/LoKr) file."""
    from safetensors import safe_open  # noqa: PLC0415

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        targets = {k.rsplit(".", 2 if k.endswith(".weight") else 1)[0] for k in keys if k.endswith(_TARGET_MARKS)}
        ranks = sorted({int(f.get_slice(k).get_shape()[0]) for k in keys if k.endswith(_RANK_KEYS)})
        params = 0
        for k in keys:
            if k.endswith(".alpha") or k.endswith(".dora_scale"):
                continue
            n = 1
            for d in f.get_slice(k).get_shape():
                n *= d
            params += n
    return {"path": str(path), "file_bytes": path.stat().st_size, "targets": len(targets), "ranks": ranks,
            "lora_params": params}


def run_device(patcher, impls: dict[str, Impl], parsed: dict[str, Any], snapshot: Snapshot, *,
               device: torch.device, repeats: int, warmup: int, strength_repeats: int) -> dict[str, Any]:
    apply = bench_apply(patcher, impls, parsed, snapshot, device=device, repeats=repeats, warmup=warmup)
    change = bench_strength_change(patcher, impls, parsed, snapshot, device=device,
                                   repeats=strength_repeats, warmup=min(warmup, 1))
    return {"apply": apply, "strength_change": change}


def cuda_patcher(patcher):
    """A patcher over the same model whose load device is the GPU and offload device the CPU."""
    import comfy.model_patcher  # noqa: PLC0415

    return comfy.model_patcher.ModelPatcher(patcher.model, load_device=torch.device("cuda"),
                                            offload_device=torch.device("cpu"))


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
    del src, dst
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
