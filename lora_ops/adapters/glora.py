"""GLoRA (LyCORIS; Chavan et al. 2023, "One-for-All: Generalized LoRA"): a delta that also scales the
weight itself, ``dW = (W a1 a2 + b1 b2) * alpha / r``.

Files hold ``.a1.weight (in, r[,1,1])``, ``.a2.weight (r, in[,1,1])``, ``.b1.weight (out, r[,1,1])``,
``.b2.weight (r, in[, kh, kw])`` with ``r`` = ``a2``'s rows; for a convolution ``W a1 a2`` acts on its input
channels (``einsum('oi...,ij->oj...')`` twice). Early LyCORIS files laid the factors out the other way
(``a1 (r, in)``, ``a2 (in, r)``, ``b1 (r, in)``, ``b2 (out, r)``, ``dW = (b2 b1 + W a2 a1) * alpha / r``); the
shapes tell which, and for a square weight where both readings fit, the early one is taken when
``a2`` has as many rows as ``W`` (the rule ComfyUI applies).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import AdapterBase, check_base, flat2d, lora_scale, read_alpha, require

PARTS = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")


@dataclass
class GloraWeights(AdapterBase):
    a1: torch.Tensor
    a2: torch.Tensor
    b1: torch.Tensor
    b2: torch.Tensor
    alpha: float | None = None
    magnitude: torch.Tensor | None = None

    kind: ClassVar[str] = "glora"
    label: ClassVar[str] = "GLoRA"
    weight_dependent: ClassVar[bool] = True

    @classmethod
    def parse(cls, name: str, tensors: Mapping[str, torch.Tensor]):
        keys = [f"{name}.{p}" for p in PARTS]
        if keys[0] not in tensors:
            return None
        require(name, all(k in tensors for k in keys), "a GLoRA layer needs a1, a2, b1 and b2")
        a1, a2, b1, b2 = (tensors[k] for k in keys)
        require(name, min(t.dim() for t in (a1, a2, b1, b2)) >= 2, "GLoRA factors must be matrices")
        adapter = cls(a1, a2, b1, b2, alpha=read_alpha(name, tensors))
        require(name, adapter._layouts() != (False, False),
                f"GLoRA factors of shapes {[tuple(t.shape) for t in (a1, a2, b1, b2)]} fit no known layout")
        return adapter, set(keys)

    def file_tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {f"{name}.{p}": t for p, t in zip(PARTS, (self.a1, self.a2, self.b1, self.b2))}
        out.update(self.side_tensors(name))
        return out

    def _layouts(self) -> tuple[bool, bool]:
        a1, a2, b1, b2 = (t.shape for t in (self.a1, self.a2, self.b1, self.b2))
        early = b2[1] == b1[0] == a1[0] == a2[1]
        current = b2[0] == b1[1] == a1[1] == a2[0]
        return early, current

    def _early(self, shape) -> bool:
        early, current = self._layouts()
        if early and current:
            return self.a2.shape[0] == shape[0] and len(shape) > 1 and shape[0] == shape[1]
        return early

    def misfit(self, shape: torch.Size) -> str | None:
        out, inner = shape[0], math.prod(shape[1:])
        early = self._early(shape)
        b_shape = ((self.b2.shape[0], math.prod(self.b1.shape[1:])) if early
                   else (self.b1.shape[0], math.prod(self.b2.shape[1:])))
        a_in = self.a2.shape[0] if early else self.a1.shape[0]
        if tuple(b_shape) != (out, inner) or (len(shape) > 1 and a_in != shape[1]):
            return (f"GLoRA factors {[tuple(t.shape) for t in (self.a1, self.a2, self.b1, self.b2)]} vs weight "
                    f"{tuple(shape)}")
        return self.magnitude_misfit(shape)

    @property
    def rank(self) -> int:
        return int(self.a2.shape[0])

    def rank_for(self, shape) -> int:
        return int(self.a1.shape[0]) if self._early(shape) else int(self.a2.shape[0])

    def delta(self, shape, dtype=torch.float32, device=None, *, base=None) -> torch.Tensor:
        w = check_base(self.kind, base)
        device = device or w.device
        w = w.to(device=device, dtype=torch.float32).reshape(shape)
        a1, a2, b1, b2 = (flat2d(t).to(device=device, dtype=torch.float32) for t in (self.a1, self.a2, self.b1, self.b2))
        if self._early(shape):
            d = (b2 @ b1 + flat2d(w) @ a2 @ a1).reshape(shape)
        else:
            wa = torch.einsum("oi...,ij->oj...", w, a1)
            d = torch.einsum("oi...,ij->oj...", wa, a2) + (b1 @ b2).reshape(shape)
        return (d * lora_scale(self.alpha, self.rank_for(shape))).to(dtype)
