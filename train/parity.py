"""Comparing images made by different paths (live adapters, the saved file through each loader)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..lora_ops.numerics import to_uint8


@dataclass
class ImageDifference:
    """Difference of two ``(1, H, W, 3)`` images in 8-bit levels, as ``SaveImage`` would write them
    (:func:`lora_ops.numerics.to_uint8`)."""

    max_levels: int
    mean_levels: float
    differing_fraction: float

    def text(self) -> str:
        if self.max_levels == 0:
            return "identical"
        return (f"max {self.max_levels} levels of 255, mean {self.mean_levels:.3f}, "
                f"{100 * self.differing_fraction:.2f}% of values differ")


def image_difference(a: torch.Tensor, b: torch.Tensor) -> ImageDifference:
    if a.shape != b.shape:
        raise ValueError(f"images of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    d = np.abs(to_uint8(a).astype(np.int16) - to_uint8(b).astype(np.int16))
    return ImageDifference(int(d.max()), float(d.mean()), float((d > 0).mean()))
