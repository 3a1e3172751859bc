"""Per-sample LoRA strengths in the forward pass: the weight sweep's batched kernel.

A sweep renders one LoRA at several strengths with the same noise. Instead of patching the model
once per strength, every strength runs in one batch and each batch row ``b`` gets its own strength
``s_b`` inside the layers the LoRA touches::

    y_b = W x_b + s_b * dW x_b

For a low-rank adapter ``dW = scale * up @ down`` the extra term is two thin products,
``up (down x_b)`` (two small convolutions for LoCon: the ``down`` kernel with the layer's stride and
padding, then a 1x1 ``up``), so the cost is a rank-r forward per layer. LoHa, LoKr, full diffs and
DoRA are formed once as a weight-shaped delta (DoRA normalised against the base weight, exactly as
:func:`lora_ops.patching.apply_patches` merges it) and applied as ``F.linear``/``F.conv`` of that delta.

Rows whose strength is 0 are skipped (not multiplied by 0), so a reference row sees exactly
``W x``. Everything runs in the activations' dtype and device (fp16 on a GPU), with the factors
cast once per dtype/device and cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import LoraLabError
from .layers import LayerCall
from .patching import PatchEntry
from .numerics import overflow_limit

# weight key -> fp32 base weight (for the kinds whose delta depends on it, and DoRA)
BaseLookup = Callable[[str], torch.Tensor]

__all__ = ["BatchLayoutError", "BatchedDelta", "LayerCall", "add_row_deltas", "prepare_deltas",
           "merge_overflow_weights", "overflow_weights"]


def _conv(x: torch.Tensor, weight: torch.Tensor, layer: LayerCall, *, geometry: bool = True) -> torch.Tensor:
    """``conv{1,2,3}d(x, weight)`` with the layer's stride/padding/dilation (or a plain 1x1 one)."""
    return layer.apply(x, weight, geometry=geometry)


@dataclass
class _LowRank:
    up: torch.Tensor    # (out, r), scale and block factor folded in
    down: torch.Tensor  # (r, in * prod(kernel))
    offset: tuple[int, int, int] | None = None


@dataclass
class BatchedDelta:
    """Everything one layer adds on top of ``W x`` at strength 1, ready for :func:`add_row_deltas`.

    ``low_rank``: factor pairs applied as ``up (down x)``; ``full``: one weight-shaped delta (sum of
    the adapters that are not low-rank); ``bias``: per-output-channel delta of the layer's bias.
    """

    key: str
    weight_shape: torch.Size
    low_rank: list[_LowRank] = field(default_factory=list)
    full: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    _cast: dict = field(default_factory=dict, repr=False)

    def nbytes(self, dtype: torch.dtype = torch.float16) -> int:
        """Memory the prepared tensors take once cast to ``dtype``."""
        size = torch.empty((), dtype=dtype).element_size()
        n = sum(p.up.numel() + p.down.numel() for p in self.low_rank)
        n += self.full.numel() if self.full is not None else 0
        n += self.bias.numel() if self.bias is not None else 0
        return n * size

    def _on(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        hit = self._cast.get(key)
        if hit is None:
            cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
            hit = ([(cast(p.up), cast(p.down), p.offset) for p in self.low_rank], cast(self.full), cast(self.bias))
            self._cast[key] = hit
        return hit

    def add_into(self, y: torch.Tensor, x: torch.Tensor, layer: LayerCall, coef: torch.Tensor) -> None:
        """``y[b] += coef[b] * (dW x[b])`` (+ ``coef[b] *`` bias delta) in place, for every row of ``x``.

        Low-rank parts scale the thin ``down x`` by the row strengths and add ``up`` times it straight
        into ``y`` (``addmm_``/``baddbmm_``: one pass over the output, no output-sized temporary);
        full deltas and bias deltas go through one temporary each."""
        low_rank, full, bias = self._on(x.device, x.dtype)
        c = coef.to(device=x.device, dtype=x.dtype)
        b = x.shape[0]
        f = layer.feature_dim
        for up, down, offset in low_rank:
            target = y if offset is None else y.narrow(f, offset[1], offset[2])
            if layer.kind == "conv" and layer.groups != 1:
                # a grouped convolution has no thin-product form: its delta (out, in / groups, k...) formed
                d = _conv(x, (up @ down).reshape(target.shape[1], *self.weight_shape[1:]), layer)
                target.add_(d.mul_(c.reshape(-1, *[1] * (d.dim() - 1))))
                continue
            if layer.kind == "linear":
                h = F.linear(x, down)
                h.mul_(c.reshape(-1, *[1] * (h.dim() - 1)))
                target.view(-1, target.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), up.t())
            else:
                kernel = self.weight_shape[2:]
                in_ch = down.shape[1] // max(math.prod(kernel), 1)
                h = _conv(x, down.reshape(down.shape[0], in_ch, *kernel), layer)
                h.mul_(c.reshape(-1, *[1] * (h.dim() - 1)))
                # (B, out, S) += up (out, r) @ h (B, r, S), S the spatial positions
                target.view(b, target.shape[1], -1).baddbmm_(up.expand(b, -1, -1), h.reshape(b, h.shape[1], -1))
        if full is not None:
            d = F.linear(x, full) if layer.kind == "linear" else _conv(x, full, layer)
            y.add_(d.mul_(c.reshape(-1, *[1] * (d.dim() - 1))))
        if bias is not None:
            shape = [1] * y.dim()
            shape[f] = bias.numel()
            y.add_(bias.reshape(shape) * c.reshape(-1, *[1] * (y.dim() - 1)))


