"""Small seeded models of every model family ComfyUI 0.3.75 runs, built from ComfyUI's own classes.

``FAMILIES`` maps a short name (``"flux"``, ``"wan21_t2v"``, ...) to a :class:`FamilySpec`: the config
class of ``comfy.supported_models`` it builds, a reduced ``unet_config`` (one or two blocks of every kind
the real model has, widths of 32-128, few heads), a seed, and what a forward pass needs (text width and
length, pooled vector, guidance, attention mask, extra inputs, latent layout). All 65 config classes of
``comfy.supported_models.models`` (0.3.75) have an entry, and all of them build, run a forward pass and
sample 2 steps on the CPU; none had to be left out.

- :func:`small_family_model` builds a fresh ``ModelPatcher`` (CPU load and offload device) with
  ``cls(unet_config)`` -> ``set_inference_dtype`` -> ``get_model({}, device=cpu)`` and loads seeded
  weights (cached once as fp32 safetensors under ``models_dir()/families-<FAMILIES_VERSION>-comfy<v>/``).
  ``weight_format``: ``None`` (plain ``dtype``), ``"fp8_e4m3fn"`` (every weight the model creates in its
  dtype stored as ``torch.float8_e4m3fn`` with fp32 compute, what ComfyUI does with an fp8 checkpoint on
  this host: ``set_inference_dtype(fp8, unet_manual_cast(fp8, cpu))`` -> ``comfy.ops.manual_cast``) or
  ``"fp8_scaled"`` (ComfyUI 0.3.75's "scaled fp8" checkpoints: ``model_config.scaled_fp8 = float8_e4m3fn``
  -> ``comfy.ops.scaled_fp8_ops``; every Linear holds ``W_fp8 = fp8(W / s)`` and a seeded per-layer
  ``scale_weight = s`` in [0.5, 2], so a dequantisation that ignores ``s`` is visibly wrong).
- :func:`family_conditioning` / :func:`family_latent` give a seeded ``CONDITIONING`` and an empty
  ``LATENT`` of the shapes the model takes; :func:`forward_check` runs one ``apply_model`` call through
  core's own conditioning path (``convert_cond`` -> ``encode_model_conds`` -> ``process_cond``) and
  :func:`sample_check` runs core ``comfy.sample.sample``.

Weights follow :func:`testkit.models.seeded_tensor` per parameter key (matrices ``N(0, 1/fan_in)``,
1-d weights ones, biases ``N(0, 0.01^2)``); buffers keep the values the class computes, except the
persistent ones a checkpoint carries (``FamilySpec.buffers``).

Limits found on this host (all recorded in ``FamilySpec.notes`` / ``FP8_UNSUPPORTED``):

- heavy (``FamilySpec.heavy``): ``ace_step`` (82.6M parameters: the lyric Conformer is 1024 wide and 6
  blocks deep whatever the config says), ``wan21_humo`` (39.7M: fixed-width audio projection),
  ``wan22_animate`` (31.8M: fixed-width motion and face encoders). They build and sample; LoRA targets
  leave out weights over ``family_loras.MAX_TARGET_NUMEL`` elements.
- widths forced by the classes: ``z_image`` dim 256 (its adaLN input is ``min(dim, 256)`` but the time
  embedder always gives 256), ``pixart_*`` 272 px latents and hidden 96, ``mochi`` ``mlp_ratio_x = 192``
  (asserted ``hidden_x * ratio == 12288``), ``stable_audio`` text width 768, ``stable_cascade_c`` image
  embedding width 768, ``wan21_i2v`` CLIP width 1280.
- no text attention mask for the HunyuanVideo families: core 0.3.75's ``HunyuanVideo.forward_orig``
  builds a batch-1 mask and fails on a cond + uncond batch with one (its text encoders drop all-ones
  masks, so real use does not hit it).
- ``FP8_UNSUPPORTED``: fp8 weights that cannot run a forward pass on the CPU.

Other hosts: fields newer ComfyUI params dataclasses require (0.8.0: ``txt_ids_dims``, ``vec_in_dim``,
``use_x0``, ``meanflow_sum``) are added as their model detection adds them (:func:`host_unet_config`);
``"fp8_scaled"`` needs ``comfy.ops.scaled_fp8_ops`` (0.3.75 only).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from testkit.models import CPU, import_comfy, models_dir, save_safetensors, seeded_tensor

log = logging.getLogger(__name__)

FAMILIES_VERSION = "1"
"""Cache key of the family state dicts; bump it when a config, a seed or the weight law changes."""

WEIGHT_FORMATS = (None, "fp8_e4m3fn", "fp8_scaled", "fp8_quantized")

FP8_UNSUPPORTED: dict[tuple[str, str], str] = {
    ("sd_x4_upscaler", "fp8_e4m3fn"): "does not build: a torch module created in the weight dtype is "
                                      "initialised with normal_ (not implemented for Float8_e4m3fn on CPU)",
    ("hunyuan3d2_1", "fp8_e4m3fn"): "forward: a raw parameter in a GELU (GeluKernelImpl not implemented for "
                                    "Float8_e4m3fn)",
    ("hunyuan3d2_1", "fp8_scaled"): "forward: a raw fp8 parameter multiplied (mul_cpu_reduced_float not "
                                    "implemented for Float8_e4m3fn)",
}
"""(family, weight_format) pairs that fail to build or to run a forward pass on the CPU, and why."""


# ---------------------------------------------------------------------------------------------
# specs


@dataclass(frozen=True)
class LatentSpec:
    """How an empty latent of the family looks.

    ``kind``: ``"image"`` (B, C, H/s, W/s), ``"video"`` (B, C, T', H/s, W/s) with
    ``T' = (frames - 1) // temporal + 1``, ``"frames"`` (SVD: frames as batch, (F, C, H/s, W/s)),
    ``"audio"`` (B, C, length), ``"ace"`` (B, C, 16, length), ``"cascade_c"`` (B, C, ceil(H/s), ceil(W/s)).
    """

    kind: str = "image"
    spatial: int = 8
    temporal: int = 1
    width: int = 64
    height: int = 64
    frames: int = 1
    length: int = 16


@dataclass(frozen=True)
class Extra:
    """One extra conditioning entry: ``kind`` ``"randn"`` / ``"ones"`` / ``"zeros"`` (float tensor of
    ``shape``), ``"int"`` (int64 in ``[0, high)``) or ``"value"`` (``value`` as is)."""

    kind: str
    shape: tuple[int, ...] = ()
    high: int = 0
    value: Any = None


@dataclass(frozen=True)
class FamilySpec:
    """One reduced model: ComfyUI config class, unet_config and what a forward pass needs."""

    name: str
    config_class: str
    unet_config: dict[str, Any]
    seed: int
    context_dim: int | None
    context_len: int = 8
    pooled_dim: int | None = None
    guidance: float | None = None
    attention_mask: bool = False
    extras: dict[str, Extra] = field(default_factory=dict)
    latent: LatentSpec = field(default_factory=LatentSpec)
    # state the model class reads from the checkpoint outside ``diffusion_model`` (key -> shape)
    extra_state: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # persistent buffers a checkpoint carries: key -> "seeded" (drawn like a parameter) or "rope"
    # (1 / 10000^(2i/d))
    buffers: dict[str, str] = field(default_factory=dict)
    # more than 10M parameters because a submodule has fixed widths in ComfyUI's class
    heavy: bool = False
    notes: str = ""


def _unet(model_channels: int, channel_mult: list[int], num_res_blocks: list[int],
          transformer_depth: list[int],
          transformer_depth_output: list[int], transformer_depth_middle: int, context_dim: int | None,
          use_linear: bool, adm_in_channels: int | None = None, in_channels: int = 4, out_channels: int = 4,
          num_classes: Any = None, video: bool = False) -> dict[str, Any]:
    """An ``openaimodel.UNetModel`` unet_config as ``comfy.model_detection.detect_unet_config`` writes it."""
    cfg: dict[str, Any] = {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": adm_in_channels, "in_channels": in_channels, "out_channels": out_channels,
        "model_channels": model_channels, "num_res_blocks": num_res_blocks,
                           "transformer_depth": transformer_depth,
        "transformer_depth_output": transformer_depth_output, "channel_mult": channel_mult,
        "transformer_depth_middle": transformer_depth_middle, "use_linear_in_transformer": use_linear,
        "context_dim": context_dim, "use_temporal_resblock": video, "use_temporal_attention": video,
    }
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    if video:
        cfg.update(extra_ff_mix_layer=True, use_spatial_context=True, merge_strategy="learned_with_images",
                   merge_factor=0.0, video_kernel_size=[3, 1, 1], disable_temporal_crossattention=False)
    return cfg


# SD1.x layout: 2 levels (attention in the first, none in the last, as SD1.5's deepest level), one resnet
# per level, down/upsamplers, a middle transformer.
_SD1 = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1], "transformer_depth": [1, 0],
        "transformer_depth_output": [1, 1, 0, 0], "transformer_depth_middle": 1}
# SD2.x needs 64-channel heads (SD20.unet_extra_config num_head_channels=64)
_SD2 = {**_SD1, "model_channels": 64}
# SDXL layout: no attention in the first level, depth-2 transformers below it and in the middle.
_SDXL = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1], "transformer_depth": [0, 2],
         "transformer_depth_output": [0, 0, 2, 2], "transformer_depth_middle": 2}
_CTX = 64  # text width of the small UNet families
_POOL = 64

# Flux-type double/single-stream transformers: hidden 64, 2 heads of 32 (rope axes 8 + 12 + 12)
_FLUX = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 48,
         "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
         "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True}
_CHROMA = {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": 48,
           "hidden_size": 64,
           "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12],
           "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64, "hidden_dim": 96,
           "n_layers": 2}
_HYV = {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "patch_size": [1, 2, 2],
        "vec_in_dim": 32, "axes_dim": [8, 12, 12], "meanflow": False, "context_in_dim": 48, "hidden_size": 64,
        "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "theta": 256,
        "qkv_bias": True,
        "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False, "vision_in_dim": None}
_WAN = {"image_model": "wan2.1", "model_type": "t2v", "dim": 64, "out_dim": 16, "num_heads": 2,
        "ffn_dim": 128,
        "num_layers": 2, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "text_dim": 48}
_LUMINA = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": 48,
           "n_layers": 2,
           "n_refiner_layers": 1, "qk_norm": True, "n_heads": 2, "n_kv_heads": 1, "axes_dims": [8, 12, 12],
           "axes_lens": [300, 512, 512], "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0, "multiple_of": 16}
_COSMOS_PRED2 = {"image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
                 "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1,
                 "model_channels": 64,
                 "concat_padding_mask": True, "crossattn_emb_channels": 48, "pos_emb_cls": "rope3d",
                 "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
                 "use_adaln_lora": True, "adaln_lora_dim": 16, "num_blocks": 2, "num_heads": 2,
                 "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
                 "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0,
                 "extra_h_extrapolation_ratio": 1.0, "extra_w_extrapolation_ratio": 1.0,
                 "extra_t_extrapolation_ratio": 1.0, "rope_enable_fps_modulation": False}
_COSMOS1 = {"image_model": "cosmos", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
            "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 64,
            "block_config": "FA-CA-MLP", "concat_padding_mask": True, "pos_emb_cls": "rope3d",
            "pos_emb_learnable": False, "pos_emb_interpolation": "crop", "block_x_format": "THWBD",
            "affline_emb_norm": True, "use_adaln_lora": True, "adaln_lora_dim": 16, "num_blocks": 2,
            "num_heads": 2,
            "crossattn_emb_channels": 48, "extra_per_block_abs_pos_emb": True,
            "rope_h_extrapolation_ratio": 1.0, "rope_w_extrapolation_ratio": 1.0,
            "rope_t_extrapolation_ratio": 2.0,
            "extra_per_block_abs_pos_emb_type": "learnable"}
_HY3D = {"image_model": "hunyuan3d2", "in_channels": 64, "context_in_dim": 48, "hidden_size": 64,
         "mlp_ratio": 4.0,
         "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "qkv_bias": True, "guidance_embed": True}

_VIDEO8 = LatentSpec(kind="video", spatial=8, temporal=4, frames=5)
_SECONDS = "conditioner.conditioners.seconds_"  # StableAudio's seconds_start / seconds_total embedders


def _specs() -> dict[str, FamilySpec]:
    s: list[FamilySpec] = []
    mask8 = Extra("mask", (1, 8))

    # --- UNet families -----------------------------------------------------------------------
    s.append(FamilySpec("sd15", "SD15", _unet(**_SD1, context_dim=_CTX, use_linear=False), 3001, _CTX))
    s.append(FamilySpec("sd15_ip2p", "SD15_instructpix2pix",
                        _unet(**_SD1, context_dim=_CTX, use_linear=False, in_channels=8), 3002, _CTX))
    s.append(FamilySpec("stable_zero123", "Stable_Zero123", _unet(**_SD1, context_dim=_CTX, use_linear=False,
                                                                  in_channels=8),
                        3003, _CTX + 4, extra_state={"cc_projection.weight": (_CTX, _CTX + 4),
                                                     "cc_projection.bias": (_CTX,)},
                        notes="cross_attn (width context+4, like the real 772) goes through cc_projection"))
    s.append(FamilySpec("sd2", "SD20", _unet(**_SD2, context_dim=_CTX, use_linear=True), 3004, _CTX))
    s.append(FamilySpec("sd21_unclip_l", "SD21UnclipL", _unet(**_SD2, context_dim=_CTX, use_linear=True,
                                                              adm_in_channels=1536,
                                                            num_classes="sequential"), 3005, _CTX,
                        notes="adm 1536 = CLIP-L image embedding + noise level; no unclip_conditioning -> "
                              "zeros"))
    s.append(FamilySpec("sd21_unclip_h", "SD21UnclipH", _unet(**_SD2, context_dim=_CTX, use_linear=True,
                                                              adm_in_channels=2048,
                                                            num_classes="sequential"), 3006, _CTX))
    s.append(FamilySpec("lotus_d", "LotusD", {**_unet(**_SD2, context_dim=_CTX, use_linear=True,
                                                      adm_in_channels=4,
                                                    num_classes="sequential"), "num_heads": -1,
                                              "num_head_channels": 64},
                        3007, _CTX,
                        notes="LotusD.unet_extra_config replaces SD20's head settings, so they are in the "
                              "config"))
    x4 = {**_SD1, "channel_mult": [1, 1, 2, 2], "num_res_blocks": [1, 1, 1, 1], "transformer_depth": [1, 1,
                                                                                                      1, 0],
          "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0]}
    s.append(FamilySpec("sd_x4_upscaler", "SD_X4Upscaler", _unet(**x4, context_dim=_CTX, use_linear=True,
                                                                 in_channels=7),
                        3008, _CTX, latent=LatentSpec(spatial=4),
                        notes="c_concat: the low-res image (3 channels); y: noise level (num_classes=1000)"))
    sdxl_adm = _POOL + 6 * 256
    s.append(FamilySpec("sdxl", "SDXL", _unet(**_SDXL, context_dim=2 * _CTX, use_linear=True,
                                              adm_in_channels=sdxl_adm,
                                            num_classes="sequential"), 3010, 2 * _CTX, pooled_dim=_POOL))
    s.append(FamilySpec("sdxl_ip2p", "SDXL_instructpix2pix",
                        _unet(**_SDXL, context_dim=2 * _CTX, use_linear=True, adm_in_channels=sdxl_adm,
                              num_classes="sequential", in_channels=8), 3011, 2 * _CTX, pooled_dim=_POOL))
    for i, (name, cls, depth) in enumerate([("ssd1b", "SSD1B", [0, 1]), ("segmind_vega", "Segmind_Vega", [0,
                                                                                                          1]),
                                            ("koala_700m", "KOALA_700M", [0, 2]), ("koala_1b", "KOALA_1B",
                                                                                   [0, 1])]):
        s.append(FamilySpec(name, cls, _unet(**{**_SDXL, "transformer_depth": depth,
                                                "transformer_depth_output": [0, 0] + [depth[1]] * 2,
                                                "transformer_depth_middle": {"ssd1b": 1, "segmind_vega": 0,
                                                                             "koala_700m": 0,
                                                                             "koala_1b": 2}[name]},
                                             context_dim=2 * _CTX, use_linear=True, adm_in_channels=sdxl_adm,
                                             num_classes="sequential"), 3012 + i, 2 * _CTX, pooled_dim=_POOL,
                            notes="an SDXL variant (the classes differ only in depths); transformer "
                                  "depths shrunk"))
    # the refiner's pattern: attention only in the middle levels (here: the second of three)
    refiner = {**_SDXL, "channel_mult": [1, 2, 2], "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 2,
                                                                                                      0],
               "transformer_depth_output": [0, 0, 2, 2, 0, 0]}
    s.append(FamilySpec("sdxl_refiner", "SDXLRefiner", _unet(**refiner, context_dim=_CTX, use_linear=True,
                                                           adm_in_channels=_POOL + 5 * 256,
                                                             num_classes="sequential"),
                        3020, _CTX, pooled_dim=_POOL))
    frames = LatentSpec(kind="frames", frames=2)
    for i, (name, cls, adm) in enumerate([("svd", "SVD_img2vid", 768), ("sv3d_u", "SV3D_u", 256), ("sv3d_p",
                                                                                                   "SV3D_p",
                                                                                                   1280)]):
        s.append(FamilySpec(name, cls, _unet(**_SD2, context_dim=_CTX, use_linear=True, adm_in_channels=adm,
                                             num_classes="sequential", in_channels=8, video=True),
                            3021 + i, _CTX, context_len=1, latent=frames,
                            notes="frames are the batch; c_concat: the init latent; cross_attn: CLIP "
                                  "vision embedding"))
    s.append(FamilySpec("stable_cascade_c", "Stable_Cascade_C",
                        {"stable_cascade_stage": "c", "c_in": 16, "c_out": 16, "c_cond": 64, "c_hidden": [64,
                                                                                                          64],
                         "nhead": [2, 2], "blocks": [[1, 1], [1, 1]], "block_repeat": [[1, 1], [1, 1]],
                         "level_config": ["CTA", "CTA"], "c_clip_text": 48, "c_clip_text_pooled": 48,
                         "c_clip_img": 768, "c_clip_seq": 4, "switch_level": [False]},
                        3030, 48, pooled_dim=48, latent=LatentSpec(kind="cascade_c", spatial=42, width=168,
                                                                   height=168),
                        notes="c_clip_img stays 768: StableCascade_C.extra_conds feeds zeros (1, 1, 768)"))
    s.append(FamilySpec("stable_cascade_b", "Stable_Cascade_B",
                        {"stable_cascade_stage": "b", "c_in": 4, "c_out": 4, "c_cond": 64, "c_hidden": [32,
                                                                                                        32,
                                                                                                        64,
                                                                                                        64],
                         "nhead": [-1, -1, 2, 2], "blocks": [[1, 1, 1, 1], [1, 1, 1, 1]],
                         "block_repeat": [[1, 1, 1, 1], [1, 1, 1, 1]], "level_config": ["CT", "CT", "CTA",
                                                                                        "CTA"],
                         "c_clip": 48, "c_clip_seq": 4, "c_effnet": 16, "c_pixels": 3,
                         "dropout": [0, 0, 0.0, 0.0]},
                        3031, 48, pooled_dim=48, latent=LatentSpec(kind="image", spatial=4, width=64,
                                                                   height=64)))

    # --- MMDiT / DiT image families ------------------------------------------------------------
    s.append(FamilySpec("sd3", "SD3", {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2,
                                       "input_size": None, "adm_in_channels": _POOL,
                                       "context_embedder_config": {"target": "torch.nn.Linear",
                                                                   "params": {"in_features": 48,
                                                                              "out_features": 128}},
                                       "num_patches": 16 * 16, "pos_embed_max_size": 16, "qk_norm": "rms",
                                       "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [0]},
                        3040, 48, pooled_dim=_POOL, buffers={"diffusion_model.pos_embed": "seeded"},
                        notes="SD3.5-medium layout (qk rms norm, MMDiT-X self-attention in block 0); "
                              "hidden = 64 * depth"))
    s.append(FamilySpec("stable_audio", "StableAudio",
                        {"audio_model": "dit1.0", "io_channels": 64, "embed_dim": 64, "depth": 2,
                         "num_heads": 2,
                         "cond_token_dim": 768, "project_cond_tokens": False, "global_cond_dim": 1536,
                         "project_global_cond": True, "transformer_type": "continuous_transformer",
                         "global_cond_type": "prepend"},
                        3041, 768, latent=LatentSpec(kind="audio", length=32),
                        buffers={"diffusion_model.transformer.rotary_pos_emb.inv_freq": "rope"},
                        extra_state={f"{_SECONDS}{w}.embedder.embedding.{leaf}": shape
                                     for w in ("start", "total")
                                     for leaf, shape in (("0.weights", (128,)), ("1.weight", (768, 257)),
                                                         ("1.bias", (768,)))},
                        notes="the seconds embedders are fixed at 768 wide, so the text width is 768"))
    s.append(FamilySpec("auraflow", "AuraFlow", {"in_channels": 4, "out_channels": 4, "patch_size": 2,
                                                 "dim": 64,
                                                 "n_layers": 3, "n_double_layers": 1, "n_heads": 2,
                                                 "global_conddim": 64,
                                                 "cond_seq_dim": 48, "max_seq": 256},
                        3042, 48))
    pixart = {"patch_size": 2, "num_heads": 2, "hidden_size": 96, "in_channels": 4, "depth": 2,
              "caption_channels": 48,
              "model_max_length": 8, "input_size": 32, "pe_interpolation": 0.5}
    y_emb = {"diffusion_model.y_embedder.y_embedding": "seeded"}
    s.append(FamilySpec("pixart_alpha", "PixArtAlpha", {**pixart, "image_model": "pixart_alpha",
                                                        "micro_condition": True},
                        3043, 48, buffers=y_emb, latent=LatentSpec(width=272, height=272),
                        notes="PixArtMS needs round(latent side / 64) >= 1 for its position embedding (272 "
                              "px); hidden 96 "
                              "because the alpha micro-conditions embed into hidden / 3 each"))
    s.append(FamilySpec("pixart_sigma", "PixArtSigma", {**pixart, "image_model": "pixart_sigma",
                                                        "micro_condition": False},
                        3044, 48, buffers=y_emb, latent=LatentSpec(width=272, height=272)))
    hydit = {"image_model": "hydit", "depth": 4, "hidden_size": 64, "num_heads": 2, "text_states_dim": 48,
             "text_states_dim_t5": 40, "text_len": 8, "text_len_t5": 8, "input_size": [16, 16]}
    hydit_extras = {"attention_mask": mask8, "conditioning_mt5xl": Extra("randn", (1, 8, 40)),
                    "attention_mask_mt5xl": mask8}
    s.append(FamilySpec("hunyuan_dit", "HunyuanDiT", hydit, 3045, 48, extras=hydit_extras))
    s.append(FamilySpec("hunyuan_dit1", "HunyuanDiT1", {**hydit, "image_model": "hydit1", "size_cond": True,
                                                        "use_style_cond": True}, 3046, 48,
                        extras=hydit_extras))
    s.append(FamilySpec("flux", "Flux", dict(_FLUX), 3050, 48, pooled_dim=32, guidance=3.5))
    s.append(FamilySpec("flux_schnell", "FluxSchnell", {**_FLUX, "guidance_embed": False}, 3051, 48,
                        pooled_dim=32))
    s.append(FamilySpec("flux_inpaint", "FluxInpaint", {**_FLUX, "in_channels": 96}, 3052, 48, pooled_dim=32,
                        guidance=3.5,
                        notes="in 96 = latent 16 + image 16 + 8x8 mask 64 (Fill)"))
    s.append(FamilySpec("flux2", "Flux2", {**_FLUX, "image_model": "flux2", "in_channels": 128,
                                           "out_channels": 128,
                                           "patch_size": 1, "vec_in_dim": None, "axes_dim": [8, 8, 8, 8],
                                           "theta": 2000,
                                           "mlp_ratio": 3.0, "global_modulation": True, "mlp_silu_act": True,
                                           "qkv_bias": False, "ops_bias": False,
                                           "default_ref_method": "index",
                                           "ref_index_scale": 10.0},
                        3053, 48, guidance=4.0, latent=LatentSpec(spatial=16),
                        notes="Flux2.extra_conds pads the text to 512 tokens"))
    s.append(FamilySpec("chroma", "Chroma", dict(_CHROMA), 3054, 48, latent=LatentSpec()))
    s.append(FamilySpec("chroma_radiance", "ChromaRadiance",
                        {**_CHROMA, "image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3,
                         "patch_size": 16, "nerf_hidden_size": 16, "nerf_mlp_ratio": 2, "nerf_depth": 2,
                         "nerf_max_freqs": 8, "nerf_tile_size": 0, "nerf_final_head_type": "conv",
                         "nerf_embedder_dtype": torch.float32},
                        3055, 48, latent=LatentSpec(spatial=1, width=32, height=32),
                        notes="pixel space: the latent is the RGB image"))
    s.append(FamilySpec("lumina2", "Lumina2", dict(_LUMINA), 3060, 48, attention_mask=True))
    s.append(FamilySpec("z_image", "ZImage", {**_LUMINA, "dim": 256, "n_layers": 1, "n_heads": 2,
                                              "n_kv_heads": 2,
                                              "axes_dims": [32, 48, 48], "ffn_dim_multiplier": 8.0 / 3.0,
                                              "z_image_modulation": True, "time_scale": 1000.0,
                                              "pad_tokens_multiple": 32, "rope_theta": 256.0},
                        3061, 48, attention_mask=True,
                        notes="dim 256 (not 64): the z-image adaLN input is min(dim, 256) wide while the "
                              "time embedder always outputs 256; ZImage.unet_config's dim 3840 only "
                              "matters for detection"))
    s.append(FamilySpec("hidream", "HiDream", {"image_model": "hidream", "attention_head_dim": 32,
                                               "axes_dims_rope": [16, 8, 8],
                                               "caption_channels": [48, 40], "max_resolution": [128, 128],
                                               "in_channels": 16, "llama_layers": [0, 1],
                                               "num_attention_heads": 2,
                                               "num_routed_experts": 4, "num_activated_experts": 2,
                                               "num_layers": 1,
                                               "num_single_layers": 1, "out_channels": 16, "patch_size": 2,
                                               "text_emb_dim": 32},
                        3062, 48, pooled_dim=32, extras={"conditioning_llama3": Extra("randn", (1, 2, 8,
                                                                                                40))},
                        notes="context = T5 states; conditioning_llama3 = (B, layers, tokens, width), one "
                              "layer per block"))
    s.append(FamilySpec("omnigen2", "Omnigen2", {"image_model": "omnigen2", "axes_dim_rope": [8, 12, 12],
                                                 "axes_lens": [1024, 1664, 1664], "ffn_dim_multiplier": None,
                                                 "hidden_size": 64, "in_channels": 16, "multiple_of": 16,
                                                 "norm_eps": 1e-5, "num_attention_heads": 2,
                                                 "num_kv_heads": 1,
                                                 "num_layers": 2, "num_refiner_layers": 1,
                                                 "out_channels": None,
                                                 "patch_size": 2, "text_feat_dim": 48,
                                                 "timestep_scale": 1000.0},
                        3063, 48, attention_mask=True))
    s.append(FamilySpec("qwen_image", "QwenImage", {"image_model": "qwen_image", "patch_size": 2,
                                                    "in_channels": 64,
                                                    "out_channels": 16, "num_layers": 2,
                                                    "attention_head_dim": 32,
                                                    "num_attention_heads": 2, "joint_attention_dim": 48,
                                                    "axes_dims_rope": (8, 12, 12)},
                        3064, 48, latent=LatentSpec(kind="video", temporal=4, frames=1),
                        notes="Wan21 latent (5-D, one frame)"))

    # --- video families ---------------------------------------------------------------------
    s.append(FamilySpec("mochi", "GenmoMochi", {"image_model": "mochi_preview", "depth": 2, "patch_size": 2,
                                                "num_heads": 2,
                                                "hidden_size_x": 64, "hidden_size_y": 32,
                                                "mlp_ratio_x": 12288 / 64,
                                                "mlp_ratio_y": 4.0, "learn_sigma": False, "in_channels": 12,
                                                "qk_norm": True, "qkv_bias": False, "out_bias": True,
                                                "attn_drop": 0.0,
                                                "patch_embed_bias": True, "posenc_preserve_area": True,
                                                "timestep_mlp_bias": True, "attend_to_padding": False,
                                                "timestep_scale": 1000.0, "use_t5": True, "t5_feat_dim": 48,
                                                "t5_token_length": 8, "rope_theta": 10000.0},
                        3070, 48, attention_mask=True, latent=LatentSpec(kind="video", spatial=8, temporal=6,
                                                                         frames=7),
                        notes="AsymmetricJointBlock asserts hidden_x * mlp_ratio_x == 12288, so "
                              "mlp_ratio_x = 192"))
    s.append(FamilySpec("ltxv", "LTXV", {"image_model": "ltxv", "num_layers": 2, "attention_head_dim": 32,
                                         "cross_attention_dim": 64, "num_attention_heads": 2,
                                         "caption_channels": 48,
                                         "in_channels": 128},
                        3071, 48, attention_mask=True, latent=LatentSpec(kind="video", spatial=32,
                                                                         temporal=8, frames=9)))
    # no attention masks for the HunyuanVideo families: their text encoders drop an all-ones mask, and
    # core 0.3.75 HunyuanVideo.forward_orig builds a batch-1 mask (fails on a cond+uncond batch with one)
    s.append(FamilySpec("hunyuan_video", "HunyuanVideo", dict(_HYV), 3072, 48, pooled_dim=32, guidance=6.0,
                        latent=_VIDEO8))
    s.append(FamilySpec("hunyuan_video_i2v", "HunyuanVideoI2V", {**_HYV, "in_channels": 33}, 3073, 48,
                        pooled_dim=32,
                        guidance=6.0, latent=_VIDEO8))
    s.append(FamilySpec("hunyuan_video_skyreels_i2v", "HunyuanVideoSkyreelsI2V", {**_HYV, "in_channels": 32},
                        3074, 48,
                        pooled_dim=32, guidance=6.0, latent=_VIDEO8))
    hyv15 = {**_HYV, "in_channels": 65, "out_channels": 32, "vec_in_dim": None, "vision_in_dim": 48,
             "byt5": True,
             "use_cond_type_embedding": True, "guidance_embed": False}
    s.append(FamilySpec("hunyuan_video15", "HunyuanVideo15", hyv15, 3075, 48,
                        latent=LatentSpec(kind="video", spatial=16, temporal=4, frames=5),
                        notes="byt5_in keeps its fixed 1472 -> 2048 -> 2048 widths"))
    s.append(FamilySpec("hunyuan_video15_sr", "HunyuanVideo15_SR_Distilled", {**hyv15, "in_channels": 98},
                        3076, 48,
                        latent=LatentSpec(kind="video", spatial=16, temporal=4, frames=5)))
    s.append(FamilySpec("hunyuan_image21", "HunyuanImage21", {**_HYV, "in_channels": 64, "out_channels": 64,
                                                             "patch_size": [1, 1], "axes_dim": [16, 16],
                                                              "vec_in_dim": None,
                                                             "byt5": True, "guidance_embed": False},
                        3077, 48, latent=LatentSpec(spatial=32),
                        notes="byt5_in keeps its fixed 1472 -> 2048 -> 2048 widths"))
    s.append(FamilySpec("hunyuan_image21_refiner", "HunyuanImage21Refiner",
                        {**_HYV, "in_channels": 128, "out_channels": 64, "patch_size": [1, 1, 1],
                         "vec_in_dim": None,
                         "guidance_embed": True},
                        3078, 48, guidance=6.0, latent=LatentSpec(kind="video", spatial=16, temporal=4,
                                                                                       frames=1)))
    s.append(FamilySpec("cosmos_t2v", "CosmosT2V", dict(_COSMOS1), 3080, 48,
                        latent=LatentSpec(kind="video", spatial=8, temporal=8, frames=9)))
    s.append(FamilySpec("cosmos_i2v", "CosmosI2V", {**_COSMOS1, "in_channels": 17}, 3081, 48,
                        latent=LatentSpec(kind="video", spatial=8, temporal=8, frames=9)))
    s.append(FamilySpec("cosmos_predict2", "CosmosT2IPredict2", dict(_COSMOS_PRED2), 3082, 48,
                        latent=_VIDEO8))
    s.append(FamilySpec("cosmos_predict2_i2v", "CosmosI2VPredict2", {**_COSMOS_PRED2, "in_channels": 17},
                        3083, 48,
                        latent=_VIDEO8))
    s.append(FamilySpec("wan21_t2v", "WAN21_T2V", dict(_WAN), 3090, 48, latent=_VIDEO8))
    s.append(FamilySpec("wan21_i2v", "WAN21_I2V", {**_WAN, "model_type": "i2v", "in_dim": 36}, 3091, 48,
                        latent=_VIDEO8,
                        notes="img_emb keeps the CLIP-H width 1280"))
    s.append(FamilySpec("wan21_fun_control", "WAN21_FunControl2V", {**_WAN, "model_type": "i2v",
                                                                    "in_dim": 48}, 3092, 48,
                        latent=_VIDEO8))
    s.append(FamilySpec("wan21_camera", "WAN21_Camera", {**_WAN, "model_type": "camera", "in_dim": 32}, 3093,
                        48,
                        latent=_VIDEO8))
    s.append(FamilySpec("wan22_camera", "WAN22_Camera", {**_WAN, "model_type": "camera_2.2", "in_dim": 36},
                        3094, 48,
                        latent=_VIDEO8))
    s.append(FamilySpec("wan21_vace", "WAN21_Vace", {**_WAN, "model_type": "vace", "vace_in_dim": 96,
                                                     "vace_layers": 1},
                        3095, 48, latent=_VIDEO8))
    s.append(FamilySpec("wan21_humo", "WAN21_HuMo", {**_WAN, "model_type": "humo", "audio_token_num": 1},
                        3096, 48,
                        latent=_VIDEO8, heavy=True,
                        notes="audio_proj has fixed widths (8 * 5 * 1280 -> 512 -> 512 -> tokens * 1536)"))
    s.append(FamilySpec("wan22_s2v", "WAN22_S2V", {**_WAN, "model_type": "s2v", "audio_dim": 32,
                                                   "audio_inject_layers": [0, 1], "cond_dim": 16},
                        3097, 48, latent=_VIDEO8))
    s.append(FamilySpec("wan22_animate", "WAN22_Animate", {**_WAN, "model_type": "animate", "in_dim": 36,
                                                           "motion_encoder_dim": 64, "num_layers": 5},
                        3098, 48, latent=_VIDEO8, heavy=True,
                        notes="5 blocks so one face adapter exists (num_layers // 5); the motion encoder "
                              "(22.7M) and "
                              "face encoder convs (1024 wide) have fixed widths"))
    s.append(FamilySpec("wan22_t2v", "WAN22_T2V", {**_WAN, "in_dim": 48, "out_dim": 48}, 3099, 48,
                        latent=LatentSpec(kind="video", spatial=16, temporal=4, frames=5),
                        notes="the Wan 2.2 TI2V-5B layout (48-channel latent at /16)"))

    # --- 3D and audio -----------------------------------------------------------------------
    shape = LatentSpec(kind="audio", length=16)
    s.append(FamilySpec("hunyuan3d2", "Hunyuan3Dv2", dict(_HY3D), 3100, 48, guidance=5.0, context_len=8,
                        latent=shape))
    s.append(FamilySpec("hunyuan3d2_mini", "Hunyuan3Dv2mini", {**_HY3D, "depth": 8 // 4}, 3101, 48,
                        guidance=5.0,
                        latent=shape,
                        notes="Hunyuan3Dv2mini.unet_config matches depth 8 for detection; built at 2"))
    s.append(FamilySpec("hunyuan3d2_1", "Hunyuan3Dv2_1", {"image_model": "hunyuan3d2_1", "in_channels": 64,
                                                          "context_dim": 48, "hidden_size": 64,
                                                          "mlp_ratio": 4.0,
                                                          "num_heads": 2, "depth": 3, "qkv_bias": False,
                                                          "num_moe_layers": 1, "num_experts": 2,
                                                          "moe_top_k": 1,
                                                          "guidance_cond_proj_dim": None},
                        3102, 48, guidance=5.0, latent=shape))
    s.append(FamilySpec("ace_step", "ACEStep", {"audio_model": "ace", "attention_head_dim": 32,
                                                "in_channels": 8,
                                                "inner_dim": 64, "max_height": 16, "max_position": 32768,
                                                "max_width": 32768, "mlp_ratio": 2.5,
                                                "num_attention_heads": 2,
                                                "num_layers": 2, "out_channels": 8, "patch_size": [16, 1],
                                                "rope_theta": 1000000.0, "speaker_embedding_dim": 512,
                                                "text_embedding_dim": 48, "ssl_encoder_depths": [1, 1],
                                                "ssl_latent_dims": [32, 32], "ssl_names": ["mert",
                                                                                           "m-hubert"],
                                                "lyric_encoder_vocab_size": 64, "lyric_hidden_size": 1024},
                        3103, 48, extras={"conditioning_lyrics": Extra("int", (1, 8), high=64)},
                        latent=LatentSpec(kind="ace", length=16),
                        heavy=True,
                        notes="speaker_embedding_dim stays 512 (ACEStep.extra_conds feeds zeros (B, 512)); "
                              "the lyric Conformer has fixed widths (1024 wide, 6 blocks: 82M parameters)"))
    return {spec.name: spec for spec in s}


FAMILIES: dict[str, FamilySpec] = _specs()


def family_names() -> list[str]:
    return list(FAMILIES)


def family_spec(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


# ---------------------------------------------------------------------------------------------
# building


# Fields newer hosts' params dataclasses require, with what their model detection sets (ComfyUI 0.8.0:
# FluxParams.txt_ids_dims, ChromaParams.vec_in_dim, ChromaRadianceParams.use_x0,
# HunyuanVideoParams.meanflow_sum)
_HOST_FIELD_DEFAULTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "txt_ids_dims": lambda cfg: [3] if cfg.get("image_model") == "flux2" else [],
    "vec_in_dim": lambda cfg: None,
    "use_x0": lambda cfg: False,
    "meanflow_sum": lambda cfg: False,
}


def has_quantized_layers() -> bool:
    """Whether this host loads ``comfy_quant`` layers as ``QuantizedTensor`` weights (ComfyUI 0.8.0 does:
    ``comfy.utils.detect_layer_quantization`` + ``comfy.ops.mixed_precision_ops``)."""
    import_comfy()
    import comfy.utils  # noqa: PLC0415

    return hasattr(comfy.utils, "detect_layer_quantization")


def has_scaled_fp8_ops() -> bool:
    """Whether this host builds scaled-fp8 models with ``comfy.ops.scaled_fp8_ops`` (0.3.75 does)."""
    comfy = import_comfy()
    return hasattr(comfy.ops, "scaled_fp8_ops")


def _params_class(image_model: str | None) -> Any:
    import_comfy()
    if image_model in ("flux", "flux2"):
        from comfy.ldm.flux.model import FluxParams  # noqa: PLC0415

        return FluxParams
    if image_model == "chroma":
        from comfy.ldm.chroma.model import ChromaParams  # noqa: PLC0415

        return ChromaParams
    if image_model == "chroma_radiance":
        from comfy.ldm.chroma_radiance.model import ChromaRadianceParams  # noqa: PLC0415

        return ChromaRadianceParams
    if image_model == "hunyuan_video":
        from comfy.ldm.hunyuan_video.model import HunyuanVideoParams  # noqa: PLC0415

        return HunyuanVideoParams
    return None


def host_unet_config(spec: FamilySpec) -> dict[str, Any]:
    """``spec.unet_config`` plus the fields this host's params dataclass requires and 0.3.75's lacks
    (filled as the host's model detection fills them; they change no weight)."""
    cfg = copy.deepcopy(spec.unet_config)
    params = _params_class(cfg.get("image_model"))
    if params is not None:
        for f in dataclasses.fields(params):
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name not in cfg and no_default and f.name in _HOST_FIELD_DEFAULTS:
                cfg[f.name] = _HOST_FIELD_DEFAULTS[f.name](cfg)
    return cfg


def _config(spec: FamilySpec) -> Any:
    comfy = import_comfy()
    cls = getattr(comfy.supported_models, spec.config_class)
    return cls(host_unet_config(spec))


def _get_model(model_config: Any, spec: FamilySpec) -> Any:
    """``model_config.get_model`` on the CPU without autograd (ComfyUI loads under inference mode;
    Stable_Zero123 copies its cc_projection in place inside ``__init__``)."""
    with torch.no_grad():
        return model_config.get_model(_extra_state(spec), device=CPU)


def _key_generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()) | (seed << 32))


