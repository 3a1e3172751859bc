"""The analysis: planning against a model without refusing, health per layer, energy per block."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from ..adapters import Adapter
from ..blocks import block_of, family_blocks
from ..errors import LoraLabError, NonFiniteError
from ..keymap import KeyIndex
from ..numerics import FP16_OVERFLOW, FP16_UNDERFLOW
from ..patching import PatchEntry, factors_finite, target_view
from ..plan import LoadedLora, LoraPlan, load_lora, plan_lora
from .file_blocks import file_block
from .metadata import training_info
from .result import (
    UNDERFLOW_SHARE,
    UNMATCHED_BLOCK,
    VERDICT_COMPATIBLE,
    VERDICT_OTHER_FAMILY,
    VERDICT_PARTIAL,
    BlockEnergy,
    Inspection,
    LayerFinding,
    _is_text_encoder,
    algorithm_headline,
)


def plan_for_inspection(lora: LoadedLora, *, model_keys: Mapping[str, object] | KeyIndex,
                        model_shapes: Mapping[str, torch.Size], model_family: str | None,
                        clip_keys: Mapping[str, object] | KeyIndex | None = None,
                        clip_shapes: Mapping[str, torch.Size] | None = None) -> LoraPlan:
    """:func:`~lora_ops.plan.plan_lora` at strength 1 that reports instead of refusing.

    Another family or misfitting shapes become unmatched targets (``allow_other_family``); layers with
    NaN/Inf, which ``plan_lora`` refuses, are matched by name only, so that the inspection can name them.
    """
    host = dict(model_keys=model_keys, model_shapes=model_shapes, model_family=model_family,
                clip_keys=clip_keys, clip_shapes=clip_shapes, allow_other_family=True, refuse_unmatched=False)
    try:
        return plan_lora(lora, **host)
    except NonFiniteError:
        pass
    bad = {n for n, a in lora.parsed.modules.items() if not factors_finite(a)}
    bad_bias = {n for n, a in lora.parsed.bias_diffs.items() if not factors_finite(a)}
    clean = replace(lora, parsed=replace(
        lora.parsed, modules={n: a for n, a in lora.parsed.modules.items() if n not in bad},
        bias_diffs={n: a for n, a in lora.parsed.bias_diffs.items() if n not in bad_bias}))
    plan = plan_lora(clean, **host)
    unet_index, clip_index = KeyIndex.of(model_keys), KeyIndex.of(clip_keys)
    for names, source, is_bias in ((bad, lora.parsed.modules, False), (bad_bias, lora.parsed.bias_diffs, True)):
        for name in sorted(names):
            target, entries = unet_index.lookup(name), plan.model_entries
            if target is None and clip_keys:
                target, entries = clip_index.lookup(name), plan.clip_entries
            if target is None:
                plan.unmatched.append(name)
            else:
                entries.append(PatchEntry(target=target, adapter=source[name], strength=1.0, module=name,
                                          is_bias=is_bias))
    return plan


# --- the analysis --------------------------------------------------------------------------------

@dataclass
class _Target:
    name: str
    adapter: Adapter
    block: str
    entry: PatchEntry | None = None


def _targets(lora: LoadedLora, plan: LoraPlan | None, block_family: str | None,
             by_model: bool) -> Iterator[_Target]:
    parsed = lora.parsed
    seen: set[tuple[str, bool]] = set()
    if plan is not None and by_model:
        for e in plan.model_entries + plan.clip_entries + plan.skipped_zero:
            seen.add((e.module, e.is_bias))
            yield _Target(e.module, e.adapter, block_of(block_family, e.weight_key), e)
    for is_bias, source in ((False, parsed.modules), (True, parsed.bias_diffs)):
        for name, adapter in source.items():
            if (name, is_bias) in seen:
                continue
            block = UNMATCHED_BLOCK if (plan is not None and by_model) else file_block(name, block_family)
            yield _Target(name, adapter, block)


def _stored_tensors(adapter: Adapter) -> list[torch.Tensor]:
    return [t for t in vars(adapter).values() if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _underflow_share(a: torch.Tensor) -> tuple[int, float]:
    """(count, share of non-zero values) of ``|a|`` values that round to 0 in fp16."""
    nonzero = int(torch.count_nonzero(a))
    if nonzero == 0:
        return 0, 0.0
    under = int(torch.count_nonzero((a > 0) & (a <= FP16_UNDERFLOW)))
    return under, under / nonzero


def _base_for(entry: PatchEntry, base_weights: Callable[[str], torch.Tensor]) -> torch.Tensor | None:
    try:
        weight = base_weights(entry.weight_key)
    except (KeyError, AttributeError, LoraLabError):
        return None
    if weight is None:
        return None
    if entry.target.offset is not None and not entry.is_bias:
        weight = target_view(weight, entry.target.offset)
    return weight.detach().to(device="cpu", dtype=torch.float32)


def _analyse_target(t: _Target, base: torch.Tensor | None, findings: list[LayerFinding]
                    ) -> tuple[float, float | None] | None:
    """Health findings of one target; returns ``(||dW||_F^2, max |W + dW| or None)`` or ``None`` if unusable."""
    def flag(kind: str, detail: str = "") -> None:
        findings.append(LayerFinding(t.name, kind, t.block, detail))

    stored = _stored_tensors(t.adapter)
    if any(not torch.isfinite(s).all() for s in stored):
        flag("nonfinite", "in the stored values")
        return None
    stored_max = max((float(s.abs().max()) for s in stored if s.numel()), default=0.0)
    if stored_max >= FP16_OVERFLOW:
        flag("file_overflow", f"(max {stored_max:.4g})")
    under = [_underflow_share(s.abs().float()) for s in stored if s.dtype != torch.float16]
    count = sum(u[0] for u in under)
    nonzero_total = sum(int(torch.count_nonzero(s)) for s in stored if s.dtype != torch.float16)
    if count and count / max(nonzero_total, 1) >= UNDERFLOW_SHARE:
        flag("file_underflow", f"({count} values, {count / nonzero_total:.1%})")
    try:
        with torch.no_grad():
            if base is not None and t.entry is not None:
                delta = t.entry.delta(base.shape, base=base)
            elif t.adapter.weight_dependent:
                flag("needs_model")
                return None
            else:  # without the model, DoRA's direction only (the magnitude rescale needs W0)
                inner = t.adapter.without_magnitude() if t.adapter.magnitude is not None else t.adapter
                delta = inner.delta((-1,), dtype=torch.float32)
    except (RuntimeError, ValueError) as exc:
        flag("error", f"({exc})")
        return None
    a = delta.abs()
    if not torch.isfinite(a).all():
        flag("nonfinite", "in the delta")
        return None
    amax = float(a.max()) if a.numel() else 0.0
    if amax == 0.0:
        flag("zero")
    if amax >= FP16_OVERFLOW:
        flag("delta_overflow", f"(max {amax:.4g})")
    count, share = _underflow_share(a)
    if count and share >= UNDERFLOW_SHARE:
        flag("delta_underflow", f"({count} values, {share:.1%})")
    energy = float(torch.linalg.vector_norm(delta)) ** 2
    merged_max = None
    if base is not None:
        merged_max = float((base + delta.reshape(base.shape)).abs().max()) if base.numel() else 0.0
        if merged_max >= FP16_OVERFLOW:
            flag("merged_overflow", f"(max |W + dW| {merged_max:.4g})")
    return energy, merged_max


def _block_order(block_family: str | None, found: Sequence[str]) -> list[str]:
    order = family_blocks(block_family)
    extra = sorted((b for b in found if b not in order and b != UNMATCHED_BLOCK), key=_natural_key)
    tail = [UNMATCHED_BLOCK] if UNMATCHED_BLOCK in found else []
    return order + extra + tail


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def inspect_lora(lora: LoadedLora, *, plan: LoraPlan | None = None, model_family: str | None = None,
                 base_weights: Callable[[str], torch.Tensor] | None = None, block_family: str | None = None,
                 analyse_weights: bool = True, model_name: str | None = None) -> Inspection:
    """Inspect a loaded LoRA, optionally against a model's plan (see the module docstring).

    ``plan``: the LoRA planned for the model (:func:`plan_for_inspection`), for matched/unmatched and
    the verdict, and to name blocks by the model's keys. ``base_weights(key)`` returns the model's
    unpatched weight for a weight key (any dtype; read one at a time), for the DoRA delta and the
    |W + dW| check. ``block_family`` picks the block map (default: the model's family, else the
    LoRA's). ``analyse_weights=False`` skips the deltas (health and energy stay ``None``): what the
    loader's report uses.
    """
    parsed, fam = lora.parsed, lora.family
    adapters = list(parsed.modules.values())
    all_names = list(parsed.modules) + list(parsed.bias_diffs)
    text_targets = sum(1 for n in all_names if _is_text_encoder(n))
    tensors = list(lora.file.tensors.values())
    if not tensors:  # an in-memory LORA value (a merge, a training run): count what the adapters hold
        tensors = [t for a in (*adapters, *parsed.bias_diffs.values()) for t in vars(a).values()
                   if isinstance(t, torch.Tensor)]
    insp = Inspection(
        name=lora.name, path=str(lora.file.path) if lora.file.path else None, file_size=lora.file.size_bytes,
        format=parsed.format, algorithms=parsed.algorithms, algorithm=algorithm_headline(parsed.algorithms),
        targets=len(all_names), model_targets=len(all_names) - text_targets, text_targets=text_targets,
        tensors=len(tensors), parameters=sum(t.numel() for t in tensors),
        ranks=dict(Counter(a.rank for a in adapters).most_common()),
        alphas=dict(Counter(a.alpha for a in adapters).most_common()),
        dtypes=dict(Counter(str(t.dtype).replace("torch.", "") for t in tensors).most_common()),
        family=fam.family, family_evidence=list(fam.evidence), metadata_family=fam.metadata_family,
        training=training_info(lora.file.metadata), unsupported=dict(parsed.unsupported),
        unknown_keys=list(parsed.unknown_keys), model_family=model_family, model_name=model_name)

    other_family = False
    if plan is not None:
        # strong evidence only: layers that do not fit the model's weights, or nothing that matches
        other_family = bool(plan.misfits) or (insp.targets > 0 and plan.matched_count == 0)
        insp.unmatched = list(plan.unmatched)
        insp.matched = insp.targets - len(plan.unmatched)
        if other_family:
            insp.verdict = VERDICT_OTHER_FAMILY
        elif not plan.unmatched:
            insp.verdict = VERDICT_COMPATIBLE
        else:
            insp.verdict = VERDICT_PARTIAL
            if all(_is_text_encoder(n) for n in plan.unmatched):
                insp.notes.append("every unmatched target is a text-encoder layer: connect the CLIP input to "
                                  "match them.")
    if not analyse_weights:
        return insp

    by_model = plan is not None and not other_family
    if block_family is None:
        block_family = model_family if by_model else fam.family
    insp.block_family = block_family
    insp.block_source = "model's weight keys" if by_model else "file's module names"
    if other_family:
        insp.notes.append(f"blocks are named after the layout of the LoRA's own layers ({fam.describe()}), not "
                          f"after the model's.")
    findings: list[LayerFinding] = []
    sums: dict[str, list] = {}
    dora_without_base = False
    for t in _targets(lora, plan, block_family, by_model):
        base = None
        if base_weights is not None and t.entry is not None:
            base = _base_for(t.entry, base_weights)
            insp.base_checked = insp.base_checked or base is not None
        dora_without_base |= t.adapter.magnitude is not None and base is None
        slot = sums.setdefault(t.block, [0.0, 0, None])
        result = _analyse_target(t, base, findings)
        slot[1] += 1
        if result is None:
            continue
        energy, merged_max = result
        slot[0] += energy
        if merged_max is not None:
            slot[2] = merged_max if slot[2] is None else max(slot[2], merged_max)
    insp.findings = findings
    insp.energy = [BlockEnergy(b, math.sqrt(sums[b][0]) if b in sums else 0.0, sums[b][1] if b in sums else 0,
                               sums[b][2] if b in sums else None)
                   for b in _block_order(block_family, list(sums))]
    if dora_without_base:
        insp.notes.append("DoRA layers: energies are of the low-rank direction only; the magnitude rescale "
                          "needs the model's weights (connect a model).")
    skipped = [f.layer for f in findings if f.kind in ("nonfinite", "error")]
    if skipped:
        insp.notes.append(f"{len(skipped)} layer(s) with NaN/Inf or no delta are left out of the block energy.")
    return insp


def inspect_file(path) -> Inspection:
    """Read, parse and inspect one file without a model (what the command line prints)."""
    return inspect_lora(load_lora(path))
