"""The measuring kit the benchmarks share: memory samplers (RSS, CUDA), snapshots that check every
weight is restored bit for bit, the two apply paths (core ComfyUI, LoRA Lab) behind one interface,
timing series, and the apply / strength-change scenarios measured for both in one process.

How memory is measured, and why in a separate pass, is said in :mod:`bench.lora_apply`.
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
    from lora_lab.nodes.planning import apply_lora  # noqa: PLC0415

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
            clone = None  # drop the clone (and its backups) before the next impl
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
