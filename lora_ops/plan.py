"""From a parsed LoRA and the host's key maps to a checked list of patches, and a report of it.

:func:`plan_lora` is the one path every LoRA Lab node takes to apply a LoRA: it matches every module
to a model or text-encoder weight (or lists it as unmatched), checks the family, the shapes and the
values, and returns a :class:`LoraPlan` whose entries the merge kernel applies.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .errors import FamilyMismatchError, LoraFileError, LoraLabError, NonFiniteError, ShapeMismatchError
from .families import FamilyGuess, detect_family, family_label, same_family
from .formats import ParsedLora, apply_peft_alphas, parse_lora
from .keymap import KeyIndex
from .patching import PatchEntry, find_misfits, find_nonfinite
from .safeio import LoraFile, file_sha256, read_lora_file

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


# The host's file conversion (ComfyUI's ``comfy.lora_convert.convert_lora``): a state dict in, a state dict out.
Convert = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def load_lora(path: str | os.PathLike, convert: Convert | None = None) -> LoadedLora:
    """Read and parse a LoRA file; ``convert`` is the host's rewrite of known file layouts (run first,
    as the host does, so a file converts exactly as the host converts it)."""
    path = Path(path)
    f = read_lora_file(path)
    tensors = f.tensors
    if convert is not None:
        try:
            tensors = convert(dict(tensors))
        except (KeyError, IndexError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
            raise LoraFileError(f"'{path.name}' looks like a layout the host converts, but converting it failed "
                                f"({type(exc).__name__}: {exc}).", "the file is incomplete or damaged; export "
                                "it again.") from exc
        f = replace(f, tensors=tensors)
    parsed = parse_lora(tensors, source=f"'{path.name}'")
    apply_peft_alphas(parsed, f.metadata)
    return LoadedLora(file=f, parsed=parsed, family=detect_family(parsed, f.metadata))


@dataclass
class LoraPlan:
    model_entries: list[PatchEntry] = field(default_factory=list)
    clip_entries: list[PatchEntry] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # names of layers not applied (misfits included)
    misfits: list[str] = field(default_factory=list)  # "name: problem" of matched layers that do not fit
    skipped_zero: list[PatchEntry] = field(default_factory=list)  # block weight 0: matched, not applied
    warnings: list[str] = field(default_factory=list)
    total: int = 0  # weights the file patches (module adapters + bias deltas)

    @property
    def applied_count(self) -> int:
        """Weights patched (one per module adapter or bias delta matched at a non-zero weight)."""
        return len(self.model_entries) + len(self.clip_entries)

    @property
    def matched_count(self) -> int:
        return len(self.model_entries) + len(self.clip_entries) + len(self.skipped_zero)

    def block_targets(self) -> list[tuple[str, bool]]:
        """``(model weight key, applied)`` per matched target, for the block table."""
        return ([(e.target.key, True) for e in self.model_entries + self.clip_entries]
                + [(e.target.key, False) for e in self.skipped_zero])


def check_strength(value: float, what: str) -> float:
    """``value`` as a float, or a :class:`LoraLabError` naming ``what`` when it is not a finite number
    (ComfyUI's min/max check lets NaN through; a NaN strength would merge as if it were 1)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise LoraLabError(f"{what} is {value!r}, not a finite number.", f"set {what} to a number such as 1.0.")
    return v


def plan_lora(lora: LoadedLora, *, model_keys: Mapping[str, object] | KeyIndex,
              model_shapes: Mapping[str, torch.Size], model_family: str | None, strength_model: float = 1.0,
              clip_keys: Mapping[str, object] | KeyIndex | None = None,
              clip_shapes: Mapping[str, torch.Size] | None = None,
              strength_clip: float = 1.0, weight_fn: WeightFn | None = None,
              allow_other_family: bool = False, model_name: str | None = None,
              refuse_unmatched: bool = True) -> LoraPlan:
    """Match, check and weigh a LoRA for one model (and optionally its text encoder).

    ``model_keys``/``clip_keys``: the host's key maps, or :class:`~lora_ops.keymap.KeyIndex` es of them;
    ``model_family``: the model's family key (:func:`~lora_ops.families.family_key`); ``model_name``: how
    messages name the model (default: the family's label).

    Refuses only on strong evidence that the LoRA is for another model: :class:`FamilyMismatchError`
    when no layer of the file matches a weight of the model, or when matched layers do not fit their
    weights and the file's layers point at another family (:class:`ShapeMismatchError` when they do not;
    ``allow_other_family`` applies what fits and lists the rest). :class:`NonFiniteError` when the file
    holds NaN/Inf; :class:`~lora_ops.errors.LoraLabError` for a strength that is not a finite number.
    ``refuse_unmatched=False`` returns a plan with every layer unmatched instead (the inspector reports it).
    """
    strength_model = check_strength(strength_model, "strength_model")
    strength_clip = check_strength(strength_clip, "strength_clip")
    model_name = model_name or family_label(model_family)
    fam = lora.family
    plan = LoraPlan()
    unet_index = KeyIndex.of(model_keys)
    clip_index = KeyIndex.of(clip_keys)
    items = [(n, a, False) for n, a in lora.parsed.modules.items()]
    items += [(n, a, True) for n, a in lora.parsed.bias_diffs.items()]
    plan.total = len(items)
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
        if not math.isfinite(factor):
            raise LoraLabError(f"the block weight of '{target.key}' is {factor}, not a finite number.",
                               "give every block a finite weight.")
        entry = PatchEntry(target=target, adapter=adapter, strength=strength * factor, module=name, is_bias=is_bias)
        if factor == 0.0:
            plan.skipped_zero.append(entry)
            continue
        entries.append(entry)

    made_for = fam.describe()
    if items and not plan.matched_count and refuse_unmatched:
        looks = f" The file looks made for {made_for}." if made_for != "unknown" else ""
        meta = f" Its metadata says {fam.metadata_value}." if fam.metadata_value else ""
        raise FamilyMismatchError(
            f"None of the {len(items)} layers of '{lora.name}' matches a weight of this model ({model_name}), so "
            f"it would change nothing: its layer names (e.g. '{items[0][0]}') are not names the host's key map "
            f"for this model knows.{looks}{meta}",
            f"load a LoRA made for {model_name} (or load the model this LoRA was trained on); a file in a "
            "naming this ComfyUI does not map may need converting to ComfyUI's names"
            + ("" if clip_keys else "; if it is a text-encoder LoRA, connect the CLIP input") + ".")

    misfits = []
    for entries, shapes in ((plan.model_entries, model_shapes), (plan.clip_entries, clip_shapes or {})):
        found = find_misfits(entries, dict(shapes))
        dropped = {id(e) for e, _ in found}
        if allow_other_family:
            entries[:] = [e for e in entries if id(e) not in dropped]
        misfits += found
    if misfits:
        plan.misfits = [problem for _, problem in misfits]
        shown = "; ".join(plan.misfits[:5]) + (f" (and {len(misfits) - 5} more)" if len(misfits) > 5 else "")
        other = fam.family is not None and not same_family(fam.family, model_family)
        if not allow_other_family:
            problem = (f"{len(misfits)} of the {len(items)} layers of '{lora.name}' do not fit this model's weights "
                       f"({shown}).")
            fix = ("load a LoRA made for this model; to apply the layers that fit anyway, enable "
                   "allow_other_family.")
            if other:
                raise FamilyMismatchError(f"'{lora.name}' was made for {made_for}, but the model is {model_name}: "
                                          + problem, fix)
            raise ShapeMismatchError(problem + f" The file looks made for {made_for}.", fix)
        plan.unmatched.extend(e.module for e, _ in misfits)
        if other:
            plan.warnings.append(f"'{lora.name}' was made for {made_for}, but the model is {model_name}; the "
                                 "layers that fit were applied anyway (allow_other_family).")
        plan.warnings.append(f"{len(misfits)} layer(s) do not fit this model's weights and were left out "
                             f"(allow_other_family), e.g. {misfits[0][1]}.")
    bad = find_nonfinite(plan.model_entries + plan.clip_entries)
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise NonFiniteError(f"'{lora.name}' holds NaN or Inf values in {len(bad)} layer(s): {shown}.",
                             "the file is damaged (often an fp16 training run that diverged); use another "
                             "checkpoint of this LoRA.")
    if lora.parsed.unsupported:
        kinds = sorted(set(lora.parsed.unsupported.values()))
        plan.warnings.append(f"{len(lora.parsed.unsupported)} key(s) of kinds neither LoRA Lab nor core ComfyUI "
                             f"applies ({', '.join(kinds)}) were left out.")
    if lora.parsed.unknown_keys:
        plan.warnings.append(f"{len(lora.parsed.unknown_keys)} key(s) not recognised as LoRA weights, e.g. "
                             f"'{lora.parsed.unknown_keys[0]}'.")
    plan.warnings += lora.parsed.notes
    not_found = len(plan.unmatched) - len(misfits if allow_other_family else [])
    if not_found:
        plan.warnings.append(f"{not_found} of {len(items)} LoRA layers match no weight of this model, "
                             f"e.g. '{plan.unmatched[0]}'.")
    if fam.metadata_family and fam.metadata_family != model_family and not same_family(fam.metadata_family,
                                                                                         model_family):
        plan.warnings.append(f"the file's metadata says it was made for {fam.metadata_value}; the model is "
                             f"{model_name}.")
    elif fam.family and fam.metadata_family and not fam.agrees_with_metadata:
        plan.warnings.append(f"the file's metadata says {family_label(fam.metadata_family)}, its layers say "
                             f"{family_label(fam.family)}.")
    return plan
