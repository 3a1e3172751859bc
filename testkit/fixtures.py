"""LoRA fixture files written by the real third-party tools, each with a reference delta.

Every fixture is made by the tool users make such files with, on a diffusers / transformers twin of
a ``testkit.models`` model holding the same weights:

- ``peft``: PEFT LoRA saved by ``StableDiffusion[XL]Pipeline.save_lora_weights`` (``lora_A``/``lora_B``
  keys, alpha in the ``lora_adapter_metadata`` safetensors header).
- ``diffusers``: the same network through ``convert_state_dict_to_diffusers`` (old training-script
  layout, ``lora.down`` / ``lora_linear_layer.down`` keys).
- ``kohya``: the same network through ``convert_state_dict_to_kohya`` (``lora_unet_*``, ``lora_te1_*``,
  ``lora_te2_*`` keys, ``.alpha`` tensors).
- ``locon``, ``loha``, ``lokr``, ``dora``: ``lycoris.create_lycoris`` networks saved by the network's own
  ``save_weights`` (``lycoris_*`` keys with diffusers module names).

Tools initialise one factor to zero, so after creation every factor gets seeded random values,
rescaled per target so that ``||dW|| / ||W|| == TARGET_RELATIVE_NORM``.

The reference (``<name>.reference.safetensors``, fp32) maps ComfyUI model keys
(``diffusion_model.<ldm key>.weight``, ``clip_l.transformer.<hf key>.weight``, ...) to
``merged - base`` as the producing tool merges it (PEFT ``merge()``; LyCORIS ``get_merged_weight``
for LoCon and DoRA). For LoHa/LoKr the reference is the saved file's math, ``scale = alpha / rank``
applied once, through ``lycoris.functional``: lycoris-lora 4.1.3's in-memory ``get_diff_weight``
applies it twice (measured and recorded per file under ``meta["lycoris_inmemory_vs_file"]``).

Cache: ``<repo>/.cache/lora-lab/fixtures-<FIXTURES_VERSION>-m<MODELS_VERSION>/``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from testkit import models

log = logging.getLogger(__name__)

FIXTURES_VERSION = "3"
"""Cache key of the fixture files; bump it when anything below changes what is written."""

RANK = 4
ALPHA = 8.0
TARGET_RELATIVE_NORM = 0.1

FAMILIES = ("sd15", "sdxl", "sd15_full")
SMALL_FIXTURES = ("peft", "diffusers", "kohya", "locon", "loha", "lokr", "dora")
FULL_FIXTURES = ("kohya", "diffusers")

UNET_PEFT_TARGETS = [
    # attention
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    # resnets
    "conv1", "conv2", "conv_shortcut", "time_emb_proj",
    # down/upsamplers ("downsamplers.0.conv"), stem, head, time and SDXL size embeddings
    "conv", "conv_in", "conv_out",
    "time_embedding.linear_1", "time_embedding.linear_2", "add_embedding.linear_1", "add_embedding.linear_2",
]
FULL_UNET_PEFT_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "time_emb_proj",
]
TEXT_PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

LYCORIS_ALGOS: dict[str, dict[str, Any]] = {
    "locon": {"algo": "lora"},
    "dora": {"algo": "lora", "dora_wd": True},
    "loha": {"algo": "loha"},
    "lokr": {"algo": "lokr", "factor": 4},
}

_SEEDS = {"sd15": 2100, "sdxl": 2200, "sd15_full": 2300}
_ALGO_SEED = {"peft": 0, "locon": 1, "dora": 2, "loha": 3, "lokr": 4}

# the key suffix of a file entry that marks one target weight, per layout
_TARGET_MARKERS = (
    ".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight", ".lora_down.weight",
    ".hada_w1_a", ".lokr_w1", ".lokr_w1_a",
)


@dataclass(frozen=True)
class Fixture:
    """One LoRA file: ``path`` (safetensors), ``reference_path`` (fp32 ComfyUI-keyed deltas or
    ``None``) and ``meta`` (the ``<name>.json`` content)."""

    name: str
    path: Path
    reference_path: Path | None
    meta: dict[str, Any]

    def reference(self) -> dict[str, torch.Tensor]:
        if self.reference_path is None:
            raise ValueError(f"fixture {self.name!r} has no reference")
        return load_file(str(self.reference_path))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path))


def fixtures_dir() -> Path:
    path = models.cache_root() / f"fixtures-{FIXTURES_VERSION}-m{models.MODELS_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def count_file_targets(sd: dict[str, torch.Tensor] | list[str]) -> int:
    """Number of target weights a LoRA file describes (one marker key per target)."""
    return sum(1 for k in sd if k.endswith(_TARGET_MARKERS))


def key_prefixes(keys: list[str]) -> list[str]:
    """Distinct leading key components (``unet``, ``text_encoder``, ``lora_unet``, ``lycoris``, ...)."""
    out = set()
    for k in keys:
        head = k.split(".", 1)[0]
        if head.startswith(("lora_", "lycoris_")):
            parts = head.split("_")
            head = parts[0] + "_" + parts[1] if parts[0] == "lora" else parts[0]
        out.add(head)
    return sorted(out)


def _fixture_paths(name: str) -> tuple[Path, Path, Path]:
    d = fixtures_dir()
    return d / f"{name}.safetensors", d / f"{name}.reference.safetensors", d / f"{name}.json"


def _load_fixture(name: str) -> Fixture | None:
    path, ref, meta_path = _fixture_paths(name)
    if not (path.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("has_reference", True) and not ref.exists():
        return None
    return Fixture(name, path, ref if meta.get("has_reference", True) else None, meta)


def _write_fixture(
    name: str,
    tmp_file: Path,
    reference: dict[str, torch.Tensor] | None,
    meta: dict[str, Any],
    same_reference_as: Fixture | None = None,
) -> Fixture:
    path, ref_path, meta_path = _fixture_paths(name)
    sd_keys = list(_safetensors_keys(tmp_file))
    meta = {
        **meta,
        "name": name,
        "file_targets": count_file_targets(sd_keys),
        "file_targets_by_key_style": {m.lstrip("."): n for m in _TARGET_MARKERS if (n := sum(1 for k in sd_keys if k.endswith(m)))},
        "key_prefixes": key_prefixes(sd_keys),
        "has_reference": reference is not None,
        "fixtures_version": FIXTURES_VERSION,
        "models_version": models.MODELS_VERSION,
    }
    if reference is not None:
        meta["targets"] = len(reference)
        if same_reference_as is not None and same_reference_as.reference_path is not None:
            # one network saved in several layouts: hard-link its reference instead of copying it
            link_tmp = ref_path.with_name(f".{ref_path.name}.link")
            link_tmp.unlink(missing_ok=True)
            os.link(same_reference_as.reference_path, link_tmp)
            os.replace(link_tmp, ref_path)
        else:
            models.save_safetensors({k: v.float() for k, v in reference.items()}, ref_path)
    os.replace(tmp_file, path)
    os.chmod(path, 0o644)
    # the json is written last: it marks the fixture complete
    models.write_json(meta, meta_path)
    return Fixture(name, path, ref_path if reference is not None else None, meta)


def _safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=".build-", dir=fixtures_dir()))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _versions() -> dict[str, str]:
    import diffusers  # noqa: PLC0415
    import peft  # noqa: PLC0415
    import transformers  # noqa: PLC0415
    from importlib.metadata import version  # noqa: PLC0415

    return {
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "lycoris-lora": version("lycoris-lora"),
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------------------------
# seeded factor values


def _rescale_to(target: torch.Tensor, delta: torch.Tensor, base: torch.Tensor) -> None:
    """Scale ``target`` in place (``delta`` is linear in it) so ``||delta|| = r * ||base||``."""
    dn = delta.float().norm()
    if dn == 0:
        raise ValueError("zero delta after randomisation")
    target.mul_(TARGET_RELATIVE_NORM * base.float().norm() / dn)


def _randn_like(t: torch.Tensor, gen: torch.Generator, std: float = 1.0) -> torch.Tensor:
    return (torch.randn(t.shape, generator=gen) * std).to(t.dtype)


def _fan_in(t: torch.Tensor) -> int:
    n = 1
    for d in t.shape[1:]:
        n *= d
    return n


def _peft_lora_layers(module: torch.nn.Module) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    return sorted(((n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)), key=lambda x: x[0])


@torch.no_grad()
def _randomize_peft(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Seeded values for every PEFT ``lora_A``/``lora_B`` (PEFT leaves ``lora_B`` at zero)."""
    for _, layer in _peft_lora_layers(module):
        a = layer.lora_A["default"].weight
        b = layer.lora_B["default"].weight
        a.copy_(_randn_like(a, gen, _fan_in(a) ** -0.5))
        b.copy_(_randn_like(b, gen))
        base = layer.get_base_layer().weight
        _rescale_to(b, layer.get_delta_weight("default"), base)


