"""Stacks of LoRAs: rows, strength normalisation, and where the LoRAs of a stack agree or fight.

A stack is applied as one list of :class:`~lora_ops.patching.PatchEntry` (every row's entries together),
merged in one pass: plain deltas add, and DoRA deltas are each normalised against the base weight, so
the result does not depend on the order of the rows.

Normalisation (``normalize_strengths``), for stacks that oversaturate:

* ``none``: the strengths as given (a plain sum of deltas);
* ``sum``: scale every strength by one factor so that the absolute strengths sum to ``target``;
* ``norm``: scale every strength by one factor so that the combined model delta has the Frobenius norm
  ``target`` x the largest single row's delta norm (at its own strength): with ``target`` 1 the stack
  changes the model no more than its strongest member alone.

Norms and inner products of low-rank deltas are computed from the factors,
``<U1 V1, U2 V2>_F = sum((U1^T U2) * (V1 V2^T))``, without forming the full matrices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from .errors import LoraLabError
from .patching import PatchEntry, delta_in_weight

Normalization = Literal["none", "sum", "norm"]


@dataclass(frozen=True)
class StackRow:
    """One LoRA in a stack, as the user set it."""

    lora_name: str
    strength_model: float = 1.0
    strength_clip: float = 1.0
    block_weights: str = ""
    enabled: bool = True
    block_a: float = 1.0
    block_b: float = 1.0
    block_seed: int = 0


@dataclass(frozen=True)
class LoraStack:
    """An ordered, immutable list of rows (the ``LORA_STACK`` value passed between nodes)."""

    rows: tuple[StackRow, ...] = ()

    def add(self, row: StackRow) -> LoraStack:
        return LoraStack(self.rows + (row,))

    @property
    def enabled(self) -> tuple[StackRow, ...]:
        return tuple(r for r in self.rows if r.enabled)


def _factors(entry: PatchEntry) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(U, V)`` with ``strength * dW = U @ V`` (2-D, in the layout of the entry's slice), or None when
    the entry is not low-rank."""
    lr = entry.low_rank()
    if lr is None:
        return None
    up, down, scale = lr
    return up.float() * (entry.strength * scale), down.float()


def _dense(entry: PatchEntry, shape: torch.Size, base: torch.Tensor | None) -> torch.Tensor:
    """``strength * dW`` laid out as the whole weight, 2-D."""
    if entry.adapter.needs_base and base is None:
        raise LoraLabError(f"{entry.module}: a {entry.adapter.describe()} delta needs the model's base weight.",
                           "pass the model.")
    return delta_in_weight(entry, shape, base).reshape(shape[0], -1)


def _disjoint(a: PatchEntry, b: PatchEntry) -> bool:
    """Whether two entries patch non-overlapping slices of one packed weight."""
    oa = None if a.is_bias else a.target.offset
    ob = None if b.is_bias else b.target.offset
    if oa is None or ob is None or oa[0] != ob[0]:
        return False
    return oa[1] + oa[2] <= ob[1] or ob[1] + ob[2] <= oa[1]


def inner(a: PatchEntry, b: PatchEntry, shape: torch.Size, base: torch.Tensor | None = None) -> float:
    """Frobenius inner product of two entries' deltas (strengths included), from factors when possible."""
    if _disjoint(a, b):
        return 0.0
    same_part = (a.target.offset == b.target.offset) or (a.is_bias and b.is_bias)
    fa, fb = (_factors(a), _factors(b)) if same_part else (None, None)
    if fa is not None and fb is not None:
        (u1, v1), (u2, v2) = fa, fb
        return float(((u1.T @ u2) * (v1 @ v2.T)).sum())
    return float((_dense(a, shape, base) * _dense(b, shape, base)).sum())


def sum_norm_sq(entries: Sequence[PatchEntry], shape: torch.Size, base: torch.Tensor | None = None) -> float:
    """``||sum_i dW_i||_F^2`` of entries on one weight."""
    return sum(inner(a, b, shape, base) for a in entries for b in entries)


def normalize_strengths(row_strengths: Sequence[float], rows_entries: Sequence[list[PatchEntry]],
                        method: Normalization, target: float, shapes: dict[str, torch.Size],
                        base_of=None) -> tuple[float, str]:
    """The common factor for every row's strengths, and a line saying what it did.

    ``row_strengths``: each enabled row's model strength; ``rows_entries``: per enabled row, its model
    entries (text-encoder entries follow the same factor).
    ``base_of(key)`` gives base weights when DoRA entries need them.
    """
    if method == "none":
        return 1.0, ""
    if not math.isfinite(target) or target <= 0:
        raise LoraLabError(f"Normalisation target {target!r} must be a positive number.", "set target to e.g. 1.0.")
    if method == "sum":
        total = sum(abs(s) for s in row_strengths)
        if total == 0:
            return 1.0, "normalise (sum): every strength is 0, nothing to scale"
        factor = target / total
        return factor, f"normalise (sum): strengths scaled by {factor:.4g} so they sum to {target:g}"
    if method == "norm":
        by_key: dict[str, list[PatchEntry]] = {}
        single = []
        for entries in rows_entries:
            sq = 0.0
            for e in entries:
                by_key.setdefault(e.weight_key, []).append(e)
                base = base_of(e.weight_key) if base_of and e.adapter.needs_base else None
                sq += inner(e, e, shapes[e.weight_key], base)
            single.append(math.sqrt(max(sq, 0.0)))
        combined = math.sqrt(max(sum(
            sum_norm_sq(es, shapes[k], base_of(k) if base_of and any(e.adapter.needs_base for e in es)
                        else None) for k, es in by_key.items()), 0.0))
        if combined == 0:
            return 1.0, "normalise (norm): the stack's delta is zero, nothing to scale"
        factor = target * max(single) / combined
        return factor, (f"normalise (norm): combined delta norm {combined:.4g}, largest single {max(single):.4g}; "
                        f"strengths scaled by {factor:.4g}")
    raise LoraLabError(f"Unknown normalisation '{method}'.", "use one of: none, sum, norm.")


