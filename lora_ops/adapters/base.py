"""The protocol every adapter kind follows, and the helpers the kinds share.

One class per kind, one module per class (the shape of ComfyUI's ``comfy/weight_adapter/`` and
LyCORIS' ``functional/``); each is a dataclass deriving from :class:`AdapterBase` with:

* ``parse(name, tensors)`` (classmethod): the adapter of module ``name`` built from a file's tensors,
  and the keys it used; ``None`` when the module is not of this kind;
* ``file_tensors(name)``: the tensors to write for it, under kohya/LyCORIS key names (``parse``'s inverse);
* ``delta(shape, base=None)``: the weight delta ``dW`` at strength 1, of ``shape``. Kinds whose delta
  depends on the weight they patch (``needs_base``: OFT, BOFT, GLoRA, set-weights) need ``base``, the
  unpatched weight;
* ``low_rank()``: ``(up (out, r), down (r, in*k), scale)`` with ``dW = scale * up @ down``, or ``None``;
* ``row_term(strength)``: a :class:`RowTerm` that adds any block of rows of ``strength * dW`` to an fp32
  accumulator without forming the whole delta (the CPU merge), or ``None``;
* ``bypass(x, layer, base=None)``: ``dW x`` for an input ``x`` of the layer, which equals
  ``(W + dW) x - W x`` (how a delta runs without being merged: the sweep's rows, training);
  ``bypass_dropped(x, layer, shape, draw)`` is the same with a training call's dropout
  (:mod:`lora_ops.adapters.dropout`), and :mod:`lora_ops.adapters.live` adds DoRA to it;
* ``scaled(factor)``: an adapter of the same kind whose delta is ``factor * dW`` (baking block weights
  into a file), or ``None`` where the kind cannot say that;
* ``delta_numel()`` / ``implied_shape()``: what the factors tell about the weight they fit.

Strength is linear for every kind: an adapter at strength ``s`` makes ``W0 + s * dW``. DoRA (a
``magnitude`` carried beside any kind) and the host key map's transforms act on the delta a kind makes;
:func:`lora_ops.adapters.effective_delta` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch

from ..errors import LoraFileError
from ..layers import LayerCall


def lora_scale(alpha: float | None, rank: int) -> float:
    """``alpha / rank``; a missing or zero alpha means alpha = rank, i.e. scale 1 (how kohya's sd-scripts,
    LyCORIS, A1111 and ComfyUI all read a saved file)."""
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    if alpha is None or alpha == 0:
        return 1.0
    return float(alpha) / float(rank)


def flat2d(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``(t.shape[0], -1)``."""
    return t.reshape(t.shape[0], -1)


def read_alpha(name: str, tensors: Mapping[str, torch.Tensor]) -> float | None:
    """The module's ``.alpha`` as a float; a file whose alpha is empty, not a number, NaN or infinite is
    refused (a NaN alpha renders a NaN image; LoRA Lab names the layer instead)."""
    t = tensors.get(f"{name}.alpha")
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or t.numel() != 1:
        size = t.numel() if isinstance(t, torch.Tensor) else type(t).__name__
        raise LoraFileError(f"layer '{name}' has an alpha of {size} values; an alpha is one number.",
                            "the file is damaged or not a LoRA; export it again.")
    value = float(t.reshape(-1)[0].float().item())
    if not math.isfinite(value):
        raise LoraFileError(f"layer '{name}' has alpha = {value}; it must be a finite number.",
                            "the file is damaged (often a training run that diverged); use another checkpoint.")
    return value


def require(name: str, cond: bool, problem: str) -> None:
    """Raise a :class:`LoraFileError` about layer ``name`` unless ``cond``."""
    if not cond:
        raise LoraFileError(f"layer '{name}': {problem}.", "the file is damaged or was written by a broken "
                            "exporter; export it again or use another file.")


class RowTerm:
    """``strength * dW`` of one adapter, computable for any block of rows of the weight's 2-D view.

    ``add_rows(acc, r0, r1, scratch)`` adds rows ``r0:r1`` into the fp32 accumulator ``acc`` (``(r1 - r0)
    x cols``), with ``scratch`` two fp32 buffers at least as large as ``acc`` for intermediate products.
    """

    def fits(self, rows: int, cols: int) -> bool:
        raise NotImplementedError

    def add_rows(self, acc: torch.Tensor, r0: int, r1: int, scratch: list[torch.Tensor]) -> None:
        raise NotImplementedError

    needs_scratch: ClassVar[bool] = True

    def to_fp32(self) -> RowTerm:
        """A copy whose factors are fp32 (cast once per merge, not per block)."""
        raise NotImplementedError


