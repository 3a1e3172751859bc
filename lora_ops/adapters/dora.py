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


def dora_factor(base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``f = m / ||W0 + dW||`` per output channel, ``(out,)`` fp32: the output-axis DoRA weight is ``f * (W0 + dW)``
    row by row, the same value :func:`dora_from_delta` merges (``W0 + dora_from_delta(...) == f * (W0 + dW)``)."""
    w0 = base.float()
    merged = (w0 + delta.float().reshape(w0.shape)).reshape(w0.shape[0], -1)
    m = magnitude.to(device=w0.device, dtype=torch.float32).reshape(-1)
    if m.numel() != w0.shape[0]:
        raise ValueError(f"the live DoRA form takes a magnitude on the output axis ({w0.shape[0]} values), "
                         f"got {m.numel()}")
    return m / merged.norm(dim=1)


def dora_output(base_out: torch.Tensor, direction_out: torch.Tensor, factor: torch.Tensor,
                feature_dim: int) -> torch.Tensor:
    """``(W' - W0) x = (f - 1) * (W0 x) + f * (dW x)`` for an output-axis DoRA, without forming ``W'``.

    ``base_out``: ``W0 x`` (the layer's output without its bias); ``direction_out``: ``dW x``; ``factor``:
    :func:`dora_factor`; ``feature_dim``: the output's channel axis (``-1`` Linear, ``1`` conv). The same
    decomposition as PEFT's DoRA layer (``(mag_norm_scale - 1) * base + mag_norm_scale * lora``).
    """
    shape = [1] * base_out.dim()
    shape[feature_dim % base_out.dim()] = factor.numel()
    f = factor.reshape(shape).to(device=base_out.device, dtype=base_out.dtype)
    return (f - 1) * base_out + f * direction_out.to(base_out.dtype)


def magnitude_fits(magnitude: torch.Tensor, shape) -> bool:
    """Whether a DoRA magnitude lies on the output axis (``out`` values) or the input axis of ``shape``."""
    return magnitude.numel() in (shape[0], shape[1] if len(shape) > 1 else -1)
