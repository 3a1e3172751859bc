"""Seeded stand-ins for SD1.5 and SDXL built from ComfyUI's own classes.

No model hub is reachable in tests, so every model here is an architecture with seeded random
weights:

- ``sd15_checkpoint()``: a full-size SD1.5 single-file checkpoint (UNet + CLIP-L + VAE, original
  LDM key layout, fp16) that core ``CheckpointLoaderSimple`` loads and detects as ``SD15``.
- ``small_sd15()`` / ``small_sdxl()``: the real block layout of each family (same blocks, resnets,
  attentions, transformer depths, key names) at a small channel width, returned as a fresh ComfyUI
  ``ModelPatcher`` and ``comfy.sd.CLIP`` on every call.
- ``diffusers_unet()`` / ``hf_text_encoders()``: diffusers / transformers modules holding the *same*
  weights as the small models, for the reference tools (PEFT, diffusers, LyCORIS).
- ``sdxl_full_patcher(device)``: a full-size SDXL UNet (2.567e9 parameters) built in place on a device
  (the GPU benchmark's model; ``device="meta"`` to count), seeded on that device, never cached.

Weights are drawn per tensor from a ``torch.Generator`` seeded by the tensor's key, so a tensor's
value depends only on (seed, key, shape), never on build order or global RNG state:
matrices and conv kernels ``N(0, 1/fan_in)``, 1-d weights (norm scales) ones, biases ``N(0, 0.01^2)``.

Everything is cached under ``<repo>/.cache/lora-lab/models-<MODELS_VERSION>/``; bump
``MODELS_VERSION`` whenever anything that changes the weights changes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

MODELS_VERSION = "1"
"""Cache key of everything this module builds; bump it when weights or layouts change."""

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COMFY_ROOT = REPO_ROOT / ".host" / "ComfyUI"
CPU = torch.device("cpu")

SEED_SMALL_SD15 = 1501
SEED_SMALL_SDXL = 1502
SEED_FULL_SD15 = 1500


# ---------------------------------------------------------------------------------------------
# host and cache plumbing


def import_comfy() -> Any:
    """Import ComfyUI in-process in CPU mode and return the ``comfy`` package.

    Uses ``testkit.host.import_comfy`` when that module exists; otherwise puts
    ``<repo>/.host/ComfyUI`` (or ``$LORA_LAB_COMFY``) on ``sys.path`` and sets
    ``comfy.cli_args.args.cpu`` before ``comfy.model_management`` is first imported.
    """
    try:
        from testkit.host import import_comfy as host_import_comfy  # noqa: PLC0415
    except ImportError:
        host_import_comfy = None
    if host_import_comfy is not None:
        host_import_comfy()
    else:
        root = Path(os.environ.get("LORA_LAB_COMFY", DEFAULT_COMFY_ROOT))
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        import comfy.cli_args  # noqa: PLC0415

        if "comfy.model_management" not in sys.modules:
            comfy.cli_args.args.cpu = True
    import comfy  # noqa: PLC0415
    import comfy.lora  # noqa: F401, PLC0415
    import comfy.model_management  # noqa: F401, PLC0415
    import comfy.model_patcher  # noqa: F401, PLC0415
    import comfy.sd  # noqa: F401, PLC0415
    import comfy.supported_models  # noqa: F401, PLC0415
    import comfy.utils  # noqa: F401, PLC0415

    return comfy


def cache_root() -> Path:
    """``$LORA_LAB_CACHE`` or ``<repo>/.cache/lora-lab``."""
    return Path(os.environ.get("LORA_LAB_CACHE", REPO_ROOT / ".cache" / "lora-lab"))


def models_dir() -> Path:
    path = cache_root() / f"models-{MODELS_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Atomic ``safetensors`` save (contiguous copies where needed)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def write_json(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# seeded weights


def _key_seed(seed: int, key: str) -> int:
    return zlib.crc32(f"{seed}:{key}".encode()) | (seed << 32)


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Deterministic init for parameter ``key`` of ``shape``.

    Matrices / conv kernels: ``N(0, 1/fan_in)`` with ``fan_in = prod(shape[1:])``; other ``*.weight``
    (norm scales): ones; biases: ``N(0, 0.01^2)``; ``position_ids``: ``arange``; ``logit_scale``: 4.6052.
    """
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "position_ids":
        return torch.arange(shape[-1]).expand(shape).clone()
    if leaf == "logit_scale":  # CLIP's log(1/0.07)
        return torch.full(shape, 4.6052, dtype=dtype)
    gen = torch.Generator().manual_seed(_key_seed(seed, key))
    if leaf == "bias":
        out = torch.randn(shape, generator=gen) * 0.01
    elif len(shape) >= 2:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        out = torch.randn(shape, generator=gen) * fan_in**-0.5
    else:
        out = torch.ones(shape)
    return out.to(dtype)


