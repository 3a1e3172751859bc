"""LoRA files for the small model families of :mod:`testkit.families`, named the way real tools name them.

:func:`family_lora` writes (once; cached under
``<cache>/family-loras-<LORAS_VERSION>-f<FAMILIES_VERSION>-comfy<host version>/<family>/``) a safetensors
LoRA for the small model of a family in one *naming* and returns its path;
:func:`load_family_lora` returns the same file as a :class:`FamilyLora` with its metadata, the reference
deltas and the intended ComfyUI target of every module. :func:`namings_for` / :func:`algos_for` list what
exists for a family.

Namings (``GENERIC_NAMINGS`` for every family, the rest per family):

- ``kohya``: ``lora_unet_<module with underscores>`` + ``lora_down`` / ``lora_up`` / ``alpha`` (sd-scripts;
  DiTs in their original/ComfyUI module names, e.g. ``lora_unet_double_blocks_0_img_attn_qkv``; UNet
  families in diffusers module names, ``lora_unet_down_blocks_0_attentions_0_...``; Stable Cascade C
  ``lora_prior_unet_``), ``ss_*`` and ``modelspec.*`` metadata. ``algo="dora"`` adds ``dora_scale``.
- ``diffusion_model``: ``diffusion_model.<module>.lora_A.weight`` / ``lora_B.weight`` + ``.alpha``
  (musubi-tuner, ai-toolkit); ``diffusion_model_down_up``: ``diffusion_model.<module>.lora_down.weight`` /
  ``lora_up.weight`` + ``.alpha`` (core ComfyUI ``TrainLoraNode``).
- ``lycoris``: a LyCORIS network (``lycoris.create_lycoris``) on the ComfyUI ``diffusion_model`` itself,
  saved by the network's ``save_weights`` with sd-scripts' ``lora_unet_`` prefix (``network_module =
  lycoris.kohya``); algos ``locon``, ``loha``, ``lokr``, ``diag-oft``, ``boft``, ``glora``, ``full``
  (``train_norm=True``: ``w_norm``/``b_norm`` for LayerNorm/GroupNorm) and ``dora`` (``dora_wd=True``).
- ``diffusers``, ``onetrainer``, ``diffusion_pipe``, ``wan_fun``, ``bfl_control``, ``qwen_default``:
  see :mod:`testkit.family_loras_extra` (family-specific).

Factors are seeded and scaled per target so that ``||dW|| = strength_of_delta * ||W||`` (W the ComfyUI
weight, or the slice the module means), with ``alpha = 1.5 * rank`` so a reader that ignores alpha is
off by 1.5x. Targets: every ``Linear``/``Conv1d/2d/3d`` of the diffusion model whose weight has at most
``MAX_TARGET_NUMEL`` elements (the fixed-width side encoders of the heavy families are left out).

References (:meth:`FamilyLora.module_deltas`): ``dW`` per file module at strength 1, in the module's own
shape: for plain factor algos computed from the file in float64 (``dW = alpha / r * up @ down``; LoHa/LoKr
through ``lycoris.functional`` with ``alpha / r`` applied once); for tool merges stored beside the file
(``<name>.reference.safetensors``: LyCORIS ``get_merged_weight - W`` for DoRA, diag-OFT, BOFT, GLoRA,
full and norms; PEFT ``merge()`` for diffusers files). :meth:`FamilyLora.comfy_deltas` maps them onto
ComfyUI weight keys through the intended targets recorded when the file was made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from testkit import families
from testkit.models import cache_root, save_safetensors, write_json

log = logging.getLogger(__name__)

LORAS_VERSION = "1"
"""Cache key of the family LoRA files; bump it when anything that changes what is written changes."""

ALPHA_PER_RANK = 1.5
MAX_TARGET_NUMEL = 1 << 20
DEFAULT_STRENGTH_OF_DELTA = 0.1

GENERIC_NAMINGS = ("kohya", "diffusion_model", "diffusion_model_down_up", "lycoris")
LYCORIS_ALGOS: dict[str, dict[str, Any]] = {
    "locon": {"algo": "locon"},
    "loha": {"algo": "loha"},
    "lokr": {"algo": "lokr", "factor": 4},
    "diag-oft": {"algo": "diag-oft"},
    "boft": {"algo": "boft"},
    "glora": {"algo": "glora"},
    "full": {"algo": "full", "train_norm": True},
    "dora": {"algo": "lora", "dora_wd": True},
}
_NAMING_ALGOS: dict[str, tuple[str, ...]] = {
    "kohya": ("lora", "dora"),
    "diffusion_model": ("lora",),
    "diffusion_model_down_up": ("lora",),
    "lycoris": tuple(LYCORIS_ALGOS),
}
# the key suffix that marks one target module in a file, per layout
TARGET_MARKERS = (
    ".lora_A.weight",
    ".lora_down.weight",
    ".lora_A.default.weight",
    ".hada_w1_a",
    ".lokr_w1",
    ".lokr_w1_a",
    ".oft_blocks",
    ".a1.weight",
    ".diff",
    ".w_norm",
)


# ---------------------------------------------------------------------------------------------
# targets


@dataclass(frozen=True)
class Target:
    """One module of a LoRA file and the ComfyUI weight it means.

    ``name``: the module as the file writes it (keys are ``name + ".lora_down.weight"`` etc.);
    ``comfy_key``: the ComfyUI weight (``diffusion_model.*.weight``) or ``None`` where none is known;
    ``shape``: shape of the module's delta; ``slice``: ``(dim, start, length)`` where the module means a
    slice of a fused ComfyUI weight; ``index_key``: key of a flat gather index (in the fixture's index file)
    where the module is any other rearrangement of ComfyUI elements (``delta.flatten()`` lands on
    ``comfy_weight.flatten()[index]``); ``bias_key``: the ComfyUI bias of the same layer.
    """

    name: str
    comfy_key: str | None
    shape: tuple[int, ...]
    slice: tuple[int, int, int] | None = None
    index_key: str | None = None
    bias_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "comfy_key": self.comfy_key,
            "shape": list(self.shape),
            "slice": list(self.slice) if self.slice else None,
            "index_key": self.index_key,
            "bias_key": self.bias_key,
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> Target:
        return cls(
            name,
            d["comfy_key"],
            tuple(d["shape"]),
            tuple(d["slice"]) if d["slice"] else None,
            d.get("index_key"),
            d.get("bias_key"),
        )


def comfy_layers(patcher: Any) -> dict[str, torch.nn.Module]:
    """``diffusion_model.<module>`` -> module for every Linear / Conv1d/2d/3d of the diffusion model
    whose weight has at most ``MAX_TARGET_NUMEL`` elements (ComfyUI's op classes subclass torch's)."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    out = {}
    for name, module in patcher.model.diffusion_model.named_modules():
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, kinds)
            and isinstance(weight, torch.Tensor)
            and weight.numel() <= MAX_TARGET_NUMEL
        ):
            out["diffusion_model." + name] = module
    return out


