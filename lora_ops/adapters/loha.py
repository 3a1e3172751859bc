"""LoHa (LyCORIS; Hyeon-Woo et al. 2022, "FedPara"): the Hadamard product of two low-rank products.

``dW = (alpha / r) * (w1a @ w1b) * (w2a @ w2b)`` with ``w?a: (out, r)``, ``w?b: (r, in*kh*kw)``; ``r`` is
``w1b``'s row count. With Tucker cores ``t?: (r, r, kh, kw)`` each factor is
``einsum('ijkl,jr,ip->prkl', t?, w?b, w?a)`` with then ``w?a: (r, out)`` and ``w?b: (r, in)``.
File keys: ``.hada_w1_a``, ``.hada_w1_b``, ``.hada_w2_a``, ``.hada_w2_b`` (``.hada_t1``, ``.hada_t2``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import AdapterBase, RowTerm, flat2d, lora_scale, read_alpha, require

PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


@dataclass
class LohaWeights(AdapterBase):
    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float | None = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None

    kind: ClassVar[str] = "loha"
    label: ClassVar[str] = "LoHa"

    @classmethod
    def parse(cls, name: str, tensors: Mapping[str, torch.Tensor]):
        need = [f"{name}.{p}" for p in PARTS]
        if not all(k in tensors for k in need):
            return None
        keys = set(need)
        t1, t2 = tensors.get(f"{name}.hada_t1"), tensors.get(f"{name}.hada_t2")
        keys.update(k for k in (f"{name}.hada_t1", f"{name}.hada_t2") if k in tensors)
        w1a, w1b, w2a, w2b = (tensors[k] for k in need)
        require(name, min(t.dim() for t in (w1a, w1b, w2a, w2b)) >= 2, "LoHa factors must be matrices")
        require(name, w1b.shape[0] > 0, "rank 0")
        if t1 is not None or t2 is not None:
            for t, a, b in ((t1, w1a, w1b), (t2, w2a, w2b)):
                require(name, t is not None and t.dim() == 4 and a.dim() == 2 and b.dim() == 2
                        and t.shape[0] == a.shape[0] and t.shape[1] == b.shape[0],
                        "LoHa Tucker cores (hada_t1, hada_t2) do not join their factors")
        else:
            require(name, w1a.shape[1] == w1b.shape[0] and w2a.shape[1] == w2b.shape[0],
                    f"LoHa factor ranks disagree ({tuple(w1a.shape)} @ {tuple(w1b.shape)}, "
                    f"{tuple(w2a.shape)} @ {tuple(w2b.shape)})")
        return cls(w1a, w1b, w2a, w2b, alpha=read_alpha(name, tensors), t1=t1, t2=t2), keys

    def file_tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {f"{name}.{p}": t for p, t in zip(PARTS, (self.w1a, self.w1b, self.w2a, self.w2b))}
        for part, t in (("hada_t1", self.t1), ("hada_t2", self.t2)):
            if t is not None:
                out[f"{name}.{part}"] = t
        out.update(self.side_tensors(name))
        return out

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank)

    def hadamard_factors(self):
        """``(w1a, w1b, w2a, w2b, scale)`` in 2-D with ``dW = ((w1a @ w1b) * (w2a @ w2b)) * scale``;
        ``None`` with Tucker cores."""
        if self.t1 is not None or self.t2 is not None:
            return None
        return flat2d(self.w1a), flat2d(self.w1b), flat2d(self.w2a), flat2d(self.w2b), self.scale

    def delta(self, shape, dtype=torch.float32, device=None, *, base=None) -> torch.Tensor:
        def part(a, b, t):
            a = a.to(device=device, dtype=dtype)
            b = b.to(device=device, dtype=dtype)
            if t is None:
                return flat2d(a) @ flat2d(b)
            return torch.einsum("ijkl,jr,ip->prkl", t.to(device=device, dtype=dtype), b, a)

        w1 = part(self.w1a, self.w1b, self.t1)
        w2 = part(self.w2a, self.w2b, self.t2)
        return ((w1 * w2) * self.scale).reshape(shape)

    def delta_numel(self) -> int | None:
        if self.t1 is not None or self.t2 is not None:
            return None
        return int(self.w1a.shape[0]) * math.prod(self.w1b.shape[1:])

    def row_term(self, strength: float) -> RowTerm | None:
        hf = self.hadamard_factors()
        if hf is None:
            return None
        *factors, scale = hf
        return HadamardRows(*factors, alpha=strength, scale=scale)

    def scaled(self, factor: float) -> LohaWeights:
        return LohaWeights((self.w1a.float() * factor).to(self.w1a.dtype), self.w1b, self.w2a, self.w2b,
                           alpha=self.alpha, t1=self.t1, t2=self.t2, magnitude=self.magnitude)


@dataclass
class HadamardRows(RowTerm):
    """``alpha * ((w1a[rows] @ w1b) * (w2a[rows] @ w2b)) * scale``."""

    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float
    scale: float

    def fits(self, rows: int, cols: int) -> bool:
        return (self.w1a.shape[0] == self.w2a.shape[0] == rows and self.w1b.shape[1] == self.w2b.shape[1] == cols
                and self.w1a.shape[1] == self.w1b.shape[0] and self.w2a.shape[1] == self.w2b.shape[0])

    def to_fp32(self) -> HadamardRows:
        return HadamardRows(self.w1a.float(), self.w1b.float(), self.w2a.float(), self.w2b.float(), self.alpha,
                            self.scale)

    def add_rows(self, acc, r0, r1, scratch) -> None:
        n = acc.numel()
        block = scratch[0][:n].view_as(acc)
        torch.mm(self.w1a[r0:r1], self.w1b, out=block)
        block.mul_(torch.mm(self.w2a[r0:r1], self.w2b, out=scratch[1][:n].view_as(acc)))
        acc.add_(block.mul_(self.scale), alpha=self.alpha)