def seeded_state_dict(shapes: dict[str, torch.Size], seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: seeded_tensor(k, tuple(s), seed, dtype) for k, s in shapes.items()}


def meta_shapes(factory: Callable[[], torch.nn.Module], prefix: str = "") -> dict[str, torch.Size]:
    """Parameter/buffer shapes of the module ``factory()`` builds, built on the meta device (no RAM)."""
    with torch.device("meta"):
        module = factory()
    return {prefix + k: v.shape for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# the small families


@dataclass(frozen=True)
class SmallSpec:
    """One reduced-width family: ComfyUI unet_config, text-encoder overrides, diffusers config."""

    family: str
    seed: int
    unet_config: dict[str, Any]
    clip_overrides: dict[str, dict[str, Any]]  # "clip_l" / "clip_g" -> keys replacing the json config
    diffusers_config: dict[str, Any] = field(default_factory=dict)


_CLIP_L_SMALL = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "projection_dim": 64}
_CLIP_G_SMALL = {"hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4, "projection_dim": 128}

SMALL_SD15 = SmallSpec(
    family="sd15",
    seed=SEED_SMALL_SD15,
    # Exactly what comfy.model_detection.detect_unet_config reports for SD1.5, width 320 -> 32.
    unet_config={
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": _CLIP_L_SMALL["hidden_size"],
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    },
    clip_overrides={"clip_l": _CLIP_L_SMALL},
    diffusers_config={
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [32, 64, 128, 128],
        "layers_per_block": 2,
        "cross_attention_dim": _CLIP_L_SMALL["hidden_size"],
        "attention_head_dim": 8,  # diffusers' SD1.5 quirk: this is the number of heads (ComfyUI num_heads=8)
        "norm_num_groups": 32,
        "use_linear_projection": False,
    },
)

_SDXL_CONTEXT = _CLIP_L_SMALL["hidden_size"] + _CLIP_G_SMALL["hidden_size"]
_SDXL_ADM = _CLIP_G_SMALL["projection_dim"] + 6 * 256  # pooled CLIP-G + six 256-d size embeddings

SMALL_SDXL = SmallSpec(
    family="sdxl",
    seed=SEED_SMALL_SDXL,
    unet_config={
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": _SDXL_ADM,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 10,
        "use_linear_in_transformer": True,
        "context_dim": _SDXL_CONTEXT,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    },
    clip_overrides={"clip_l": _CLIP_L_SMALL, "clip_g": _CLIP_G_SMALL},
    diffusers_config={
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 2,
        "transformer_layers_per_block": [1, 2, 10],
        "cross_attention_dim": _SDXL_CONTEXT,
        # number of heads per level; ComfyUI SDXL uses 64-channel heads (64 -> 1 head, 128 -> 2)
        "attention_head_dim": [1, 1, 2],
        "norm_num_groups": 32,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": _SDXL_ADM,
    },
)

SMALL_SPECS = {"sd15": SMALL_SD15, "sdxl": SMALL_SDXL}


def _spec(family: str) -> SmallSpec:
    if family not in SMALL_SPECS:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(SMALL_SPECS)}")
    return SMALL_SPECS[family]


def _model_config(family: str, unet_config: dict[str, Any]) -> Any:
    comfy = import_comfy()
    cls = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[family]
    return cls(copy.deepcopy(unet_config))


