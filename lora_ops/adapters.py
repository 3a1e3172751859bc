"""One normalised representation per LoRA target weight.

Each adapter is a small dataclass with the same two methods:

* ``delta(shape, dtype, device)``: the full weight delta dW at strength 1, scale included;
* ``low_rank()``: ``(up, down, scale)`` with ``dW = scale * up @ down`` in 2-D, or ``None`` when the
  adapter has no such factorisation (LoHa, LoKr, full diffs), for the fused ``addmm`` merge path.

The scale rule lives in :func:`lora_scale` and nowhere else: ``scale = alpha / rank``, where an
absent alpha (or 0) means ``alpha = rank`` (scale 1), which is what kohya's sd-scripts, LyCORIS,
A1111 and ComfyUI all read from a saved file.

DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation") is carried as a
``magnitude`` vector beside any adapter; :func:`dora_delta` turns it into a delta normalised against
the *base* weight, so several DoRAs stack in any order (PEFT's convention, field-notes §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch


def lora_scale(alpha: float | None, rank: int) -> float:
    """``alpha / rank``; a missing or zero alpha means alpha = rank, i.e. scale 1."""
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    if alpha is None or alpha == 0:
        return 1.0
    return float(alpha) / float(rank)


def _flat2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


@dataclass
class LoraWeights:
    """Classic LoRA / LoCon (Hu et al. 2021; kohya LoCon for convs).

    ``up: (out, r[, 1, 1])``, ``down: (r, in[, kh, kw])``, optional Tucker core
    ``mid: (r, r, kh, kw)`` (LoCon "cp" mode, with 1x1 ``up``/``down``);
    ``dW = (alpha / r) * up @ down`` reshaped to the weight's shape.
    """

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None  # DoRA magnitude ("dora_scale"), see dora_delta

    algorithm = "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank)

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """``(up2d (out, r), down2d (r, in*kh*kw), scale)``; the Tucker core is folded into ``down``."""
        up = _flat2d(self.up)
        if self.mid is None:
            return up, _flat2d(self.down), self.scale
        # down_eff[m, j, k, l] = sum_n mid[m, n, k, l] * down[n, j]
        down_eff = torch.einsum("mnkl,nj->mjkl", self.mid.float(), _flat2d(self.down).float())
        return up, down_eff.reshape(down_eff.shape[0], -1), self.scale

    def delta(self, shape: torch.Size, dtype=torch.float32, device=None) -> torch.Tensor:
        up, down, scale = self.low_rank()
        d = up.to(device=device, dtype=dtype) @ down.to(device=device, dtype=dtype)
        return (d * scale).reshape(shape)


@dataclass
class LohaWeights:
    """LoHa (LyCORIS; Hyeon-Woo et al. 2022, FedPara): Hadamard product of two low-rank products.

    ``dW = (alpha / r) * (w1a @ w1b) * (w2a @ w2b)`` with ``w?a: (out, r)``, ``w?b: (r, in*k*k)``.
    With Tucker cores ``t?: (r, r, kh, kw)``: ``w? = einsum('ijkl,jr,ip->prkl', t?, w?b, w?a)``
    where then ``w?a: (r, out)`` and ``w?b: (r, in)``.
    """

    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float | None = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None

    algorithm = "loha"

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank)

    def low_rank(self):
        return None

    def hadamard_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float] | None:
        """``(w1a, w1b, w2a, w2b, scale)`` in 2-D with ``dW = ((w1a @ w1b) * (w2a @ w2b)) * scale``, for
        merges that compute the delta a block of rows at a time; ``None`` with Tucker cores."""
        if self.t1 is not None or self.t2 is not None:
            return None
        return _flat2d(self.w1a), _flat2d(self.w1b), _flat2d(self.w2a), _flat2d(self.w2b), self.scale

    def delta(self, shape: torch.Size, dtype=torch.float32, device=None) -> torch.Tensor:
        def part(a, b, t):
            a = a.to(device=device, dtype=dtype)
            b = b.to(device=device, dtype=dtype)
            if t is None:
                return _flat2d(a) @ _flat2d(b)
            return torch.einsum("ijkl,jr,ip->prkl", t.to(device=device, dtype=dtype), b, a)

        w1 = part(self.w1a, self.w1b, self.t1)
        w2 = part(self.w2a, self.w2b, self.t2)
        return ((w1 * w2) * self.scale).reshape(shape)


@dataclass
class LokrWeights:
    """LoKr (LyCORIS; Yeh et al. 2023, "Navigating Text-To-Image Customization"): a Kronecker product.

    ``dW = scale * kron(w1, w2)``; each factor is stored full (``w1``/``w2``) or as a low-rank
    product (``w1a @ w1b``, ``w2a @ w2b``; ``w2`` may carry a Tucker core ``t2``). The rank used for
    the scale is that of the factorised part (``w1b`` first, then ``w2b``); with both factors full
    the file's alpha does not apply and the scale is 1 (how every loader reads such files).
    """

    w1: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w1a: torch.Tensor | None = None
    w1b: torch.Tensor | None = None
    w2a: torch.Tensor | None = None
    w2b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None
    magnitude: torch.Tensor | None = None

    algorithm = "lokr"

    @property
    def rank(self) -> int | None:
        if self.w1b is not None:
            return int(self.w1b.shape[0])
        if self.w2b is not None:
            return int(self.w2b.shape[0])
        return None

    @property
    def scale(self) -> float:
        rank = self.rank
        return 1.0 if rank is None else lora_scale(self.alpha, rank)

    def low_rank(self):
        return None

    def kron_factors(self) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """``(w1, w2, scale)`` in 2-D (``w2`` flattened to ``(rows, -1)``) with the weight's 2-D view
        ``dW = kron(w1, w2) * scale``, for merges that compute the delta a block of rows at a time;
        ``None`` with a Tucker core. Low-rank halves are multiplied out in fp32 (they are small)."""
        if self.t2 is not None:
            return None
        w1 = self.w1.float() if self.w1 is not None else self.w1a.float() @ self.w1b.float()
        w2 = self.w2.float() if self.w2 is not None else self.w2a.float() @ _flat2d(self.w2b.float())
        if w1.dim() != 2:
            return None
        return w1, _flat2d(w2), self.scale

    def delta(self, shape: torch.Size, dtype=torch.float32, device=None) -> torch.Tensor:
        def cast(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        w1 = cast(self.w1)
        if w1 is None:
            w1 = cast(self.w1a) @ cast(self.w1b)
        w2 = cast(self.w2)
        if w2 is None:
            if self.t2 is None:
                w2 = cast(self.w2a) @ _flat2d(cast(self.w2b))
            else:
                w2 = torch.einsum("ijkl,ip,jr->prkl", cast(self.t2), cast(self.w2a), cast(self.w2b))
        if len(shape) == 4 and w2.dim() == 2:
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
        while w1.dim() < w2.dim():
            w1 = w1.unsqueeze(-1)
        return (torch.kron(w1, w2) * self.scale).reshape(shape)


@dataclass
class FullDiff:
    """A stored full delta (``.diff``, or ``.diff_b`` for a bias): ``dW = diff``."""

    diff: torch.Tensor
    magnitude: torch.Tensor | None = None
    alpha: float | None = None

    algorithm = "full"

    @property
    def rank(self) -> int | None:
        return None

    @property
    def scale(self) -> float:
        return 1.0

    def low_rank(self):
        return None

    def delta(self, shape: torch.Size, dtype=torch.float32, device=None) -> torch.Tensor:
        return self.diff.to(device=device, dtype=dtype).reshape(shape)


Adapter = Union[LoraWeights, LohaWeights, LokrWeights, FullDiff]


def algorithm_name(adapter: Adapter) -> str:
    """``lora``/``locon``/``loha``/``lokr``/``full``, with ``dora`` appended when a magnitude is present."""
    name = adapter.algorithm
    if isinstance(adapter, LoraWeights) and (adapter.down.dim() == 4 and math.prod(adapter.down.shape[2:]) > 1
                                             or adapter.mid is not None):
        name = "locon"
    if adapter.magnitude is not None:
        name = f"{name}+dora"
    return name


def dora_delta(base: torch.Tensor, adapter: Adapter, dtype=torch.float32) -> torch.Tensor:
    """DoRA delta at strength 1, normalised against the base weight ``W0``.

    ``W' = m * (W0 + dW) / ||W0 + dW||`` and the returned delta is ``W' - W0``. The norm runs over
    every axis but the one ``m`` lies on: ``m: (out, 1, ...)`` (output axis, PEFT and LyCORIS'
    default) or ``m: (1, in, ...)`` (input axis). Normalising against ``W0 + dW``, never against
    ``W0`` alone or a running weight, makes stacked DoRAs order-independent.
    """
    w0 = base.to(dtype)
    merged = w0 + adapter.delta(base.shape, dtype=dtype, device=base.device)
    m = adapter.magnitude.to(device=base.device, dtype=dtype)
    out_axis = m.numel() == base.shape[0]
    if out_axis:
        norm = merged.reshape(base.shape[0], -1).norm(dim=1).reshape(base.shape[0], *[1] * (base.dim() - 1))
        m = m.reshape(base.shape[0], *[1] * (base.dim() - 1))
    else:
        flat = merged.transpose(0, 1).reshape(base.shape[1], -1)
        norm = flat.norm(dim=1).reshape(1, base.shape[1], *[1] * (base.dim() - 2))
        m = m.reshape(1, base.shape[1], *[1] * (base.dim() - 2))
    return merged * (m / norm) - w0