class BatchLayoutError(LoraLabError):
    """A hooked layer sees inputs whose first axis is not the sampler's batch (flattened or routed
    tokens, as in some DiTs' embedders and mixture-of-experts layers): per-row strengths cannot apply."""


def _writable_in_place(y: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether :meth:`BatchedDelta.add_into` can write into ``y``: same dtype and device as the
    activations, and laid out so that its rows are views (contiguous)."""
    return y.dtype == x.dtype and y.device == x.device and y.is_contiguous()


def add_row_deltas(y: torch.Tensor, x: torch.Tensor, delta: BatchedDelta, layer: LayerCall,
                   coef: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """``y[b] += coef[b] * (dW x[b])`` in place, for every batch row ``b`` whose ``coef`` is non-zero.

    ``y``: the layer's output ``(B, ...)``; ``x``: its input; ``coef: (B,)`` the per-row strength;
    ``rows``: the indices of its non-zero entries, when the caller knows them (found once per model
    call instead of once per layer, which on a GPU would wait for the device every time). Rows at
    strength 0 are left exactly as they are.
    """
    if x.shape[0] != coef.numel() or y.shape[0] != coef.numel():
        raise BatchLayoutError(
            f"the layer '{delta.key}' is called with a batch of {x.shape[0]} where the sampler's batch is "
            f"{coef.numel()} (the model reshapes or routes its tokens there), so its rows cannot be told apart.",
            "set batch_mode to repatch (auto falls back to it by itself).")
    if rows is None:
        rows = torch.nonzero(coef).flatten()
    if rows.numel() == 0:
        return
    every_row = rows.numel() == coef.numel()
    if every_row and _writable_in_place(y, x):
        delta.add_into(y, x, layer, coef)
        return
    if every_row:
        xs, c = x, coef
    else:
        rows = rows.to(x.device)
        xs, c = x.index_select(0, rows), coef.index_select(0, rows)
    part = torch.zeros((xs.shape[0], *y.shape[1:]), dtype=xs.dtype, device=xs.device)
    delta.add_into(part, xs, layer, c)
    if every_row:
        y.add_(part.to(y.dtype))
    else:
        y.index_add_(0, rows, part.to(y.dtype))


def prepare_deltas(entries: Iterable[PatchEntry], shapes: dict[str, torch.Size],
                   base: BaseLookup | None = None) -> dict[str, BatchedDelta]:
    """Group ``entries`` by layer into :class:`BatchedDelta` values at strength 1 (times each entry's
    own strength, i.e. its block-weight factor). ``shapes`` gives each weight's shape; ``base`` the
    unpatched weight for the kinds that need it (DoRA, OFT/BOFT, GLoRA, set-weights). Module path of a
    delta = its key without ``.weight``. Low-rank entries stay factored (also behind a key-map transform
    that acts on rows); everything else is formed once, as the merge forms it.
    """
    out: dict[str, BatchedDelta] = {}
    with torch.no_grad():
        for e in entries:
            if e.strength == 0.0:
                continue
            key = e.target.key
            if getattr(e.adapter, "reshape", None) is not None:
                raise LoraLabError(f"'{e.module}' widens the weight '{key}' (a control LoRA), which the batched "
                                   "sweep cannot run in the forward pass.", "set batch_mode to repatch.")
            shape = torch.Size(shapes[key])
            d = out.setdefault(key, BatchedDelta(key=key, weight_shape=shape))
            offset = e.target.offset
            if e.is_bias:
                b = e.delta(torch.Size([shape[0]])) * e.strength
                d.bias = b if d.bias is None else d.bias + b
                continue
            lr = e.low_rank()
            if lr is not None and (offset is None or offset[0] == 0):
                up, down, scale = lr
                d.low_rank.append(_LowRank(up.float() * (scale * e.strength), down.float(), offset))
                continue
            part_shape = shape if offset is None else _narrowed(shape, offset)
            w0 = None
            if e.adapter.needs_base:
                if base is None:
                    raise ValueError(f"{e.adapter.describe()} needs the base weights (pass base=...)")
                w0 = base(key).float()
                w0 = w0 if offset is None else w0.narrow(*offset)
            part = e.delta(part_shape, base=w0).float() * e.strength
            if offset is not None:
                whole = torch.zeros(shape)
                whole.narrow(*offset).copy_(part)
                part = whole
            d.full = part if d.full is None else d.full + part
    return out


def _narrowed(shape: torch.Size, offset: tuple[int, int, int]) -> torch.Size:
    dim, _, length = offset
    return torch.Size(list(shape[:dim]) + [length] + list(shape[dim + 1:]))


def merge_overflow_weights(base: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """The strengths at which ``base + w * delta`` first rounds to infinity in ``dtype``.

    Returns ``(w_up, w_down)``: the smallest ``w > 0`` and the largest ``w < 0`` (``inf``/``-inf``
    when none). Rounding to infinity happens at ``max + ulp(max) / 2`` (65520 for fp16). Used by the
    sweep to say at which weight merging this LoRA into a half-precision model would make NaNs.
    """
    limit = overflow_limit(dtype)
    b, d = base.double().flatten(), delta.double().flatten()
    nz = d != 0
    if not bool(nz.any()):
        return math.inf, -math.inf
    b, d = b[nz], d[nz]
    # w * d crosses +limit - b or -limit - b; for each element, the crossing strengths on each side
    t1, t2 = (limit - b) / d, (-limit - b) / d
    pos = torch.where(t1 > 0, t1, torch.full_like(t1, math.inf)).min().item()
    pos = min(pos, torch.where(t2 > 0, t2, torch.full_like(t2, math.inf)).min().item())
    neg = torch.where(t1 < 0, t1, torch.full_like(t1, -math.inf)).max().item()
    neg = max(neg, torch.where(t2 < 0, t2, torch.full_like(t2, -math.inf)).max().item())
    return pos, neg


def overflow_weights(deltas: dict[str, BatchedDelta], base: BaseLookup, dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """:func:`merge_overflow_weights` for every layer, from the prepared deltas (one layer at a time)."""
    out = {}
    with torch.no_grad():
        for key, d in deltas.items():
            w0 = base(key).float()
            dw = torch.zeros_like(w0)
            flat = dw.reshape(dw.shape[0], -1)
            for p in d.low_rank:
                view = flat if p.offset is None else flat.narrow(0, p.offset[1], p.offset[2])
                view.addmm_(p.up, p.down)
            if d.full is not None:
                dw.add_(d.full.reshape(dw.shape))
            out[key] = merge_overflow_weights(w0, dw, dtype)
    return out
