"""Adapter kinds: one module per kind, one protocol (:mod:`lora_ops.adapters.base`).

:data:`KINDS` lists the weight-adapter kinds in the order a file's module is tried against them; the
first that parses it claims its keys. :func:`effective_delta` is the one place that turns an adapter
into the delta merged into a weight: the kind's ``delta``, then the host key map's transform of it
(e.g. ComfyUI's ``swap_scale_shift`` for diffusers' ``norm_out.linear``), then DoRA's normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch

from ..errors import LoraLabError
from .base import AdapterBase, RowTerm, flat2d, lora_scale
from .boft import BoftWeights
from .dora import dora_factor, dora_from_delta, magnitude_fits
from .dropout import DropDraw, DropoutRates
from .full import FullDiff
from .glora import GloraWeights
from .loha import LohaWeights
from .lokr import LokrWeights
from .live import output_delta
from .lora import LoraWeights, LowRankRows
from .oft import OftWeights
from .setweight import SetWeight

Adapter = Union[LoraWeights, LohaWeights, LokrWeights, GloraWeights, OftWeights, BoftWeights, FullDiff, SetWeight]

KINDS: tuple[type[AdapterBase], ...] = (LoraWeights, LohaWeights, LokrWeights, GloraWeights, OftWeights,
                                        BoftWeights, FullDiff, SetWeight)
"""Weight-adapter kinds, in the order a module is tried against them."""

Transform = Callable[[torch.Tensor], torch.Tensor]


def algorithm_name(adapter: AdapterBase) -> str:
    """``lora``/``locon``/``loha``/``lokr``/``oft``/``boft``/``glora``/``full``/``norm``/``set``, with
    ``+dora`` when a magnitude is present."""
    return adapter.describe()


def effective_delta(adapter: AdapterBase, shape, *, base: torch.Tensor | None = None,
                    transform: Transform | None = None, dtype: torch.dtype = torch.float32,
                    device=None) -> torch.Tensor:
    """The delta ``adapter`` adds to a weight of ``shape`` at strength 1, as merged.

    ``base``: the unpatched weight (needed when ``adapter.needs_base``: OFT/BOFT/GLoRA/set-weights and
    DoRA); ``transform``: the key map's function of the delta, if any. Computed in fp32 (in ``dtype``
    directly for kinds that need neither base nor transform), returned in ``dtype``.
    """
    if adapter.needs_base and base is None:
        raise ValueError(f"a {adapter.describe()} delta depends on the weight it patches: pass base=")
    plain = not adapter.needs_base and transform is None
    device = device if device is not None else (base.device if base is not None else None)
    if plain:
        return adapter.delta(shape, dtype=dtype, device=device)
    if transform is not None and adapter.needs_base:
        # The file's factors (and DoRA's magnitude, OFT's rotations) are in the file's layout; the host's
        # transform maps that layout onto the weight's. Work in the file's layout and map the result:
        # W' = T(f(T^-1(W))), which needs T's inverse; the transforms hosts use are their own inverse
        # (a swap of two halves), which is checked here on the weight itself.
        base_file = transform(base.float())
        if not torch.equal(transform(base_file), base.float()):
            raise LoraLabError(f"a {adapter.describe()} layer reaches this weight through a transform of the host's "
                               "key map that is not its own inverse, so its delta cannot be computed.",
                               "report this LoRA to LoRA Lab; meanwhile load it with core ComfyUI's LoraLoader.")
        return transform(_delta_with_dora(adapter, shape, base_file, device)).to(dtype)
    d = adapter.delta(shape, dtype=torch.float32, device=device, base=base)
    if transform is not None:
        d = transform(d)
    if adapter.magnitude is not None:
        d = dora_from_delta(base, d, adapter.magnitude)
    return d.to(dtype)


def _delta_with_dora(adapter: AdapterBase, shape, base: torch.Tensor, device) -> torch.Tensor:
    """The kind's delta against ``base`` in fp32, normalised by DoRA's magnitude when there is one."""
    d = adapter.delta(shape, dtype=torch.float32, device=device, base=base if adapter.weight_dependent else None)
    if adapter.magnitude is not None:
        d = dora_from_delta(base, d, adapter.magnitude)
    return d


def dora_delta(base: torch.Tensor, adapter: AdapterBase, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DoRA delta at strength 1 of an adapter with a magnitude, normalised against ``base``."""
    return effective_delta(adapter, base.shape, base=base, dtype=dtype)


def low_rank_in_layout(adapter: AdapterBase, transform: Transform | None):
    """``(up, down, scale)`` of a plain low-rank adapter (no DoRA) in the weight's layout, or ``None``.

    With a key-map transform the factors are usable only if the transform acts on rows alone, so that
    ``transform(up @ down) == transform(up) @ down``; that is checked on this adapter's own factors (a
    row permutation such as ``swap_scale_shift`` passes; anything else falls back to the full delta).
    """
    if adapter.magnitude is not None:
        return None
    lr = adapter.low_rank()
    if lr is None or transform is None:
        return lr
    up, down, scale = lr
    try:
        up_t = transform(up.float())
    except (RuntimeError, ValueError, IndexError, TypeError):
        return None
    if not isinstance(up_t, torch.Tensor) or up_t.shape != up.shape:
        return None
    full = up.float() @ down.float()
    try:
        expect = transform(full)
    except (RuntimeError, ValueError, IndexError, TypeError):
        return None
    if not torch.allclose(up_t @ down.float(), expect, rtol=1e-5, atol=1e-6 * float(full.abs().max() or 1.0)):
        return None
    return up_t.to(up.dtype), down, scale


__all__ = [
    "Adapter", "AdapterBase", "BoftWeights", "DropDraw", "DropoutRates", "FullDiff", "GloraWeights", "KINDS",
    "LohaWeights", "LokrWeights", "LoraWeights", "LowRankRows", "OftWeights", "RowTerm", "SetWeight", "Transform",
    "algorithm_name", "dora_delta", "dora_factor", "dora_from_delta", "effective_delta", "flat2d", "lora_scale",
    "low_rank_in_layout", "magnitude_fits", "output_delta",
]