@dataclass
class AdapterBase:
    """Fields every kind has: DoRA's ``magnitude`` (``dora_scale``) and ``alpha`` (see subclasses)."""

    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""
    weight_dependent: ClassVar[bool] = False  # delta depends on the weight it patches

    # --- file side ---------------------------------------------------------------------------------
    @classmethod
    def parse(cls, name: str, tensors: Mapping[str, torch.Tensor]) -> tuple[AdapterBase, set[str]] | None:
        raise NotImplementedError

    def file_tensors(self, name: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def side_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """``alpha`` and ``dora_scale`` as files carry them (alpha only where the kind has a rank)."""
        out: dict[str, torch.Tensor] = {}
        alpha = getattr(self, "alpha", None)
        if alpha is not None and self.rank is not None:
            out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
        if self.magnitude is not None:
            out[f"{name}.dora_scale"] = self.magnitude
        return out

    # --- math ----------------------------------------------------------------------------------------
    @property
    def needs_base(self) -> bool:
        """Whether the delta (with DoRA) depends on the unpatched weight."""
        return self.weight_dependent or getattr(self, "magnitude", None) is not None

    @property
    def rank(self) -> int | None:
        return None

    @property
    def scale(self) -> float:
        return 1.0

    def delta(self, shape, dtype=torch.float32, device=None, *, base: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        return None

    def row_term(self, strength: float) -> RowTerm | None:
        return None

    def delta_numel(self) -> int | None:
        return None

    def implied_shape(self) -> torch.Size | None:
        return None

    def scaled(self, factor: float) -> AdapterBase | None:
        return None

    def misfit(self, shape: torch.Size) -> str | None:
        """``None`` if the adapter fits a weight of ``shape``, else a short description of the misfit."""
        n = self.delta_numel()
        if n is not None and n != math.prod(shape):
            return f"{self.label} delta of {n} values vs weight {tuple(shape)}"
        return self.magnitude_misfit(shape)

    def magnitude_misfit(self, shape: torch.Size) -> str | None:
        m = getattr(self, "magnitude", None)
        if m is not None and m.numel() not in (shape[0], shape[1] if len(shape) > 1 else -1):
            return f"DoRA magnitude of {m.numel()} values vs weight {tuple(shape)}"
        return None

    def bypass(self, x: torch.Tensor, layer: LayerCall, shape, base: torch.Tensor | None = None) -> torch.Tensor:
        """``dW x``: the layer's operation with the formed delta (kinds with a cheaper form override it)."""
        d = self.delta(shape, base=base, dtype=x.dtype, device=x.device)
        return layer.apply(x, d)

    def bypass_dropped(self, x: torch.Tensor, layer: LayerCall, shape, draw, base: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """``dW x`` with a training call's dropout (``draw``: :class:`lora_ops.adapters.dropout.DropDraw`), as
        LyCORIS defines it for kinds other than LoRA: rank dropout drops rows of ``dW`` (output channels of
        ``dW x``) per sample, dropout drops elements of ``dW x``; kept values are scaled by ``1 / (1 - p)``.
        Module dropout is the caller's (the adapter is not called at all)."""
        out = self.bypass(x, layer, shape, base=base)
        rows = draw.rank_mask(out, layer.feature_dim)
        if rows is not None:
            out = out * rows
        elements = draw.element_mask(out)
        return out if elements is None else out * elements

    def tensors(self) -> list[torch.Tensor]:
        """Every floating-point tensor the adapter holds (for the NaN/Inf scan)."""
        return [v for f in fields(self) if isinstance(v := getattr(self, f.name), torch.Tensor)
                and v.is_floating_point()]

    def without_magnitude(self) -> AdapterBase:
        return replace(self, magnitude=None)

    def describe(self) -> str:
        """``lora``/``locon``/``loha``/... with ``+dora`` when a magnitude is present."""
        return f"{self.kind}+dora" if getattr(self, "magnitude", None) is not None else self.kind


def check_base(kind: str, base: torch.Tensor | None) -> torch.Tensor:
    if base is None:
        raise ValueError(f"a {kind} delta depends on the weight it patches: pass base= (the unpatched weight)")
    return base
