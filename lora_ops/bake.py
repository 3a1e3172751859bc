"""Writing a planned LoRA back out as a standard kohya-format file, factors folded in.

:func:`bake_plan` turns the entries of a :class:`~lora_ops.plan.LoraPlan` (each with its strength, i.e.
the block weight times the row strength) into kohya tensors that any loader reads and that, loaded at
strength 1, give the same weights as the plan:

* each entry in its own kind's layout where the kind can scale its delta (LoRA/LoCon: ``lora_up``; LoHa:
  ``hada_w1_a``; LoKr: ``lokr_w1`` or ``lokr_w1_a``; full diffs);
* kinds whose delta depends on the base weight (DoRA, OFT/BOFT, GLoRA, set-weights), which loaders read
  differently, and targets behind a key-map transform: a full ``diff`` computed against the base weight the
  caller passes, exact for that base model in every loader;
* slices of one packed weight joined into one module of the whole weight (an exact rank concat).

Targets whose factor is 0 are left out. Names come from the caller (the host knows the kohya spelling
of each model weight), so this module stays host-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from .adapters import FullDiff
from .errors import LoraLabError
from .keymap import Target, canonical_name
from .patching import PatchEntry, delta_in_weight


def bake_entry(name: str, entry: PatchEntry, base: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one entry with its strength folded in, under module ``name``.

    The entry's own kind where the kind can scale its delta (LoRA/LoCon: ``lora_up``; LoHa: ``hada_w1_a``;
    LoKr: ``lokr_w1``; full diffs), DoRA's magnitude kept; otherwise (a delta that depends on the base
    weight: DoRA at a strength other than 1, OFT/BOFT/GLoRA/set-weights; a key-map transform) a full
    ``diff`` computed against ``base``, which is exact for that base model.
    """
    f = float(entry.strength)
    a = entry.adapter
    if entry.is_bias:
        return a.scaled(f).file_tensors(name, is_bias=True)
    # Kinds whose delta depends on the base weight (DoRA, OFT/BOFT, GLoRA, set-weights) are read differently
    # by different loaders (core ComfyUI normalises DoRA by ||W0||, squares OFT's strength...): as a full
    # diff against this base they load the same everywhere.
    if entry.target.transform is None and not a.needs_base:
        if f == 1.0:
            return a.file_tensors(name)
        if (scaled := a.scaled(f)) is not None:
            return scaled.file_tensors(name)
    if base is None:
        raise LoraLabError(f"{entry.module}: a {a.describe()} layer at strength {f:g} is written as a full diff, "
                           "which needs the model's weight.", "connect the model.")
    unit = PatchEntry(Target(entry.target.key, None, entry.target.transform), a, f, entry.module)
    diff = delta_in_weight(unit, base.shape, base.float())
    return {f"{name}.diff": diff.to(base.dtype if base.dtype in (torch.float16, torch.bfloat16) else
                                    torch.float32).contiguous()}


def bake_plan(entries: Iterable[PatchEntry], kohya_name: Callable[[PatchEntry], str],
              base_weight: Callable[[str], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """All entries with non-zero strength as one kohya-format state dict, one module per model weight.

    Entries on slices of one packed weight (Flux's qkv from diffusers' to_q/to_k/to_v) are joined into one
    module of the whole weight (:func:`lora_ops.stackmerge.in_weight_layout` and an exact rank concat),
    so the file holds one module per weight, as kohya files do.
    """
    from . import combine
    from .stackmerge import in_weight_layout

    groups: dict[str, list[PatchEntry]] = {}
    for e in entries:
        if e.strength != 0.0:
            groups.setdefault(e.weight_key, []).append(e)
    out: dict[str, torch.Tensor] = {}
    for key, group in groups.items():
        first = group[0]
        name = kohya_name(first)
        joined = len(group) > 1 or (first.target.offset is not None and not first.is_bias)
        if not joined:
            base = None
            if first.adapter.needs_base or first.target.transform is not None:
                base = base_weight(first.target.key) if base_weight is not None else None
            tensors = bake_entry(name, first, base)
        else:
            if any(e.is_bias for e in group):
                total = sum(e.adapter.delta(e.adapter.diff.shape) * e.strength for e in group)
                tensors = FullDiff(diff=total).file_tensors(name, is_bias=True)
            else:
                base = base_weight(key) if base_weight is not None else None
                if base is None:
                    raise LoraLabError(f"{first.module}: joining slices of '{key}' needs the model's weight shape.",
                                       "connect the model.")
                parts = [in_weight_layout(e, base.shape, base.float()) for e in group]
                if all(combine.is_concat_able(p) for p in parts):
                    merged = combine.merge_concat(parts, shape=base.shape)
                else:
                    merged = combine.merge_sum(parts, shape=base.shape)
                tensors = merged.file_tensors(name)
        for k, v in tensors.items():
            if k in out:
                raise LoraLabError(f"two LoRA layers bake to the same key '{k}'.",
                                   "the file names one model weight twice; keep one of its layers.")
            out[k] = v.detach().cpu().contiguous()
    return out


def network_module_for(entries: Iterable[PatchEntry]) -> str:
    """kohya's ``networks.lora`` unless LyCORIS-only kinds (LoHa, LoKr, OFT, full diffs...) are in the file."""
    kinds = {e.adapter.kind for e in entries if e.strength != 0.0}
    return "networks.lora" if kinds <= {"lora"} else "lycoris.kohya"


def modelspec_architecture(family: str | None) -> str:
    return {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
            "sdxl": "stable-diffusion-xl-v1-base/lora", "flux": "flux-1-dev/lora",
            "sd3": "stable-diffusion-v3-medium/lora"}.get(family or "", f"{family or 'unknown'}/lora")


def kohya_metadata(*, family: str | None, rank_values: Iterable[int | None], extra: Mapping[str, str],
                   network_module: str = "networks.lora") -> dict[str, str]:
    """The ``ss_*``/``modelspec.*`` keys other tools read, plus LoRA Lab's own provenance keys."""
    ranks = sorted({r for r in rank_values if r is not None})
    base_version = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}.get(family or "", "")
    meta = {"ss_network_module": network_module, "ss_base_model_version": base_version,
            "ss_network_dim": str(ranks[-1]) if ranks else "", "modelspec.architecture": modelspec_architecture(family),
            "modelspec.sai_model_spec": "1.0.0"}
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


def kohya_module_name(name: str) -> str:
    """A module name in kohya's spelling (``lora_unet_...``, ``lora_te1_...``), whatever dialect it came in."""
    c = canonical_name(name)
    if c.startswith("diffusion_model_"):
        return "lora_unet_" + c[len("diffusion_model_"):]
    return c


def lora_state_dict(parsed) -> dict[str, torch.Tensor]:
    """A parsed LoRA (``ParsedLora``) as a kohya-format state dict, losslessly: module names in kohya's
    spelling, every adapter in its own kind's layout (DoRA with its ``dora_scale``)."""
    out: dict[str, torch.Tensor] = {}
    items = [(n, a, False) for n, a in parsed.modules.items()] + [(n, a, True) for n, a in parsed.bias_diffs.items()]
    for name, adapter, is_bias in items:
        kname = kohya_module_name(name)
        tensors = adapter.file_tensors(kname, is_bias=True) if is_bias else adapter.file_tensors(kname)
        for k, v in tensors.items():
            if k in out:
                raise LoraLabError(f"two LoRA layers map to the same kohya key '{k}'.",
                                   "the file names one layer twice (in two namings); keep one of them.")
            out[k] = v.detach().cpu().contiguous()
    return out
