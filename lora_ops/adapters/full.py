"""Full deltas: a stored ``dW`` for a weight (``.diff``) or a bias (``.diff_b``), and trained norms.

LyCORIS' "full" algorithm and ComfyUI's own trainer write ``.diff``/``.diff_b``; LyCORIS with
``train_norm`` writes ``.w_norm``/``.b_norm`` for normalisation layers (the same thing: a delta of the
norm's weight and bias). ``dW = diff``; strength scales it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import AdapterBase, RowTerm

# suffix -> (source, is_bias)
SUFFIXES = {".diff": ("diff", False), ".diff_b": ("diff", True), ".w_norm": ("norm", False),
            ".b_norm": ("norm", True)}


@dataclass
class FullDiff(AdapterBase):
    diff: torch.Tensor
    magnitude: torch.Tensor | None = None
    alpha: float | None = None
    source: str = "diff"  # "diff" (.diff/.diff_b) or "norm" (.w_norm/.b_norm)

    kind: ClassVar[str] = "full"
    label: ClassVar[str] = "full diff"

    @classmethod
    def parse(cls, name: str, tensors: Mapping[str, torch.Tensor]):
        for suffix, source in ((".diff", "diff"), (".w_norm", "norm")):
            if (k := name + suffix) in tensors:
                return cls(diff=tensors[k], source=source), {k}
        return None

    @classmethod
    def parse_bias(cls, name: str, tensors: Mapping[str, torch.Tensor]):
        """The bias delta of module ``name`` (``.diff_b`` or ``.b_norm``), or ``None``."""
        for suffix, source in ((".diff_b", "diff"), (".b_norm", "norm")):
            if (k := name + suffix) in tensors:
                return cls(diff=tensors[k], source=source), {k}
        return None

    def file_tensors(self, name: str, is_bias: bool = False) -> dict[str, torch.Tensor]:
        suffix = {("diff", False): ".diff", ("diff", True): ".diff_b", ("norm", False): ".w_norm",
                  ("norm", True): ".b_norm"}[(self.source, is_bias)]
        out = {name + suffix: self.diff}
        if self.magnitude is not None:
            out[f"{name}.dora_scale"] = self.magnitude
        return out

    def describe(self) -> str:
        name = "norm" if self.source == "norm" else "full"
        return f"{name}+dora" if self.magnitude is not None else name

    def delta(self, shape, dtype=torch.float32, device=None, *, base=None) -> torch.Tensor:
        return self.diff.to(device=device, dtype=dtype).reshape(shape)

    def delta_numel(self) -> int:
        return self.diff.numel()

    def implied_shape(self) -> torch.Size:
        return self.diff.shape

    def row_term(self, strength: float) -> RowTerm | None:
        return None

    def scaled(self, factor: float) -> FullDiff:
        return FullDiff(diff=(self.diff.float() * factor).to(self.diff.dtype), magnitude=self.magnitude,
                        source=self.source)