def _clip_json(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    base = {"clip_l": "sd1_clip_config.json", "clip_g": "clip_config_bigg.json"}[name]
    comfy = import_comfy()
    with open(Path(comfy.sd.__file__).parent / base) as f:
        config = json.load(f)
    config.update(overrides)
    return config


def clip_model_options(family: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """``model_options`` for ``comfy.sd.CLIP`` that shrink the text encoders of ``family``."""
    spec = _spec(family)
    opts: dict[str, Any] = {"dtype": dtype, "load_device": CPU, "offload_device": CPU, "initial_device": CPU}
    for name, over in spec.clip_overrides.items():
        opts[f"{name}_model_config"] = dict(over)
    return opts


def _small_shapes(family: str) -> dict[str, torch.Size]:
    comfy = import_comfy()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: PLC0415

    spec = _spec(family)
    config = _model_config(family, spec.unet_config).unet_config
    shapes = meta_shapes(
        lambda: UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init), "diffusion_model."
    )
    target = _model_config(family, spec.unet_config).clip_target()
    opts = clip_model_options(family)
    opts.pop("dtype")
    for k in ("load_device", "offload_device", "initial_device"):
        opts.pop(k)
    shapes.update(meta_shapes(lambda: target.clip(device="meta", dtype=torch.float32, model_options=opts)))
    return shapes


def small_state_dict(family: str) -> dict[str, torch.Tensor]:
    """fp32 weights of the small ``family`` model, ComfyUI keys (``diffusion_model.*``,
    ``clip_l.transformer.*``, ``clip_g.transformer.*``); built once, then read from the cache."""
    path = models_dir() / f"small_{family}.safetensors"
    if not path.exists():
        spec = _spec(family)
        sd = seeded_state_dict(_small_shapes(family), spec.seed)
        save_safetensors(sd, path, metadata={"family": family, "testkit_models_version": MODELS_VERSION})
        log.info("built %s (%d tensors)", path, len(sd))
    return load_file(str(path))


def small_sd15_state_dict() -> dict[str, torch.Tensor]:
    return small_state_dict("sd15")


def small_sdxl_state_dict() -> dict[str, torch.Tensor]:
    return small_state_dict("sdxl")


def small_unet_config(family: str) -> dict[str, Any]:
    """The full ComfyUI unet_config of the small model (after the family's extra config)."""
    return copy.deepcopy(_model_config(family, _spec(family).unet_config).unet_config)


def small_model(family: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Fresh ``(ModelPatcher, comfy.sd.CLIP)`` for the small ``family`` model on CPU."""
    comfy = import_comfy()
    spec = _spec(family)
    sd = small_state_dict(family)

    model_config = _model_config(family, spec.unet_config)
    model_config.set_inference_dtype(dtype, None)
    base_model = model_config.get_model({}, device=CPU)
    unet_sd = {k[len("diffusion_model."):]: v.to(dtype) for k, v in sd.items() if k.startswith("diffusion_model.")}
    base_model.diffusion_model.load_state_dict(unet_sd, strict=True)
    base_model.eval()
    patcher = comfy.model_patcher.ModelPatcher(base_model, load_device=CPU, offload_device=CPU)

    clip = comfy.sd.CLIP(target=model_config.clip_target(), model_options=clip_model_options(family, dtype))
    clip_sd = {k: v.to(dtype) for k, v in sd.items() if not k.startswith("diffusion_model.")}
    clip.cond_stage_model.load_state_dict(clip_sd, strict=True)
    return patcher, clip


def small_sd15(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    return small_model("sd15", dtype)


def small_sdxl(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    return small_model("sdxl", dtype)


def forward_check(patcher: Any, clip: Any, prompt: str = "a photo of a cat", size: int = 64, seed: int = 0) -> torch.Tensor:
    """One denoiser call through ComfyUI (text encode -> ``apply_model``); returns the output."""
    gen = torch.Generator().manual_seed(seed)
    cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    model = patcher.model
    dtype = model.get_dtype()
    x = torch.randn((1, 4, size // 8, size // 8), generator=gen)
    sigma = torch.tensor([1.0])
    kwargs: dict[str, Any] = {}
    adm = model.encode_adm(pooled_output=pooled, width=size, height=size)
    if adm is not None:
        kwargs["y"] = adm
    with torch.no_grad():
        out = model.apply_model(x, sigma, c_crossattn=cond.to(dtype), **kwargs)
    return out


# ---------------------------------------------------------------------------------------------
# diffusers / transformers twins of the small models (same weights)


def diffusers_key_map(unet_config: dict[str, Any]) -> dict[str, str]:
    """diffusers UNet key -> ComfyUI ``diffusion_model.*`` key, from ``comfy.utils.unet_to_diffusers``."""
    comfy = import_comfy()
    return {k: "diffusion_model." + v for k, v in comfy.utils.unet_to_diffusers(unet_config).items()}


def load_diffusers_unet_from_comfy(unet: torch.nn.Module, comfy_sd: dict[str, torch.Tensor], unet_config: dict[str, Any]) -> None:
    """Copy ComfyUI-keyed UNet weights into a diffusers ``UNet2DConditionModel``, strictly.

    Raises ``KeyError`` if a diffusers key has no ComfyUI counterpart or a ComfyUI key is unused."""
    key_map = diffusers_key_map(unet_config)
    target = unet.state_dict()
    missing = [k for k in target if k not in key_map or key_map[k] not in comfy_sd]
    if missing:
        raise KeyError(f"{len(missing)} diffusers keys without a ComfyUI weight, e.g. {missing[:5]}")
    used = {key_map[k] for k in target}
    unused = [k for k in comfy_sd if k.startswith("diffusion_model.") and k not in used]
    if unused:
        raise KeyError(f"{len(unused)} ComfyUI UNet keys not used by diffusers, e.g. {unused[:5]}")
    # copy in place, tensor by tensor: no second full-size copy of the UNet in memory
    with torch.no_grad():
        for k, v in target.items():
            v.copy_(comfy_sd[key_map[k]].reshape(v.shape))


def diffusers_unet(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``diffusers.UNet2DConditionModel`` with the same weights as ``small_model(family)``."""
    from diffusers import UNet2DConditionModel  # noqa: PLC0415

    spec = _spec(family)
    unet = UNet2DConditionModel(**spec.diffusers_config)
    load_diffusers_unet_from_comfy(unet, small_state_dict(family), small_unet_config(family))
    return unet.to(dtype).eval()


def hf_text_config(name: str, overrides: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig  # noqa: PLC0415

    cfg = _clip_json(name, overrides)
    keep = {
        k: cfg[k]
        for k in (
            "vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
            "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
            "attention_dropout", "dropout", "bos_token_id", "eos_token_id", "pad_token_id",
        )
        if k in cfg
    }
    return CLIPTextConfig(**keep)


def load_hf_text_encoder_from_comfy(model: torch.nn.Module, comfy_sd: dict[str, torch.Tensor], prefix: str) -> None:
    """Copy ``<prefix>*`` ComfyUI text-encoder weights into a transformers CLIP text model by name."""
    target = model.state_dict()
    missing = [k for k in target if prefix + k not in comfy_sd and not k.endswith("position_ids")]
    if missing:
        raise KeyError(f"{len(missing)} transformers keys without a ComfyUI weight, e.g. {missing[:5]}")
    new_sd = {k: (comfy_sd[prefix + k].to(v.dtype) if prefix + k in comfy_sd else v) for k, v in target.items()}
    model.load_state_dict(new_sd, strict=True)


def hf_text_encoders(family: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.nn.Module]:
    """transformers text encoders with the small model's weights: ``{"clip_l": CLIPTextModel}`` and,
    for SDXL, ``"clip_g": CLIPTextModelWithProjection`` (diffusers' ``text_encoder_2``)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: PLC0415

    spec = _spec(family)
    sd = small_state_dict(family)
    out: dict[str, torch.nn.Module] = {}
    for name, over in spec.clip_overrides.items():
        cls = CLIPTextModelWithProjection if name == "clip_g" else CLIPTextModel
        model = cls(hf_text_config(name, over))
        load_hf_text_encoder_from_comfy(model, sd, f"{name}.transformer.")
        out[name] = model.to(dtype).eval()
    return out


# ---------------------------------------------------------------------------------------------
# the full-size SD1.5 checkpoint

SD15_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}


def sd15_unet_config() -> dict[str, Any]:
    """The unet_config ComfyUI detects for a real SD1.5 checkpoint."""
    cfg = copy.deepcopy(SMALL_SD15.unet_config)
    cfg.update(model_channels=320, context_dim=768)
    return cfg


def _sd15_full_shapes() -> dict[str, torch.Size]:
    comfy = import_comfy()
    from comfy.clip_model import CLIPTextModel  # noqa: PLC0415
    from comfy.ldm.models.autoencoder import AutoencoderKL  # noqa: PLC0415
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: PLC0415

    config = _model_config("sd15", sd15_unet_config()).unet_config
    shapes = meta_shapes(
        lambda: UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init), "model.diffusion_model."
    )
    clip_cfg = _clip_json("clip_l", {})
    clip_shapes = meta_shapes(lambda: CLIPTextModel(clip_cfg, torch.float32, "meta", comfy.ops.manual_cast), "cond_stage_model.transformer.")
    # real SD1.5 files carry no text projection (ComfyUI drops it when saving SD1.x)
    shapes.update({k: v for k, v in clip_shapes.items() if "text_projection" not in k})
    shapes.update(meta_shapes(lambda: AutoencoderKL(ddconfig=dict(SD15_VAE_DDCONFIG), embed_dim=4), "first_stage_model."))
    return shapes


def sd15_checkpoint() -> Path:
    """Path of a full-size SD1.5-architecture checkpoint (fp16, LDM keys), built once.

    Tensors are generated one at a time straight into fp16, so peak RAM is about twice the file
    size (the safetensors writer serialises a copy)."""
    path = models_dir() / "sd15_full_fp16.safetensors"
    if path.exists():
        return path
    shapes = _sd15_full_shapes()
    sd = {}
    for k, s in shapes.items():
        t = seeded_tensor(k, tuple(s), SEED_FULL_SD15, torch.float32)
        sd[k] = t if k.endswith("position_ids") else t.to(torch.float16)
    save_safetensors(sd, path, metadata={"family": "sd15", "testkit_models_version": MODELS_VERSION})
    log.info("built %s (%d tensors)", path, len(sd))
    return path


def read_prefixed(path: Path, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Only the ``prefix*`` tensors of a safetensors file (keys kept), optionally cast."""
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            if k.startswith(prefix):
                t = f.get_tensor(k)
                out[k] = t if dtype is None else t.to(dtype)
    return out


def sd15_full_unet_state_dict(dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The full checkpoint's UNet with ComfyUI model keys (``diffusion_model.*``); fp16 as stored
    unless ``dtype`` is given."""
    sd = read_prefixed(sd15_checkpoint(), "model.diffusion_model.", dtype)
    return {k[len("model."):]: v for k, v in sd.items()}


def sd15_full_diffusers_config() -> dict[str, Any]:
    cfg = copy.deepcopy(SMALL_SD15.diffusers_config)
    cfg.update(sample_size=64, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768)
    return cfg


# ---------------------------------------------------------------------------------------------
# the full-size SDXL UNet (built in place on a device, no file)

SEED_FULL_SDXL = 1503
SDXL_FULL_UNET_PARAMS = 2_567_463_684
"""Parameters of the SDXL 1.0 base UNet (diffusers' ``UNet2DConditionModel`` and ComfyUI's ``UNetModel``)."""


def sdxl_unet_config() -> dict[str, Any]:
    """The unet_config ComfyUI detects for a real SDXL 1.0 base checkpoint."""
    cfg = copy.deepcopy(SMALL_SDXL.unet_config)
    cfg.update(image_size=32, model_channels=320, context_dim=2048, adm_in_channels=2816)
    return cfg


def sdxl_full_diffusers_config() -> dict[str, Any]:
    """diffusers' ``UNet2DConditionModel`` config of the SDXL 1.0 base UNet (its ``unet/config.json``)."""
    cfg = copy.deepcopy(SMALL_SDXL.diffusers_config)
    cfg.update(sample_size=128, block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
               attention_head_dim=[5, 10, 20], projection_class_embeddings_input_dim=2816)
    return cfg


def _fill_seeded_(key: str, t: torch.Tensor, seed: int) -> None:
    """Fill ``t`` in place the way :func:`seeded_tensor` draws ``key`` (same laws), with a generator on
    ``t``'s device (fast on a GPU; the values differ from the CPU draw of the same key)."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias":
        t.normal_(0.0, 0.01, generator=torch.Generator(device=t.device).manual_seed(_key_seed(seed, key)))
    elif t.dim() >= 2:
        fan_in = t[0].numel()
        t.normal_(0.0, fan_in**-0.5, generator=torch.Generator(device=t.device).manual_seed(_key_seed(seed, key)))
    else:
        t.fill_(1.0)


@torch.no_grad()
def sdxl_full_patcher(device: torch.device | str, dtype: torch.dtype = torch.float16,
                      seed: int = SEED_FULL_SDXL) -> Any:
    """A full-size SDXL 1.0 base UNet (2.567e9 parameters) as a ComfyUI ``ModelPatcher``, built on
    ``device`` in ``dtype`` with seeded weights: ``load_device`` = ``device``, ``offload_device`` = CPU.

    ComfyUI's own classes (``comfy.supported_models.SDXL`` -> ``comfy.model_base.SDXL``): the weights
    are created without initialisation on ``device`` (the config's operations, ``disable_weight_init``
    for a plain ``dtype``, as ComfyUI does before loading a file), then every parameter is drawn in
    place by :func:`_fill_seeded_` (matrices and kernels ``N(0, 1/fan_in)``, norm scales ones, biases
    ``N(0, 0.01^2)``) from a generator on ``device`` seeded by the key. On ``device="meta"`` nothing
    is allocated or drawn (for counting parameters). Nothing is cached: on a GPU it takes seconds.
    """
    comfy = import_comfy()
    device = torch.device(device)
    model_config = comfy.supported_models.SDXL(sdxl_unet_config())
    model_config.set_inference_dtype(dtype, None)
    base_model = model_config.get_model({}, device=device)
    if not isinstance(base_model, comfy.model_base.SDXL):
        raise RuntimeError(f"expected comfy.model_base.SDXL, got {type(base_model).__name__}")
    base_model.eval()
    if device.type != "meta":
        for key, p in base_model.named_parameters():
            _fill_seeded_(key, p.data, seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return comfy.model_patcher.ModelPatcher(base_model, load_device=device, offload_device=CPU)
