"""Family-specific LoRA namings of :mod:`testkit.family_loras`.

- ``diffusers``: a PEFT LoRA on the diffusers 0.35 transformer class of the family, built small with a
  config aligned to the ComfyUI small model, saved by the family's ``*LoraLoaderMixin.save_lora_weights``
  (``transformer.<module>.lora_A.weight`` / ``lora_B.weight``, alpha only in the ``lora_adapter_metadata``
  header). Targets: every ``Linear`` of the transformer (blocks, embedders, ``norm_out.linear``,
  ``proj_out``) up to ``MAX_TARGET_NUMEL`` elements. The diffusers twin holds the ComfyUI model's weights
  where a mapping between the two is known, from one of three sources (recorded as ``mapping_source``):
  ``"diffusers_converter"`` (diffusers' own single-file converter run on index-marked ComfyUI weights, so
  every diffusers element is traced back to the ComfyUI element it came from: an independent mapping),
  ``"core_key_map"`` (core's ``model_lora_keys_unet`` entries for ``transformer.*``, where diffusers'
  converter hard-codes full-size widths: Flux, Chroma, PixArt), ``"identity"`` (Qwen-Image: the same
  module names) or ``"none"`` (HunyuanVideo, Lumina2, Mochi: diffusers' converters hard-code full-size
  widths and core has no map; the twin keeps its own seeded weights and no ComfyUI target is recorded).
  PixArt's transformer has no LoRA mixin or ``add_adapter``: PEFT's ``inject_adapter_in_model`` and the
  transformer-only ``AuraFlowLoraLoaderMixin.save_lora_weights`` write the same layout.
- ``lycoris_simpletuner``: ``lycoris.create_lycoris`` on the same diffusers twin with LyCORIS's default
  ``lycoris_`` prefix (SimpleTuner's files: ``lycoris_<diffusers module with underscores>``), algos
  ``SIMPLETUNER_ALGOS``, for the families whose twin holds the ComfyUI weights.
- ``onetrainer``: ``lora_transformer_<diffusers module with underscores>`` + ``lora_down``/``lora_up``/
  ``alpha`` (Flux, Chroma, SD3: where core maps it).
- ``diffusion_pipe``: ``transformer.<original HunyuanVideo module>`` + ``lora_A``/``lora_B`` (the names
  before ComfyUI's ``HunyuanVideo.process_unet_state_dict`` renames them).
- ``wan_fun``: ``lora_unet__<module with underscores>`` (the Wan Fun release's double underscore that
  ``comfy.lora_convert.convert_lora`` rewrites).
- ``bfl_control``: BFL's Flux Depth/Canny control LoRA layout: ``<module>.lora_A.weight`` / ``lora_B.weight``
  / ``lora_B.bias`` (no alpha: scale 1), ``img_in`` widened to twice the input channels, and every
  ``*_norm.scale`` as a full replacement.
- ``qwen_default``: ``<module>.lora_A.default.weight`` / ``lora_B.default.weight`` (PEFT's adapter name
  left in; no alpha: scale 1).
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from testkit import families
from testkit import family_loras as fl

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# diffusers twins


@dataclass(frozen=True)
class DiffusersSpec:
    """diffusers transformer class of a family, its config aligned to the small ComfyUI model, where the
    mapping between the two comes from, and the mixin whose ``save_lora_weights`` writes the file."""

    cls: str
    config: Callable[[dict[str, Any]], dict[str, Any]]
    mapping: str  # "diffusers_converter" | "core_key_map" | "identity" | "none"
    mixin: str
    converter: str | None = None


def _flux_cfg(u: dict[str, Any]) -> dict[str, Any]:
    p = u["patch_size"]
    return {
        "patch_size": 1,
        "in_channels": u["in_channels"] * p * p,
        "out_channels": u["out_channels"] * p * p,
        "num_layers": u["depth"],
        "num_single_layers": u["depth_single_blocks"],
        "attention_head_dim": u["hidden_size"] // u["num_heads"],
        "num_attention_heads": u["num_heads"],
        "joint_attention_dim": u["context_in_dim"],
        "pooled_projection_dim": u["vec_in_dim"],
        "guidance_embeds": u["guidance_embed"],
        "axes_dims_rope": tuple(u["axes_dim"]),
    }


def _chroma_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "patch_size": 1,
        "in_channels": u["in_channels"],
        "out_channels": u["out_channels"],
        "num_layers": u["depth"],
        "num_single_layers": u["depth_single_blocks"],
        "attention_head_dim": u["hidden_size"] // u["num_heads"],
        "num_attention_heads": u["num_heads"],
        "joint_attention_dim": u["context_in_dim"],
        "axes_dims_rope": tuple(u["axes_dim"]),
        "approximator_num_channels": u["in_dim"],
        "approximator_hidden_dim": u["hidden_dim"],
        "approximator_layers": u["n_layers"],
    }


def _sd3_cfg(u: dict[str, Any]) -> dict[str, Any]:
    hidden = 64 * u["depth"]
    return {
        "sample_size": u["pos_embed_max_size"],
        "patch_size": u["patch_size"],
        "in_channels": u["in_channels"],
        "num_layers": u["depth"],
        "attention_head_dim": 64,
        "num_attention_heads": u["depth"],
        "joint_attention_dim": u["context_embedder_config"]["params"]["in_features"],
        "caption_projection_dim": hidden,
        "pooled_projection_dim": u["adm_in_channels"],
        "out_channels": u["out_channels"],
        "pos_embed_max_size": u["pos_embed_max_size"],
        "dual_attention_layers": tuple(u["x_block_self_attn_layers"]),
        "qk_norm": "rms_norm" if u.get("qk_norm") == "rms" else None,
    }


def _aura_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "sample_size": 16,
        "patch_size": u["patch_size"],
        "in_channels": u["in_channels"],
        "num_mmdit_layers": u["n_double_layers"],
        "num_single_dit_layers": u["n_layers"] - u["n_double_layers"],
        "attention_head_dim": u["dim"] // u["n_heads"],
        "num_attention_heads": u["n_heads"],
        "joint_attention_dim": u["cond_seq_dim"],
        "caption_projection_dim": u["dim"],
        "out_channels": u["out_channels"],
        "pos_embed_max_size": u["max_seq"],
    }


def _pixart_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "num_attention_heads": u["num_heads"],
        "attention_head_dim": u["hidden_size"] // u["num_heads"],
        "in_channels": u["in_channels"],
        "out_channels": 2 * u["in_channels"],
        "num_layers": u["depth"],
        "cross_attention_dim": u["hidden_size"],
        "sample_size": u["input_size"],
        "patch_size": u["patch_size"],
        "caption_channels": u["caption_channels"],
        "interpolation_scale": 1,
        "use_additional_conditions": u["micro_condition"],
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
    }


def _hidream_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "patch_size": u["patch_size"],
        "in_channels": u["in_channels"],
        "out_channels": u["out_channels"],
        "num_layers": u["num_layers"],
        "num_single_layers": u["num_single_layers"],
        "attention_head_dim": u["attention_head_dim"],
        "num_attention_heads": u["num_attention_heads"],
        "caption_channels": list(u["caption_channels"]),
        "text_emb_dim": u["text_emb_dim"],
        "num_routed_experts": u["num_routed_experts"],
        "num_activated_experts": u["num_activated_experts"],
        "axes_dims_rope": tuple(u["axes_dims_rope"]),
        "max_resolution": tuple(u["max_resolution"]),
        "llama_layers": list(u["llama_layers"]),
    }


def _qwen_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "patch_size": u["patch_size"],
        "in_channels": u["in_channels"],
        "out_channels": u["out_channels"],
        "num_layers": u["num_layers"],
        "attention_head_dim": u["attention_head_dim"],
        "num_attention_heads": u["num_attention_heads"],
        "joint_attention_dim": u["joint_attention_dim"],
        "axes_dims_rope": tuple(u["axes_dims_rope"]),
    }


def _wan_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "patch_size": tuple(u["patch_size"]),
        "num_attention_heads": u["num_heads"],
        "attention_head_dim": u["dim"] // u["num_heads"],
        "in_channels": u["in_dim"],
        "out_channels": u["out_dim"],
        "text_dim": u["text_dim"],
        "freq_dim": u["freq_dim"],
        "ffn_dim": u["ffn_dim"],
        "num_layers": u["num_layers"],
        "cross_attn_norm": u["cross_attn_norm"],
        "qk_norm": "rms_norm_across_heads",
        "eps": u["eps"],
        "image_dim": 1280 if u["model_type"] == "i2v" else None,
    }


def _ltxv_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "in_channels": u["in_channels"],
        "out_channels": u["in_channels"],
        "patch_size": 1,
        "patch_size_t": 1,
        "num_attention_heads": u["num_attention_heads"],
        "attention_head_dim": u["attention_head_dim"],
        "cross_attention_dim": u["cross_attention_dim"],
        "num_layers": u["num_layers"],
        "caption_channels": u["caption_channels"],
    }


def _hyv_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "in_channels": u["in_channels"],
        "out_channels": u["out_channels"],
        "num_attention_heads": u["num_heads"],
        "attention_head_dim": u["hidden_size"] // u["num_heads"],
        "num_layers": u["depth"],
        "num_single_layers": u["depth_single_blocks"],
        "num_refiner_layers": 2,
        "mlp_ratio": u["mlp_ratio"],
        "patch_size": u["patch_size"][1],
        "patch_size_t": u["patch_size"][0],
        "guidance_embeds": u["guidance_embed"],
        "text_embed_dim": u["context_in_dim"],
        "pooled_projection_dim": u["vec_in_dim"],
        "rope_theta": float(u["theta"]),
        "rope_axes_dim": tuple(u["axes_dim"]),
    }


def _lumina_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "sample_size": 16,
        "patch_size": u["patch_size"],
        "in_channels": u["in_channels"],
        "hidden_size": u["dim"],
        "num_layers": u["n_layers"],
        "num_refiner_layers": u["n_refiner_layers"],
        "num_attention_heads": u["n_heads"],
        "num_kv_heads": u["n_kv_heads"],
        "multiple_of": u["multiple_of"],
        "ffn_dim_multiplier": u["ffn_dim_multiplier"],
        "axes_dim_rope": tuple(u["axes_dims"]),
        "axes_lens": tuple(u["axes_lens"]),
        "cap_feat_dim": u["cap_feat_dim"],
    }


def _mochi_cfg(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "patch_size": u["patch_size"],
        "num_attention_heads": u["num_heads"],
        "attention_head_dim": u["hidden_size_x"] // u["num_heads"],
        "num_layers": u["depth"],
        "pooled_projection_dim": u["hidden_size_y"],
        "in_channels": u["in_channels"],
        "text_embed_dim": u["t5_feat_dim"],
        "max_sequence_length": u["t5_token_length"],
    }


DIFFUSERS: dict[str, DiffusersSpec] = {
    "flux": DiffusersSpec("FluxTransformer2DModel", _flux_cfg, "core_key_map", "FluxLoraLoaderMixin"),
    "flux_schnell": DiffusersSpec("FluxTransformer2DModel", _flux_cfg, "core_key_map", "FluxLoraLoaderMixin"),
    "flux_inpaint": DiffusersSpec("FluxTransformer2DModel", _flux_cfg, "core_key_map", "FluxLoraLoaderMixin"),
    "chroma": DiffusersSpec("ChromaTransformer2DModel", _chroma_cfg, "core_key_map", "FluxLoraLoaderMixin"),
    "sd3": DiffusersSpec(
        "SD3Transformer2DModel",
        _sd3_cfg,
        "diffusers_converter",
        "SD3LoraLoaderMixin",
        "convert_sd3_transformer_checkpoint_to_diffusers",
    ),
    "auraflow": DiffusersSpec(
        "AuraFlowTransformer2DModel",
        _aura_cfg,
        "diffusers_converter",
        "AuraFlowLoraLoaderMixin",
        "convert_auraflow_transformer_checkpoint_to_diffusers",
    ),
    "pixart_alpha": DiffusersSpec(
        "PixArtTransformer2DModel", _pixart_cfg, "core_key_map", "AuraFlowLoraLoaderMixin"
    ),
    "pixart_sigma": DiffusersSpec(
        "PixArtTransformer2DModel", _pixart_cfg, "core_key_map", "AuraFlowLoraLoaderMixin"
    ),
    "hidream": DiffusersSpec(
        "HiDreamImageTransformer2DModel",
        _hidream_cfg,
        "diffusers_converter",
        "HiDreamImageLoraLoaderMixin",
        "convert_hidream_transformer_to_diffusers",
    ),
    "qwen_image": DiffusersSpec(
        "QwenImageTransformer2DModel", _qwen_cfg, "identity", "QwenImageLoraLoaderMixin"
    ),
    "wan21_t2v": DiffusersSpec(
        "WanTransformer3DModel",
        _wan_cfg,
        "diffusers_converter",
        "WanLoraLoaderMixin",
        "convert_wan_transformer_to_diffusers",
    ),
    "wan21_i2v": DiffusersSpec(
        "WanTransformer3DModel",
        _wan_cfg,
        "diffusers_converter",
        "WanLoraLoaderMixin",
        "convert_wan_transformer_to_diffusers",
    ),
    "wan22_t2v": DiffusersSpec(
        "WanTransformer3DModel",
        _wan_cfg,
        "diffusers_converter",
        "WanLoraLoaderMixin",
        "convert_wan_transformer_to_diffusers",
    ),
    "ltxv": DiffusersSpec(
        "LTXVideoTransformer3DModel",
        _ltxv_cfg,
        "diffusers_converter",
        "LTXVideoLoraLoaderMixin",
        "convert_ltx_transformer_checkpoint_to_diffusers",
    ),
    "hunyuan_video": DiffusersSpec(
        "HunyuanVideoTransformer3DModel", _hyv_cfg, "none", "HunyuanVideoLoraLoaderMixin"
    ),
    "lumina2": DiffusersSpec("Lumina2Transformer2DModel", _lumina_cfg, "none", "Lumina2LoraLoaderMixin"),
    "mochi": DiffusersSpec("MochiTransformer3DModel", _mochi_cfg, "none", "Mochi1LoraLoaderMixin"),
}


@dataclass
class Link:
    """Where a diffusers parameter's elements live in the ComfyUI model: ``comfy_key`` and the flat index
    of each element (``diffusers.flatten() == comfy.flatten()[index]``)."""

    comfy_key: str
    index: torch.Tensor


def _traced_links(name: str, converter: str, comfy_sd: dict[str, torch.Tensor]) -> dict[str, Link]:
    """Run diffusers' single-file converter on index-marked ComfyUI weights (float64 element ids) and
    read off, for every converted tensor, which ComfyUI elements it holds."""
    import diffusers.loaders.single_file_utils as su  # noqa: PLC0415

    stripped = {
        k[len("diffusion_model.") :]: v for k, v in comfy_sd.items() if k.startswith("diffusion_model.")
    }
    starts, keys, marked, offset = [], [], {}, 0
    for k, v in stripped.items():
        marked[k] = torch.arange(offset, offset + v.numel(), dtype=torch.float64).reshape(v.shape)
        starts.append(offset)
        keys.append(k)
        offset += v.numel()
    starts_t = torch.tensor(starts, dtype=torch.float64)
    converted = getattr(su, converter)(dict(marked))
    links: dict[str, Link] = {}
    for dkey, value in converted.items():
        flat = value.detach().flatten().to(torch.float64)
        if not torch.equal(flat, flat.round()) or flat.min() < 0 or flat.max() >= offset:
            continue  # a value the converter made up (not one of ours)
        src = torch.searchsorted(starts_t, flat, right=True) - 1
        if not torch.all(src == src[0]):
            raise ValueError(f"{name}: diffusers {dkey} mixes elements of several ComfyUI weights")
        k = keys[int(src[0])]
        links[dkey] = Link("diffusion_model." + k, (flat - starts[int(src[0])]).long())
    return links


def _core_links(
    patcher: Any, twin_sd: dict[str, torch.Tensor], comfy_sd: dict[str, torch.Tensor]
) -> dict[str, Link]:
    """Links from core's ``model_lora_keys_unet`` entries ``transformer.<module>`` (weights and biases)."""
    comfy = families.import_comfy()
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    links: dict[str, Link] = {}
    for dkey, value in twin_sd.items():
        if "." not in dkey:
            continue
        module, leaf = dkey.rsplit(".", 1)
        target = key_map.get(f"transformer.{module}") if leaf == "weight" else None
        if target is None and leaf == "bias":
            w_target = key_map.get(f"transformer.{module}")
            target = _bias_of(w_target)
        if target is None:
            continue
        link = _link_from_core(target, tuple(value.shape), comfy_sd)
        if link is not None:
            links[dkey] = link
    return links