def scaled(entries: Iterable[PatchEntry], factor: float) -> list[PatchEntry]:
    return [replace(e, strength=e.strength * factor) for e in entries]


@dataclass
class BlockConflict:
    """How two LoRAs of a stack relate on one block."""

    block: str
    pair: tuple[int, int]
    cosine: float            # <dA, dB> / (|dA| |dB|) over the block's shared weights
    sign_disagreement: float  # fraction of entries where both are non-zero and of opposite sign
    shared_targets: int


@dataclass
class ConflictReport:
    names: list[str]
    blocks: list[BlockConflict] = field(default_factory=list)

    def to_text(self) -> str:
        if not self.blocks:
            return "conflicts: the LoRAs of this stack share no weights"
        lines = ["conflicts (per block and pair: cosine of the deltas, share of entries with opposite signs):"]
        for i, j in sorted({c.pair for c in self.blocks}):
            lines.append(f"{self.names[i]}  vs  {self.names[j]}")
            for c in (c for c in self.blocks if c.pair == (i, j)):
                verdict = "fight" if c.cosine < -0.1 else ("agree" if c.cosine > 0.1 else "independent")
                lines.append(f"  {c.block:<6} cos {c.cosine:+.3f}  opposite signs {100 * c.sign_disagreement:5.1f}%  "
                             f"({c.shared_targets} weights, {verdict})")
        return "\n".join(lines)


def conflicts(names: list[str], rows_entries: Sequence[list[PatchEntry]], block_of, shapes: dict[str, torch.Size],
              base_of=None, block_order: Sequence[str] = ()) -> ConflictReport:
    """Per block, for every pair of rows touching the same weights: cosine similarity and sign disagreement.

    Blocks are listed in ``block_order`` (the model's block map), others after them by name.
    """
    rank = {b: i for i, b in enumerate(block_order)}
    report = ConflictReport(names=names)
    per_row: list[dict[str, list[PatchEntry]]] = []
    for entries in rows_entries:
        by_key: dict[str, list[PatchEntry]] = {}
        for e in entries:
            by_key.setdefault(e.weight_key, []).append(e)
        per_row.append(by_key)

    def row_delta(es: list[PatchEntry], key: str, base) -> torch.Tensor:
        return sum(_dense(e, shapes[key], base) for e in es)

    for i in range(len(per_row)):
        for j in range(i + 1, len(per_row)):
            shared = sorted(set(per_row[i]) & set(per_row[j]))
            acc: dict[str, list[float]] = {}
            for key in shared:
                a, b = per_row[i][key], per_row[j][key]
                base = base_of(key) if base_of and any(e.adapter.needs_base for e in a + b) else None
                da, db = row_delta(a, key, base), row_delta(b, key, base)
                both = (da != 0) & (db != 0)
                opposite = (both & ((da > 0) != (db > 0))).sum().item()
                stats = acc.setdefault(block_of(key), [0.0, 0.0, 0.0, 0, 0, 0])
                stats[0] += float((da * db).sum())
                stats[1] += float((da * da).sum())
                stats[2] += float((db * db).sum())
                stats[3] += opposite
                stats[4] += int(both.sum().item())
                stats[5] += 1
            for block in sorted(acc, key=lambda b: (rank.get(b, len(rank)), b)):
                ab, aa, bb, opp, nboth, n = acc[block]
                cos = ab / math.sqrt(aa * bb) if aa > 0 and bb > 0 else 0.0
                report.blocks.append(BlockConflict(block, (i, j), cos, opp / nboth if nboth else 0.0, n))
    return report


def conflict_chart(report: ConflictReport):
    """One bar chart per pair of LoRAs: |cosine| per block, red where they pull in opposite directions."""
    from .chart import HIGHLIGHT, Bar, bar_chart, stack, text_panel

    if not report.blocks:
        return text_panel([report.to_text()])
    charts = []
    for i, j in sorted({c.pair for c in report.blocks}):
        bars = [Bar(c.block, abs(c.cosine), f"cos {c.cosine:+.2f}, opposite signs {100 * c.sign_disagreement:.0f}%",
                    HIGHLIGHT if c.cosine < -0.1 else None)
                for c in report.blocks if c.pair == (i, j)]
        charts.append(bar_chart(bars, title=f"{report.names[i]} vs {report.names[j]}: |cosine| per block "
                                            "(red: they fight)"))
    return stack(charts)