def _unet_diffusers_names(patcher: Any) -> dict[str, str]:
    """ComfyUI UNet weight key -> diffusers module name (``comfy.utils.unet_to_diffusers``)."""
    comfy = families.import_comfy()
    config = patcher.model.model_config.unet_config
    if "num_res_blocks" not in config:
        return {}
    out = {}
    for diffusers_key, comfy_key in comfy.utils.unet_to_diffusers(config).items():
        if diffusers_key.endswith(".weight"):
            out["diffusion_model." + comfy_key] = diffusers_key[: -len(".weight")]
    return out


def kohya_prefix(name: str) -> str:
    return "lora_prior_unet" if families.family_spec(name).config_class == "Stable_Cascade_C" else "lora_unet"


def generic_targets(name: str, naming: str, patcher: Any) -> list[Target]:
    """The modules of a ``kohya`` / ``diffusion_model`` / ``diffusion_model_down_up`` file for ``name``."""
    layers = comfy_layers(patcher)
    diffusers_names = _unet_diffusers_names(patcher) if naming == "kohya" else {}
    out = []
    for key, module in layers.items():
        comfy_key = key + ".weight"
        if naming == "kohya":
            module_name = diffusers_names.get(comfy_key, key[len("diffusion_model.") :])
            file_name = f"{kohya_prefix(name)}_{module_name.replace('.', '_')}"
        else:
            file_name = key
        bias = key + ".bias" if getattr(module, "bias", None) is not None else None
        out.append(Target(file_name, comfy_key, tuple(module.weight.shape), bias_key=bias))
    return out


# ---------------------------------------------------------------------------------------------
# seeded factors


def _generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(":".join(map(str, parts)).encode()))


