"""BOFT (LyCORIS; Liu et al. 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly
Factorization"): OFT whose rotation is a product of ``m`` butterfly stages (see :mod:`.oft`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import require
from .oft import OrthogonalBase, cayley


@dataclass
class BoftWeights(OrthogonalBase):
    """BOFT: ``oft_blocks: (m, n, b, b)``, ``n * b`` = the weight's rows, ``m`` butterfly stages."""

    kind: ClassVar[str] = "boft"
    label: ClassVar[str] = "BOFT"
    ndim: ClassVar[int] = 4

    @property
    def out_features(self) -> int:
        return int(self.blocks.shape[1] * self.blocks.shape[2])

    def rotated(self, w: torch.Tensor) -> torch.Tensor:
        m, n, b, _ = self.blocks.shape
        rows = w.shape[0]
        require("BOFT", rows == n * b and b % 2 == 0,
                f"{n} blocks of {b} (even) do not cover a weight of {rows} rows")
        r = cayley(self.blocks.to(w.device), float(self.alpha or 0.0) * rows)
        x = w.reshape(rows, -1)
        half = b // 2
        for i in range(m):
            k = (2 ** i) * half
            require("BOFT", rows % (2 * k) == 0, f"stage {i} pairs rows {k} apart, which {rows} rows do not allow")
            # rows as (groups, 2, k) -> (groups, k, 2): each block of b takes b/2 pairs of rows k apart
            perm = x.reshape(-1, 2, k, x.shape[1]).transpose(1, 2).reshape(n, b, x.shape[1])
            perm = torch.einsum("nij,njc->nic", r[i], perm)
            x = perm.reshape(-1, k, 2, x.shape[1]).transpose(1, 2).reshape(rows, x.shape[1])
        return x.reshape(w.shape)
