"""Merging several LoRAs that patch ONE model weight into one result: the pure math of merging.

Every function here works on one weight at a time and knows nothing of files, nodes or the host. A
*part* is anything with ``.adapter`` (an :mod:`~lora_ops.adapters` dataclass) and ``.strength``
(a float): a :class:`~lora_ops.patching.PatchEntry` fits, so the list of entries a stack puts on one
weight key can be passed in as it is. The live stack those parts describe is

    ``W = W0 + sum_i s_i * dW_i``        (``dW_i`` at strength 1, scale ``alpha / r`` included;
                                          a DoRA part's ``dW_i = dora_delta(W0, adapter_i)``)

which is exactly what :func:`~lora_ops.patching.apply_patches` computes. The methods:

* :func:`merge_concat` -- exact rank concatenation of low-rank parts (rank = sum of ranks).
* :func:`merge_sum` -- the plain weighted delta sum as a :class:`FullDiff` (exact, full size).
* :func:`merge_svd` -- that sum truncated by SVD to a rank or an energy fraction, with the error
  actually measured (Eckart-Young: the best approximation of that rank in Frobenius norm).
* :func:`merge_ties`, :func:`merge_dare`, :func:`merge_magnitude_prune` -- delta-space methods
  with the definitions of PEFT's ``peft.utils.merge_utils`` (TIES: Yadav et al. 2023, "TIES-Merging";
  DARE: Yu et al. 2023, "Language Models are Super Mario"), composed from the steps
  :func:`magnitude_mask` / :func:`random_mask` -> :func:`elect_sign` -> :func:`disjoint_mean`.
* :func:`merged_to_lora` turns any merged delta into a LoRA through the SVD step, so every method can
  end as a LoRA file; :func:`relative_error` is the per-layer error against the live stack.

Everything is computed in float32 (float64 inputs stay float64) and returned in that dtype; the
caller casts when it saves. Bad input raises :class:`~lora_ops.errors.LoraLabError` (a
``ValueError``) with the offending value in the message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol

import torch

from .adapters import Adapter, FullDiff, LoraWeights, algorithm_name, effective_delta, low_rank_in_layout
from .errors import LoraLabError, ShapeMismatchError

MajoritySignMethod = Literal["total", "frequency"]
DareMethod = Literal["linear", "ties"]
SvdSolver = Literal["gram", "svd"]

MAJORITY_SIGN_METHODS: tuple[str, ...] = ("total", "frequency")
DARE_METHODS: tuple[str, ...] = ("linear", "ties")
SVD_SOLVERS: tuple[str, ...] = ("gram", "svd")


class WeightedAdapter(Protocol):
    """One LoRA's adapter for this weight and the strength it is applied at (``PatchEntry`` fits)."""

    adapter: Adapter
    strength: float


# --------------------------------------------------------------------------------------------------
# Validation


def _part_name(part: WeightedAdapter, index: int) -> str:
    module = getattr(part, "module", "") or ""
    return f"part {index} ({module}, {algorithm_name(part.adapter)})" if module else \
        f"part {index} ({algorithm_name(part.adapter)})"


def _check_parts(parts: Sequence[WeightedAdapter]) -> list[WeightedAdapter]:
    parts = list(parts) if parts is not None else []
    if not parts:
        raise LoraLabError("Nothing to merge: the list of LoRA parts for this weight is empty (got []).",
                           "add at least one enabled LoRA to the stack.")
    for i, p in enumerate(parts):
        s = getattr(p, "strength", None)
        if getattr(p, "adapter", None) is None or not isinstance(s, (int, float)) or isinstance(s, bool) \
                or not math.isfinite(s):
            raise LoraLabError(f"Part {i} is not an adapter with a finite strength (got strength={s!r}).",
                               "pass PatchEntry-like objects with .adapter and a finite float .strength.")
    return parts


def _check_density(density: float) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not (0.0 < density <= 1.0):
        raise LoraLabError(f"density must be in (0, 1], got {density!r}.",
                           "pass the fraction of entries to keep, e.g. 0.5.")
    return float(density)


