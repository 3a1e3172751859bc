"""Patching: adding LoRA deltas to a model's live weights, and restoring them bit-exactly.

("Patching" here, as in ComfyUI's ``ModelPatcher``; merging several LoRAs into one is
:mod:`lora_ops.combine` and :mod:`lora_ops.stackmerge`.) Four paths, chosen per weight:

* GPU, fp16/bf16 weight, plain low-rank adapters (LoRA, LoCon, Tucker folded): ``lora_ops.fused``, the
  fused kernel. One Triton launch adds every such delta in place, ``W' = round(W + s * up @ down)`` with
  fp32 math, and records the few elements whose original bits the rounding lost; the restore subtracts
  the same product and writes those bits back. No backup of the weights, one read and one write per
  weight element, one launch for all weights.
* CPU (``in_place=False``, as the ComfyUI bridge asks): the patched weight is computed into a new tensor
  and swapped in; the original tensor itself is the backup, so restoring is swapping it back. LoRA/LoCon,
  LoHa and LoKr adapters on the whole weight are computed in row chunks that stay in cache (fp32 math,
  one rounding); everything else (full diffs, DoRA, OFT/BOFT/GLoRA, Tucker cores in LoHa/LoKr, slices of
  packed weights) by the general path below, applied to a copy.
* Weights that are not plain floats (fp8, ComfyUI's scaled fp8 and quantized layers), with a
  :class:`WeightCodec` from the host, and weights a LoRA widens (``reshape``, BFL's Flux control LoRAs):
  decoded to fp32 (zero-padded to the new shape), patched, encoded back the way the host does, and
  swapped in; the original tensor (or parameter object) is the backup.
* Everything else (LoHa/LoKr/full/DoRA on the GPU, Triton missing, callers that need the very tensors
  written): the weight is copied to ``backup_device`` first, every delta is added in place (on the GPU
  in the weight's dtype: ``addmm_`` for low-rank factors, deltas formed in fp16/bf16 on the device; on
  the CPU through one fp32 copy of the layer) and the copy is written back on restore.

Every delta comes from :func:`~lora_ops.adapters.effective_delta` (the kind's delta, the key map's
transform, DoRA normalised against the base weight ``W0``, the weight before this patch, so several
DoRAs stack in any order).

Peak extra memory is one layer's worth (plus, on the fused path, the element records). A patched
half-precision weight that is no longer finite (fp16 values of 65520 and more become inf) is restored
at once and reported with its layer names in :class:`~lora_ops.errors.OverflowRiskError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass

import torch

from . import fused
from .adapters import Adapter, RowTerm, effective_delta, low_rank_in_layout
from .adapters.lora import LowRankRows
from .errors import NonFiniteError, OverflowRiskError, ShapeMismatchError
from .keymap import Target
from .numerics import HALF_DTYPES, overflow_limit



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

    def delta(self, shape, base: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
              device=None) -> torch.Tensor:
        """The entry's delta at strength 1 (strength not folded in), transform and DoRA included.

        Factors that pass the shape checks but still do not form a delta of ``shape`` (a damaged file) give
        a :class:`ShapeMismatchError` naming the layer, not torch's error."""
        try:
            return effective_delta(self.adapter, shape, base=base, transform=self.target.transform, dtype=dtype,
                                   device=device)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, IndexError, ValueError, TypeError) as exc:
            if isinstance(exc, ShapeMismatchError) or type(exc).__module__.startswith("lora_lab") or \
                    hasattr(exc, "fix"):
                raise
            raise ShapeMismatchError(f"{self.module}: its {self.adapter.describe()} factors do not form a delta for "
                                     f"a weight of shape {tuple(shape)} ({type(exc).__name__}: {exc}).",
                                     "the file is damaged or made for another model; export it again.") from exc

    def low_rank(self):
        """``(up, down, scale)`` in the weight's layout, or ``None`` (see ``low_rank_in_layout``)."""
        if self.is_bias or getattr(self.adapter, "reshape", None) is not None:
            return None
        return low_rank_in_layout(self.adapter, self.target.transform)


@dataclass(frozen=True)
class WeightCodec:
    """How a stored weight stands for its values, for weights that are not plain float tensors.

    ``decode(stored) -> fp32 values`` (fp8 scaled by the layer's scale, a quantized tensor dequantised);
    ``encode(values, key) -> stored`` the way the host stores a patched weight (its stochastic rounding
    to fp8, seeded by the key, or its quantizer). ``describe`` names the format for messages.
    """

    decode: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor, str], torch.Tensor]
    describe: str = "quantized"


def target_view(weight: torch.Tensor, offset: tuple[int, int, int] | None) -> torch.Tensor:
    """The part of ``weight`` a patch writes to: the whole tensor or a ``narrow`` view of a packed one."""
    if offset is None:
        return weight
    dim, start, length = offset
    return weight.narrow(dim, start, length)


def slice_shape(shape, offset: tuple[int, int, int] | None) -> torch.Size:
    """The shape of the part of a weight of ``shape`` that ``offset`` selects (the whole when ``None``)."""
    if offset is None:
        return torch.Size(shape)
    dim, _, length = offset
    return torch.Size(list(shape[:dim]) + [length] + list(shape[dim + 1:]))