def _bias_of(target: Any) -> Any:
    if target is None:
        return None
    if isinstance(target, str):
        return target[: -len(".weight")] + ".bias" if target.endswith(".weight") else None
    key = target[0]
    if not key.endswith(".weight"):
        return None
    return (key[: -len(".weight")] + ".bias", *target[1:])


def _link_from_core(target: Any, shape: tuple[int, ...], comfy_sd: dict[str, torch.Tensor]) -> Link | None:
    """A core key-map value (``key``, ``(key, (dim, start, length))`` or ``(key, offset, function)``) as a
    :class:`Link`."""
    key = target if isinstance(target, str) else target[0]
    if key not in comfy_sd:
        return None
    full = comfy_sd[key]
    ids = torch.arange(full.numel()).reshape(full.shape)
    if not isinstance(target, str):
        offset = target[1]
        if offset is not None:
            dim, start, length = offset
            ids = ids.narrow(dim, start, length)
        if len(target) > 2 and target[2] is not None:
            # core adds function(delta) to the weight: element i of the delta lands where function moves it
            moved = target[2](torch.arange(ids.numel()).reshape(ids.shape)).flatten()
            dest = torch.empty_like(moved)
            dest[moved] = torch.arange(moved.numel())
            ids = ids.flatten()[dest]
    if ids.numel() != torch.Size(shape).numel():
        return None
    return Link(key, ids.flatten().clone())