def _check_rank(rank: int, limit: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or not (1 <= rank <= limit):
        raise LoraLabError(f"rank must be an integer in [1, {limit}] for this weight, got {rank!r}.",
                           f"pick a rank between 1 and min(out, in) = {limit}.")
    return rank


def _check_energy(energy: float) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not (0.0 < energy <= 1.0):
        raise LoraLabError(f"energy must be in (0, 1], got {energy!r}.",
                           "pass the fraction of squared singular values to keep, e.g. 0.99.")
    return float(energy)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise LoraLabError(f"Unknown {name} {value!r}.", f"use one of {', '.join(map(repr, allowed))}.")
    return value


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------
# Materialising parts


def _inferred_shape(adapter: Adapter) -> torch.Size | None:
    """The weight shape an adapter implies by itself, when its factors tell it (LoRA/LoCon, full diff)."""
    return adapter.implied_shape()


def _transform(part: WeightedAdapter):
    """The host key map's transform of the part's delta (a ``PatchEntry``'s target), if any."""
    return getattr(getattr(part, "target", None), "transform", None)


def _low_rank(part: WeightedAdapter):
    """``(up, down, scale)`` of a plain low-rank part in the weight's layout, or ``None``."""
    return low_rank_in_layout(part.adapter, _transform(part))


def weight_shape(parts: Sequence[WeightedAdapter], shape: Sequence[int] | None = None,
                 base: torch.Tensor | None = None) -> torch.Size:
    """The shape of the weight the parts patch: ``shape``, else ``base.shape``, else from the factors.

    LoHa and LoKr do not carry their weight's shape; a stack of only those needs ``shape`` or ``base``.
    """
    if shape is not None:
        resolved = torch.Size(shape)
        if base is not None and base.shape != resolved:
            raise ShapeMismatchError(f"shape {tuple(resolved)} and base weight {tuple(base.shape)} disagree.",
                                     "pass the shape of the weight (or the slice) being merged.")
        return resolved
    if base is not None:
        return base.shape
    for p in parts:
        inferred = _inferred_shape(p.adapter)
        if inferred is not None:
            return inferred
    raise LoraLabError("The weight shape cannot be told from LoHa/LoKr factors alone "
                       f"(parts: {[algorithm_name(p.adapter) for p in parts]}).",
                       "pass shape= (or base=) for this weight.")


def _check_fits(parts: Sequence[WeightedAdapter], shape: torch.Size) -> None:
    for i, p in enumerate(parts):
        problem = p.adapter.misfit(torch.Size(shape))
        if problem:
            raise ShapeMismatchError(f"{_part_name(p, i)}: {problem}.", "merge only LoRAs made for the same base model.")


def part_delta(part: WeightedAdapter, shape: Sequence[int], base: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32, index: int = 0) -> torch.Tensor:
    """``dW`` of one part at strength 1 (not multiplied by its strength), in ``dtype``, of ``shape``.

    A part whose delta depends on the base weight (DoRA, OFT/BOFT, GLoRA, set-weights) is materialised
    against ``base``, as :func:`~lora_ops.patching.apply_patches` does; it needs ``base``.
    """
    a = part.adapter
    shape = torch.Size(shape)
    if a.needs_base and base is None:
        raise LoraLabError(f"{_part_name(part, index)}: its delta depends on the base weight, and no base was "
                           "given.", "pass base= (the unpatched model weight) to materialise such parts.")
    try:
        return effective_delta(a, shape, base=base, transform=_transform(part), dtype=dtype,
                               device=base.device if base is not None else None)
    except RuntimeError as exc:  # reshape / kron size errors of a misfit LoHa or LoKr
        raise ShapeMismatchError(f"{_part_name(part, index)} does not fit a weight of shape "
                                 f"{tuple(shape)}: {exc}",
                                 "merge only LoRAs made for the same base model.") from exc


def part_deltas(parts: Sequence[WeightedAdapter], base: torch.Tensor | None = None,
                shape: Sequence[int] | None = None) -> tuple[list[torch.Tensor], list[float]]:
    """Every part's ``dW_i`` at strength 1 and its strength ``s_i``: the input of the delta-space methods.

    ``merge_ties(*part_deltas(parts, base))`` merges a stack's parts for one weight. Pass the
    strength-folded deltas ``s_i * dW_i`` with weights 1 instead to make TIES elect signs on the
    weighted deltas (PEFT elects on the unweighted ones, so a negative strength does not flip a vote).
    """
    parts = _check_parts(parts)
    resolved = weight_shape(parts, shape, base)
    _check_fits(parts, resolved)
    deltas = [part_delta(p, resolved, base, index=i) for i, p in enumerate(parts)]
    return deltas, [float(p.strength) for p in parts]


# --------------------------------------------------------------------------------------------------
# Exact methods


def merge_sum(parts: Sequence[WeightedAdapter], base: torch.Tensor | None = None,
              shape: Sequence[int] | None = None) -> FullDiff:
    """The live stack's delta, ``D = sum_i s_i * dW_i``, as a :class:`FullDiff` of the weight's shape.

    Exact (float32 accumulation); LoHa, LoKr and full diffs are materialised, DoRA against ``base``.
    """
    deltas, strengths = part_deltas(parts, base, shape)
    total = torch.zeros_like(deltas[0])
    for d, s in zip(deltas, strengths):
        total.add_(d, alpha=s)
    return FullDiff(diff=total)


def is_concat_able(part: WeightedAdapter) -> bool:
    """Whether :func:`merge_concat` takes this part: a LoRA/LoCon without DoRA (Tucker core allowed)."""
    return _low_rank(part) is not None


def merge_concat(parts: Sequence[WeightedAdapter], shape: Sequence[int] | None = None,
                 dtype: torch.dtype = torch.float32) -> LoraWeights:
    """Exact rank concatenation: one LoRA whose delta is the stack's, of rank ``R = sum_i r_i``.

    With ``(up_i (out, r_i), down_i (r_i, in*kh*kw), scale_i) = adapter_i.low_rank()``::

        up   = [s_1*scale_1*up_1 | s_2*scale_2*up_2 | ...]     (out, R)
        down = [down_1; down_2; ...]                            (R, in*kh*kw)
        alpha = R                                               (scale 1: applied once, in ``up``)

    so ``up @ down = sum_i s_i * scale_i * up_i @ down_i``. A LoCon comes back as ``down (R, in, kh, kw)``
    and ``up (out, R, 1, 1)``; a Tucker core is folded into its ``down`` first (exact). The layout is
    that of ``shape`` when given, else that of the first conv part, else linear.

    Only low-rank parts are taken (see :func:`is_concat_able`): LoHa, LoKr, full diffs and DoRA have no
    exact rank-``r`` factorisation, and a silent full-size fallback would break the promise of a
    compact, exact LoRA. The caller merges such layers with :func:`merge_svd` (full rank is exact up to
    float32 rounding) or :func:`merge_sum`. Parts at strength 0 still add their rank; drop disabled
    rows before calling.
    """
    parts = _check_parts(parts)
    bad = [_part_name(p, i) for i, p in enumerate(parts) if not is_concat_able(p)]
    if bad:
        raise LoraLabError(f"concat merges only plain LoRA/LoCon parts; not low-rank here: {', '.join(bad)}.",
                           "use the svd method (full rank is exact up to float32 rounding) or sum for "
                           "this layer.")
    layout = torch.Size(shape) if shape is not None else None
    if layout is None:
        convs = [s for s in (_inferred_shape(p.adapter) for p in parts) if len(s) == 4]
        layout = convs[0] if convs else _inferred_shape(parts[0].adapter)
    _check_fits(parts, layout)
    for i, p in enumerate(parts):
        own = _inferred_shape(p.adapter)
        if len(own) == 4 and len(layout) == 4 and own[1:] != layout[1:]:
            raise ShapeMismatchError(f"{_part_name(p, i)} is a {tuple(own[2:])} conv LoRA on in={own[1]} "
                                     f"but the weight is {tuple(layout)}.",
                                     "merge only LoRAs made for the same base model.")
    compute = _compute_dtype(dtype)
    ups, downs = [], []
    for p in parts:
        up, down, scale = _low_rank(p)
        ups.append(up.to(compute) * (float(p.strength) * scale))
        downs.append(down.to(device=up.device, dtype=compute))
    up = torch.cat(ups, dim=1)
    down = torch.cat(downs, dim=0)
    rank = int(down.shape[0])
    if len(layout) > 2:
        up = up.reshape(up.shape[0], rank, *[1] * (len(layout) - 2))
        down = down.reshape(rank, *layout[1:])
    return LoraWeights(up=up.to(dtype), down=down.to(dtype), alpha=float(rank))


# --------------------------------------------------------------------------------------------------
# SVD truncation


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact||_F / ||exact||_F`` in float64 (0 when both are 0, inf when only ``exact`` is)."""
    if approx.numel() != exact.numel():
        raise ShapeMismatchError(f"approx has {approx.numel()} values {tuple(approx.shape)}, exact has "
                                 f"{exact.numel()} {tuple(exact.shape)}.",
                                 "compare deltas of the same weight.")
    e = exact.to(torch.float64)
    a = approx.to(device=e.device, dtype=torch.float64).reshape(e.shape)
    num = float(torch.linalg.vector_norm(a - e))
    den = float(torch.linalg.vector_norm(e))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r >= 1`` with ``sum_{i<=r} s_i^2 >= energy * sum_i s_i^2`` (``s`` sorted descending)."""
    energy = _check_energy(energy)
    sq = singular_values.to(torch.float64) ** 2
    cum = torch.cumsum(sq, dim=0)
    total = float(cum[-1])
    if total == 0.0:
        return 1
    reached = (cum >= energy * total).nonzero()
    return int(reached[0]) + 1 if reached.numel() else int(sq.numel())


def numerical_rank(singular_values: torch.Tensor, shape: Sequence[int]) -> int:
    """How many singular values are not zero up to rounding: ``s_i > max(shape) * eps(float32) * s_max``
    (the usual numerical-rank tolerance, at float32's precision, that of the deltas)."""
    sv = singular_values.to(torch.float64)
    if sv.numel() == 0 or float(sv.max()) == 0.0:
        return 0
    tol = max(shape) * torch.finfo(torch.float32).eps * float(sv.max())
    return int((sv > tol).sum())


def _gram_factors(flat: torch.Tensor, r_for) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(S (all, descending), up (out, r), down (r, n))`` from ``eigh`` of the float64 Gram matrix.

    On the smaller side ``k = min(out, n)``: ``G = D D^T`` (or ``D^T D``) ``= U S^2 U^T``; the kept basis
    ``U_r`` gives the optimal rank-``r`` projection ``U_r U_r^T D`` exactly, and ``S_r`` is re-measured as
    the norms of ``U_r^T D``. Float64 keeps ``S`` to ``~sqrt(eps64) * S_max``, finer than a float32 SVD.
    """
    x = flat.to(torch.float64)
    wide = x.shape[0] <= x.shape[1]
    gram = x @ x.T if wide else x.T @ x
    evals, evecs = torch.linalg.eigh(gram)
    sv = evals.flip(0).clamp(min=0).sqrt()
    r = r_for(sv)
    basis = evecs.flip(1)[:, :r]
    if wide:
        proj = basis.T @ x  # (r, n) = S_r V_r^T
        root = _safe_root(proj.norm(dim=1))
        return sv, basis * root, proj / root[:, None]
    proj = x @ basis  # (out, r) = U_r S_r
    root = _safe_root(proj.norm(dim=0))
    return sv, proj / root, root[:, None] * basis.T


def _safe_root(s: torch.Tensor) -> torch.Tensor:
    """``sqrt(s)``, with 1 where ``s`` is 0 (a zero direction stays zero and divides by nothing)."""
    root = s.sqrt()
    return torch.where(root > 0, root, torch.ones_like(root))


def _svd_factors(flat: torch.Tensor, r_for) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(S, up, down)`` from ``torch.linalg.svd`` of ``D`` itself, in its compute dtype."""
    u, sv, vh = torch.linalg.svd(flat, full_matrices=False)
    r = r_for(sv)
    root = sv[:r].sqrt()
    return sv, u[:, :r] * root, root[:, None] * vh[:r]


def merged_to_lora(delta: torch.Tensor | FullDiff, rank: int | None = None, energy: float | None = None,
                   solver: SvdSolver = "gram") -> tuple[LoraWeights, float]:
    """Truncated SVD of a merged delta: ``(LoraWeights, rel_error)``, rel_error measured on the result.

    ``D`` (any shape ``(out, ...)``) is flattened to ``(out, n)`` with ``n = in*kh*kw`` and written as
    ``D = U diag(S) V^T``. Keeping ``r`` values, the factors are split evenly,
    ``up = U_r diag(sqrt S_r)`` ``(out, r)`` and ``down = diag(sqrt S_r) V_r^T`` ``(r, n)``, so both have the
    same magnitude and neither overflows fp16 first; ``alpha = r`` (scale 1). Conv deltas come back as
    ``down (r, in, kh, kw)``, ``up (out, r, 1, 1)``. The rank is ``rank``, or the smallest one keeping
    ``energy`` of ``sum S^2`` (:func:`energy_rank`), or ``min(out, n)`` (lossless up to rounding) when
    neither is given; a ``rank`` cap above the delta's numerical rank (:func:`numerical_rank`) gives that
    rank instead (more would only add zero directions). ``rel_error = ||D - up @ down||_F / ||D||_F``, measured, which by Eckart-Young is
    ``sqrt(sum_{i>r} S_i^2) / ||D||_F`` up to rounding.

    Both solvers are exact (deterministic, full spectrum). ``gram`` (default): ``eigh`` of the float64
    Gram matrix on the smaller side (:func:`_gram_factors`), about 10x faster than ``svd`` on a CPU for a
    1280 x 11520 conv delta and at least as accurate; ``svd``: ``torch.linalg.svd`` of ``D`` in float32.
    Factors are returned in float32 (float64 for a float64 delta).
    """
    d = delta.diff if isinstance(delta, FullDiff) else delta
    if not isinstance(d, torch.Tensor):
        raise LoraLabError(f"merged_to_lora needs a tensor or FullDiff, got {type(delta).__name__}.",
                           "pass the merged delta of one weight.")
    if d.dim() < 2:
        raise LoraLabError(f"A delta of shape {tuple(d.shape)} (a bias) has no LoRA form.",
                           "save bias deltas as full diffs (.diff_b).")
    if rank is not None and energy is not None:
        raise LoraLabError(f"Give a rank or an energy, not both (got rank={rank!r}, energy={energy!r}).",
                           "pass only one of rank= and energy=.")
    _check_choice("SVD solver", solver, SVD_SOLVERS)
    shape = d.shape
    out_dtype = _compute_dtype(d.dtype)
    flat = d.reshape(shape[0], -1).to(out_dtype)
    limit = min(flat.shape)
    if rank is not None:
        _check_rank(rank, limit)
    if energy is not None:
        _check_energy(energy)

    def r_for(sv: torch.Tensor) -> int:
        if rank is not None:
            # a rank cap above the delta's own rank would only keep zero directions (a file full of zeros)
            return max(1, min(rank, numerical_rank(sv, flat.shape)))
        return energy_rank(sv, energy) if energy is not None else limit

    _, up, down = (_gram_factors if solver == "gram" else _svd_factors)(flat, r_for)
    up, down = up.to(out_dtype), down.to(out_dtype)
    r = int(down.shape[0])
    err = relative_error(up.to(torch.float64) @ down.to(torch.float64), flat)
    if len(shape) > 2:
        up = up.reshape(shape[0], r, *[1] * (len(shape) - 2))
        down = down.reshape(r, *shape[1:])
    return LoraWeights(up=up, down=down, alpha=float(r)), err


def merge_svd(parts: Sequence[WeightedAdapter], rank: int | None = None, energy: float | None = None,
              base: torch.Tensor | None = None, shape: Sequence[int] | None = None,
              solver: SvdSolver = "gram") -> tuple[LoraWeights, float]:
    """The stack's delta ``sum_i s_i dW_i`` (:func:`merge_sum`) truncated by :func:`merged_to_lora`.

    Any input format (LoHa, LoKr, full, DoRA against ``base``); returns ``(LoraWeights, rel_error)``
    with the relative Frobenius error against the live stack's delta, as measured.
    """
    if rank is not None and energy is not None:
        raise LoraLabError(f"Give a rank or an energy, not both (got rank={rank!r}, energy={energy!r}).",
                           "pass only one of rank= and energy=.")
    if energy is not None:
        _check_energy(energy)
    _check_choice("SVD solver", solver, SVD_SOLVERS)
    return merged_to_lora(merge_sum(parts, base, shape), rank=rank, energy=energy, solver=solver)


# --------------------------------------------------------------------------------------------------
# Delta-space methods (PEFT merge_utils definitions), composed from steps


def _stack(deltas: Sequence[torch.Tensor],
           weights: Sequence[float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T (n, *shape), w (n, 1, ..., 1))`` in the compute dtype, after checking the inputs."""
    deltas = list(deltas) if deltas is not None else []
    if not deltas:
        raise LoraLabError("Nothing to merge: the list of deltas is empty (got []).",
                           "pass at least one delta.")
    shape = deltas[0].shape
    for i, d in enumerate(deltas):
        if d.shape != shape:
            raise ShapeMismatchError(f"delta {i} has shape {tuple(d.shape)}, delta 0 has {tuple(shape)}.",
                                     "merge only deltas of the same weight.")
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w.numel() != len(deltas):
        raise LoraLabError(f"{w.numel()} weights for {len(deltas)} deltas (weights={w.tolist()}).",
                           "pass one weight (strength) per delta.")
    if not torch.isfinite(w).all():
        raise LoraLabError(f"weights must be finite, got {w.tolist()}.", "pass finite strengths.")
    compute = _compute_dtype(deltas[0].dtype)
    stacked = torch.stack([d.to(device=deltas[0].device, dtype=compute) for d in deltas])
    return stacked, w.to(device=stacked.device, dtype=compute).reshape(-1, *[1] * len(shape))


def magnitude_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the ``k = floor(density * numel)`` entries of largest ``|x|`` (``torch.topk``).

    The count rule is PEFT's ``int(density * numel)``, so masks agree entry for entry with
    ``peft.utils.merge_utils.magnitude_based_pruning``; density 1 keeps everything.
    """
    density = _check_density(density)
    if density == 1.0:
        return torch.ones_like(tensor, dtype=torch.bool)
    k = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), dtype=torch.bool, device=tensor.device)
    mask[torch.topk(tensor.abs().reshape(-1), k=k).indices] = True
    return mask.reshape(tensor.shape)


