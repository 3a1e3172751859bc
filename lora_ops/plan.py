"""From a parsed LoRA and the host's key maps to a checked list of patches, and a report of it.

:func:`plan_lora` is the one path every LoRA Lab node takes to apply a LoRA: it matches every module
to a model or text-encoder weight (or lists it as unmatched), checks the family, the shapes and the
values, and returns a :class:`LoraPlan` whose entries the merge kernel applies.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import FamilyMismatchError, NonFiniteError
from .families import FamilyGuess, detect_family, family_label, same_family
from .formats import ParsedLora, apply_peft_alphas, parse_lora
from .keymap import KeyIndex
from .merge import PatchEntry, find_misfits, find_nonfinite, validate_shapes
from .safeio import LoraFile, read_lora_file

# A per-target multiplier (block weights): called with the model weight key, returns the factor.
WeightFn = Callable[[str], float]


@dataclass
class LoadedLora:
    """A LoRA file read and parsed once; the loader caches these so a strength change re-reads nothing."""

    file: LoraFile
    parsed: ParsedLora
    family: FamilyGuess
    sha256: str = ""
    display_name: str = ""

    @property
    def name(self) -> str:
        if self.display_name:
            return self.display_name
        return self.file.path.name if self.file.path else "LoRA"

    def content_sha256(self) -> str:
        """SHA-256 of the file, computed once per loaded file (loaders cache ``LoadedLora`` values)."""
        if not self.sha256 and self.file.path is not None:
            self.sha256 = file_sha256(self.file.path)
        return self.sha256


def load_lora(path: str | os.PathLike) -> LoadedLora:
    path = Path(path)
    f = read_lora_file(path)
    parsed = parse_lora(f.tensors, source=f"'{path.name}'")
    apply_peft_alphas(parsed, f.metadata)
    return LoadedLora(file=f, parsed=parsed, family=detect_family(parsed, f.metadata))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoraPlan:
    model_entries: list[PatchEntry] = field(default_factory=list)
    clip_entries: list[PatchEntry] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    skipped_zero: list[PatchEntry] = field(default_factory=list)  # block weight 0: matched, not applied
    warnings: list[str] = field(default_factory=list)

    @property
    def matched_count(self) -> int:
        return len({e.module for e in self.model_entries + self.clip_entries + self.skipped_zero})

    def block_targets(self) -> list[tuple[str, bool]]:
        """``(model weight key, applied)`` per matched target, for the block table."""
        return ([(e.target.key, True) for e in self.model_entries + self.clip_entries]
                + [(e.target.key, False) for e in self.skipped_zero])


def plan_lora(lora: LoadedLora, *, model_keys: Mapping[str, object] | KeyIndex,
              model_shapes: Mapping[str, torch.Size], model_family: str | None, strength_model: float = 1.0,
              clip_keys: Mapping[str, object] | KeyIndex | None = None,
              clip_shapes: Mapping[str, torch.Size] | None = None,
              strength_clip: float = 1.0, weight_fn: WeightFn | None = None,
              allow_other_family: bool = False) -> LoraPlan:
    """Match, check and weigh a LoRA for one model (and optionally its text encoder).

    ``model_keys``/``clip_keys``: the host's key maps, or :class:`~lora_ops.keymap.KeyIndex` es of them.

    Raises :class:`FamilyMismatchError` when the LoRA was made for another family (unless
    ``allow_other_family``), :class:`~lora_ops.errors.ShapeMismatchError` when matched layers do not
    fit, and :class:`NonFiniteError` when the file holds NaN/Inf.
    """
    fam = lora.family.family
    if not same_family(fam, model_family):
        message = (f"'{lora.name}' was made for {family_label(fam)} ({'; '.join(lora.family.evidence)}), "
                   f"but the model is {family_label(model_family)}.")
        if not allow_other_family:
            raise FamilyMismatchError(
                message, f"load a LoRA made for {family_label(model_family)}, or switch the model to "
                f"{family_label(fam)}; to apply the layers that fit anyway, enable allow_other_family.")
    plan = LoraPlan()
    if not same_family(fam, model_family):
        plan.warnings.append(message + " Applied anyway (allow_other_family).")

    unet_index = KeyIndex.of(model_keys)
    clip_index = KeyIndex.of(clip_keys)
    items = [(n, a, False) for n, a in lora.parsed.modules.items()]
    items += [(n, a, True) for n, a in lora.parsed.bias_diffs.items()]
    for name, adapter, is_bias in items:
        target = unet_index.lookup(name)
        entries, strength = plan.model_entries, strength_model
        if target is None and clip_keys:
            target = clip_index.lookup(name)
            entries, strength = plan.clip_entries, strength_clip
        if target is None:
            plan.unmatched.append(name)
            continue
        factor = weight_fn(target.key) if weight_fn is not None else 1.0
        entry = PatchEntry(target=target, adapter=adapter, strength=strength * factor, module=name, is_bias=is_bias)
        if factor == 0.0:
            plan.skipped_zero.append(entry)
            continue
        entries.append(entry)

    if allow_other_family:
        # Apply what fits; every layer that does not is listed instead of failing the load.
        for entries, shapes in ((plan.model_entries, model_shapes), (plan.clip_entries, clip_shapes or {})):
            misfits = find_misfits(entries, dict(shapes))
            dropped = {id(e) for e, _ in misfits}
            entries[:] = [e for e in entries if id(e) not in dropped]
            plan.unmatched.extend(e.module for e, _ in misfits)
            if misfits:
                plan.warnings.append(f"{len(misfits)} layer(s) do not fit this model's weights and were left out, "
                                     f"e.g. {misfits[0][1]}.")
    else:
        validate_shapes(plan.model_entries, dict(model_shapes))
        if plan.clip_entries:
            validate_shapes(plan.clip_entries, dict(clip_shapes or {}))
    bad = find_nonfinite(plan.model_entries + plan.clip_entries)
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise NonFiniteError(f"'{lora.name}' holds NaN or Inf values in {len(bad)} layer(s): {shown}.",
                             "the file is damaged (often an fp16 training run that diverged); use another "
                             "checkpoint of this LoRA.")
    if lora.parsed.unsupported:
        kinds = sorted(set(lora.parsed.unsupported.values()))
        plan.warnings.append(f"{len(lora.parsed.unsupported)} key(s) of kinds LoRA Lab does not apply yet "
                             f"({', '.join(kinds)}) were left out.")
    if lora.parsed.unknown_keys:
        plan.warnings.append(f"{len(lora.parsed.unknown_keys)} key(s) not recognised as LoRA weights, e.g. "
                             f"'{lora.parsed.unknown_keys[0]}'.")
    if plan.unmatched:
        plan.warnings.append(f"{len(plan.unmatched)} of {len(items)} LoRA layers match no weight of this model, "
                             f"e.g. '{plan.unmatched[0]}'.")
    if fam and lora.family.metadata_family and not lora.family.agrees_with_metadata:
        plan.warnings.append(f"the file's metadata says {family_label(lora.family.metadata_family)}, its layers "
                             f"say {family_label(fam)}.")
    return plan