@dataclass
class Twin:
    """A diffusers transformer aligned to the small ComfyUI model, and the links between their weights."""

    module: torch.nn.Module
    links: dict[str, Link]
    spec: DiffusersSpec
    loaded_from_comfy: bool


def diffusers_twin(name: str, patcher: Any | None = None) -> Twin:
    """The diffusers transformer of family ``name`` with the small ComfyUI model's weights where the
    mapping is known (every parameter linked; raises if one is not), else its own seeded weights."""
    import diffusers  # noqa: PLC0415

    dspec = DIFFUSERS[name]
    fspec = families.family_spec(name)
    patcher = patcher or families.small_family_model(name)
    config = dspec.config(patcher.model.model_config.unet_config)
    module = getattr(diffusers, dspec.cls)(**config).eval()
    twin_sd = module.state_dict()
    comfy_sd = {
        k: v.detach().float()
        for k, v in patcher.model.state_dict().items()
        if k.startswith("diffusion_model.")
    }
    if dspec.mapping == "diffusers_converter":
        links = _traced_links(name, dspec.converter, comfy_sd)
    elif dspec.mapping == "core_key_map":
        links = _core_links(patcher, twin_sd, comfy_sd)
    elif dspec.mapping == "identity":
        links = {
            k: Link("diffusion_model." + k, torch.arange(v.numel()))
            for k, v in twin_sd.items()
            if "diffusion_model." + k in comfy_sd and comfy_sd["diffusion_model." + k].shape == v.shape
        }
    else:
        links = {}
    new_sd = {}
    for k, v in twin_sd.items():
        link = links.get(k)
        if link is not None:
            src = comfy_sd[link.comfy_key].flatten()[link.index]
            if src.numel() != v.numel():
                raise ValueError(
                    f"{name}: diffusers {k} {tuple(v.shape)} does not fit its ComfyUI source {link.comfy_key}"
                )
            new_sd[k] = src.reshape(v.shape)
        else:
            new_sd[k] = families.seeded_tensor("diffusers:" + k, tuple(v.shape), fspec.seed)
    if dspec.mapping != "none":
        unlinked = [k for k in twin_sd if k not in links and _is_weight_like(k)]
        if dspec.mapping != "core_key_map" and unlinked:
            raise ValueError(
                f"{name}: {len(unlinked)} diffusers weights without a ComfyUI source, e.g. {unlinked[:4]}"
            )
    module.load_state_dict(new_sd, strict=True)
    return Twin(module, links, dspec, dspec.mapping != "none")


