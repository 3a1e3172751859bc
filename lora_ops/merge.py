"""Merging deltas into live weights in place, and restoring them bit-exactly.

Three paths, chosen per weight:

* GPU, fp16/bf16 weight, plain low-rank adapters (LoRA, LoCon, Tucker folded): ``lora_ops.fused``.
  One Triton kernel merges every such weight in place, ``W' = round(W + s * up @ down)`` with fp32
  math, and records the few elements whose original bits the rounding lost; the restore subtracts
  the same product and writes those bits back. No backup of the weights, one read and one write per
  weight element, one launch for all weights.
* CPU (``in_place=False``, as the ComfyUI bridge asks): the merged weight is computed into a new
  tensor and swapped in; the original tensor itself is the backup, so restoring is swapping it back.
  LoRA/LoCon, LoHa and LoKr adapters on the whole weight are computed in row chunks that stay in
  cache (fp32 math, one rounding); everything else (full diffs, DoRA, Tucker cores in LoHa/LoKr, fused
  slices) by the general merge below, applied to a copy.
* Everything else (LoHa/LoKr/full/DoRA on the GPU, Triton missing, callers that need the very tensors
  written): the weight is copied to ``backup_device`` first, every delta is added in place (on the GPU
  in the weight's dtype: ``addmm_`` for low-rank factors, deltas formed in fp16/bf16 on the device; on
  the CPU through one fp32 copy of the layer) and the copy is written back on restore.

DoRA: the delta is normalised against the base weight ``W0`` (the weight before this merge), so
several DoRAs stack in any order (see ``adapters.dora_delta``).

Peak extra memory is one layer's worth (plus, on the fused path, the element records). A merged
half-precision weight that is no longer finite (fp16 stops at 65504) is restored at once and
reported with its layer names in :class:`~lora_ops.errors.OverflowRiskError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

import torch

from . import fused
from .adapters import Adapter, LohaWeights, LokrWeights, dora_delta
from .errors import NonFiniteError, OverflowRiskError, ShapeMismatchError
from .keymap import Target

HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class PatchEntry:
    """One adapter applied to one target at one strength (``module`` is the file's name, for reports)."""

    target: Target
    adapter: Adapter
    strength: float
    module: str = ""
    is_bias: bool = False

    @property
    def weight_key(self) -> str:
        return self.target.bias_key if self.is_bias else self.target.key


def target_view(weight: torch.Tensor, offset: tuple[int, int, int] | None) -> torch.Tensor:
    """The part of ``weight`` a patch writes to: the whole tensor or a ``narrow`` view of a fused one."""
    if offset is None:
        return weight
    dim, start, length = offset
    return weight.narrow(dim, start, length)


def delta_numel(adapter: Adapter) -> int | None:
    """Number of elements the adapter's delta has, when the factors tell it without computing it."""
    lr = adapter.low_rank()
    if lr is not None:
        up, down, _ = lr
        return int(up.shape[0]) * int(down.shape[1])
    diff = getattr(adapter, "diff", None)
    if diff is not None:
        return diff.numel()
    if isinstance(adapter, LohaWeights) and adapter.t1 is None and adapter.t2 is None:
        return int(adapter.w1a.shape[0]) * math.prod(adapter.w1b.shape[1:])
    if isinstance(adapter, LokrWeights) and adapter.t2 is None:
        a = adapter
        w1 = tuple(a.w1.shape) if a.w1 is not None else (int(a.w1a.shape[0]), int(a.w1b.shape[1]))
        w2 = ((int(a.w2.shape[0]), math.prod(a.w2.shape[1:])) if a.w2 is not None
              else (int(a.w2a.shape[0]), math.prod(a.w2b.shape[1:])))
        return w1[0] * w2[0] * w1[1] * w2[1] if len(w1) == 2 else None
    return None


def check_shape(entry: PatchEntry, shape: torch.Size) -> str | None:
    """``None`` if the adapter fits a weight of ``shape``; else a one-line description of the misfit."""
    adapter = entry.adapter
    lr = adapter.low_rank()
    if lr is not None:
        up, down, _ = lr
        if up.shape[0] != shape[0] or up.shape[0] * down.shape[1] != math.prod(shape):
            return f"{entry.module}: delta {int(up.shape[0])}x{int(down.shape[1])} vs weight {tuple(shape)}"
        return None
    n = delta_numel(adapter)
    if n is not None and n != math.prod(shape):
        return f"{entry.module}: delta of {n} values vs weight {tuple(shape)}"
    if adapter.magnitude is not None and adapter.magnitude.numel() not in (shape[0], shape[1] if len(shape) > 1 else -1):
        return f"{entry.module}: DoRA magnitude of {adapter.magnitude.numel()} values vs weight {tuple(shape)}"
    return None


def find_misfits(entries: Iterable[PatchEntry], shapes: dict[str, torch.Size]) -> list[tuple[PatchEntry, str]]:
    """Every entry whose delta does not fit its weight, with a one-line description."""
    misfits = []
    for e in entries:
        shape = shapes.get(e.weight_key)
        if shape is None:
            misfits.append((e, f"{e.module}: the model has no weight '{e.weight_key}'"))
            continue
        if e.target.offset is not None:
            dim, _, length = e.target.offset
            shape = torch.Size(list(shape[:dim]) + [length] + list(shape[dim + 1:]))
        problem = check_shape(e, shape)
        if problem:
            misfits.append((e, problem))
    return misfits


def validate_shapes(entries: Iterable[PatchEntry], shapes: dict[str, torch.Size]) -> None:
    """Raise :class:`ShapeMismatchError` naming every entry whose delta does not fit its weight."""
    bad = [problem for _, problem in find_misfits(entries, shapes)]
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ShapeMismatchError(
            f"{len(bad)} LoRA layer(s) do not fit the model's weights: " + "; ".join(bad[:5]) + more + ".",
            "this LoRA was made for a model of another size or layout; load one made for this model.")


def find_nonfinite(entries: Iterable[PatchEntry]) -> list[str]:
    """Module names whose stored factors hold NaN or Inf."""
    return [e.module for e in entries if not factors_finite(e.adapter)]


def factors_finite(adapter: Adapter) -> bool:
    """Whether every floating-point tensor of ``adapter`` is finite.

    Remembered on the adapter for as long as its tensors are the same objects and unmodified, so that
    planning a strength change of a cached LoRA does not scan its factors again. Modification is seen
    through the version counter; inference tensors (a file read inside ComfyUI's execution) have none,
    and are taken as unchanged while they are the same objects: LoRA Lab never writes into a loaded
    LoRA's factors.
    """
    tensors = [v for v in vars(adapter).values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    versions = [_version(t) for t in tensors]
    memo = adapter.__dict__.get("_finite_memo")  # (the tensors themselves, their versions, result)
    if (memo is not None and len(memo[0]) == len(tensors) and all(a is b for a, b in zip(memo[0], tensors))
            and memo[1] == versions):
        return memo[2]
    finite = all(bool(torch.isfinite(t).all()) for t in tensors)
    adapter.__dict__["_finite_memo"] = (tensors, versions, finite)
    return finite


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; ``None`` for inference tensors, which keep none."""
    return None if t.is_inference() else t._version


def _as_2d_view(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as an ``(out, -1)`` view sharing its memory, or ``None`` if its strides do not allow one."""
    if t.dim() < 2:
        return None
    try:
        return t.view(t.shape[0], -1)
    except RuntimeError:
        return None


def _rounds_to_finite(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every value of ``t`` is finite once stored as ``dtype`` (one ``aminmax`` pass).

    A value rounds to infinity when its magnitude reaches ``max + ulp(max) / 2`` of the target dtype
    (65520 for fp16); NaN propagates through ``aminmax``.
    """
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    if dtype in HALF_DTYPES:
        info = torch.finfo(dtype)
        limit = info.max + info.eps * 2.0 ** (math.floor(math.log2(info.max))) / 2
        return -limit < lo and hi < limit
    return True


def _merge_one(view: torch.Tensor, base: torch.Tensor, entries: list[PatchEntry]) -> bool:
    """Add every entry's delta to ``view`` in place; ``base`` is the unpatched value (for DoRA).

    Returns whether the result is finite in the weight's dtype; checked on the fp32 accumulator before
    rounding on the CPU (cheaper than a pass over the half-precision weight, and exact about overflow).
    """
    fused_half = view.is_cuda and view.dtype in HALF_DTYPES
    if fused_half or view.dtype == torch.float32:
        acc, compute = view, view.dtype
    else:
        acc, compute = view.to(torch.float32), torch.float32
    acc2d = _as_2d_view(acc)
    for e in entries:
        if e.strength == 0.0:
            continue
        a = e.adapter
        lr = a.low_rank() if a.magnitude is None else None
        if a.magnitude is not None:
            acc.add_(dora_delta(base, a, dtype=torch.float32).to(compute), alpha=e.strength)
        elif lr is not None and acc2d is not None:
            up, down, scale = lr
            acc2d.addmm_(up.to(acc.device, compute), down.to(acc.device, compute), alpha=e.strength * scale)
        else:
            acc.add_(a.delta(acc.shape, dtype=compute, device=acc.device), alpha=e.strength)
    finite = _rounds_to_finite(acc, view.dtype)
    if acc is not view:
        view.copy_(acc)
    return finite


class Backup:
    """What :func:`restore_weights` needs to put the original weights back.

    ``copies``: key -> a copy of the original (written back); ``replaced``: key -> the original
    tensor itself (swapped back); ``fused``: the record of the GPU kernel's in-place merges.
    """

    def __init__(self) -> None:
        self.copies: dict[str, torch.Tensor] = {}
        self.replaced: dict[str, torch.Tensor] = {}
        self.fused: fused.FusedMerge | None = None

    def keys(self) -> set[str]:
        return set(self.copies) | set(self.replaced) | (self.fused.keys if self.fused is not None else set())

    def __contains__(self, key: object) -> bool:
        return key in self.copies or key in self.replaced or (self.fused is not None and key in self.fused.keys)

    def __len__(self) -> int:
        return len(self.keys())

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, key: str) -> torch.Tensor:
        """The original value of weight ``key`` (a copy where it had to be rebuilt)."""
        if key in self.copies:
            return self.copies[key]
        if key in self.replaced:
            return self.replaced[key]
        if self.fused is not None and key in self.fused.keys:
            return self.fused.original(key)
        raise KeyError(key)


CPU_CHUNK = 1 << 20  # elements of the fp32 working rows per step of the CPU merge (4 MiB: stays in cache)


@dataclass
class _RowTerm:
    """One entry's delta, computable for any block of rows of the weight's 2-D view, in the general
    path's order of operations: ``lowrank`` ``alpha * (a[rows] @ b)`` (LoRA/LoCon, alpha includes the
    scale); ``hada`` ``alpha * ((a[rows] @ b) * (c[rows] @ d)) * scale`` (LoHa); ``kron``
    ``alpha * kron(a, b)[rows] * scale`` (LoKr)."""

    kind: str
    parts: tuple[torch.Tensor, ...]
    alpha: float
    scale: float = 1.0


def _row_terms(entries: list[PatchEntry], rows: int, cols: int) -> list[_RowTerm] | None:
    """A :class:`_RowTerm` per entry if every entry is a LoRA/LoCon, LoHa or LoKr adapter (no Tucker core
    in LoHa/LoKr, no DoRA) on the whole ``rows x cols`` weight, with factors of that size; ``None``
    otherwise (the general merge then handles, or reports, it)."""
    out = []
    for e in entries:
        if e.strength == 0.0:
            continue
        a = e.adapter
        if (e.target.offset is not None and not e.is_bias) or a.magnitude is not None:
            return None
        lr = a.low_rank()
        if lr is not None:
            up, down, scale = lr
            if up.shape[0] != rows or down.shape[1] != cols:
                return None
            out.append(_RowTerm("lowrank", (up, down), e.strength * scale))
        elif isinstance(a, LohaWeights) and (hf := a.hadamard_factors()) is not None:
            *factors, scale = hf
            w1a, w1b, w2a, w2b = factors
            if not (w1a.shape[0] == w2a.shape[0] == rows and w1b.shape[1] == w2b.shape[1] == cols):
                return None
            out.append(_RowTerm("hada", tuple(factors), e.strength, scale))
        elif isinstance(a, LokrWeights) and (kf := a.kron_factors()) is not None:
            w1, w2, scale = kf
            if w1.shape[0] * w2.shape[0] != rows or w1.shape[1] * w2.shape[1] != cols:
                return None
            out.append(_RowTerm("kron", (w1, w2), e.strength, scale))
        else:
            return None
    return out


def _kron_rows(w1: torch.Tensor, w2: torch.Tensor, r0: int, r1: int, out: torch.Tensor) -> torch.Tensor:
    """Rows ``r0:r1`` of ``kron(w1, w2)`` into ``out`` (``(r1 - r0) x cols``), one block of ``w2`` rows
    per row of ``w1`` they fall in."""
    p = w2.shape[0]
    r = r0
    while r < r1:
        i1, s = divmod(r, p)
        e = min(p, s + (r1 - r))
        torch.kron(w1[i1:i1 + 1], w2[s:e], out=out[r - r0:r - r0 + e - s])
        r += e - s
    return out


def _merged_copy_cpu(weight: torch.Tensor, terms: list[_RowTerm]) -> tuple[torch.Tensor, bool]:
    """``weight`` with every delta added, as a new tensor: fp32 math in row chunks that stay in cache
    (reused working buffers), one rounding per element; and whether the result is finite in the
    weight's dtype (one ``aminmax`` over the rounded result: an overflow has become inf there)."""
    w2d = _as_2d_view(weight)
    out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    o2d = out.view(out.shape[0], -1)
    rows, cols = o2d.shape
    terms = [_RowTerm(t.kind, tuple(x.to(torch.float32) for x in t.parts), t.alpha, t.scale) for t in terms]
    step = max(1, min(rows, CPU_CHUNK // max(cols, 1)))
    work = torch.empty(step * cols, dtype=torch.float32)
    needs_scratch = any(t.kind != "lowrank" for t in terms)  # LoHa's two products, LoKr's kron rows
    scratch = [torch.empty(step * cols, dtype=torch.float32) for _ in range(2 if needs_scratch else 0)]
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        n = (r1 - r0) * cols
        acc = work[:n].view(r1 - r0, cols)
        acc.copy_(w2d[r0:r1])
        for t in terms:
            if t.kind == "lowrank":
                up, down = t.parts
                acc.addmm_(up[r0:r1], down, alpha=t.alpha)
                continue
            block = scratch[0][:n].view(r1 - r0, cols)
            if t.kind == "hada":
                w1a, w1b, w2a, w2b = t.parts
                torch.mm(w1a[r0:r1], w1b, out=block)
                block.mul_(torch.mm(w2a[r0:r1], w2b, out=scratch[1][:n].view(r1 - r0, cols)))
            else:
                _kron_rows(*t.parts, r0, r1, block)
            acc.add_(block.mul_(t.scale), alpha=t.alpha)
        o2d[r0:r1].copy_(acc)
    return out, _rounds_to_finite(out, weight.dtype)


def apply_patches(weights: MutableMapping[str, torch.Tensor], entries: Iterable[PatchEntry], *,
                  backup_device: torch.device | str = "cpu", check_finite: bool = True,
                  in_place: bool = True, fused_path: bool = True) -> Backup:
    """Merge ``entries`` into the tensors of ``weights``; return the :class:`Backup` for restore.

    ``weights`` maps weight keys to the live tensors (parameters' ``.data``). With ``in_place=False``
    a CPU weight may be replaced by a new tensor (``weights[key] = merged``) instead of written into;
    ``fused_path=False`` keeps GPU weights on the backup path.
    On an overflow or NaN every weight touched so far is restored before the error is raised.
    """
    by_key: dict[str, list[PatchEntry]] = {}
    for e in entries:
        by_key.setdefault(e.weight_key, []).append(e)
    backup = Backup()
    bad: list[str] = []
    jobs: list[fused.Job] = []
    try:
        with torch.no_grad():
            for key, group in by_key.items():
                weight = weights[key]
                key_jobs = _fused_jobs(key, weight, group) if fused_path else None
                if key_jobs is not None:
                    jobs += key_jobs
                    continue
                if not in_place and weight.device.type == "cpu":
                    # swap in a merged copy; the original tensor, untouched, is the backup
                    w2d = _as_2d_view(weight)
                    terms = _row_terms(group, *w2d.shape) if w2d is not None else None
                    if terms is not None:
                        merged, finite = _merged_copy_cpu(weight, terms)
                    else:  # full diffs, DoRA, Tucker cores, fused slices: the general merge, into a copy
                        merged = torch.empty_like(weight, memory_format=torch.contiguous_format).copy_(weight)
                        finite = _merge_group(merged, weight, group)
                    backup.replaced[key] = weight
                    weights[key] = merged
                    if check_finite and not finite:
                        bad.append(key)
                    continue
                backup.copies[key] = weight.detach().to(backup_device, copy=True)
                finite = _merge_group(weight, backup.copies[key], group)
                if check_finite and not finite:
                    bad.append(key)
            if jobs:
                backup.fused, nonfinite = fused.merge_lowrank(jobs)
                if check_finite:
                    bad += nonfinite
        if bad:
            raise _overflow_error(bad, weights[bad[0]].dtype, by_key)
    except BaseException:
        restore_weights(weights, backup)
        raise
    return backup


def _merge_group(weight: torch.Tensor, original: torch.Tensor, group: list[PatchEntry]) -> bool:
    """Add every entry of one weight's ``group`` to ``weight`` in place, slice by slice; ``original``
    holds the unpatched values (DoRA's base). Returns whether the result is finite in its dtype."""
    by_offset: dict[object, list[PatchEntry]] = {}
    for e in group:
        by_offset.setdefault(e.target.offset if not e.is_bias else None, []).append(e)
    finite = True
    for offset, es in by_offset.items():
        view = target_view(weight, offset)
        needs_base = any(e.adapter.magnitude is not None for e in es)
        base = target_view(original, offset).to(weight.device) if needs_base else None
        finite = _merge_one(view, base, es) and finite
    return finite


def _fused_jobs(key: str, weight: torch.Tensor, group: list[PatchEntry]) -> list[fused.Job] | None:
    """The GPU kernel's jobs for every entry of one weight, or ``None`` if any entry needs another path."""
    if not fused.available(weight):
        return None
    jobs = []
    for e in group:
        if e.strength == 0.0:
            continue
        view = target_view(weight, e.target.offset if not e.is_bias else None)
        job = fused.lowrank_job(key, weight, view, e.adapter, e.strength, e.module)
        if job is None:
            return None
        jobs.append(job)
    return jobs


def _overflow_error(bad, dtype, by_key) -> Exception:
    names = [", ".join(sorted({e.module for e in by_key[k]})) or k for k in bad]
    shown = "; ".join(names[:6]) + (f" (and {len(names) - 6} more)" if len(names) > 6 else "")
    if dtype in HALF_DTYPES:
        limit = torch.finfo(dtype).max
        return OverflowRiskError(
            f"W + dW overflows {str(dtype).replace('torch.', '')} (max {limit:g}) in {len(bad)} layer(s): {shown}. "
            "Sampling would produce a black image.",
            "lower the LoRA strength or use block weights to leave out these layers, or load the model in "
            "fp32/bf16.")
    return NonFiniteError(
        f"Merging the LoRA produced NaN/Inf in {len(bad)} layer(s): {shown}.",
        "the LoRA file is damaged; export or download it again.")


def restore_weights(weights: MutableMapping[str, torch.Tensor], backup: Backup | dict[str, torch.Tensor]) -> None:
    """Put every weight ``backup`` covers back: the original bits, whatever the merge rounded."""
    with torch.no_grad():
        if isinstance(backup, dict):
            for key, saved in backup.items():
                weights[key].copy_(saved)
            return
        if backup.fused is not None:
            backup.fused.restore()
            backup.fused = None
        for key, saved in backup.copies.items():
            weights[key].copy_(saved)
        for key, original in backup.replaced.items():
            weights[key] = original
        backup.copies, backup.replaced = {}, {}
