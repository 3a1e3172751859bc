"""Numeric facts every module uses: half-precision limits and the 8-bit image conversion.

* A value stored in a half-precision dtype becomes infinite when its magnitude reaches
  ``max + ulp(max) / 2`` (65520 for fp16: 65504 is the largest finite value, and everything below 65520
  rounds to it); that is where a merged weight turns an image black. :func:`overflow_limit` gives it for
  any float dtype; :data:`FP16_MAX` is the largest finite fp16 value, for messages.
* Non-zero values at or below :data:`FP16_UNDERFLOW` (half the smallest fp16 subnormal, ties to even)
  become 0 in fp16.
* Images are turned into 8-bit pixels as core ComfyUI's ``SaveImage`` writes them, ``clip(255 x, 0, 255)``
  truncated to an integer (:func:`to_uint8`): so a level difference between two images is a difference
  between the PNG files a user would save.
"""

from __future__ import annotations

import math

import numpy as np
import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)
FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
FP16_UNDERFLOW = 2.0 ** -25


def overflow_limit(dtype: torch.dtype) -> float:
    """The smallest magnitude that rounds to infinity in ``dtype`` (65520 for fp16); ``inf`` for fp32 and
    wider, where a merge does not overflow in practice."""
    if dtype not in HALF_DTYPES:
        return math.inf
    info = torch.finfo(dtype)
    return info.max + info.eps * 2.0 ** math.floor(math.log2(info.max)) / 2


FP16_OVERFLOW = overflow_limit(torch.float16)  # 65520


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """8-bit pixels of an image in [0, 1] (any shape), as ``SaveImage`` converts them: NaN as 0,
    ``clip(255 x, 0, 255)`` truncated."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    return np.clip(255.0 * np.nan_to_num(arr, nan=0.0), 0, 255).astype(np.uint8)