def _is_weight_like(key: str) -> bool:
    return key.endswith((".weight", ".bias"))


# ---------------------------------------------------------------------------------------------
# building the diffusers-side namings


def _twin_targets(
    twin: Twin, name_of: Callable[[str], str], comfy_shapes: dict[str, torch.Size]
) -> list[tuple[str, str, fl.Target]]:
    """``(module path, file name, Target)`` for every Linear of the twin up to MAX_TARGET_NUMEL."""
    out = []
    for path, m in twin.module.named_modules():
        if not isinstance(m, torch.nn.Linear) or m.weight.numel() > fl.MAX_TARGET_NUMEL:
            continue
        link = twin.links.get(path + ".weight")
        bias_link = twin.links.get(path + ".bias")
        file_name = name_of(path)
        shape = tuple(m.weight.shape)
        bias_key = None
        if bias_link is not None and _placement(bias_link, comfy_shapes)[0] == "whole":
            bias_key = bias_link.comfy_key
        if link is None:
            t = fl.Target(file_name, None, shape, bias_key=bias_key)
        else:
            kind, sl = _placement(link, comfy_shapes)
            t = fl.Target(
                file_name,
                link.comfy_key,
                shape,
                slice=sl if kind == "slice" else None,
                index_key=file_name if kind == "index" else None,
                bias_key=bias_key,
            )
        out.append((path, file_name, t))
    return out


