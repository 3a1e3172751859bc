"""DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"): a magnitude beside any kind.

``W' = m * (W0 + dW) / ||W0 + dW||`` with the norm over every axis but the one ``m`` lies on:
``m: (out, 1, ...)`` (the output axis, PEFT's and LyCORIS' default) or ``m: (1, in, ...)`` (the input
axis). The returned delta is ``W' - W0``. Normalising against ``W0 + dW`` with ``W0`` the weight before
this LoRA, never against a running weight, makes stacked DoRAs order-independent (PEFT's convention;
ComfyUI normalises the output axis by ``||W0||`` instead, and each DoRA against the weight left by the
previous one).
"""

from __future__ import annotations

import torch


def dora_from_delta(base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``m * (W0 + dW) / ||W0 + dW|| - W0`` in fp32; ``base`` is ``W0``, ``delta`` the kind's ``dW``."""
    w0 = base.float()
    merged = w0 + delta.float().reshape(w0.shape)
    m = magnitude.to(device=w0.device, dtype=torch.float32)
    if m.numel() == w0.shape[0]:
        norm = merged.reshape(w0.shape[0], -1).norm(dim=1).reshape(w0.shape[0], *[1] * (w0.dim() - 1))
        m = m.reshape(w0.shape[0], *[1] * (w0.dim() - 1))
    else:
        flat = merged.transpose(0, 1).reshape(w0.shape[1], -1)
        norm = flat.norm(dim=1).reshape(1, w0.shape[1], *[1] * (w0.dim() - 2))
        m = m.reshape(1, w0.shape[1], *[1] * (w0.dim() - 2))
    return merged * (m / norm) - w0


def magnitude_fits(magnitude: torch.Tensor, shape) -> bool:
    """Whether a DoRA magnitude lies on the output axis (``out`` values) or the input axis of ``shape``."""
    return magnitude.numel() in (shape[0], shape[1] if len(shape) > 1 else -1)