@torch.no_grad()
def _peft_reference(module: torch.nn.Module, to_comfy: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """``merged - base`` per target from PEFT's own ``merge()`` (then ``unmerge()``)."""
    out = {}
    for name, layer in _peft_lora_layers(module):
        weight = layer.get_base_layer().weight
        before = weight.detach().clone()
        layer.merge(safe_merge=True, adapter_names=["default"])
        out[to_comfy(name)] = (weight.detach() - before).float().clone()
        layer.unmerge()
        if not torch.equal(weight, before):
            # unmerge subtracts in floating point; restore the exact base
            weight.copy_(before)
    return out


# ---------------------------------------------------------------------------------------------
# PEFT / diffusers / kohya


def _pipeline_class(family: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: PLC0415

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


_TE_ARG = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}


def _adapter_metadata(module: torch.nn.Module) -> dict[str, Any]:
    cfg = module.peft_config["default"].to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}


def _save_lora_weights(family: str, scratch: Path, unet_layers: dict, te_layers: dict[str, dict], metadata: dict[str, dict] | None) -> Path:
    kwargs: dict[str, Any] = {"unet_lora_layers": unet_layers}
    for clip_name, layers in te_layers.items():
        kwargs[f"{_TE_ARG[clip_name]}_lora_layers"] = layers
    if metadata is not None:
        for part, meta in metadata.items():
            kwargs[f"{part}_lora_adapter_metadata"] = meta
    out_dir = scratch / f"save-{len(list(scratch.iterdir()))}"
    _pipeline_class(family).save_lora_weights(
        str(out_dir), weight_name="lora.safetensors", safe_serialization=True, **kwargs
    )
    return out_dir / "lora.safetensors"