def delta_in_weight(entry: PatchEntry, shape, base: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``strength * dW`` of ``entry`` laid out as the whole weight of ``shape`` (zeros outside a packed
    slice); ``base`` is the whole unpatched weight (narrowed here for a slice)."""
    offset = None if entry.is_bias else entry.target.offset
    part = slice_shape(shape, offset)
    b = target_view(base, offset) if base is not None else None
    d = entry.delta(part, base=b, dtype=torch.float32) * entry.strength
    if offset is None:
        return d.reshape(shape).to(dtype)
    whole = torch.zeros(torch.Size(shape), dtype=torch.float32, device=d.device)
    target_view(whole, offset).copy_(d.reshape(part))
    return whole.to(dtype)


def delta_numel(adapter: Adapter) -> int | None:
    """Number of elements the adapter's delta has, when the factors tell it without computing it."""
    return adapter.delta_numel()


def check_shape(entry: PatchEntry, shape: torch.Size) -> str | None:
    """``None`` if the adapter fits a weight of ``shape``; else a one-line description of the misfit."""
    problem = entry.adapter.misfit(torch.Size(shape))
    return f"{entry.module}: {problem}" if problem else None


def find_misfits(entries: Iterable[PatchEntry], shapes: dict[str, torch.Size]) -> list[tuple[PatchEntry, str]]:
    """Every entry whose delta does not fit its weight, with a one-line description."""
    misfits = []
    for e in entries:
        shape = shapes.get(e.weight_key)
        if shape is None:
            misfits.append((e, f"{e.module}: the model has no weight '{e.weight_key}'"))
            continue
        if e.target.offset is not None and not e.is_bias:
            shape = slice_shape(shape, e.target.offset)
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
    """Whether every value of ``t`` is finite once stored as ``dtype`` (one ``aminmax`` pass; the limit is
    :func:`~lora_ops.numerics.overflow_limit`, 65520 for fp16; NaN propagates through ``aminmax``)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    limit = overflow_limit(dtype)
    return -limit < lo and hi < limit


def _merge_one(view: torch.Tensor, base: torch.Tensor | None, entries: list[PatchEntry]) -> bool:
    """Add every entry's delta to ``view`` in place; ``base`` is the unpatched value (for the kinds
    and DoRA whose delta depends on it).

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
        lr = e.low_rank()
        if lr is not None and acc2d is not None:
            up, down, scale = lr
            acc2d.addmm_(up.to(acc.device, compute), down.to(acc.device, compute), alpha=e.strength * scale)
        else:
            acc.add_(e.delta(acc.shape, base=base, dtype=compute, device=acc.device), alpha=e.strength)
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


def _row_terms(entries: list[PatchEntry], rows: int, cols: int) -> list[RowTerm] | None:
    """A :class:`~lora_ops.adapters.RowTerm` per entry if every entry's kind computes its delta by rows
    (LoRA/LoCon, LoHa and LoKr without Tucker cores, no DoRA) on the whole ``rows x cols`` weight, with
    factors of that size; ``None`` otherwise (the general merge then handles, or reports, it)."""
    out = []
    for e in entries:
        if e.strength == 0.0:
            continue
        if (e.target.offset is not None and not e.is_bias) or e.adapter.needs_base:
            return None
        if e.target.transform is not None:
            lr = e.low_rank()
            term = LowRankRows(lr[0], lr[1], e.strength * lr[2]) if lr is not None else None
        else:
            term = e.adapter.row_term(e.strength)
        if term is None or not term.fits(rows, cols):
            return None
        out.append(term)
    return out


