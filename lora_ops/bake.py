"""Writing a planned LoRA back out as a standard kohya-format file, factors folded in.

:func:`bake_plan` turns the entries of a :class:`~lora_ops.plan.LoraPlan` (each with its strength, i.e.
the block weight times the row strength) into kohya tensors that any loader reads and that, loaded at
strength 1, give the same weights as the plan:

* LoRA/LoCon: ``lora_up`` scaled by the factor, ``lora_down``/``lora_mid`` as they were, ``alpha``
  written so that ``alpha / rank`` is the adapter's scale (files without alpha get ``alpha = rank``);
* LoHa: ``hada_w1_a`` scaled; LoKr: ``lokr_w1`` (or ``lokr_w1_a``) scaled;
* full diffs: scaled;
* DoRA: its delta depends on the base weight, so it is written as a full ``diff`` computed against the
  base weight the caller passes (``factor * dora_delta(W0)``), which is exact for that base model.

Targets whose factor is 0 are left out. Names come from the caller (the host knows the kohya spelling
of each model weight), so this module stays host-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import torch

from .adapters import FullDiff, LohaWeights, LokrWeights, LoraWeights, dora_delta
from .keymap import Target, canonical_name
from .merge import PatchEntry, target_view


def _alpha_for(scale: float, rank: int) -> torch.Tensor:
    return torch.tensor(float(scale * rank), dtype=torch.float32)


def bake_entry(name: str, entry: PatchEntry, base: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Kohya tensors for one entry with its strength folded in (``base`` only needed for DoRA)."""
    f = float(entry.strength)
    a = entry.adapter
    if entry.is_bias:
        return {f"{name}.diff_b": (a.delta(a.diff.shape) * f).contiguous()}
    if a.magnitude is not None:
        if base is None:
            raise ValueError(f"{entry.module}: baking a DoRA target needs the model's base weight")
        return {f"{name}.diff": (dora_delta(base.float(), a) * f).to(base.dtype).contiguous()}
    if isinstance(a, LoraWeights):
        out = {f"{name}.lora_up.weight": (a.up.float() * f).to(a.up.dtype), f"{name}.lora_down.weight": a.down,
               f"{name}.alpha": _alpha_for(a.scale, a.rank)}
        if a.mid is not None:
            out[f"{name}.lora_mid.weight"] = a.mid
        return out
    if isinstance(a, LohaWeights):
        out = {f"{name}.hada_w1_a": (a.w1a.float() * f).to(a.w1a.dtype), f"{name}.hada_w1_b": a.w1b,
               f"{name}.hada_w2_a": a.w2a, f"{name}.hada_w2_b": a.w2b, f"{name}.alpha": _alpha_for(a.scale, a.rank)}
        for part, t in (("hada_t1", a.t1), ("hada_t2", a.t2)):
            if t is not None:
                out[f"{name}.{part}"] = t
        return out
    if isinstance(a, LokrWeights):
        out: dict[str, torch.Tensor] = {}
        for part, t in (("lokr_w1", a.w1), ("lokr_w1_a", a.w1a), ("lokr_w1_b", a.w1b), ("lokr_w2", a.w2),
                        ("lokr_w2_a", a.w2a), ("lokr_w2_b", a.w2b), ("lokr_t2", a.t2)):
            if t is not None:
                out[f"{name}.{part}"] = t
        first = "lokr_w1" if a.w1 is not None else "lokr_w1_a"
        out[f"{name}.{first}"] = (out[f"{name}.{first}"].float() * f).to(out[f"{name}.{first}"].dtype)
        if a.rank is not None:
            out[f"{name}.alpha"] = _alpha_for(a.scale, a.rank)
        return out
    if isinstance(a, FullDiff):
        return {f"{name}.diff": (a.diff.float() * f).to(a.diff.dtype)}
    raise TypeError(f"cannot bake adapter {type(a).__name__}")


def bake_plan(entries: Iterable[PatchEntry], kohya_name: Callable[[PatchEntry], str],
              base_weight: Callable[[str], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """All entries with non-zero strength as one kohya-format state dict."""
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        if e.strength == 0.0:
            continue
        base = None
        if e.adapter.magnitude is not None and base_weight is not None:
            base = target_view(base_weight(e.target.key), e.target.offset)
        for k, v in bake_entry(kohya_name(e), e, base).items():
            if k in out:
                raise ValueError(f"two LoRA layers bake to the same key '{k}'")
            out[k] = v.detach().cpu().contiguous()
    return out


def network_module_for(entries: Iterable[PatchEntry]) -> str:
    """kohya's ``networks.lora`` unless LyCORIS-only kinds (LoHa, LoKr, full diffs) are in the file."""
    kinds = {type(e.adapter) for e in entries if e.strength != 0.0}
    return "lycoris.kohya" if kinds & {LohaWeights, LokrWeights, FullDiff} else "networks.lora"


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
    """A parsed LoRA (``ParsedLora``) as a kohya-format state dict, losslessly.

    Module names are rewritten to kohya's spelling; DoRA keeps its factors and ``dora_scale``.
    """
    out: dict[str, torch.Tensor] = {}
    items = [(n, a, False) for n, a in parsed.modules.items()] + [(n, a, True) for n, a in parsed.bias_diffs.items()]
    for name, adapter, is_bias in items:
        kname = kohya_module_name(name)
        magnitude = adapter.magnitude
        if magnitude is not None:
            adapter = replace(adapter, magnitude=None)
        tensors = bake_entry(kname, PatchEntry(Target(name), adapter, 1.0, name, is_bias))
        if magnitude is not None:
            tensors[f"{kname}.dora_scale"] = magnitude
        for k, v in tensors.items():
            if k in out:
                raise ValueError(f"two LoRA layers map to the same kohya key '{k}'")
            out[k] = v.detach().cpu().contiguous()
    return out
