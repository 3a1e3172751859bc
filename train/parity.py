"""Comparing images made by different paths (live adapters, the saved file through each loader)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageDifference:
    """Difference of two ``(1, H, W, 3)`` images in 8-bit levels (what a saved PNG would hold)."""

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
    qa = (a.float().clamp(0, 1) * 255).round()
    qb = (b.float().clamp(0, 1) * 255).round()
    d = (qa - qb).abs()
    return ImageDifference(int(d.max()), float(d.mean()), float((d > 0).float().mean()))
