"""Dropout of an adapter while it trains, as kohya's sd-scripts and LyCORIS define it.

Three kinds, each acting on the adapter's contribution ``dW x`` only (the frozen layer's ``W x`` is never
dropped) and only while training: loaders, previews and saved files never see them.

* **module dropout** ``p_m`` (kohya ``module_dropout``, LyCORIS the same): the whole adapter is skipped
  for this call with probability ``p_m`` (the layer gives ``W x``). Neither tool rescales, nor does this.
* **rank dropout** ``p_r``: for LoRA/LoCon (kohya ``rank_dropout``, ``networks/lora.py``) each of the
  ``r`` channels between ``down`` and ``up`` is dropped per sample; for the other kinds (LyCORIS, which
  redefines it for LoHa/LoKr) each row of ``dW``, i.e. each output channel of ``dW x``, per sample.
* **dropout** ``p`` (kohya ``network_dropout``): for LoRA/LoCon the elements of ``down x`` (kohya); for the
  other kinds the elements of ``dW x`` (LyCORIS' ``drop(dW x)``).

Every kept value is scaled by ``1 / (1 - p)`` (kohya's rank-dropout scale, ``F.dropout``'s for the
elements; LyCORIS' ``rank_dropout_scale`` option), so each mask ``M`` has ``E[M] = 1`` and, ``dW x`` being
linear in the mask, the expected training-time output equals the output without dropout: the adapter a
loader reads back is the one the dropout averaged over. (LyCORIS' default, ``rank_dropout_scale=False``,
trains on ``(1 - p_r) dW`` in expectation and saves ``dW``.)

Draws come from a ``torch.Generator`` the caller seeds per layer and micro-batch, never from the global
RNG, so a run is reproducible and gradient checkpointing's recomputation draws the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import LoraLabError


@dataclass(frozen=True)
class DropoutRates:
    """``dropout`` (elements), ``rank`` (rank channels / rows of ``dW``) and ``module`` probabilities."""

    dropout: float = 0.0
    rank: float = 0.0
    module: float = 0.0

    def __post_init__(self) -> None:
        for name in ("dropout", "rank", "module"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise LoraLabError(f"{name} dropout must be in [0, 1), got {p}.", f"set {name} dropout to e.g. 0.1.")

    @property
    def active(self) -> bool:
        return self.dropout > 0 or self.rank > 0 or self.module > 0


def keep_mask(shape: tuple[int, ...], p: float, gen: torch.Generator) -> torch.Tensor:
    """``(U >= p) / (1 - p)`` with ``U`` uniform from ``gen``: 0 with probability ``p``, else ``1 / (1 - p)``
    (fp32, on the CPU; ``E = 1``)."""
    u = torch.rand(shape, generator=gen, dtype=torch.float32)
    return (u >= p).to(torch.float32) / (1.0 - p)


def per_sample(mask: torch.Tensor, like: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """A ``(B, C)`` mask shaped to broadcast over ``like`` (``B``: its first axis, ``C``: ``feature_dim``)."""
    dims = like.dim()
    axis = feature_dim % dims
    shape = [1] * dims
    shape[0], shape[axis] = mask.shape[0], mask.shape[1]
    return mask.reshape(shape).to(device=like.device, dtype=like.dtype)


class DropDraw:
    """The random choices of one adapter call, in a fixed order: module skip, rank mask, element mask.

    ``gen`` is seeded by the caller (per layer and micro-batch), so the same call draws the same masks.
    """

    def __init__(self, rates: DropoutRates, gen: torch.Generator):
        self.rates = rates
        self.gen = gen
        self._skip = bool(rates.module > 0 and float(torch.rand((), generator=gen)) < rates.module)

    @property
    def skip(self) -> bool:
        """Whether module dropout skips the adapter for this call."""
        return self._skip

    def rank_mask(self, like: torch.Tensor, feature_dim: int) -> torch.Tensor | None:
        """A per-sample mask over ``like``'s ``feature_dim`` channels (rank channels or rows of ``dW``)."""
        if self.rates.rank <= 0:
            return None
        channels = like.shape[feature_dim]
        return per_sample(keep_mask((like.shape[0], channels), self.rates.rank, self.gen), like, feature_dim)

    def element_mask(self, like: torch.Tensor) -> torch.Tensor | None:
        if self.rates.dropout <= 0:
            return None
        mask = keep_mask(tuple(like.shape), self.rates.dropout, self.gen)
        return mask.to(device=like.device, dtype=like.dtype)


def apply_mask(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return t if mask is None else t * mask