def _placement(link: Link, comfy_shapes: dict[str, torch.Size]) -> tuple[str, tuple[int, int, int] | None]:
    """``("whole", None)``, ``("slice", (0, start, length))`` (rows of the ComfyUI weight) or
    ``("index", None)``."""
    idx = link.index
    shape = comfy_shapes[link.comfy_key]
    n = idx.numel()
    start = int(idx[0])
    if not torch.equal(idx, torch.arange(start, start + n)):
        return "index", None
    if start == 0 and n == shape.numel():
        return "whole", None
    row = shape[1:].numel() if len(shape) > 1 else 1
    if start % row == 0 and n % row == 0:
        return "slice", (0, start // row, n // row)
    return "index", None


@torch.no_grad()
def _randomize_peft(
    twin: Twin,
    paths: dict[str, fl.Target],
    comfy_sd: dict[str, torch.Tensor],
    rank: int,
    strength_of_delta: float,
    gen_parts: tuple[Any, ...],
    index: dict[str, torch.Tensor],
) -> None:
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    for path, m in sorted(twin.module.named_modules(), key=lambda x: x[0]):
        if not isinstance(m, LoraLayer) or path not in paths:
            continue
        t = paths[path]
        gen = fl._generator(*gen_parts, path)
        a = m.lora_A["default"].weight
        b = m.lora_B["default"].weight
        a.copy_(torch.randn(a.shape, generator=gen) * a.shape[1] ** -0.5)
        b.copy_(torch.randn(b.shape, generator=gen))
        base = (
            fl.base_for(t, comfy_sd, index) if t.comfy_key is not None else m.get_base_layer().weight.detach()
        )
        delta = m.get_delta_weight("default")
        b.mul_(float(strength_of_delta * base.double().norm() / delta.double().norm()))


@torch.no_grad()
def _peft_merge_deltas(twin: Twin, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """``merged - base`` per LoRA layer from PEFT's own ``merge()`` (then the exact base is put back)."""
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    out = {}
    for path, m in twin.module.named_modules():
        if not isinstance(m, LoraLayer) or path not in names:
            continue
        weight = m.get_base_layer().weight
        before = weight.detach().clone()
        m.merge(safe_merge=True, adapter_names=["default"])
        out[names[path]] = (weight.detach() - before).float().clone()
        m.unmerge()
        weight.copy_(before)
    return out


def _save_with_mixin(
    mixin: str, layers: dict[str, torch.Tensor], adapter_meta: dict[str, Any], scratch: Path
) -> Path:
    import diffusers.loaders.lora_pipeline as lp  # noqa: PLC0415

    out_dir = scratch / "save"
    getattr(lp, mixin).save_lora_weights(
        str(out_dir),
        transformer_lora_layers=layers,
        weight_name="lora.safetensors",
        safe_serialization=True,
        transformer_lora_adapter_metadata=adapter_meta,
    )
    return out_dir / "lora.safetensors"


def _build_diffusers_like(
    name: str, naming: str, algo: str, rank: int, seed: int, strength_of_delta: float
) -> fl.Built:
    from peft import LoraConfig  # noqa: PLC0415
    from peft.utils import get_peft_model_state_dict  # noqa: PLC0415

    patcher = families.small_family_model(name)
    comfy_sd = {k: v.detach().float() for k, v in patcher.model.state_dict().items()}
    twin = diffusers_twin(name, patcher)
    alpha = fl.ALPHA_PER_RANK * rank
    if naming == "diffusers":
        name_of = lambda p: f"transformer.{p}"  # noqa: E731
    else:  # onetrainer
        name_of = lambda p: "lora_transformer_" + p.replace(".", "_")  # noqa: E731
    rows = _twin_targets(twin, name_of, {k: v.shape for k, v in comfy_sd.items()})
    index = {
        t.index_key: twin.links[path + ".weight"].index for path, _, t in rows if t.index_key is not None
    }
    paths = {path: t for path, _, t in rows}
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(paths), init_lora_weights=True)
    if hasattr(twin.module, "add_adapter"):
        twin.module.add_adapter(config)
    else:  # PixArt's transformer has no PeftAdapterMixin: what its training script does
        from peft import inject_adapter_in_model  # noqa: PLC0415

        inject_adapter_in_model(config, twin.module, adapter_name="default")
        if not hasattr(twin.module, "peft_config"):
            twin.module.peft_config = {"default": config}
    _randomize_peft(twin, paths, comfy_sd, rank, strength_of_delta, (name, naming, algo, rank, seed), index)
    reference = _peft_merge_deltas(twin, {path: t.name for path, _, t in rows})
    layers = get_peft_model_state_dict(twin.module)
    adapter_meta = {
        k: (sorted(v) if isinstance(v, set) else v)
        for k, v in twin.module.peft_config["default"].to_dict().items()
    }
    meta: dict[str, Any] = {
        "mapping_source": twin.spec.mapping,
        "diffusers_class": twin.spec.cls,
        "diffusers_config": json.loads(json.dumps(dict(twin.module.config), default=str)),
        "twin_holds_comfy_weights": twin.loaded_from_comfy,
        "reference_from": "PEFT LoraLayer.merge() - base (alpha / r applied)",
    }
    with fl._scratch() as scratch:
        if naming == "diffusers":
            path = _save_with_mixin(twin.spec.mixin, layers, adapter_meta, scratch)
            meta.update(
                tool="diffusers+peft",
                made_by=f"{twin.spec.cls}.add_adapter(LoraConfig) + get_peft_model_state_dict + "
                f"{twin.spec.mixin}.save_lora_weights(..., transformer_lora_adapter_metadata=peft config)",
                alpha_in_file="safetensors metadata 'lora_adapter_metadata' only; "
                "a reader that ignores it uses scale 1",
            )
            tmp = fl.loras_dir() / f".build-{name}-{naming}-{os.getpid()}.safetensors"
            os.replace(path, tmp)
            built = fl.Built(
                {},
                {},
                [t for _, _, t in rows],
                fl._comfy_shapes(comfy_sd),
                meta,
                reference=reference,
                index=index or None,
                file_path=tmp,
            )
        else:
            tensors: dict[str, torch.Tensor] = {}
            for p, file_name, _t in rows:
                tensors[f"{file_name}.lora_down.weight"] = layers[f"{p}.lora_A.weight"]
                tensors[f"{file_name}.lora_up.weight"] = layers[f"{p}.lora_B.weight"]
                tensors[f"{file_name}.alpha"] = torch.tensor(alpha)
            header = fl._kohya_header(name, rank, alpha, algo, module="modules.LoRA (OneTrainer)")
            meta.update(
                tool="OneTrainer layout",
                made_by="PEFT factors of the diffusers twin renamed "
                "lora_transformer_<module> / lora_down / lora_up / alpha",
                alpha_in_file="'.alpha' tensors",
            )
            built = fl.Built(
                tensors,
                header,
                [t for _, _, t in rows],
                fl._comfy_shapes(comfy_sd),
                meta,
                reference=reference,
                index=index or None,
            )
    del twin
    gc.collect()
    return built


SIMPLETUNER_ALGOS = ("locon", "loha", "lokr", "diag-oft", "dora")


def _build_lycoris_simpletuner(name: str, algo: str, rank: int, seed: int,
                               strength_of_delta: float) -> fl.Built:
    """SimpleTuner's LyCORIS files: ``lycoris.create_lycoris`` on the diffusers transformer (default
    ``lycoris_`` prefix, diffusers module names), Linear layers only."""
    patcher = families.small_family_model(name)
    comfy_sd = {k: v.detach().float() for k, v in patcher.model.state_dict().items()}
    twin = diffusers_twin(name, patcher)
    shapes = {k: v.shape for k, v in comfy_sd.items()}
    rows = _twin_targets(twin, lambda p: "lycoris_" + p.replace(".", "_"), shapes)
    by_path = {path: t for path, _, t in rows}
    twin_sd = {k: v.detach().float() for k, v in twin.module.state_dict().items()}
    index = {t.index_key: twin.links[p + ".weight"].index for p, _, t in rows if t.index_key is not None}

    def target_for(path: str, lora_name: str) -> fl.Target:
        return by_path[path]

    def base_of(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return twin_sd[path + ".weight"], None

    built = fl.lycoris_file(name, "lycoris_simpletuner", algo, rank, seed, strength_of_delta, twin.module,
                            set(by_path), set(), "lycoris", target_for, base_of, fl._comfy_shapes(comfy_sd))
    built.index = index or None
    built.meta.update(mapping_source=twin.spec.mapping, diffusers_class=twin.spec.cls,
                      twin_holds_comfy_weights=twin.loaded_from_comfy,
                      tool="lycoris-lora (SimpleTuner layout)")
    built.meta["made_by"] += f" on the diffusers {twin.spec.cls} twin"
    return built


# ---------------------------------------------------------------------------------------------
# renamed comfy-module namings (own seeded factors)


# ComfyUI module -> original HunyuanVideo module (diffusion-pipe trains the original model code)
_HYV_ORIGINAL = (
    ("time_in.in_layer", "time_in.mlp.0"),
    ("time_in.out_layer", "time_in.mlp.2"),
    ("guidance_in.in_layer", "guidance_in.mlp.0"),
    ("guidance_in.out_layer", "guidance_in.mlp.2"),
    ("txt_in.t_embedder.in_layer", "txt_in.t_embedder.mlp.0"),
    ("txt_in.t_embedder.out_layer", "txt_in.t_embedder.mlp.2"),
    ("txt_in.c_embedder.in_layer", "txt_in.c_embedder.linear_1"),
    ("txt_in.c_embedder.out_layer", "txt_in.c_embedder.linear_2"),
    ("_mod.lin", "_mod.linear"),
    ("_attn.qkv", "_attn_qkv"),
    ("_attn.proj", "_attn_proj"),
    (".modulation.lin", ".modulation.linear"),
    ("mlp.0", "mlp.fc1"),
    ("mlp.2", "mlp.fc2"),
)


def _hunyuan_original_name(comfy_module: str) -> str:
    """The original HunyuanVideo module name of a ComfyUI module, checked by running ComfyUI's own
    ``HunyuanVideo.process_unet_state_dict`` (original -> ComfyUI) on it."""
    comfy = families.import_comfy()
    m = comfy_module
    for a, b in _HYV_ORIGINAL:
        if a in m and not (a.startswith("mlp.") and m.endswith(("in_layer", "out_layer"))):
            m = m.replace(a, b)
            if a.startswith(("time_in", "guidance_in", "txt_in")):
                break
    back = comfy.supported_models.HunyuanVideo.process_unet_state_dict(None, {m + ".weight": None})
    if list(back) != [comfy_module + ".weight"]:
        raise ValueError(
            f"original HunyuanVideo name {m!r} does not map back to {comfy_module!r} (got {list(back)})"
        )
    return m


def _build_renamed(
    name: str, naming: str, algo: str, rank: int, seed: int, strength_of_delta: float
) -> fl.Built:
    patcher = families.small_family_model(name)
    weights = {k: v.detach().float() for k, v in patcher.model.state_dict().items()}
    layers = fl.comfy_layers(patcher)
    alpha = fl.ALPHA_PER_RANK * rank
    tensors: dict[str, torch.Tensor] = {}
    targets: list[fl.Target] = []
    meta: dict[str, Any] = {"reference_from": "file math, float64"}
    header: dict[str, str] = {}
    for key, module in layers.items():
        module_path = key[len("diffusion_model.") :]
        if naming == "diffusion_pipe" and not module_path.startswith(("double_blocks.", "single_blocks.")):
            continue  # diffusion-pipe targets the blocks (MMDoubleStreamBlock / MMSingleStreamBlock)
        shape = tuple(module.weight.shape)
        bias = key + ".bias" if getattr(module, "bias", None) is not None else None
        if naming == "diffusion_pipe":
            file_name = "transformer." + _hunyuan_original_name(module_path)
            down_key, up_key, with_alpha = "lora_A", "lora_B", False
        elif naming == "wan_fun":
            file_name = "lora_unet__" + module_path.replace(".", "_")
            down_key, up_key, with_alpha = "lora_down", "lora_up", True
        elif naming == "qwen_default":
            file_name = module_path
            down_key, up_key, with_alpha = "lora_A.default", "lora_B.default", False
        else:
            raise ValueError(naming)
        t = fl.Target(file_name, key + ".weight", shape, bias_key=bias)
        down, up = fl.lora_factors(
            t,
            weights[key + ".weight"],
            rank,
            alpha if with_alpha else rank,
            strength_of_delta,
            fl._generator(name, naming, algo, rank, seed, file_name),
        )
        tensors[f"{file_name}.{down_key}.weight"] = down
        tensors[f"{file_name}.{up_key}.weight"] = up
        if with_alpha:
            tensors[f"{file_name}.alpha"] = torch.tensor(alpha)
        targets.append(t)
    if naming == "diffusion_pipe":
        meta.update(
            tool="diffusion-pipe layout",
            alpha_in_file="none (scale 1)",
            made_by="seeded factors on the original HunyuanVideo module names, "
            "transformer.<module>.lora_A/lora_B",
        )
        header = {"format": "pt"}
    elif naming == "wan_fun":
        meta.update(
            tool="Wan Fun (VideoX-Fun) layout",
            alpha_in_file="'.alpha' tensors",
            made_by="seeded factors, lora_unet__<module> / lora_down / lora_up / alpha",
        )
        header = fl._kohya_header(name, rank, alpha, algo)
    else:
        meta.update(
            tool="PEFT default adapter layout (Qwen-Image trainers)",
            alpha_in_file="none (scale 1)",
            made_by="seeded factors, <module>.lora_A.default.weight / lora_B.default.weight",
        )
    meta["alpha_default"] = None
    return fl.Built(tensors, header, targets, fl._comfy_shapes(weights), meta)


def _build_bfl_control(name: str, algo: str, rank: int, seed: int, strength_of_delta: float) -> fl.Built:
    """BFL's Flux control LoRA layout (Depth/Canny dev LoRAs): no alpha, a LoRA bias, norm scales replaced,
    ``img_in`` widened from ``in`` to ``2 * in`` columns (the control latent is concatenated)."""
    patcher = families.small_family_model(name)
    weights = {k: v.detach().float() for k, v in patcher.model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    targets: list[fl.Target] = []
    reference: dict[str, torch.Tensor] = {}
    shapes = fl._comfy_shapes(weights)
    for key in fl.comfy_layers(patcher):
        path = key[len("diffusion_model.") :]
        w = weights[key + ".weight"]
        gen = fl._generator(name, "bfl_control", algo, rank, seed, path)
        shape = tuple(w.shape)
        if path == "img_in":
            shape = (w.shape[0], 2 * w.shape[1])
            shapes[key + ".weight"] = list(shape)
        t = fl.Target(
            path, key + ".weight", shape, bias_key=key + ".bias" if key + ".bias" in weights else None
        )
        down, up = fl.lora_factors(t, w, rank, rank, strength_of_delta, gen)
        tensors[f"{path}.lora_A.weight"] = down
        tensors[f"{path}.lora_B.weight"] = up
        delta = (up.double().flatten(1) @ down.double().flatten(1)).reshape(shape)
        if path == "img_in":
            # the widened weight: the original columns padded with zeros, plus the LoRA
            # core pads the weight with zero columns to the new width, then adds the LoRA: the delta on
            # the padded weight is the LoRA product itself
            pass
        reference[path] = delta.float()
        if t.bias_key is not None:
            b = torch.randn(weights[t.bias_key].shape, generator=gen) * 0.01
            tensors[f"{path}.lora_B.bias"] = b
            reference[path + ".bias"] = b
        targets.append(t)
    for key, value in weights.items():
        if key.endswith("_norm.scale") and key.startswith("diffusion_model."):
            path = key[len("diffusion_model.") :]
            new = value * (
                1 + 0.1 * torch.randn(value.shape, generator=fl._generator(name, "bfl_control", seed, path))
            )
            tensors[path] = new
            name_t = path[: -len(".scale")] + "::scale"
            targets.append(fl.Target(name_t, key, tuple(value.shape)))
            reference[name_t] = (new - value).float()
    meta = {
        "tool": "BFL flux control LoRA layout",
        "alpha_in_file": "none (scale 1)",
        "made_by": "seeded factors; <module>.lora_A/lora_B/lora_B.bias; *_norm.scale replaced; "
        "img_in 2x wide",
        "reference_from": "file math, float64 (img_in: delta on the zero-padded weight)",
        "widened": {"diffusion_model.img_in.weight": list(targets[0].shape) if targets else None},
    }
    return fl.Built(tensors, {"format": "pt"}, targets, shapes, meta, reference=reference)


# ---------------------------------------------------------------------------------------------
# registry


def extra_namings(name: str) -> list[str]:
    spec = families.family_spec(name)
    out = []
    if name in DIFFUSERS:
        out.append("diffusers")
        if DIFFUSERS[name].mapping != "none":
            out.append("lycoris_simpletuner")
    if name in ("flux", "flux_schnell", "flux_inpaint", "chroma", "sd3"):
        out.append("onetrainer")
    if spec.config_class in (
        "HunyuanVideo",
        "HunyuanVideoI2V",
        "HunyuanVideoSkyreelsI2V",
        "HunyuanVideo15",
        "HunyuanVideo15_SR_Distilled",
    ):
        out.append("diffusion_pipe")
    if spec.config_class.startswith("WAN2"):
        out.append("wan_fun")
    if name == "flux":
        out.append("bfl_control")
    if name == "qwen_image":
        out.append("qwen_default")
    return out


def extra_algos(name: str, naming: str) -> list[str]:
    if naming == "lycoris_simpletuner":
        return list(SIMPLETUNER_ALGOS)
    return ["lora"]


# What core 0.3.75's model_lora_keys_unet (+ convert_lora) does with each naming, and why.
_CORE_EXPECT_DIFFUSERS = {
    "flux": "full",
    "flux_schnell": "full",
    "flux_inpaint": "full",
    "sd3": "full",
    "auraflow": "full",
    "pixart_alpha": "full",
    "pixart_sigma": "full",
    "hidream": "full",
    "qwen_image": "full",
    # the approximator (distilled_guidance_layer) has no diffusers entry in core's Flux map
    "chroma": "partial",
    "wan21_t2v": "none",
    "wan21_i2v": "none",
    "wan22_t2v": "none",
    "ltxv": "none",
    "hunyuan_video": "none",
    "lumina2": "none",
    "mochi": "none",
}


# core maps lycoris_<diffusers module> for Flux (and Chroma, a Flux model_base) and SD3 through its diffusers
# maps, and lycoris_<ComfyUI module> for HiDream and Qwen-Image, whose ComfyUI names are the diffusers names
_CORE_EXPECT_SIMPLETUNER = {
    "flux": "full", "flux_schnell": "full", "flux_inpaint": "full", "chroma": "partial", "sd3": "full",
    "hidream": "full", "qwen_image": "full",
}


def expected_core_mapping(name: str, naming: str) -> str:
    if naming in (
        "kohya",
        "diffusion_model",
        "diffusion_model_down_up",
        "lycoris",
        "wan_fun",
        "qwen_default",
        "bfl_control",
        "diffusion_pipe",
        "onetrainer",
    ):
        if naming == "onetrainer" and name == "chroma":
            return "partial"
        return "full"
    if naming == "diffusers":
        return _CORE_EXPECT_DIFFUSERS[name]
    if naming == "lycoris_simpletuner":
        return _CORE_EXPECT_SIMPLETUNER.get(name, "none")
    raise ValueError(f"unknown naming {naming!r}")


def build(name: str, naming: str, algo: str, rank: int, seed: int, strength_of_delta: float) -> fl.Built:
    if naming == "lycoris_simpletuner":
        return _build_lycoris_simpletuner(name, algo, rank, seed, strength_of_delta)
    if naming in ("diffusers", "onetrainer"):
        return _build_diffusers_like(name, naming, algo, rank, seed, strength_of_delta)
    if naming in ("diffusion_pipe", "wan_fun", "qwen_default"):
        return _build_renamed(name, naming, algo, rank, seed, strength_of_delta)
    if naming == "bfl_control":
        return _build_bfl_control(name, algo, rank, seed, strength_of_delta)
    raise ValueError(f"no builder for naming {naming!r} of {name!r}")
