"""PIL images <-> ComfyUI ``IMAGE`` tensors (float32, [batch, height, width, 3], values 0..1)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def image_tensor(*images: Image.Image) -> torch.Tensor:
    """One or more PIL images of equal size as an ``IMAGE`` batch."""
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images]
    return torch.from_numpy(np.stack(arrays))
