"""LoKr (LyCORIS; Yeh et al. 2023, "Navigating Text-To-Image Customization"): a Kronecker product.

``dW = scale * kron(w1, w2)``; each factor is stored full (``lokr_w1``/``lokr_w2``) or as a low-rank product
(``lokr_w1_a @ lokr_w1_b``, ``lokr_w2_a @ lokr_w2_b``; ``w2`` may carry a Tucker core ``lokr_t2``). The rank
of the scale ``alpha / r`` is that of the factorised part (``w2b``'s rows when ``w2`` is factorised, else
``w1b``'s: the order ComfyUI reads them); with both factors full the file's alpha does not apply and the
scale is 1 (how every loader reads such files).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import AdapterBase, RowTerm, flat2d, lora_scale, read_alpha, require

PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


@dataclass
class LokrWeights(AdapterBase):
    w1: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w1a: torch.Tensor | None = None
    w1b: torch.Tensor | None = None
    w2a: torch.Tensor | None = None
    w2b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None
    magnitude: torch.Tensor | None = None

    kind: ClassVar[str] = "lokr"
    label: ClassVar[str] = "LoKr"

    @classmethod
    def parse(cls, name: str, tensors: Mapping[str, torch.Tensor]):
        parts = {p: tensors.get(f"{name}.{p}") for p in PARTS}
        has_w1 = parts["lokr_w1"] is not None or (parts["lokr_w1_a"] is not None and parts["lokr_w1_b"] is not None)
        has_w2 = parts["lokr_w2"] is not None or (parts["lokr_w2_a"] is not None and parts["lokr_w2_b"] is not None)
        if not (has_w1 and has_w2):
            return None
        for p in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"):
            require(name, parts[p] is None or parts[p].dim() >= 2, f"{p} of shape {tuple(parts[p].shape) if parts[p] is not None else ()} is not a matrix")
        require(name, parts["lokr_w1"] is None or parts["lokr_w1"].dim() == 2,
                "lokr_w1 must be a matrix (the Kronecker factor of the weight's first two axes)")
        t2 = parts["lokr_t2"]
        if t2 is not None:
            a, b = parts["lokr_w2_a"], parts["lokr_w2_b"]
            require(name, a is not None and b is not None and t2.dim() == 4 and a.dim() == 2 and b.dim() == 2
                    and t2.shape[0] == a.shape[0] and t2.shape[1] == b.shape[0],
                    "the LoKr Tucker core (lokr_t2) does not join lokr_w2_a and lokr_w2_b")
        pairs = [("lokr_w1_a", "lokr_w1_b")] + ([("lokr_w2_a", "lokr_w2_b")] if parts["lokr_t2"] is None else [])
        for a, b in pairs:
            if parts[a] is not None and parts[b] is not None:
                require(name, parts[a].dim() >= 2 and parts[b].dim() >= 2 and parts[a].shape[1] == parts[b].shape[0],
                        f"LoKr factors {a} {tuple(parts[a].shape)} and {b} {tuple(parts[b].shape)} do not multiply")
        adapter = cls(w1=parts["lokr_w1"], w2=parts["lokr_w2"], w1a=parts["lokr_w1_a"], w1b=parts["lokr_w1_b"],
                      w2a=parts["lokr_w2_a"], w2b=parts["lokr_w2_b"], t2=parts["lokr_t2"],
                      alpha=read_alpha(name, tensors))
        if adapter.rank is not None:
            require(name, adapter.rank > 0, "rank 0")
        return adapter, {f"{name}.{p}" for p, t in parts.items() if t is not None}

    def file_tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {f"{name}.{p}": t for p, t in zip(PARTS, (self.w1, self.w1a, self.w1b, self.w2, self.w2a, self.w2b,
                                                        self.t2)) if t is not None}
        out.update(self.side_tensors(name))
        return out

    @property
    def rank(self) -> int | None:
        if self.w2 is None and self.w2b is not None:
            return int(self.w2b.shape[0])
        if self.w1 is None and self.w1b is not None:
            return int(self.w1b.shape[0])
        return None

    @property
    def scale(self) -> float:
        rank = self.rank
        return 1.0 if rank is None else lora_scale(self.alpha, rank)

    def kron_factors(self):
        """``(w1, w2, scale)`` in 2-D (``w2`` flattened to ``(rows, -1)``) with the weight's 2-D view
        ``dW = kron(w1, w2) * scale``; ``None`` with a Tucker core. Low-rank halves are multiplied out in
        fp32 (they are small)."""
        if self.t2 is not None:
            return None
        w1 = self.w1.float() if self.w1 is not None else self.w1a.float() @ self.w1b.float()
        w2 = self.w2.float() if self.w2 is not None else self.w2a.float() @ flat2d(self.w2b.float())
        if w1.dim() != 2:
            return None
        return w1, flat2d(w2), self.scale

    def delta(self, shape, dtype=torch.float32, device=None, *, base=None) -> torch.Tensor:
        def cast(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        w1 = cast(self.w1)
        if w1 is None:
            w1 = cast(self.w1a) @ cast(self.w1b)
        w2 = cast(self.w2)
        if w2 is None:
            if self.t2 is None:
                w2 = cast(self.w2a) @ flat2d(cast(self.w2b))
            else:
                w2 = torch.einsum("ijkl,ip,jr->prkl", cast(self.t2), cast(self.w2a), cast(self.w2b))
        if len(shape) == 4 and w2.dim() == 2:
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
        while w1.dim() < w2.dim():
            w1 = w1.unsqueeze(-1)
        return (torch.kron(w1, w2) * self.scale).reshape(shape)

    def delta_numel(self) -> int | None:
        if self.t2 is not None:
            return None
        w1 = tuple(self.w1.shape) if self.w1 is not None else (int(self.w1a.shape[0]), int(self.w1b.shape[1]))
        w2 = ((int(self.w2.shape[0]), math.prod(self.w2.shape[1:])) if self.w2 is not None
              else (int(self.w2a.shape[0]), math.prod(self.w2b.shape[1:])))
        return w1[0] * w2[0] * w1[1] * w2[1] if len(w1) == 2 else None

    def row_term(self, strength: float) -> RowTerm | None:
        kf = self.kron_factors()
        if kf is None:
            return None
        w1, w2, scale = kf
        return KronRows(w1, w2, strength, scale)

    def scaled(self, factor: float) -> LokrWeights:
        first = "w1" if self.w1 is not None else "w1a"
        t = getattr(self, first)
        return LokrWeights(**{**{k: getattr(self, k) for k in ("w1", "w2", "w1a", "w1b", "w2a", "w2b", "t2")},
                              first: (t.float() * factor).to(t.dtype)}, alpha=self.alpha, magnitude=self.magnitude)


@dataclass
class KronRows(RowTerm):
    """``alpha * kron(w1, w2)[rows] * scale``, one block of ``w2`` rows per row of ``w1`` it falls in."""

    w1: torch.Tensor
    w2: torch.Tensor
    alpha: float
    scale: float

    def fits(self, rows: int, cols: int) -> bool:
        return self.w1.shape[0] * self.w2.shape[0] == rows and self.w1.shape[1] * self.w2.shape[1] == cols

    def to_fp32(self) -> KronRows:
        return KronRows(self.w1.float(), self.w2.float(), self.alpha, self.scale)

    def add_rows(self, acc, r0, r1, scratch) -> None:
        block = scratch[0][:acc.numel()].view_as(acc)
        p = self.w2.shape[0]
        r = r0
        while r < r1:
            i1, s = divmod(r, p)
            e = min(p, s + (r1 - r))
            torch.kron(self.w1[i1:i1 + 1], self.w2[s:e], out=block[r - r0:r - r0 + e - s])
            r += e - s
        acc.add_(block.mul_(self.scale), alpha=self.alpha)