def lora_factors(
    target: Target,
    base: torch.Tensor,
    rank: int,
    alpha: float,
    strength_of_delta: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(down, up)`` for ``target``: ``down (r, in, *k) ~ N(0, 1/fan_in)``, ``up (out, r, 1...)``
    rescaled so that ``||alpha/r * up @ down|| = strength_of_delta * ||base||`` (``base``: the weight or
    slice the module means)."""
    shape = target.shape
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    down = torch.randn((rank, *shape[1:]), generator=gen) * fan_in**-0.5
    up = torch.randn((shape[0], rank, *[1] * (len(shape) - 2)), generator=gen)
    delta = (alpha / rank) * (up.flatten(1).double() @ down.flatten(1).double())
    up *= float(strength_of_delta * base.double().norm() / delta.norm())
    return down.float(), up.float()


def base_for(
    target: Target, weights: dict[str, torch.Tensor], index: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """The ComfyUI weight (or slice / gathered elements) ``target`` means, in the target's shape."""
    w = weights[target.comfy_key]
    if target.slice is not None:
        dim, start, length = target.slice
        return w.narrow(dim, start, length).reshape(target.shape)
    if target.index_key is not None:
        assert index is not None
        return w.flatten()[index[target.index_key]].reshape(target.shape)
    return w.reshape(target.shape)


# ---------------------------------------------------------------------------------------------
# fixture files


@dataclass(frozen=True)
class FamilyLora:
    """One LoRA file of a family: ``path``, ``meta`` (its json), ``reference_path`` (stored tool deltas
    or ``None``), ``index_path`` (gather indices of targets or ``None``)."""

    path: Path
    meta: dict[str, Any]
    reference_path: Path | None
    index_path: Path | None

    @property
    def targets(self) -> dict[str, Target]:
        return {n: Target.from_json(n, d) for n, d in self.meta["targets"].items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path))

    def index(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.index_path)) if self.index_path is not None else {}

    def module_deltas(self) -> dict[str, torch.Tensor]:
        """``dW`` at strength 1 per file module (``<module>`` for the weight, ``<module>.bias`` for a bias),
        fp32: stored tool deltas where the tool merged them, else the file's own math in float64."""
        if self.reference_path is not None:
            return load_file(str(self.reference_path))
        return file_deltas(
            self.state_dict(), list(self.targets), self.meta["algo"], self.meta.get("alpha_default")
        )

    def comfy_deltas(self) -> dict[str, torch.Tensor]:
        """:meth:`module_deltas` placed on ComfyUI keys (``diffusion_model.*.weight`` / ``.bias``) through
        the intended targets; modules without a known ComfyUI weight are left out."""
        targets = self.targets
        index = self.index()
        shapes = self.meta["comfy_shapes"]
        out: dict[str, torch.Tensor] = {}
        for key, delta in self.module_deltas().items():
            is_bias = key.endswith(".bias") and key[: -len(".bias")] in targets
            t = targets[key[: -len(".bias")]] if is_bias else targets[key]
            comfy_key = t.bias_key if is_bias else t.comfy_key
            if comfy_key is None:
                continue
            full = out.setdefault(comfy_key, torch.zeros(shapes[comfy_key], dtype=torch.float64))
            if is_bias:
                full += delta.double().reshape(full.shape)
            elif t.slice is not None:
                dim, start, length = t.slice
                full.narrow(dim, start, length).add_(
                    delta.double().reshape(full.narrow(dim, start, length).shape)
                )
            elif t.index_key is not None:
                flat = full.view(-1)
                flat.index_add_(0, index[t.index_key], delta.double().flatten())
            else:
                full += delta.double().reshape(full.shape)
        return {k: v.float() for k, v in out.items()}