def _extra_state(spec: FamilySpec) -> dict[str, torch.Tensor]:
    return {k: seeded_tensor(k, shape, spec.seed) for k, shape in spec.extra_state.items()}


def _buffer_value(kind: str, key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    if kind == "seeded":
        return seeded_tensor(key, shape, seed)
    if kind == "rope":
        dim = 2 * shape[-1]
        return 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    raise ValueError(f"unknown buffer init {kind!r} for {key}")


def host_version() -> str:
    """The ComfyUI version the families are built with (part of every cache key: hosts may differ in
    parameter names)."""
    from testkit.host import comfyui_version  # noqa: PLC0415

    return comfyui_version()


def family_dir() -> Path:
    path = models_dir() / f"families-{FAMILIES_VERSION}-comfy{host_version()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def family_state_dict(name: str) -> dict[str, torch.Tensor]:
    """fp32 seeded weights of the small ``name`` model, keyed like ``BaseModel.state_dict()``
    (``diffusion_model.*`` plus the family's ``extra_state`` and seeded persistent ``buffers``);
    built once, then read from the cache."""
    spec = family_spec(name)
    path = family_dir() / f"{name}.safetensors"
    if path.exists():
        return load_file(str(path))
    model_config = _config(spec)
    model_config.set_inference_dtype(torch.float32, None)
    base = _get_model(model_config, spec)
    sd = {key: seeded_tensor(key, tuple(p.shape), spec.seed) for key, p in base.named_parameters()}
    buffers = dict(base.named_buffers())
    for key, kind in spec.buffers.items():
        sd[key] = _buffer_value(kind, key, tuple(buffers[key].shape), spec.seed)
    del base
    save_safetensors(sd, path, metadata={"family": name, "config_class": spec.config_class,
                                         "families_version": FAMILIES_VERSION})
    log.info("built %s (%d tensors)", path, len(sd))
    return sd


def fp8_scale(name: str, key: str) -> float:
    """The seeded ``scale_weight`` of the Linear whose weight is ``key`` in the ``fp8_scaled`` variant:
    ``2 ** u``, ``u`` uniform in [-1, 1] (so in [0.5, 2] and never exactly 1)."""
    u = float(torch.rand((), generator=_key_generator(family_spec(name).seed, "scale_weight:" + key))) * 2 - 1
    if abs(u) < 0.05:
        u = 0.05 if u >= 0 else -0.05
    return float(torch.tensor(2.0**u, dtype=torch.float32))  # the value the fp32 parameter holds


def _configure_dtype(model_config: Any, dtype: torch.dtype, weight_format: str | None) -> None:
    """Set the inference dtype the way ``comfy.sd.load_diffusion_model_state_dict`` does on this host."""
    comfy = import_comfy()
    mm = comfy.model_management
    supported = model_config.supported_inference_dtypes
    if weight_format is None:
        model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, CPU, supported))
    elif weight_format == "fp8_e4m3fn":
        fp8 = torch.float8_e4m3fn
        model_config.set_inference_dtype(fp8, mm.unet_manual_cast(fp8, CPU, supported))
    elif weight_format == "fp8_scaled":
        if not has_scaled_fp8_ops():
            raise NotImplementedError(
                f"ComfyUI {host_version()} has no comfy.ops.scaled_fp8_ops (it loads scaled-fp8 checkpoints "
                "as mixed-precision QuantizedTensors); the fp8_scaled variant is built the 0.3.75 way only")
        # the loader sees the "scaled_fp8" marker key: Linear weights fp8 + scale_weight, the rest in dtype
        model_config.scaled_fp8 = torch.float8_e4m3fn
        model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, CPU, supported))
    elif weight_format == "fp8_quantized":
        if not has_quantized_layers():
            raise NotImplementedError(f"ComfyUI {host_version()} has no quantized layers (comfy_quant): the "
                                      "fp8_quantized variant needs ComfyUI 0.8.0 or newer")
        # what model detection sets for a checkpoint with comfy_quant layers; the loader's dtype choice
        model_config.quant_config = {"mixed_ops": True}
        model_config.set_inference_dtype(dtype, mm.unet_manual_cast(None, CPU, supported))
    else:
        raise ValueError(f"unknown weight_format {weight_format!r}; expected one of {WEIGHT_FORMATS}")


