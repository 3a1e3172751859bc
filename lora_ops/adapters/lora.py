"""LoRA (Hu et al. 2021) and LoCon (kohya/LyCORIS, LoRA on convolutions), with Tucker cores.

``up: (out, r[, 1, 1])``, ``down: (r, in[, kh, kw])``, optional Tucker core ``mid: (r, r, kh, kw)``
(LoCon "cp" mode, then ``up``/``down`` are 1x1); ``dW = (alpha / r) * up @ down`` reshaped to the weight.

File namings (the suffix pair per tool; the module name is what precedes it):

* kohya sd-scripts / LyCORIS: ``.lora_up.weight`` / ``.lora_down.weight`` (``.lora_mid.weight``);
* PEFT: ``.lora_B.weight`` / ``.lora_A.weight`` (``.lora_B.default.weight`` when saved with the adapter
  name, e.g. some Qwen-Image files; ``.lora_B`` / ``.lora_A`` without ``.weight``, Mochi's official files);
* diffusers: ``.lora.up.weight`` / ``.lora.down.weight``; older attention-processor files
  ``_lora.up.weight`` and ``.lora_linear_layer.up.weight``.

``reshape`` (``.reshape_weight``, written by ComfyUI's conversion of BFL's Flux control LoRAs) is the shape
the weight takes before the delta is added: the original weight is zero-padded to it (``img_in`` gains
input channels for the control image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..layers import LayerCall
from .base import AdapterBase, RowTerm, flat2d, lora_scale, read_alpha, require

# (up suffix, down suffix, mid suffix or None, format name)
PAIRS = (
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", "kohya"),
    (".lora_B.weight", ".lora_A.weight", None, "peft"),
    (".lora_B.default.weight", ".lora_A.default.weight", None, "peft"),
    (".lora.up.weight", ".lora.down.weight", None, "diffusers"),
    ("_lora.up.weight", "_lora.down.weight", None, "diffusers-old"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None, "diffusers-old"),
    (".lora_B", ".lora_A", None, "peft"),
)


@dataclass
class LoraWeights(AdapterBase):
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None  # DoRA magnitude ("dora_scale")
    reshape: tuple[int, ...] | None = None  # pad the weight to this shape first (BFL control LoRAs)
    naming: str = "kohya"  # the file's naming, for reports

    kind: ClassVar[str] = "lora"
    label: ClassVar[str] = "LoRA"

    @classmethod
    def parse(cls, name: str, tensors: Mapping[str, torch.Tensor]):
        for up_sfx, down_sfx, mid_sfx, fmt in PAIRS:
            up, down = tensors.get(name + up_sfx), tensors.get(name + down_sfx)
            if up is None or down is None:
                continue
            if up.dim() < 2 or down.dim() < 2:
                continue
            keys = {name + up_sfx, name + down_sfx}
            mid = tensors.get(name + mid_sfx) if mid_sfx else None
            if mid is not None:
                keys.add(name + mid_sfx)
            if mid is not None:
                require(name, mid.dim() == 4 and mid.shape[0] == up.shape[1] and mid.shape[1] == down.shape[0],
                        f"a Tucker core of shape {tuple(mid.shape)} does not join up {tuple(up.shape)} and down "
                        f"{tuple(down.shape)}")
            reshape = None
            if (rk := f"{name}.reshape_weight") in tensors:
                values = tensors[rk].reshape(-1).double().tolist()
                require(name, 1 <= len(values) <= 5 and all(math.isfinite(v) and v == int(v) and 0 < v < 2**31
                                                            for v in values),
                        f"reshape_weight {values[:6]} is not a shape")
                reshape = tuple(int(v) for v in values)
                keys.add(rk)
            rank = int(down.shape[0])
            require(name, rank > 0, "rank 0 (the down matrix has no rows)")
            inner = rank if mid is None else int(mid.shape[1])
            require(name, inner == rank and int(up.shape[1]) == (rank if mid is None else int(mid.shape[0])),
                    f"the up matrix has rank {int(up.shape[1])} but the down matrix rank {rank}")
            adapter = cls(up=up, down=down, alpha=read_alpha(name, tensors), mid=mid, reshape=reshape,
                          naming="kohya" if fmt == "kohya" and not name.startswith("lycoris_") else fmt)
            return adapter, keys
        return None

    def file_tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {f"{name}.lora_up.weight": self.up, f"{name}.lora_down.weight": self.down,
               **self.side_tensors(name)}
        if self.alpha is None:  # files without alpha read as alpha = rank; say so explicitly
            out[f"{name}.alpha"] = torch.tensor(float(self.rank), dtype=torch.float32)
        if self.mid is not None:
            out[f"{name}.lora_mid.weight"] = self.mid
        if self.reshape is not None:
            out[f"{name}.reshape_weight"] = torch.tensor(self.reshape)
        return out

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank)

    def describe(self) -> str:
        conv = self.down.dim() == 4 and math.prod(self.down.shape[2:]) > 1 or self.mid is not None
        name = "locon" if conv else "lora"
        return f"{name}+dora" if self.magnitude is not None else name

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(up2d (out, r), down2d (r, in*kh*kw), scale)``; the Tucker core is folded into ``down``."""
        up = flat2d(self.up)
        if self.mid is None:
            return up, flat2d(self.down), self.scale
        # down_eff[m, j, k, l] = sum_n mid[m, n, k, l] * down[n, j]
        down_eff = torch.einsum("mnkl,nj->mjkl", self.mid.float(), flat2d(self.down).float())
        return up, down_eff.reshape(down_eff.shape[0], -1), self.scale

    def delta(self, shape, dtype=torch.float32, device=None, *, base=None) -> torch.Tensor:
        up, down, scale = self.low_rank()
        d = up.to(device=device, dtype=dtype) @ down.to(device=device, dtype=dtype)
        return (d * scale).reshape(self.reshape if self.reshape is not None else shape)

    def delta_numel(self) -> int:
        up, down, _ = self.low_rank()
        return int(up.shape[0]) * int(down.shape[1])

    def misfit(self, shape: torch.Size) -> str | None:
        up, down, _ = self.low_rank()
        rows, cols = int(up.shape[0]), int(down.shape[1])
        if self.reshape is not None:
            if (len(self.reshape) != len(shape) or any(r < s for r, s in zip(self.reshape, shape))
                    or rows * cols != math.prod(self.reshape)):
                return f"delta {rows}x{cols} widening to {tuple(self.reshape)} vs weight {tuple(shape)}"
            return None
        if rows != shape[0] or rows * cols != math.prod(shape):
            return f"delta {rows}x{cols} vs weight {tuple(shape)}"
        return self.magnitude_misfit(shape)

    def implied_shape(self) -> torch.Size:
        if self.reshape is not None:
            return torch.Size(self.reshape)
        out = self.up.shape[0]
        if self.mid is not None:
            return torch.Size((out, self.down.shape[1], *self.mid.shape[2:]))
        return torch.Size((out, *self.down.shape[1:]))

    def row_term(self, strength: float) -> RowTerm | None:
        if self.reshape is not None:
            return None
        up, down, scale = self.low_rank()
        return LowRankRows(up, down, strength * scale)

    def scaled(self, factor: float) -> LoraWeights:
        """``up`` scaled by ``factor`` (kept in its dtype); DoRA's magnitude is left as it is."""
        return LoraWeights(up=(self.up.float() * factor).to(self.up.dtype), down=self.down, alpha=self.alpha,
                           mid=self.mid, magnitude=self.magnitude, reshape=self.reshape, naming=self.naming)

    def bypass(self, x: torch.Tensor, layer: LayerCall, shape, base=None) -> torch.Tensor:
        """``scale * up (down x)``: the ``down`` kernel with the layer's geometry, then a 1x1 ``up``."""
        up, down, scale = self.low_rank()
        up, down = up.to(x), down.to(x)
        if layer.kind == "linear":
            return torch.nn.functional.linear(torch.nn.functional.linear(x, down), up) * scale
        kernel = tuple(shape[2:])
        in_ch = down.shape[1] // max(math.prod(kernel), 1)
        h = layer.apply(x, down.reshape(down.shape[0], in_ch, *kernel))
        return layer.apply(h, up.reshape(*up.shape, *[1] * len(kernel)), geometry=False) * scale

    def bypass_dropped(self, x: torch.Tensor, layer: LayerCall, shape, draw, base=None) -> torch.Tensor:
        """``scale * up(M_r * M_e * down(x))`` (kohya sd-scripts' LoRA module while training): dropout ``M_e`` on
        the elements of ``down(x)``, rank dropout ``M_r`` on its ``r`` channels per sample, each scaled by
        ``1 / (1 - p)``; see :mod:`lora_ops.adapters.dropout`."""
        up, down, scale = self.low_rank()
        up, down = up.to(x), down.to(x)
        if layer.kind == "linear":
            h = torch.nn.functional.linear(x, down)
        else:
            kernel = tuple(shape[2:])
            in_ch = down.shape[1] // max(math.prod(kernel), 1)
            h = layer.apply(x, down.reshape(down.shape[0], in_ch, *kernel))
        elements = draw.element_mask(h)
        if elements is not None:
            h = h * elements
        ranks = draw.rank_mask(h, layer.feature_dim)
        if ranks is not None:
            h = h * ranks
        if layer.kind == "linear":
            return torch.nn.functional.linear(h, up) * scale
        return layer.apply(h, up.reshape(*up.shape, *[1] * (h.dim() - 2)), geometry=False) * scale


@dataclass
class LowRankRows(RowTerm):
    """``alpha * (up[rows] @ down)``: a rank-r product per block of rows."""

    up: torch.Tensor
    down: torch.Tensor
    alpha: float

    needs_scratch: ClassVar[bool] = False

    def fits(self, rows: int, cols: int) -> bool:
        return self.up.shape[0] == rows and self.down.shape[1] == cols and self.up.shape[1] == self.down.shape[0]

    def to_fp32(self) -> LowRankRows:
        return LowRankRows(self.up.float(), self.down.float(), self.alpha)

    def add_rows(self, acc, r0, r1, scratch) -> None:
        acc.addmm_(self.up[r0:r1], self.down, alpha=self.alpha)
