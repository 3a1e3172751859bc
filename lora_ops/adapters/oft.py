"""OFT and BOFT (LyCORIS): orthogonal fine-tuning, a rotation of the weight's output rows.

Both store skew-symmetric generators ``oft_blocks`` and turn each block into an orthogonal matrix by
the Cayley transform ``R = (I + Q)(I - Q)^-1`` with ``Q = B - B^T`` (Qiu et al. 2023, "Controlling
Text-to-Image Diffusion by Orthogonal Finetuning"; Liu et al. 2024, "Parameter-Efficient Orthogonal
Finetuning via Butterfly Factorization"). When the file's ``alpha`` (the "constraint") is positive, ``Q``
is first scaled down to norm ``alpha * out`` if it is larger (``out`` = the weight's rows, LyCORIS'
reading of the saved constraint). An optional ``rescale: (out, 1, ...)`` multiplies the rotated rows.

* Diag-OFT (``oft_blocks: (n, b, b)``, ``n * b = out``): the rows of ``W`` in ``n`` groups of ``b``, each
  group ``k`` mapped to ``R_k^T W_k``: ``W' = rescale * blockdiag(R)^T W``.
* BOFT (``oft_blocks: (m, n, b, b)``): ``m`` butterfly stages; stage ``i`` permutes the rows so that rows
  ``2^i * b/2`` apart are paired into blocks of ``b``, applies ``R_{i,k}`` to each block and permutes back.

``dW = W' - W``. Strength is linear, as for every kind: ``W0 + s * dW``. Core ComfyUI 0.3.75/0.8.0 read
the same files differently in three ways, named in the README: they multiply by the strength twice
(OFT: ``s^2 dW`` at strength ``s``; BOFT: ``s * dW(s)`` with every stage interpolated towards ``I``),
ignore an OFT file's ``rescale``, and take the constraint as ``alpha`` instead of ``alpha * out``. At
strength 1, without rescale and with the constraint inactive (LyCORIS' default, ``alpha = 0``), all agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import AdapterBase, check_base, read_alpha, require


def cayley(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """``R = (I + Q)(I - Q)^-1`` for every ``(b, b)`` block of ``blocks`` (any leading dims), fp32,
    with ``Q = B - B^T`` scaled to norm ``constraint`` when ``constraint > 0`` and ``||Q||`` exceeds it
    (one norm over all blocks, as LyCORIS computes it)."""
    b = blocks.float()
    q = b - b.transpose(-1, -2)
    if constraint > 0:
        norm = float(torch.linalg.vector_norm(q)) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return (eye + q) @ torch.linalg.inv(eye - q)


@dataclass
class OrthogonalBase(AdapterBase):
    blocks: torch.Tensor
    rescale: torch.Tensor | None = None
    alpha: float | None = None  # the constraint, as saved
    magnitude: torch.Tensor | None = None

    weight_dependent: ClassVar[bool] = True
    ndim: ClassVar[int] = 0

    @classmethod
    def parse(cls, name: str, tensors: Mapping[str, torch.Tensor]):
        blocks = tensors.get(f"{name}.oft_blocks")
        if blocks is None or blocks.dim() != cls.ndim:
            return None
        require(name, blocks.shape[-1] == blocks.shape[-2] and blocks.shape[-1] > 0,
                f"oft_blocks of shape {tuple(blocks.shape)} are not square blocks")
        keys = {f"{name}.oft_blocks"}
        rescale = tensors.get(f"{name}.rescale")
        if rescale is not None:
            keys.add(f"{name}.rescale")
        return cls(blocks=blocks, rescale=rescale, alpha=read_alpha(name, tensors)), keys

    def file_tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {f"{name}.oft_blocks": self.blocks}
        if self.rescale is not None:
            out[f"{name}.rescale"] = self.rescale
        out[f"{name}.alpha"] = torch.tensor(float(self.alpha or 0.0), dtype=torch.float32)
        if self.magnitude is not None:
            out[f"{name}.dora_scale"] = self.magnitude
        return out

    def rotated(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta(self, shape, dtype=torch.float32, device=None, *, base=None) -> torch.Tensor:
        w = check_base(self.kind, base).to(device=device or base.device, dtype=torch.float32).reshape(shape)
        out = self.rotated(w)
        if self.rescale is not None:
            out = out * self.rescale.to(out).reshape(shape[0], *[1] * (len(shape) - 1))
        return (out - w).to(dtype)

    def delta_numel(self) -> int | None:
        return None

    def misfit(self, shape: torch.Size) -> str | None:
        if self.out_features != shape[0]:
            return (f"{self.label} blocks {tuple(self.blocks.shape)} rotate {self.out_features} rows vs weight "
                    f"{tuple(shape)}")
        return self.magnitude_misfit(shape)

    @property
    def out_features(self) -> int:
        raise NotImplementedError


@dataclass
class OftWeights(OrthogonalBase):
    """Diag-OFT: ``oft_blocks: (n, b, b)``, ``n * b`` = the weight's rows."""

    kind: ClassVar[str] = "oft"
    label: ClassVar[str] = "OFT"
    ndim: ClassVar[int] = 3

    @property
    def out_features(self) -> int:
        return int(self.blocks.shape[0] * self.blocks.shape[1])

    def rotated(self, w: torch.Tensor) -> torch.Tensor:
        n, b, _ = self.blocks.shape
        require("OFT", w.shape[0] == n * b, f"{n} blocks of {b} do not cover a weight of {w.shape[0]} rows")
        r = cayley(self.blocks.to(w.device), float(self.alpha or 0.0) * w.shape[0])
        grouped = w.reshape(n, b, -1)
        # row m of group k: sum_j R[k, j, m] * W[k, j]  (R_k^T W_k)
        return torch.einsum("kjm,kjc->kmc", r, grouped).reshape(w.shape)