def _state_for(name: str, base: Any, sd: dict[str, torch.Tensor],
               weight_format: str | None) -> dict[str, torch.Tensor]:
    """``sd`` converted to the dtypes of ``base``'s parameters (fp8 scaled: ``fp8(W / s)`` and
    ``scale_weight = s``)."""
    if weight_format == "fp8_quantized":
        return _quantized_state(name, base, sd)
    target = base.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key not in target:
            raise KeyError(f"{name}: cached weight {key} has no parameter in the model; "
                           "bump FAMILIES_VERSION")
        out[key] = value.to(target[key].dtype)
    if weight_format == "fp8_scaled":
        for key in target:
            if key.endswith(".scale_weight"):
                wkey = key[: -len("scale_weight")] + "weight"
                scale = fp8_scale(name, wkey)
                out[key] = torch.tensor(scale, dtype=torch.float32)
                out[wkey] = (sd[wkey] / scale).to(target[wkey].dtype)
    return out


def _quantized_state(name: str, base: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` as a checkpoint with quantized layers (0.8.0's ``comfy_quant``): every Linear of the mixed
    precision ops stored ``fp8(W / s)`` with ``weight_scale = s`` and its ``comfy_quant`` entry; the rest
    in the dtype of the model's parameter (a quantized Linear has no weight until it is loaded)."""
    import json  # noqa: PLC0415

    params = {**dict(base.named_parameters()), **dict(base.named_buffers())}
    quant = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode("utf-8")), dtype=torch.uint8)
    linears = {f"{key}.weight" for key, module in base.named_modules()
               if type(module).__name__ == "Linear" and hasattr(module, "convert_weight")}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in linears:
            scale = fp8_scale(name, key)
            prefix = key[: -len("weight")]
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[prefix + "weight_scale"] = torch.tensor(scale, dtype=torch.float32)
            out[prefix + "comfy_quant"] = quant.clone()
        elif key in params:
            out[key] = value.to(params[key].dtype)
        else:
            raise KeyError(f"{name}: cached weight {key} has no parameter in the model; bump FAMILIES_VERSION")
    return out


def small_family_model(name: str, dtype: torch.dtype = torch.float32,
                       weight_format: str | None = None) -> Any:
    """A fresh ``comfy.model_patcher.ModelPatcher`` of the small ``name`` model on the CPU.

    Built from ``comfy.supported_models.<config_class>(unet_config)`` -> ``set_inference_dtype`` ->
    ``get_model({}, device=cpu)``; weights from :func:`family_state_dict`, converted to the storage
    dtype of each parameter (``weight_format`` see the module docstring). Raises ``RuntimeError`` if
    ComfyUI built another config class than the spec names.
    """
    comfy = import_comfy()
    spec = family_spec(name)
    sd = family_state_dict(name)
    model_config = _config(spec)
    _configure_dtype(model_config, dtype, weight_format)
    base = _get_model(model_config, spec)
    state = _state_for(name, base, sd, weight_format)
    with torch.no_grad():
        missing, unexpected = base.load_state_dict(state, strict=False)
    allowed_missing = {k for k in base.state_dict()
                       if k.startswith("model_sampling.") or k.endswith(".scale_input")}
    missing = [k for k in missing if k not in allowed_missing and not _is_computed_buffer(base, k)]
    if missing or unexpected:
        raise RuntimeError(f"{name}: weights do not fit the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    base.eval()
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=CPU, offload_device=CPU)
    got = type(patcher.model.model_config).__name__
    if got != spec.config_class:
        raise RuntimeError(f"{name}: ComfyUI built config class {got}, expected {spec.config_class}")
    return patcher


def _is_computed_buffer(base: torch.nn.Module, key: str) -> bool:
    params = {k for k, _ in base.named_parameters()}
    return key not in params


# ---------------------------------------------------------------------------------------------
# conditioning, latents, one forward pass, sampling


def _randn(shape: tuple[int, ...], seed: int, key: str) -> torch.Tensor:
    return torch.randn(shape, generator=_key_generator(seed, key))


def _extra_value(extra: Extra, seed: int, key: str) -> Any:
    if extra.kind == "randn":
        return _randn(extra.shape, seed, key)
    if extra.kind == "ones":
        return torch.ones(extra.shape)
    if extra.kind == "mask":
        return torch.ones(extra.shape, dtype=torch.long)
    if extra.kind == "zeros":
        return torch.zeros(extra.shape)
    if extra.kind == "int":
        return torch.randint(0, extra.high, extra.shape, generator=_key_generator(seed, key))
    if extra.kind == "value":
        return extra.value
    raise ValueError(f"unknown extra kind {extra.kind!r}")


def family_conditioning(name: str, seed: int = 0) -> list:
    """A seeded ComfyUI ``CONDITIONING`` (``[[cond, extras]]``) the small ``name`` model accepts:
    ``cond`` (1, context_len, context_dim) ``N(0, 1)``; extras ``pooled_output`` (1, pooled_dim),
    ``guidance``, ``attention_mask`` (1, context_len) ones, and the family's own entries."""
    spec = family_spec(name)
    base = f"{name}:{seed}"
    cond = _randn((1, spec.context_len, spec.context_dim), seed, base + ":cond")
    extras: dict[str, Any] = {}
    # text encoders always return the key (None where the model has no pooled input)
    extras["pooled_output"] = None
    if spec.pooled_dim is not None:
        extras["pooled_output"] = _randn((1, spec.pooled_dim), seed, base + ":pooled")
    if spec.guidance is not None:
        extras["guidance"] = spec.guidance
    if spec.attention_mask:
        extras["attention_mask"] = torch.ones((1, spec.context_len), dtype=torch.long)
    for key, extra in spec.extras.items():
        extras[key] = _extra_value(extra, seed, f"{base}:{key}")
    return [[cond, extras]]


def latent_shape(name: str, width: int | None = None, height: int | None = None, frames: int | None = None,
                 batch: int = 1) -> tuple[int, ...]:
    """Shape of the empty latent core's ``Empty*Latent`` nodes make for ``name`` at that size."""
    spec = family_spec(name)
    lat = spec.latent
    w = lat.width if width is None else width
    h = lat.height if height is None else height
    f = lat.frames if frames is None else frames
    channels = _config(spec).latent_format.latent_channels
    if lat.kind == "image":
        return (batch, channels, h // lat.spatial, w // lat.spatial)
    if lat.kind == "cascade_c":
        return (batch, channels, -(-h // lat.spatial), -(-w // lat.spatial))
    if lat.kind == "video":
        return (batch, channels, (f - 1) // lat.temporal + 1, h // lat.spatial, w // lat.spatial)
    if lat.kind == "frames":
        return (f * batch, channels, h // lat.spatial, w // lat.spatial)
    if lat.kind == "audio":
        return (batch, channels, lat.length)
    if lat.kind == "ace":
        return (batch, channels, 16, lat.length)
    raise ValueError(f"unknown latent kind {lat.kind!r}")


def family_latent(name: str, width: int | None = None, height: int | None = None, frames: int | None = None,
                  batch: int = 1) -> dict[str, torch.Tensor]:
    """An empty ``LATENT`` (``{"samples": zeros}``) of the right channels and dimensions (video families
    5-D); ``None`` sizes use the family's small default (64 x 64 pixels for most)."""
    return {"samples": torch.zeros(latent_shape(name, width, height, frames, batch))}


def model_inputs(patcher: Any, name: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(x, sigma, kwargs)`` for ``patcher.model.apply_model`` built by core's own conditioning path
    (``convert_cond`` -> ``encode_model_conds(model.extra_conds)`` -> ``process_cond`` -> ``cond_cat``):
    a batch of two, the family's conditioning at ``seed`` (positive) and at ``seed + 1`` (negative), on
    the same seeded ``x``; ``sigma`` is the model's sigma at 50 % of the schedule."""
    import_comfy()
    import comfy.sample  # noqa: PLC0415
    import comfy.sampler_helpers  # noqa: PLC0415
    import comfy.samplers  # noqa: PLC0415

    model = patcher.model
    latent = comfy.sample.fix_empty_latent_channels(patcher, family_latent(name)["samples"])
    x = _randn(tuple(latent.shape), seed, f"{name}:{seed}:x")
    sigma = torch.tensor([float(model.model_sampling.percent_to_sigma(0.5))])
    batch = []
    for prompt_type, cond_seed in (("positive", seed), ("negative", seed + 1)):
        conds = comfy.sampler_helpers.convert_cond(family_conditioning(name, cond_seed))
        conds = comfy.samplers.encode_model_conds(model.extra_conds, conds, x, CPU, prompt_type,
                                                  latent_image=latent,
                                                  denoise_mask=None, seed=seed)
        batch.append({k: v.process_cond(batch_size=x.shape[0], device=CPU, area=None)
                      for k, v in conds[0]["model_conds"].items()})
    # cond and uncond in one batch, as CFG sampling runs them (Hunyuan3D 2.1 splits the batch in two)
    x = torch.cat([x, x])
    return x, sigma.repeat(x.shape[0]), comfy.samplers.cond_cat(batch)


def forward_check(patcher: Any, name: str, seed: int = 0) -> torch.Tensor:
    """One denoiser call, ``patcher.model.apply_model(x, sigma, **conds)``, with seeded inputs; returns
    the denoised prediction (shape of the latent)."""
    x, sigma, kwargs = model_inputs(patcher, name, seed)
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, **kwargs)


def sample_check(patcher: Any, name: str, seed: int = 0, steps: int = 2, cfg: float = 2.0,
                 sampler_name: str = "euler", scheduler: str = "simple") -> torch.Tensor:
    """Core sampling, ``comfy.sample.sample`` as the KSampler node calls it (``fix_empty_latent_channels``,
    ``prepare_noise``), with the family's conditioning as positive and a second seed as negative."""
    import_comfy()
    import comfy.sample  # noqa: PLC0415

    latent = comfy.sample.fix_empty_latent_channels(patcher, family_latent(name)["samples"])
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = family_conditioning(name, seed)
    negative = family_conditioning(name, seed + 1)
    return comfy.sample.sample(patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                               latent,
                               disable_pbar=True, seed=seed)