def random_mask(shape: Sequence[int], density: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask keeping each entry with probability ``density``, drawn from ``generator`` only.

    One ``torch.bernoulli`` draw per entry from a float32 tensor of ``density`` on the generator's
    device, so the same seed gives the same mask whatever the delta's dtype or device. This is the
    draw PEFT's ``random_pruning`` makes from the global RNG: a CPU generator seeded ``s`` reproduces
    PEFT's masks after ``torch.manual_seed(s)``. Density 1 keeps everything and draws nothing (as PEFT).
    """
    density = _check_density(density)
    if not isinstance(generator, torch.Generator):
        raise LoraLabError("DARE needs a torch.Generator for its random mask, "
                           f"got {type(generator).__name__}.",
                           "pass torch.Generator().manual_seed(seed) (the global RNG is never used).")
    if density == 1.0:
        return torch.ones(tuple(shape), dtype=torch.bool)
    p = torch.full(tuple(shape), density, dtype=torch.float32, device=generator.device)
    return torch.bernoulli(p, generator=generator).bool()


def elect_sign(stacked: torch.Tensor, method: MajoritySignMethod = "total") -> torch.Tensor:
    """TIES sign election over dim 0: mask of entries whose sign is the elected one.

    ``total``: elected sign of ``sum_i x_i``; ``frequency``: of ``sum_i sign(x_i)``; a tie elects ``+``.
    Zeros (pruned entries) have sign 0 and never agree.
    """
    _check_choice("majority_sign_method", method, MAJORITY_SIGN_METHODS)
    signs = stacked.sign()
    votes = stacked.sum(dim=0) if method == "total" else signs.sum(dim=0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(signs.dtype)
    return signs == elected


def disjoint_mean(weighted: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the agreeing entries only: ``sum_i agree_i x_i / max(1, sum_i agree_i)``."""
    kept = torch.where(agree, weighted, torch.zeros((), dtype=weighted.dtype, device=weighted.device))
    count = agree.sum(dim=0).clamp(min=1).to(weighted.dtype)
    return kept.sum(dim=0) / count


def merge_magnitude_prune(deltas: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor,
                          density: float) -> torch.Tensor:
    """``sum_i w_i * prune_k(dW_i)``: each delta keeps its top ``density`` by magnitude, then a weighted sum.

    Same definition as ``peft.utils.merge_utils.magnitude_prune``.
    """
    stacked, w = _stack(deltas, weights)
    mask = torch.stack([magnitude_mask(t, density) for t in stacked])
    return (stacked * mask * w).sum(dim=0)


def merge_ties(deltas: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor, density: float,
               majority_sign_method: MajoritySignMethod = "total") -> torch.Tensor:
    """TIES: trim each delta to its top ``density`` by magnitude, elect a sign per entry on the trimmed
    (unweighted) deltas, then the mean of the weighted entries that agree with it.

    Same definition as ``peft.utils.merge_utils.ties`` (Yadav et al. 2023).
    """
    _check_choice("majority_sign_method", majority_sign_method, MAJORITY_SIGN_METHODS)
    stacked, w = _stack(deltas, weights)
    trimmed = stacked * torch.stack([magnitude_mask(t, density) for t in stacked])
    return disjoint_mean(trimmed * w, elect_sign(trimmed, majority_sign_method))


def merge_dare(deltas: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor, density: float,
               generator: torch.Generator, method: DareMethod = "linear",
               majority_sign_method: MajoritySignMethod = "total", rescale: bool = True) -> torch.Tensor:
    """DARE (Yu et al. 2023): drop each entry with probability ``1 - density``, rescale the kept ones
    by ``1 / density`` (so the expected delta is unchanged), then ``linear``: the weighted sum, or
    ``ties``: TIES' sign election and disjoint mean on the dropped deltas.

    The masks come from ``generator`` alone (:func:`random_mask`), one per delta in order. Against
    ``peft.utils.merge_utils.dare_linear`` / ``dare_ties`` with the global RNG seeded the same: PEFT
    0.17.1's ``random_pruning`` discards the result of its ``torch.div`` (fixed upstream in
    huggingface/peft#3152), so it does not rescale; ``rescale=False`` reproduces it exactly, and the
    default equals it divided by ``density`` (both methods are linear in the kept values, and a positive
    factor does not change the elected signs).
    """
    _check_choice("DARE method", method, DARE_METHODS)
    _check_choice("majority_sign_method", majority_sign_method, MAJORITY_SIGN_METHODS)
    density = _check_density(density)
    stacked, w = _stack(deltas, weights)
    masks = torch.stack([random_mask(t.shape, density, generator).to(t.device) for t in stacked])
    dropped = stacked * masks
    if rescale:
        dropped = dropped / density
    if method == "linear":
        return (dropped * w).sum(dim=0)
    return disjoint_mean(dropped * w, elect_sign(dropped, majority_sign_method))
