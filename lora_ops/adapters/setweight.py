"""Set-weights: a file that gives a layer's new value outright (``.set_weight``).

ComfyUI's conversion of BFL's Flux control LoRAs writes the control model's norm scales this way
(``*_norm.scale.set_weight``). At strength 1 the weight becomes ``value``; LoRA Lab reads strength as
for every other kind, ``W0 + s * (value - W0)`` (core ComfyUI copies ``value`` at any strength).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import AdapterBase, check_base


@dataclass
class SetWeight(AdapterBase):
    value: torch.Tensor
    magnitude: torch.Tensor | None = None  # never set: a set-weight has no DoRA form
    alpha: float | None = None  # none either; present so every kind answers the same questions

    kind: ClassVar[str] = "set"
    label: ClassVar[str] = "set-weight"
    weight_dependent: ClassVar[bool] = True

    @classmethod
    def parse(cls, name: str, tensors: Mapping[str, torch.Tensor]):
        if (k := f"{name}.set_weight") in tensors:
            return cls(value=tensors[k]), {k}
        return None

    def file_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.set_weight": self.value}

    def delta(self, shape, dtype=torch.float32, device=None, *, base=None) -> torch.Tensor:
        base = check_base(self.kind, base)
        return self.value.to(device=device or base.device, dtype=dtype).reshape(shape) - base.to(device=device or base.device, dtype=dtype).reshape(shape)

    def delta_numel(self) -> int:
        return self.value.numel()

    def implied_shape(self) -> torch.Size:
        return self.value.shape
