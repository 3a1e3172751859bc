"""Merging a whole applied stack into one LoRA, with the error against the live stack per layer.

The live stack is ``W0 + sum_i s_i dW_i`` per weight (strengths include block weights and the stack's
normalisation). :func:`merge_stack` turns the entries of all rows into one adapter per weight with
:mod:`lora_ops.combine` and measures ``||merged - live|| / ||live||`` for every layer and overall:

* ``concat``: exact rank concatenation where every part is a plain LoRA/LoCon; a layer with LoHa, LoKr,
  full-diff or DoRA parts is written as its exact summed delta (a full diff) and the report says so;
* ``svd``: the summed delta truncated to ``rank`` or to the ``energy`` fraction of its spectrum;
* ``sum``: the exact summed delta as a full diff;
* ``ties``, ``dare``, ``magnitude_prune``: PEFT's delta-space methods on the parts' deltas (strengths
  folded in, so the sign election sees what the user applied), then the SVD step when ``rank``/``energy``
  is given, a full diff otherwise. These change the result on purpose; their error says by how much.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from . import combine
from .adapters import FullDiff, LoraWeights
from .errors import LoraLabError
from .keymap import Target
from .patching import PatchEntry, delta_in_weight

Method = Literal["concat", "svd", "sum", "ties", "dare", "magnitude_prune"]
METHODS: tuple[str, ...] = ("concat", "svd", "sum", "ties", "dare", "magnitude_prune")


@dataclass
class MergedLayer:
    key: str
    adapter: object
    rel_error: float
    parts: int
    note: str = ""


@dataclass
class MergedStack:
    method: str
    layers: list[MergedLayer] = field(default_factory=list)
    bias_layers: list[MergedLayer] = field(default_factory=list)
    overall_error: float = 0.0

    def to_text(self, top: int = 8) -> str:
        ranks = sorted({getattr(layer.adapter, "rank", None) or 0 for layer in self.layers})
        full = sum(1 for layer in self.layers if isinstance(layer.adapter, FullDiff))
        lines = [f"merge: {self.method}; {len(self.layers)} layers ({full} as full diffs); "
                 f"ranks {ranks[0]}-{ranks[-1]}" if ranks else f"merge: {self.method}; no layers",
                 f"relative error against the live stack: overall {self.overall_error:.3e}"]
        notes: dict[str, int] = {}
        for layer in self.layers:
            if layer.note:
                notes[layer.note] = notes.get(layer.note, 0) + 1
        lines += [f"{n} layers: {note}" for note, n in notes.items()]
        lines.append("largest layer errors:")
        worst = sorted(self.layers, key=lambda layer: layer.rel_error, reverse=True)[:top]
        for layer in worst:
            lines.append(f"  {layer.rel_error:.3e}  {layer.key}")
        return "\n".join(lines)


def _validate(method: str, rank: int, energy: float, density: float) -> None:
    if method not in METHODS:
        raise LoraLabError(f"Unknown merge method '{method}'.", f"use one of: {', '.join(METHODS)}.")
    if rank < 0:
        raise LoraLabError(f"rank {rank} is negative.", "use 0 (no rank cap) or a positive rank.")
    if not (energy == 0 or 0 < energy <= 1) or math.isnan(energy):
        raise LoraLabError(f"energy {energy} is outside (0, 1].", "use e.g. 0.99, or 0 to use rank instead.")
    if rank and energy:
        raise LoraLabError(f"Both rank ({rank}) and energy ({energy}) were given.", "set one of them to 0.")
    if method == "svd" and not rank and not energy:
        raise LoraLabError("The svd merge needs a rank or an energy fraction.", "set rank (e.g. 32) or energy (e.g. 0.99).")
    if method in ("ties", "dare", "magnitude_prune") and not 0 < density <= 1:
        raise LoraLabError(f"density {density} is outside (0, 1].", "use e.g. 0.5.")


def in_weight_layout(entry: PatchEntry, shape: torch.Size, base: torch.Tensor | None = None) -> PatchEntry:
    """``entry`` as a part of the whole weight of ``shape``, at the same strength, with no slice, key-map
    transform or dependence on the base left: a low-rank entry keeps its factors (a slice's factors
    padded with zero rows or columns: exact, same rank), anything else becomes its delta as a full diff
    (computed against ``base``, the whole unpatched weight, where the kind needs it)."""
    offset = entry.target.offset
    if offset is None and entry.target.transform is None and not entry.adapter.needs_base:
        return entry
    plain = replace(entry, target=Target(entry.target.key))
    lr = entry.low_rank()
    if lr is not None and offset is not None and offset[0] in (0, 1) and len(shape) >= 2:
        up, down, scale = lr
        dim, start, length = offset
        if dim == 0:
            full = torch.zeros(shape[0], up.shape[1], dtype=up.dtype, device=up.device)
            full[start:start + length] = up
            up = full
        else:
            cols_per = math.prod(shape[2:])
            full = torch.zeros(down.shape[0], math.prod(shape[1:]), dtype=down.dtype, device=down.device)
            full[:, start * cols_per:(start + length) * cols_per] = down
            down = full
        return replace(plain, adapter=LoraWeights(up=up, down=down, alpha=scale * down.shape[0]))
    if lr is not None and offset is None:
        up, down, scale = lr
        return replace(plain, adapter=LoraWeights(up=up, down=down, alpha=scale * down.shape[0]))
    if entry.adapter.needs_base and base is None:
        raise LoraLabError(f"{entry.module}: a {entry.adapter.describe()} delta depends on the model's weight.",
                           "connect the model the stack was applied to.")
    unit = replace(entry, strength=1.0)
    return replace(plain, adapter=FullDiff(diff=delta_in_weight(unit, shape, base)))


def merge_stack(entries: Sequence[PatchEntry], method: str, *, rank: int = 0, energy: float = 0.0,
                density: float = 0.5, seed: int = 0, base_of: Callable[[str], torch.Tensor] | None = None,
                shape_of: Callable[[str], torch.Size]) -> MergedStack:
    """Merge every entry (all rows, model and text encoder) into one adapter per weight key.

    Entries on slices of a packed weight (Flux's qkv), behind a key-map transform, or whose delta depends
    on the base weight are first put in the whole weight's layout (:func:`in_weight_layout`), so every
    merged layer is a plain LoRA or full diff of one weight, which any loader reads.
    """
    _validate(method, rank, energy, density)
    by_key: dict[str, list[PatchEntry]] = {}
    bias: dict[str, list[PatchEntry]] = {}
    for e in entries:
        if e.strength == 0.0:
            continue
        if e.is_bias:
            bias.setdefault(e.weight_key, []).append(e)
            continue
        needs_base = e.adapter.needs_base
        base = base_of(e.weight_key).float() if needs_base and base_of is not None else None
        by_key.setdefault(e.weight_key, []).append(in_weight_layout(e, shape_of(e.weight_key), base))
    result = MergedStack(method=method)
    generator = torch.Generator().manual_seed(seed)
    num = den = 0.0
    for key, parts in by_key.items():
        shape = shape_of(key)
        # rank is a cap: a layer narrower than it keeps its full rank
        truncate = {"rank": min(rank, shape[0], math.prod(shape[1:])) if rank else None, "energy": energy or None}
        base = None  # every part is in the weight's layout now: no part needs the base
        live = combine.merge_sum(parts, base=base, shape=shape).diff.double()
        note = ""
        if method == "concat":
            if all(combine.is_concat_able(p) for p in parts):
                adapter = combine.merge_concat(parts, shape=shape)
            else:
                adapter, note = FullDiff(diff=live.float()), "not all parts low-rank: written as the exact sum"
        elif method == "svd":
            adapter, _ = combine.merge_svd(parts, base=base, shape=shape, **truncate)
        elif method == "sum":
            adapter = FullDiff(diff=live.float())
        else:
            deltas, strengths = combine.part_deltas(parts, base=base, shape=shape)
            weighted = [d * s for d, s in zip(deltas, strengths)]
            ones = [1.0] * len(weighted)
            if method == "ties":
                merged = combine.merge_ties(weighted, ones, density)
            elif method == "dare":
                merged = combine.merge_dare(weighted, ones, density, generator)
            else:
                merged = combine.merge_magnitude_prune(weighted, ones, density)
            merged = merged.reshape(shape)
            if rank or energy:
                adapter, _ = combine.merged_to_lora(merged, **truncate)
            else:
                adapter = FullDiff(diff=merged.float())
        approx = adapter.delta(shape, dtype=torch.float64)
        err = combine.relative_error(approx, live)
        num += float(((approx - live) ** 2).sum())
        den += float((live ** 2).sum())
        result.layers.append(MergedLayer(key, adapter, err, len(parts), note))
    for key, parts in bias.items():
        total = sum(p.adapter.delta(p.adapter.diff.shape) * p.strength for p in parts)
        result.bias_layers.append(MergedLayer(key, FullDiff(diff=total), 0.0, len(parts)))
    result.overall_error = math.sqrt(num / den) if den > 0 else 0.0
    return result