def _merged_copy_cpu(weight: torch.Tensor, terms: list[RowTerm]) -> tuple[torch.Tensor, bool]:
    """``weight`` with every delta added, as a new tensor: fp32 math in row chunks that stay in cache
    (reused working buffers), one rounding per element; and whether the result is finite in the
    weight's dtype (one ``aminmax`` over the rounded result: an overflow has become inf there)."""
    w2d = _as_2d_view(weight)
    out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    o2d = out.view(out.shape[0], -1)
    rows, cols = o2d.shape
    terms = [t.to_fp32() for t in terms]
    step = max(1, min(rows, CPU_CHUNK // max(cols, 1)))
    work = torch.empty(step * cols, dtype=torch.float32)
    needs_scratch = any(t.needs_scratch for t in terms)  # LoHa's two products, LoKr's kron rows
    scratch = [torch.empty(step * cols, dtype=torch.float32) for _ in range(2 if needs_scratch else 0)]
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        acc = work[:(r1 - r0) * cols].view(r1 - r0, cols)
        acc.copy_(w2d[r0:r1])
        for t in terms:
            t.add_rows(acc, r0, r1, scratch)
        o2d[r0:r1].copy_(acc)
    return out, _rounds_to_finite(out, weight.dtype)


def _target_shape(group: list[PatchEntry], weight: torch.Tensor) -> torch.Size:
    """The shape the weight takes: its own, or the padded shape a widening LoRA asks for."""
    shapes = {tuple(r) for e in group if (r := getattr(e.adapter, "reshape", None)) is not None}
    if not shapes:
        return weight.shape
    if len(shapes) > 1:
        raise ShapeMismatchError(f"LoRA layers {sorted({e.module for e in group})} widen the same weight to "
                                 f"different shapes {sorted(shapes)}.", "apply only one of these LoRAs.")
    return torch.Size(shapes.pop())


def _padded(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``weight`` zero-padded at the end of every dimension to ``shape`` (a new tensor)."""
    out = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
    out[tuple(slice(0, n) for n in weight.shape)] = weight
    return out


def _merged_by_codec(weight: torch.Tensor, key: str, group: list[PatchEntry], codec: WeightCodec | None,
                     shape: torch.Size) -> tuple[torch.Tensor, bool]:
    """The merged weight as a new stored tensor, for weights with a codec or a new shape: decode to
    fp32 (or take the floats), pad, merge every entry (base = the decoded original), encode back."""
    values = codec.decode(weight) if codec is not None else weight.float()
    values = values.to(torch.float32)
    base = values.clone() if any(e.adapter.needs_base for e in group) else None
    if values.shape != shape:
        values = _padded(values, shape)
        base = _padded(base, shape) if base is not None else None
    _merge_group(values, base if base is not None else values, group)
    finite = bool(torch.isfinite(values).all())
    if codec is not None:
        return codec.encode(values, key), finite
    return values.to(weight.dtype), finite and _rounds_to_finite(values, weight.dtype)


def apply_patches(weights: MutableMapping[str, torch.Tensor], entries: Iterable[PatchEntry], *,
                  backup_device: torch.device | str = "cpu", check_finite: bool = True,
                  in_place: bool = True, fused_path: bool = True,
                  codecs: Mapping[str, WeightCodec] | None = None) -> Backup:
    """Merge ``entries`` into the tensors of ``weights``; return the :class:`Backup` for restore.

    ``weights`` maps weight keys to the live tensors (parameters' ``.data``). With ``in_place=False``
    a CPU weight may be replaced by a new tensor (``weights[key] = merged``) instead of written into;
    ``fused_path=False`` keeps GPU weights on the backup path. ``codecs``: the host's codec for each
    weight that is not a plain float tensor (always replaced, on any device; see :class:`WeightCodec`).
    On an overflow or NaN every weight touched so far is restored before the error is raised.
    """
    by_key: dict[str, list[PatchEntry]] = {}
    for e in entries:
        by_key.setdefault(e.weight_key, []).append(e)
    codecs = codecs or {}
    backup = Backup()
    bad: list[str] = []
    jobs: list[fused.Job] = []
    try:
        with torch.no_grad():
            for key, group in by_key.items():
                weight = weights[key]
                codec = codecs.get(key)
                shape = _target_shape(group, weight)
                if codec is not None or shape != weight.shape:
                    merged, finite = _merged_by_codec(weight, key, group, codec, shape)
                    backup.replaced[key] = weight
                    weights[key] = merged
                    if check_finite and not finite:
                        bad.append(key)
                    continue
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
                    else:  # full diffs, DoRA, OFT/GLoRA, Tucker cores, packed-weight slices: the general merge
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
            raise _overflow_error(bad, backup.replaced.get(bad[0], weights[bad[0]]).dtype, by_key,
                                  codecs.get(bad[0]))
    except BaseException:
        restore_weights(weights, backup)
        raise
    return backup


def _merge_group(weight: torch.Tensor, original: torch.Tensor, group: list[PatchEntry]) -> bool:
    """Add every entry of one weight's ``group`` to ``weight`` in place, slice by slice; ``original``
    holds the unpatched values (the base of DoRA and of OFT/BOFT/GLoRA/set-weights). Returns whether
    the result is finite in its dtype."""
    by_offset: dict[object, list[PatchEntry]] = {}
    for e in group:
        by_offset.setdefault(e.target.offset if not e.is_bias else None, []).append(e)
    finite = True
    for offset, es in by_offset.items():
        view = target_view(weight, offset)
        needs_base = any(e.adapter.needs_base for e in es)
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
        if e.target.transform is not None or e.adapter.needs_base:
            return None
        view = target_view(weight, e.target.offset if not e.is_bias else None)
        job = fused.lowrank_job(key, weight, view, e.adapter, e.strength, e.module)
        if job is None:
            return None
        jobs.append(job)
    return jobs


def _overflow_error(bad, dtype, by_key, codec: WeightCodec | None = None) -> Exception:
    names = [", ".join(sorted({e.module for e in by_key[k]})) or k for k in bad]
    shown = "; ".join(names[:6]) + (f" (and {len(names) - 6} more)" if len(names) > 6 else "")
    if codec is not None:
        return NonFiniteError(
            f"Merging the LoRA into the model's {codec.describe} weights produced NaN/Inf in {len(bad)} "
            f"layer(s): {shown}.", "lower the LoRA strength, or check the file with LoRA Lab Inspect.")
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