def loras_dir() -> Path:
    path = (
        cache_root()
        / f"family-loras-{LORAS_VERSION}-f{families.FAMILIES_VERSION}-comfy{families.host_version()}"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stem(name: str, naming: str, algo: str, rank: int, seed: int, strength_of_delta: float) -> str:
    return f"{name}/{naming}-{algo}-r{rank}-s{seed}-d{strength_of_delta:g}"


def _paths(stem: str) -> tuple[Path, Path, Path, Path]:
    base = loras_dir() / stem
    return (
        base.with_name(base.name + ".safetensors"),
        base.with_name(base.name + ".reference.safetensors"),
        base.with_name(base.name + ".index.safetensors"),
        base.with_name(base.name + ".json"),
    )


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=".build-", dir=loras_dir()))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def safetensors_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _versions() -> dict[str, str]:
    from importlib.metadata import version  # noqa: PLC0415

    out = {"torch": torch.__version__}
    for pkg in ("diffusers", "peft", "lycoris-lora", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing tool is recorded as such
            out[pkg] = "missing"
    return out


@dataclass
class Built:
    """What a builder hands to :func:`_write`: tensors + header of the LoRA file, its targets, and
    optionally stored reference deltas, gather indices and extra metadata."""

    tensors: dict[str, torch.Tensor]
    header: dict[str, str]
    targets: list[Target]
    comfy_shapes: dict[str, list[int]]
    meta: dict[str, Any]
    reference: dict[str, torch.Tensor] | None = None
    index: dict[str, torch.Tensor] | None = None
    file_path: Path | None = None  # a file the tool already wrote (kept byte for byte)


def _write(stem: str, built: Built) -> FamilyLora:
    path, ref_path, index_path, meta_path = _paths(stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    if built.file_path is not None:
        os.replace(built.file_path, path)
        os.chmod(path, 0o644)
    else:
        save_safetensors(built.tensors, path, metadata=built.header)
    if built.reference is not None:
        save_safetensors({k: v.float().contiguous() for k, v in built.reference.items()}, ref_path)
    if built.index is not None:
        save_safetensors(built.index, index_path)
    keys = safetensors_keys(path)
    meta = {
        **built.meta,
        "targets": {t.name: t.to_json() for t in built.targets},
        "file_targets": sum(1 for k in keys if k.endswith(TARGET_MARKERS)),
        "set_weights": sum(1 for t in built.targets if t.name.endswith("::scale")),
        "file_keys": len(keys),
        "comfy_shapes": built.comfy_shapes,
        "has_reference": built.reference is not None,
        "loras_version": LORAS_VERSION,
        "families_version": families.FAMILIES_VERSION,
    }
    write_json(meta, meta_path)  # written last: it marks the fixture complete
    return _load(stem)


def _load(stem: str) -> FamilyLora | None:
    path, ref_path, index_path, meta_path = _paths(stem)
    if not (path.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    return FamilyLora(
        path,
        meta,
        ref_path if meta.get("has_reference") else None,
        index_path if index_path.exists() else None,
    )


# ---------------------------------------------------------------------------------------------
# the file's own math


def file_deltas(
    sd: dict[str, torch.Tensor], names: list[str], algo: str, alpha_default: float | None = None
) -> dict[str, torch.Tensor]:
    """``dW`` per module from the file's tensors (float64 math, returned fp32), ``scale = alpha / rank``
    applied once (``alpha`` from ``<module>.alpha``, else ``alpha_default``, else the rank)."""
    from lycoris.functional import loha as f_loha  # noqa: PLC0415
    from lycoris.functional import lokr as f_lokr  # noqa: PLC0415

    out: dict[str, torch.Tensor] = {}
    for name in names:

        def get(suffix: str, n: str = name) -> torch.Tensor | None:
            t = sd.get(f"{n}.{suffix}")
            return None if t is None else t.double()

        alpha_t = sd.get(f"{name}.alpha")
        alpha = float(alpha_t) if alpha_t is not None else alpha_default
        up = next(
            (
                get(s)
                for s in ("lora_up.weight", "lora_B.weight", "lora_B.default.weight")
                if get(s) is not None
            ),
            None,
        )
        if up is not None:
            down = next(
                get(s)
                for s in ("lora_down.weight", "lora_A.weight", "lora_A.default.weight")
                if get(s) is not None
            )
            rank = down.shape[0]
            scale = (alpha if alpha is not None else rank) / rank
            delta = scale * (up.flatten(1) @ down.flatten(1))
            out[name] = delta.reshape(up.shape[0], *down.shape[1:]).float()
            bias = get("lora_B.bias")
            if bias is not None:
                out[name + ".bias"] = bias.float()
            continue
        if get("hada_w1_a") is not None:
            w1a, w1b, w2a, w2b = get("hada_w1_a"), get("hada_w1_b"), get("hada_w2_a"), get("hada_w2_b")
            rank = w1b.shape[0]
            gamma = (alpha if alpha is not None else rank) / rank
            out[name] = f_loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=gamma).float()
            continue
        if get("lokr_w1") is not None or get("lokr_w1_a") is not None:
            w1, w1a, w1b = get("lokr_w1"), get("lokr_w1_a"), get("lokr_w1_b")
            w2, w2a, w2b = get("lokr_w2"), get("lokr_w2_a"), get("lokr_w2_b")
            rank = w1b.shape[0] if w1b is not None else (w2b.shape[0] if w2b is not None else None)
            scale = 1.0 if rank is None else (alpha if alpha is not None else rank) / rank
            out[name] = f_lokr.kron_weight(
                w1, w1a, w1b, w2, w2a, w2b, None, scale=scale, backend="torch"
            ).float()
            continue
        if get("diff") is not None:
            out[name] = get("diff").float()
            if get("diff_b") is not None:
                out[name + ".bias"] = get("diff_b").float()
            continue
        if get("w_norm") is not None:
            out[name] = get("w_norm").float()
            if get("b_norm") is not None:
                out[name + ".bias"] = get("b_norm").float()
            continue
        raise ValueError(
            f"no formula for module {name!r} ({algo}): keys {[k for k in sd if k.startswith(name + '.')][:6]}"
        )
    return out


# ---------------------------------------------------------------------------------------------
# generic namings


def _kohya_header(
    name: str, rank: int, alpha: float, algo: str, module: str = "networks.lora"
) -> dict[str, str]:
    spec = families.family_spec(name)
    header = {
        "ss_network_module": module,
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": spec.config_class,
        "modelspec.architecture": f"{ARCHITECTURES.get(spec.config_class, spec.config_class.lower())}/lora",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.title": f"LoRA Lab testkit {name} {algo}",
        "ss_training_comment": "seeded synthetic LoRA written by testkit.family_loras",
    }
    if algo == "dora":
        header["ss_network_args"] = json.dumps({"algo": "lora", "dora_wd": "True"})
    return header


# modelspec.architecture values of the model families (sd-scripts / Stability's model spec)
ARCHITECTURES = {
    "SD15": "stable-diffusion-v1",
    "SD20": "stable-diffusion-v2-768-v",
    "SDXL": "stable-diffusion-xl-v1-base",
    "SDXLRefiner": "stable-diffusion-xl-v1-refiner",
    "SD3": "stable-diffusion-v3-medium",
    "Flux": "flux-1-dev",
    "FluxSchnell": "flux-1-schnell",
    "FluxInpaint": "flux-1-fill-dev",
    "Flux2": "flux-2-dev",
    "Chroma": "chroma",
    "Stable_Cascade_C": "stable-cascade-v1-prior",
    "Stable_Cascade_B": "stable-cascade-v1-decoder",
    "AuraFlow": "auraflow",
    "HunyuanVideo": "hunyuan-video",
    "WAN21_T2V": "wan-2.1-t2v",
    "WAN21_I2V": "wan-2.1-i2v",
    "WAN22_T2V": "wan-2.2-ti2v-5b",
    "QwenImage": "qwen-image",
    "Lumina2": "lumina-2",
    "ZImage": "z-image",
    "HiDream": "hidream-i1",
    "LTXV": "ltx-video",
    "GenmoMochi": "mochi-1",
    "PixArtSigma": "pixart-sigma",
    "PixArtAlpha": "pixart-alpha",
}


def _build_generic(
    name: str, naming: str, algo: str, rank: int, seed: int, strength_of_delta: float
) -> Built:
    patcher = families.small_family_model(name)
    weights = dict(patcher.model.state_dict())
    targets = generic_targets(name, naming, patcher)
    alpha = ALPHA_PER_RANK * rank
    tensors: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] | None = {} if algo == "dora" else None
    down_key, up_key = {
        "kohya": ("lora_down", "lora_up"),
        "diffusion_model": ("lora_A", "lora_B"),
        "diffusion_model_down_up": ("lora_down", "lora_up"),
    }[naming]
    for t in targets:
        gen = _generator(name, naming, algo, rank, seed, t.name)
        base = base_for(t, weights)
        down, up = lora_factors(t, base, rank, alpha, strength_of_delta, gen)
        tensors[f"{t.name}.{down_key}.weight"] = down
        tensors[f"{t.name}.{up_key}.weight"] = up
        tensors[f"{t.name}.alpha"] = torch.tensor(alpha)
        if algo == "dora":
            # DoRA (Liu et al. 2024) on the output axis: W' = m * (W + dW) / ||W + dW||_row,
            # m seeded near ||W||_row
            w = base.double()
            dw = (alpha / rank) * (up.flatten(1).double() @ down.flatten(1).double()).reshape(w.shape)
            row = w.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
            m = row * (1 + 0.05 * torch.randn(row.shape, generator=gen, dtype=torch.float64))
            tensors[f"{t.name}.dora_scale"] = m.float()
            merged = m * (w + dw) / (w + dw).reshape(w.shape[0], -1).norm(dim=1).reshape(row.shape)
            reference[t.name] = (merged - w).float()
    header = (
        _kohya_header(name, rank, alpha, algo)
        if naming == "kohya"
        else {
            "format": "pt",
            "lora_lab_naming": naming,
            "ss_network_dim": str(rank),
            "ss_network_alpha": f"{alpha:g}",
        }
    )
    tool = {
        "kohya": "sd-scripts networks.lora layout",
        "diffusion_model": "musubi-tuner / ai-toolkit layout",
        "diffusion_model_down_up": "ComfyUI TrainLoraNode layout",
    }[naming]
    meta = {
        "tool": tool,
        "made_by": "testkit.family_loras seeded factors (formula reference)",
        "reference_from": "DoRA formula W' = m (W + dW) / ||W + dW||_row (float64)"
        if algo == "dora"
        else "file math, float64: alpha / r * up @ down",
    }
    return Built(tensors, header, targets, _comfy_shapes(weights), meta, reference=reference)


def _comfy_shapes(weights: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in weights.items() if k.startswith("diffusion_model.")}


# ---------------------------------------------------------------------------------------------
# LyCORIS


@contextlib.contextmanager
def _quiet_lycoris() -> Iterator[None]:
    from lycoris.logging import logger as lyco_logger  # noqa: PLC0415

    level = lyco_logger.level
    lyco_logger.setLevel(logging.ERROR)  # its INFO/WARNING lines go straight to stderr (propagate=False)
    try:
        yield
    finally:
        lyco_logger.setLevel(level)


@contextlib.contextmanager
def _lycoris_preset(prefix: str) -> Iterator[None]:
    """``LycorisNetwork`` keeps its preset in class attributes; set the sd-scripts prefix and restore."""
    from lycoris.wrapper import LycorisNetwork  # noqa: PLC0415

    names = (
        "ENABLE_CONV",
        "TARGET_REPLACE_MODULE",
        "TARGET_REPLACE_NAME",
        "LORA_PREFIX",
        "MODULE_ALGO_MAP",
        "NAME_ALGO_MAP",
        "USE_FNMATCH",
        "TARGET_EXCLUDE_NAME",
    )
    saved = {n: getattr(LycorisNetwork, n) for n in names}
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(LycorisNetwork, n, v)


def _lycoris_target_param(lora: Any, algo: str) -> tuple[torch.Tensor, str]:
    """The parameter a LyCORIS module's delta scales with, and how: ``"linear"`` (delta linear in it),
    ``"square"`` (delta quadratic: every factor is scaled by sqrt), ``"oft"`` (small rotation: ~linear)."""
    if algo in ("locon", "dora"):
        return lora.lora_up.weight, "linear"
    if algo == "loha":
        return lora.hada_w1_a, "linear"
    if algo == "lokr":
        return (lora.lokr_w1 if lora.use_w1 else lora.lokr_w1_a), "linear"
    if algo in ("diag-oft", "boft"):
        return lora.oft_blocks, "oft"
    if algo == "glora":
        return lora.b1.weight, "glora"
    if algo == "full":
        return lora.weight, "full"
    raise ValueError(algo)


@torch.no_grad()
def _randomize_lycoris_module(lora: Any, algo: str, strength_of_delta: float, gen: torch.Generator) -> None:
    """Seeded values for every parameter of one LyCORIS module, rescaled so that its delta
    (``get_diff_weight``, or ``get_merged_weight - W``) is about ``strength_of_delta * ||W||``."""
    base = lora.org_weight.detach().float()
    params = dict(lora.named_parameters())
    kind = type(lora).__name__
    if kind == "NormModule":
        lora.w_norm.copy_(torch.randn(lora.w_norm.shape, generator=gen))
        lora.w_norm.mul_(strength_of_delta * base.norm() / lora.w_norm.norm())
        if getattr(lora, "b_norm", None) is not None:
            lora.b_norm.copy_(torch.randn(lora.b_norm.shape, generator=gen) * 0.01)
        return
    for pname in sorted(params):
        p = params[pname]
        if pname in ("dora_scale", "weight") or pname.endswith("alpha"):
            continue
        fan_in = p[0].numel() if p.dim() >= 2 else 1
        p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)
    if algo == "full":
        lora.weight.copy_(
            base
            + torch.randn(base.shape, generator=gen) * (strength_of_delta * base.norm() / base.numel() ** 0.5)
        )
        if getattr(lora, "bias", None) is not None and lora.org_bias is not None:
            ob = lora.org_bias[0].float()
            lora.bias.copy_(ob + torch.randn(ob.shape, generator=gen) * 0.01)
        return
    target, mode = _lycoris_target_param(lora, algo)
    for _ in range(4):  # nonlinear algos: a few fixed-point steps
        delta = _lycoris_delta(lora, base)
        norm = float(delta.norm())
        if norm == 0:
            raise ValueError(f"zero delta after randomisation of {lora.lora_name}")
        ratio = strength_of_delta * float(base.norm()) / norm
        if mode == "linear":
            target.mul_(ratio)
            break
        if mode == "glora":
            for pn in ("a1.weight", "a2.weight", "b1.weight", "b2.weight"):
                params[pn].mul_(ratio**0.5)
        else:
            target.mul_(ratio)
        if abs(ratio - 1) < 0.02:
            break
    if algo == "dora":
        lora.dora_scale.mul_(1 + 0.05 * torch.randn(lora.dora_scale.shape, generator=gen))