def _build_peft_group(family: str, which: tuple[str, ...]) -> dict[str, Fixture]:
    """PEFT network on the diffusers twin -> ``peft``, ``diffusers``, ``kohya`` files, one reference."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya  # noqa: PLC0415
    from peft import LoraConfig  # noqa: PLC0415
    from peft.utils import get_peft_model_state_dict  # noqa: PLC0415

    full = family == "sd15_full"
    gen = torch.Generator().manual_seed(_SEEDS[family] + _ALGO_SEED["peft"])
    if full:
        from diffusers import UNet2DConditionModel  # noqa: PLC0415
        from transformers import CLIPTextModel  # noqa: PLC0415

        unet_config = models._model_config("sd15", models.sd15_unet_config()).unet_config
        unet = UNet2DConditionModel(**models.sd15_full_diffusers_config())
        models.load_diffusers_unet_from_comfy(unet, models.sd15_full_unet_state_dict(), unet_config)
        gc.collect()
        te_sd = models.read_prefixed(models.sd15_checkpoint(), "cond_stage_model.", torch.float32)
        te = CLIPTextModel(models.hf_text_config("clip_l", {}))
        models.load_hf_text_encoder_from_comfy(te, te_sd, "cond_stage_model.transformer.")
        del te_sd
        tes = {"clip_l": te}
        unet_targets = FULL_UNET_PEFT_TARGETS
        base_model = "sd15_full"
    else:
        unet_config = models.small_unet_config(family)
        unet = models.diffusers_unet(family)
        tes = models.hf_text_encoders(family)
        unet_targets = UNET_PEFT_TARGETS
        base_model = f"small_{family}"
    key_map = models.diffusers_key_map(unet_config)

    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=unet_targets, init_lora_weights=True))
    _randomize_peft(unet, gen)
    for te in tes.values():
        te.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TEXT_PEFT_TARGETS, init_lora_weights=True))
        _randomize_peft(te, gen)

    reference = None
    if not full:
        reference = _peft_reference(unet, lambda n: key_map[n + ".weight"])
        for clip_name, te in tes.items():
            reference.update(_peft_reference(te, lambda n, c=clip_name: f"{c}.transformer.{n}.weight"))

    unet_layers = get_peft_model_state_dict(unet)
    te_layers = {c: get_peft_model_state_dict(te) for c, te in tes.items()}
    adapter_meta = {"unet": _adapter_metadata(unet)}
    for c, te in tes.items():
        adapter_meta[_TE_ARG[c]] = _adapter_metadata(te)
    del unet, tes
    gc.collect()

    versions = _versions()
    common = {
        "family": "sd15" if full else family,
        "base_model": base_model,
        "algorithm": "lora",
        "rank": RANK,
        "alpha": ALPHA,
        "scale": ALPHA / RANK,
        "tool": "diffusers+peft",
        "tool_versions": {k: versions[k] for k in ("diffusers", "peft", "transformers")},
        "unet_target_modules": unet_targets,
        "text_target_modules": TEXT_PEFT_TARGETS,
        "target_relative_norm": TARGET_RELATIVE_NORM,
    }
    if reference is not None:
        common["reference_from"] = "peft LoraLayer.merge() - base, mapped with comfy.utils.unet_to_diffusers"
    prefix = family
    out: dict[str, Fixture] = {}
    with _scratch() as scratch:
        peft_file = _save_lora_weights(family, scratch, unet_layers, te_layers, adapter_meta)
        if "peft" in which:
            out["peft"] = _write_fixture(
                f"{prefix}_peft",
                peft_file,
                reference,
                {
                    **common,
                    "format": "peft",
                    "made_by": "get_peft_model_state_dict + Pipeline.save_lora_weights(..., *_lora_adapter_metadata=peft_config)",
                    "alpha_in_file": "safetensors metadata 'lora_adapter_metadata' only; a reader that ignores it uses scale 1",
                },
            )
            peft_file = out["peft"].path
        if "diffusers" in which:
            diff_file = _save_lora_weights(
                family,
                scratch,
                convert_state_dict_to_diffusers(unet_layers),
                {c: convert_state_dict_to_diffusers(v) for c, v in te_layers.items()},
                adapter_meta,
            )
            out["diffusers"] = _write_fixture(
                f"{prefix}_diffusers",
                diff_file,
                reference,
                {
                    **common,
                    "format": "diffusers",
                    "made_by": "convert_state_dict_to_diffusers(get_peft_model_state_dict(...)) + Pipeline.save_lora_weights",
                    "alpha_in_file": "safetensors metadata 'lora_adapter_metadata' only; a reader that ignores it uses scale 1",
                },
                same_reference_as=out.get("peft"),
            )
        if "kohya" in which:
            kohya = convert_state_dict_to_kohya(load_file(str(peft_file)))
            alpha_written = sorted({float(v) for k, v in kohya.items() if k.endswith(".alpha")})
            # convert_state_dict_to_kohya writes alpha = rank (it never sees lora_alpha); write the
            # network's real alpha so the file describes the same network as the other two
            for k in kohya:
                if k.endswith(".alpha"):
                    kohya[k] = torch.tensor(ALPHA)
            arch = "stable-diffusion-xl-v1-base/lora" if family == "sdxl" else "stable-diffusion-v1/lora"
            kohya_tmp = scratch / "kohya.safetensors"
            models.save_safetensors(
                kohya,
                kohya_tmp,
                metadata={
                    "ss_network_module": "networks.lora",
                    "ss_network_dim": str(RANK),
                    "ss_network_alpha": str(ALPHA),
                    "modelspec.architecture": arch,
                },
            )
            out["kohya"] = _write_fixture(
                f"{prefix}_kohya",
                kohya_tmp,
                reference,
                {
                    **common,
                    "format": "kohya",
                    "made_by": "diffusers.utils.convert_state_dict_to_kohya(peft-format file)",
                    "alpha_in_file": "'.alpha' tensors",
                    "note": f"convert_state_dict_to_kohya wrote .alpha = {alpha_written} (the rank), dropping lora_alpha; "
                    f"the .alpha tensors were overwritten with lora_alpha={ALPHA} so the file matches the reference",
                },
                same_reference_as=out.get("peft") or out.get("diffusers"),
            )
    return out


# ---------------------------------------------------------------------------------------------
# LyCORIS


def _lycoris_file_delta(algo: str, sd: dict[str, torch.Tensor], name: str, shape: torch.Size) -> torch.Tensor:
    """``dW`` of target ``name`` as every loader reads the saved file: ``scale = alpha / rank`` once."""
    from lycoris.functional import loha as f_loha  # noqa: PLC0415
    from lycoris.functional import lokr as f_lokr  # noqa: PLC0415

    def get(suffix: str) -> torch.Tensor | None:
        t = sd.get(f"{name}.{suffix}")
        return None if t is None else t.float()

    alpha = float(sd[f"{name}.alpha"])
    if algo == "loha":
        w1a, w1b, w2a, w2b = get("hada_w1_a"), get("hada_w1_b"), get("hada_w2_a"), get("hada_w2_b")
        rank = w1b.shape[0]
        # functional.loha: dW = gamma * (w1u @ w1d) * (w2u @ w2d)
        return f_loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=alpha / rank).reshape(shape)
    if algo == "lokr":
        w1, w1a, w1b = get("lokr_w1"), get("lokr_w1_a"), get("lokr_w1_b")
        w2, w2a, w2b = get("lokr_w2"), get("lokr_w2_a"), get("lokr_w2_b")
        if w1b is not None:
            scale = alpha / w1b.shape[0]
        elif w2b is not None:
            scale = alpha / w2b.shape[0]
        else:
            scale = 1.0  # both halves full: no rank, alpha unused (LyCORIS and ComfyUI agree)
        return f_lokr.kron_weight(w1, w1a, w1b, w2, w2a, w2b, None, scale=scale, backend="torch").reshape(shape)
    if algo in ("locon", "dora"):
        up, down = get("lora_up.weight"), get("lora_down.weight")
        rank = down.shape[0]
        return (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(shape)
    raise ValueError(f"unknown LyCORIS algorithm {algo!r}")


@torch.no_grad()
def _randomize_lycoris(net: Any, algo: str, gen: torch.Generator) -> None:
    for lora in sorted(net.loras, key=lambda m: m.lora_name):
        base = lora.org_module[0].weight
        params = dict(lora.named_parameters())
        for pname in sorted(params):
            p = params[pname]
            if pname == "dora_scale":
                continue
            std = _fan_in(p) ** -0.5 if p.dim() >= 2 else 1.0
            p.copy_(_randn_like(p, gen, std))
        if algo == "loha":
            target = lora.hada_w1_a
        elif algo == "lokr":
            target = lora.lokr_w1 if lora.use_w1 else lora.lokr_w1_a
        else:
            target = lora.lora_up.weight
        delta = lora.get_weight(base.shape) if algo in ("loha", "lokr") else lora.lora_up.weight.flatten(1) @ lora.lora_down.weight.flatten(1)
        _rescale_to(target, delta, base)
        if algo == "dora":
            lora.dora_scale.mul_(1 + 0.05 * torch.randn(lora.dora_scale.shape, generator=gen))


def _build_lycoris(family: str, algo: str) -> Fixture:
    from lycoris import create_lycoris  # noqa: PLC0415

    options = LYCORIS_ALGOS[algo]
    unet = models.diffusers_unet(family)
    key_map = models.diffusers_key_map(models.small_unet_config(family))
    path_of = {("lycoris_" + n).replace(".", "_"): n for n, _ in unet.named_modules()}
    net = create_lycoris(unet, 1.0, linear_dim=RANK, linear_alpha=ALPHA, conv_dim=RANK, conv_alpha=ALPHA, **options)
    net.apply_to()
    gen = torch.Generator().manual_seed(_SEEDS[family] + _ALGO_SEED[algo])
    _randomize_lycoris(net, algo, gen)

    name = f"{family}_{algo}"
    with _scratch() as scratch:
        tmp = scratch / "lycoris.safetensors"
        net.save_weights(str(tmp), torch.float32, {"lycoris_algo": options["algo"], "ss_network_module": "lycoris.kohya"})
        saved = load_file(str(tmp))

        reference: dict[str, torch.Tensor] = {}
        worst_rel = 0.0
        ratios: list[float] = []
        kinds: dict[str, int] = {}
        with torch.no_grad():
            for lora in sorted(net.loras, key=lambda m: m.lora_name):
                base = lora.org_module[0].weight.detach().float()
                comfy_key = key_map[path_of[lora.lora_name] + ".weight"]
                file_delta = _lycoris_file_delta(algo, saved, lora.lora_name, base.shape)
                kinds[type(lora.org_module[0]).__name__] = kinds.get(type(lora.org_module[0]).__name__, 0) + 1
                if algo in ("locon", "dora"):
                    merged = lora.get_merged_weight(multiplier=1, shape=base.shape, device="cpu")[0].float()
                    ref = merged - base
                    if algo == "dora":
                        # independent check: DoRA (Liu et al. 2024) on the output axis,
                        # W' = m * (W + dW) / ||W + dW||_row, m = dora_scale from the file
                        w = base + file_delta
                        norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
                        own = saved[f"{lora.lora_name}.dora_scale"].float().reshape(norm.shape) * w / norm - base
                        worst_rel = max(worst_rel, float((ref - own).norm() / ref.norm()))
                    else:
                        worst_rel = max(worst_rel, float((ref - file_delta).norm() / file_delta.norm()))
                else:
                    ref = file_delta
                    in_memory = lora.get_diff_weight(multiplier=1, shape=base.shape, device="cpu")[0].float()
                    ratios.append(float(in_memory.norm() / file_delta.norm()))
                reference[comfy_key] = ref.clone()

        del net, unet
        gc.collect()
        return _write_fixture(name, tmp, reference, _lycoris_meta(family, algo, options, kinds, worst_rel, ratios))


def _lycoris_meta(family: str, algo: str, options: dict[str, Any], kinds: dict[str, int], worst_rel: float, ratios: list[float]) -> dict[str, Any]:
    versions = _versions()
    meta: dict[str, Any] = {
        "family": family,
        "base_model": f"small_{family}",
        "format": "lycoris",
        "algorithm": algo,
        "rank": RANK,
        "alpha": ALPHA,
        "scale": ALPHA / RANK,
        "tool": "lycoris-lora",
        "tool_versions": {"lycoris-lora": versions["lycoris-lora"], "diffusers": versions["diffusers"]},
        "made_by": f"lycoris.create_lycoris(unet, linear_dim={RANK}, linear_alpha={ALPHA}, conv_dim={RANK}, conv_alpha={ALPHA}, "
        + ", ".join(f"{k}={v!r}" for k, v in options.items())
        + ") on the diffusers UNet (preset 'full'); network.save_weights",
        "alpha_in_file": "'.alpha' tensors",
        "target_layer_kinds": kinds,
        "target_relative_norm": TARGET_RELATIVE_NORM,
    }
    if algo == "locon":
        meta["reference_from"] = "LyCORIS module get_merged_weight() - base"
        meta["lycoris_merge_vs_file_max_rel_err"] = worst_rel
    elif algo == "dora":
        meta["reference_from"] = "LyCORIS module get_merged_weight() - base (DoRA, wd_on_out=True)"
        meta["lycoris_merge_vs_dora_formula_max_rel_err"] = worst_rel
        meta["note"] = (
            "dora_scale = LyCORIS's init ||W||_row times (1 + 0.05 N(0,1)); reference W' - W with "
            "W' = dora_scale * (W + dW) / ||W + dW||_row. Core ComfyUI 0.3.75 divides by ||W||_row instead, "
            "so it disagrees with this reference by roughly the LoRA's relative norm."
        )
    else:
        meta["reference_from"] = "saved file's math via lycoris.functional, scale = alpha/rank applied once"
        meta["lycoris_inmemory_vs_file"] = {
            "norm_ratio_min": min(ratios),
            "norm_ratio_max": max(ratios),
            "targets_with_ratio_alpha_over_rank": sum(1 for r in ratios if abs(r - ALPHA / RANK) < 1e-3),
            "targets_with_ratio_1": sum(1 for r in ratios if abs(r - 1.0) < 1e-3),
        }
        meta["note"] = (
            f"lycoris-lora {versions['lycoris-lora']} get_diff_weight/get_merged_weight apply scale=alpha/rank twice "
            "(inside get_weight and again outside): in-memory delta / file delta = alpha/rank "
            f"({ALPHA / RANK:g}) on factorised targets; targets whose halves are all full matrices "
            "have scale 1 and agree. The reference follows the file (scale once), as ComfyUI/A1111/kohya read it."
        )
    return meta


# ---------------------------------------------------------------------------------------------
# public API


def build(family: str) -> dict[str, Fixture]:
    """All fixtures of ``family`` (``"sd15"``, ``"sdxl"`` or ``"sd15_full"``), keyed by short name
    (``peft``, ``diffusers``, ``kohya``, ``locon``, ``loha``, ``lokr``, ``dora``); built on first use,
    then read from the cache."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    names = FULL_FIXTURES if family == "sd15_full" else SMALL_FIXTURES
    out: dict[str, Fixture] = {}
    for short in names:
        fx = _load_fixture(f"{family}_{short}")
        if fx is not None:
            out[short] = fx
    peft_group = tuple(n for n in ("peft", "diffusers", "kohya") if n in names and n not in out)
    if peft_group:
        out.update(_build_peft_group(family, peft_group))
    for algo in LYCORIS_ALGOS:
        if algo in names and algo not in out:
            out[algo] = _build_lycoris(family, algo)
    return {n: out[n] for n in names}


def all_fixtures() -> dict[str, Fixture]:
    """Every fixture of every family, keyed by full name (``sd15_peft``, ``sdxl_lokr``,
    ``sd15_full_kohya``, ...)."""
    out: dict[str, Fixture] = {}
    for family in FAMILIES:
        for fx in build(family).values():
            out[fx.name] = fx
    return out
