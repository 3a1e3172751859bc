"""The applied table and the notes a report prints for block weights."""

from __future__ import annotations

from collections.abc import Iterable

from .layout import compact_names
from .weights import BlockWeights, _short


def block_notes(weights: BlockWeights, targets: Iterable[tuple[str, bool]]) -> list[str]:
    """Report lines for these weights on one LoRA: its notes (``note: ...``), and a ``WARNING: ...`` that
    names every block the LoRA patches which a vector set to 0 because its dialect has no position for it,
    with the share of the LoRA's targets they hold and the fix.

    ``targets`` as for :func:`block_table`. An ``inspire:`` text is read for these targets first.
    """
    targets = list(targets)
    if weights.reads_file:
        weights = weights.for_targets(k for k, _ in targets)
    lines = [f"note: {note}" for note in weights.notes]
    zeroed: dict[str, int] = {}
    vectors: dict[str, None] = {}
    for key, _ in targets:
        rule = weights.rule_for(key)
        if rule is not None and rule.unpositioned:
            block = weights.block_of(key)
            zeroed[block] = zeroed.get(block, 0) + 1
            vectors.setdefault(rule.label.split(" (", 1)[0], None)
    if zeroed:
        order = list(weights.vector)
        names = compact_names(sorted(zeroed, key=lambda n: order.index(n) if n in order else len(order)))
        held = sum(zeroed.values())
        share = 100.0 * held / max(1, len(targets))
        keep = ", ".join(f"{name}=1" for name in names.split(", "))
        lines.append(
            f"WARNING: the {' / '.join(vectors)} has no position for {names}, which this LoRA patches "
            f"({held} of its {len(targets)} targets, {share:.0f}%): left out (weight 0). To apply them, name them "
            f"after the vector ('..., {keep}'), or read the vector by this file's blocks as Inspire Pack does "
            "('inspire: <the same values>').")
    return lines


def block_table(weights: BlockWeights, targets: Iterable[tuple[str, bool]]) -> str:
    """Text table: block -> weight -> targets in the file -> targets applied, then :func:`block_notes`.

    ``targets``: one ``(model_weight_key, applied)`` pair per LoRA target that matched a model or
    text-encoder weight (applied False when the factor was 0 or the target was left out). Rows: every
    block the LoRA touches, and every block the syntax named or set away from 1 that it does not touch.
    An ``inspire:`` text is read for these targets (:meth:`BlockWeights.for_targets`).
    """
    targets = list(targets)
    if weights.reads_file:
        weights = weights.for_targets(k for k, _ in targets)
    in_file: dict[str, int] = {}
    applied: dict[str, int] = {}
    factors: dict[str, set[float]] = {}
    for key, was_applied in targets:
        block = weights.block_of(key)
        in_file[block] = in_file.get(block, 0) + 1
        applied[block] = applied.get(block, 0) + (1 if was_applied else 0)
        factors.setdefault(block, set()).add(weights.factor(key))
    parts: dict[str, list[str]] = {}
    for block, sel, value in weights.part_entries():
        parts.setdefault(block, []).append(f"{sel}={_short(value)}")
    order = list(weights.vector) + sorted(b for b in in_file if b not in weights.vector)
    rows: list[tuple[str, str, str, str, str]] = []
    for block in order:
        weight = weights.vector.get(block, weights.default)
        touched = in_file.get(block, 0)
        if not touched and block not in weights.named and weight == 1.0 and block not in parts:
            continue
        shown = _short(weight) + (f" ({', '.join(parts[block])})" if block in parts else "")
        note = "not in this LoRA" if not touched else ""
        if touched and len(factors[block]) > 1 and block not in parts:
            note = "mixed: " + ", ".join(_short(f) for f in sorted(factors[block]))
        rows.append((block, shown, str(touched), str(applied.get(block, 0)), note))
    header = ("block", "weight", "in file", "applied", "")
    total = ("total", "", str(sum(in_file.values())), str(sum(applied.values())), "")
    table = [header, *rows, total]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = []
    for r in table:
        line = f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
        lines.append((line + ("  " + r[4] if r[4] else "")).rstrip())
    return "\n".join(lines + block_notes(weights, targets))