def _lycoris_delta(lora: Any, base: torch.Tensor) -> torch.Tensor:
    """The delta as the saved file means it. lycoris-lora 4.1.3's in-memory LoHa/LoKr merge applies
    ``scale = alpha / rank`` twice (measured with lycoris-lora 4.1.3), so it is divided out once here."""
    merged = lora.get_merged_weight(multiplier=1, shape=base.shape, device="cpu")[0].float()
    delta = merged - base
    if type(lora).__name__ in ("LohaModule", "LokrModule"):
        delta = delta / float(lora.scale)
    return delta


def _build_lycoris(name: str, algo: str, rank: int, seed: int, strength_of_delta: float) -> Built:
    """LyCORIS on the ComfyUI diffusion model itself, sd-scripts' ``lora_unet_`` prefix."""
    patcher = families.small_family_model(name)
    dm = patcher.model.diffusion_model
    weights = {k: v.detach().float() for k, v in patcher.model.state_dict().items()}
    allowed = {k[len("diffusion_model.") :] for k in comfy_layers(patcher)}
    norms = {
        n
        for n, m in dm.named_modules()
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and getattr(m, "weight", None) is not None
    }

    def target_for(path: str, lora_name: str) -> Target:
        key = "diffusion_model." + path
        bias_key = key + ".bias" if key + ".bias" in weights else None
        return Target(lora_name, key + ".weight", tuple(weights[key + ".weight"].shape), bias_key=bias_key)

    def base_of(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return weights[f"diffusion_model.{path}.weight"], weights.get(f"diffusion_model.{path}.bias")

    built = lycoris_file(name, "lycoris", algo, rank, seed, strength_of_delta, dm, allowed, norms,
                         kohya_prefix(name), target_for, base_of, _comfy_shapes(weights))
    built.meta["made_by"] += " on the ComfyUI diffusion_model"
    return built


def lycoris_file(name: str, naming: str, algo: str, rank: int, seed: int, strength_of_delta: float,
                 module: torch.nn.Module, allowed: set[str], norms: set[str], prefix: str,
                 target_for: Any, base_of: Any, comfy_shapes: dict[str, list[int]]) -> Built:
    """A LyCORIS network of ``algo`` on ``module`` (modules ``allowed``, plus ``norms`` with
    ``train_norm``), names ``<prefix>_<path with underscores>``, seeded and saved by ``save_weights``.
    ``target_for(path, lora_name)`` gives each module's :class:`Target`, ``base_of(path)`` its
    ``(weight, bias)`` in the module's own space."""
    from lycoris import create_lycoris  # noqa: PLC0415
    from lycoris.wrapper import LycorisNetwork  # noqa: PLC0415

    options = dict(LYCORIS_ALGOS[algo])
    alpha = ALPHA_PER_RANK * rank
    layer_kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    layers = {n: m for n, m in module.named_modules() if isinstance(m, layer_kinds) and n}
    # modules LyCORIS must not wrap: the ones left out of the targets (over MAX_TARGET_NUMEL), and those
    # the algorithm cannot take (recorded in the metadata as "excluded_layers")
    skipped = sorted(n for n in layers if n not in allowed)
    excluded: list[str] = []
    if algo == "boft":
        # BOFT needs out_dim = m * 2^p with an even m <= rank (LyCORIS users must leave such layers out)
        from lycoris.functional.general import power2factorization  # noqa: PLC0415

        excluded = sorted(n for n in allowed if power2factorization(layers[n].weight.shape[0], rank)[1] == 0)
    elif algo == "diag-oft":
        # out_dim = block_num * block_size; with 1x1 blocks the rotation is the identity: nothing to change
        from lycoris.functional import factorization  # noqa: PLC0415

        excluded = sorted(n for n in allowed if factorization(layers[n].weight.shape[0], rank)[0] == 1)
    elif algo == "glora":
        # lycoris-lora's GLoRA cannot reshape a grouped (depthwise) convolution's factors
        excluded = sorted(n for n in allowed if getattr(layers[n], "groups", 1) != 1)
    with _lycoris_preset(prefix), _quiet_lycoris():
        LycorisNetwork.apply_preset({"lora_prefix": prefix, "exclude_name": skipped + excluded})
        net = create_lycoris(module, 1.0, linear_dim=rank, linear_alpha=alpha, conv_dim=rank,
                             conv_alpha=alpha, warn_on_unmatched=False, **options)
    path_of = {f"{prefix}_{n}".replace(".", "_"): n for n, _ in module.named_modules()}
    keep = [lo for lo in net.loras if path_of[lo.lora_name] in set(allowed) | set(norms)]
    net.loras = sorted(keep, key=lambda m: m.lora_name)
    net.apply_to()
    targets: list[Target] = []
    reference: dict[str, torch.Tensor] = {}
    inmemory_vs_file: list[float] = []
    ratios: list[float] = []
    kinds: dict[str, int] = {}
    tmp = loras_dir() / f".build-{name}-{naming}-{algo}-{os.getpid()}.safetensors"
    header = _kohya_header(name, rank, alpha, algo, module="lycoris.kohya")
    header["ss_network_args"] = json.dumps({k: str(v) for k, v in options.items()})
    try:
        with _quiet_lycoris():
            for lora in net.loras:
                gen = _generator(name, naming, algo, rank, seed, lora.lora_name)
                _randomize_lycoris_module(lora, algo, strength_of_delta, gen)
            net.save_weights(str(tmp), torch.float32, header)
            saved = load_file(str(tmp))
            with torch.no_grad():
                for lora in net.loras:
                    path = path_of[lora.lora_name]
                    kinds[type(lora).__name__] = kinds.get(type(lora).__name__, 0) + 1
                    base, bias = base_of(path)
                    base = base.float()
                    targets.append(target_for(path, lora.lora_name))
                    merged, merged_bias = lora.get_merged_weight(multiplier=1, shape=base.shape, device="cpu")
                    delta = merged.float() - base
                    if algo in ("locon", "loha", "lokr"):
                        file_delta = file_deltas(saved, [lora.lora_name], algo)[lora.lora_name]
                        file_delta = file_delta.reshape(base.shape)
                        inmemory_vs_file.append(float(delta.norm() / file_delta.norm()))
                        ratios.append(float(file_delta.norm() / base.norm()))
                        continue
                    ratios.append(float(delta.norm() / base.norm()))
                    reference[lora.lora_name] = delta
                    if merged_bias is not None and bias is not None:
                        reference[lora.lora_name + ".bias"] = merged_bias.float() - bias.float()
    finally:
        net.restore()
    meta: dict[str, Any] = {
        "tool": "lycoris-lora",
        "made_by": f"lycoris.create_lycoris(module, linear_dim={rank}, linear_alpha={alpha:g}, "
        f"conv_dim={rank}, conv_alpha={alpha:g}, "
        + ", ".join(f"{k}={v!r}" for k, v in options.items())
        + f") with LORA_PREFIX={prefix!r}; network.save_weights",
        "target_layer_kinds": kinds,
        "excluded_layers": excluded,
        "delta_ratio_range": [min(ratios), max(ratios)],
    }
    if algo in ("locon", "loha", "lokr"):
        meta["reference_from"] = "file math (scale = alpha / rank once), float64"
        meta["lycoris_inmemory_vs_file_norm_ratio"] = [min(inmemory_vs_file), max(inmemory_vs_file)]
        ref = None
    else:
        meta["reference_from"] = "LyCORIS module get_merged_weight() - W (and merged bias - b)"
        ref = reference
    return Built({}, header, targets, comfy_shapes, meta, reference=ref, file_path=tmp)


# ---------------------------------------------------------------------------------------------
# public API


def namings_for(name: str) -> list[str]:
    """The namings that exist for family ``name``: the generic ones and the family's own."""
    families.family_spec(name)
    from testkit import family_loras_extra  # noqa: PLC0415

    return list(GENERIC_NAMINGS) + family_loras_extra.extra_namings(name)


def algos_for(name: str, naming: str) -> list[str]:
    if naming in _NAMING_ALGOS:
        return list(_NAMING_ALGOS[naming])
    from testkit import family_loras_extra  # noqa: PLC0415

    return family_loras_extra.extra_algos(name, naming)


def load_family_lora(
    name: str,
    naming: str,
    *,
    algo: str = "lora",
    rank: int = 4,
    seed: int = 0,
    strength_of_delta: float = DEFAULT_STRENGTH_OF_DELTA,
) -> FamilyLora:
    """:func:`family_lora` as a :class:`FamilyLora` (built on first use, then read from the cache)."""
    if algo == "lora" and naming in ("lycoris", "lycoris_simpletuner"):
        algo = "locon"  # LyCORIS's plain LoRA/LoCon module
    if naming not in namings_for(name):
        raise ValueError(
            f"naming {naming!r} does not exist for family {name!r}; expected one of {namings_for(name)}"
        )
    if algo not in algos_for(name, naming):
        raise ValueError(
            f"algo {algo!r} does not exist for {name!r} / {naming!r}; "
            f"expected one of {algos_for(name, naming)}"
        )
    stem = _stem(name, naming, algo, rank, seed, strength_of_delta)
    found = _load(stem)
    if found is not None:
        return found
    if naming in ("kohya", "diffusion_model", "diffusion_model_down_up"):
        built = _build_generic(name, naming, algo, rank, seed, strength_of_delta)
    elif naming == "lycoris":
        built = _build_lycoris(name, algo, rank, seed, strength_of_delta)
    else:
        from testkit import family_loras_extra  # noqa: PLC0415

        built = family_loras_extra.build(name, naming, algo, rank, seed, strength_of_delta)
    spec = families.family_spec(name)
    built.meta.update(
        {
            "family": name,
            "config_class": spec.config_class,
            "naming": naming,
            "algo": algo,
            "rank": rank,
            "alpha": ALPHA_PER_RANK * rank,
            "scale": ALPHA_PER_RANK,
            "seed": seed,
            "strength_of_delta": strength_of_delta,
            "tool_versions": _versions(),
        }
    )
    built.meta.setdefault("core_expectation", expected_core_mapping(name, naming))
    return _write(stem, built)


def family_lora(name: str, naming: str, **options) -> Path:
    """Path of a safetensors LoRA for the small model of family ``name`` in ``naming`` (see the module
    docstring), built once and cached; ``options`` as for :func:`load_family_lora`."""
    return load_family_lora(name, naming, **options).path


def expected_core_mapping(name: str, naming: str) -> str:
    """What core ComfyUI 0.3.75's key map does with the naming: ``"full"`` / ``"partial"`` / ``"none"``."""
    from testkit import family_loras_extra  # noqa: PLC0415

    return family_loras_extra.expected_core_mapping(name, naming)


# ---------------------------------------------------------------------------------------------
# everything at once, and core's reading of it


def all_cases(
    names: list[str] | None = None, *, lycoris_algos: tuple[str, ...] | None = None
) -> list[tuple[str, str, str]]:
    """Every ``(family, naming, algo)`` that exists (``lycoris_algos`` narrows the LyCORIS algos)."""
    out = []
    for name in names or list(families.FAMILIES):
        for naming in namings_for(name):
            for algo in algos_for(name, naming):
                if naming == "lycoris" and lycoris_algos is not None and algo not in lycoris_algos:
                    continue
                out.append((name, naming, algo))
    return out


def build_all(
    names: list[str] | None = None, *, lycoris_algos: tuple[str, ...] | None = None
) -> dict[tuple[str, str, str], Path]:
    """Build (or find in the cache) every file of :func:`all_cases`."""
    return {
        case: family_lora(case[0], case[1], algo=case[2])
        for case in all_cases(names, lycoris_algos=lycoris_algos)
    }


def core_mapping_table(
    names: list[str] | None = None, *, lycoris_algos: tuple[str, ...] | None = ("locon", "full")
) -> list[dict[str, Any]]:
    """Per ``(family, naming, algo)``: how many file modules core's key map takes (``comfy_keys`` it patches,
    file keys it logs as not loaded) against the modules the file means, as ``full`` / ``partial`` /
    ``none``; no weight math (``core_ref.core_key_mapping``)."""
    from testkit.core_ref import core_key_mapping  # noqa: PLC0415

    rows = []
    patchers: dict[str, Any] = {}
    for name, naming, algo in all_cases(names, lycoris_algos=lycoris_algos):
        fx = load_family_lora(name, naming, algo=algo)
        patcher = patchers.setdefault(name, families.small_family_model(name))
        keys, not_loaded = core_key_mapping(patcher, fx.path)
        n_keys = len(safetensors_keys(fx.path))
        got = "none" if not keys else ("full" if not not_loaded else "partial")
        rows.append(
            {
                "family": name,
                "naming": naming,
                "algo": algo,
                "core": got,
                "expected": fx.meta["core_expectation"],
                "modules": fx.meta["file_targets"],
                "comfy_keys": len(keys),
                "not_loaded_keys": len(not_loaded),
                "file_keys": n_keys,
            }
        )
        if names is None and len(patchers) > 4:
            patchers.pop(next(iter(patchers)))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per family, one column per naming (``full``/``partial``/``none``, file modules ->
    ComfyUI keys core patches)."""
    namings = sorted({r["naming"] for r in rows}, key=lambda n: (n not in GENERIC_NAMINGS, n))
    by: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        cell = f"{r['core']} ({r['modules']}->{r['comfy_keys']})"
        if r["naming"] == "lycoris":
            cell = f"{r['algo']}: {cell}"
        by.setdefault(r["family"], {}).setdefault(r["naming"], []).append(cell)
    lines = ["| family | " + " | ".join(namings) + " |", "|" + " --- |" * (len(namings) + 1)]
    for fam, cells in by.items():
        lines.append(f"| {fam} | " + " | ".join("<br>".join(cells.get(n, ["-"])) for n in namings) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    sys.stdout.write(format_table(core_mapping_table(sys.argv[1:] or None)) + "\n")
