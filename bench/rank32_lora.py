"""The benchmarks' rank-32 LoRA: the layout PEFT + diffusers make, seeded values on the ComfyUI model.

Two halves, so that the file can be made where diffusers is not installed (the GPU machine):

Layout (``bench/layouts/<family>_r32.json``, committed; ``python -m bench.rank32_lora layouts`` remakes it)
    Which kohya modules a user's PEFT-trained file has, with the shapes of ``lora_down`` / ``lora_up``
    and ``.alpha``, made the way users' files are made: diffusers' ``UNet2DConditionModel`` of the
    family (``models.sd15_full_diffusers_config()`` / ``models.sdxl_full_diffusers_config()``), built on
    the meta device (no weights are needed for names and shapes),
    ``unet.add_adapter(LoraConfig(r=32, lora_alpha=32, target_modules=TARGET_MODULES))`` (the attention
    and resnet layers), ``get_peft_model_state_dict`` -> keys prefixed ``unet.`` (as
    ``save_lora_weights`` writes them) -> ``diffusers.utils.convert_state_dict_to_kohya``
    (``lora_unet_*``, ``.alpha`` = rank = lora_alpha). Targets are listed in the order of PEFT's
    module names (sorted); the diffusers and PEFT versions are recorded in the file.

Values (:func:`build_lora`, needs only the layout and the ComfyUI model)
    Every target is looked up in ComfyUI's own key map (``comfy.lora.model_lora_keys_unet``); the
    weight it names must exist and have as many elements as ``up @ down``, or the build raises. Then,
    in layout order, from one ``torch.Generator(device).manual_seed(SEED)`` on the device the model
    lives on: ``A ~ N(0, 1/fan_in)``, ``B ~ N(0, 1)``, and ``B`` rescaled so that
    ``||dW|| = RELATIVE_NORM * ||W||`` with ``dW = (alpha / r) * B @ A`` (keeps ``W + dW`` far from
    fp16's limit whatever the layer), in fp32. Saved as kohya safetensors in fp16 (kohya's usual
    ``--save_precision fp16``), ``.alpha`` as the int64 scalar the converter makes, atomically.
    On the CPU this draws the same numbers in the same order as the version-1 recipe did on the
    diffusers twin, so the SD1.5 file keeps its values.

:func:`ensure_lora` makes the SD1.5 file for the full-size SD1.5-architecture checkpoint in a child
process (which loads the fp16 UNet the way the benchmark does) and caches it at ``<cache>/bench/``;
:func:`ensure_lora_for` makes the file for a model already built (the SDXL UNet on the GPU). Bump
``LORA_VERSION`` when anything above changes. ``_full_unet_twin`` / ``_seed_factors`` remain for the
stack benchmark's LoRAs (``stack_loras``), which are still made on the diffusers twin.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from testkit import models

log = logging.getLogger(__name__)

LORA_VERSION = "2"
RANK = 32
ALPHA = 32.0
RELATIVE_NORM = 0.1
SEED = 3232
# the attention and resnet layers of the UNet
TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "time_emb_proj",
]
FAMILIES = ("sd15", "sdxl")
LAYOUTS = Path(__file__).resolve().parent / "layouts"
ARCHITECTURE = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}


# ---------------------------------------------------------------------------------------------
# layout


def layout_path(family: str) -> Path:
    return LAYOUTS / f"{family}_r{RANK}.json"


def _diffusers_config(family: str) -> dict[str, Any]:
    if family == "sd15":
        return models.sd15_full_diffusers_config()
    if family == "sdxl":
        return models.sdxl_full_diffusers_config()
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def make_layout(family: str) -> dict[str, Any]:
    """The layout of ``family``'s rank-32 PEFT LoRA, through diffusers + PEFT on the meta device."""
    import diffusers  # noqa: PLC0415
    import peft  # noqa: PLC0415
    from diffusers import UNet2DConditionModel  # noqa: PLC0415
    from diffusers.utils import convert_state_dict_to_kohya  # noqa: PLC0415
    from peft import LoraConfig  # noqa: PLC0415
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415
    from peft.utils import get_peft_model_state_dict  # noqa: PLC0415

    config = _diffusers_config(family)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGET_MODULES, init_lora_weights=True))
        peft_sd = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    kohya = convert_state_dict_to_kohya(peft_sd)
    modules = sorted(n for n, m in unet.named_modules() if isinstance(m, LoraLayer))
    targets = []
    for module in modules:
        name = "lora_unet_" + module.replace(".", "_")
        down, up, alpha = (kohya.get(f"{name}.{s}") for s in ("lora_down.weight", "lora_up.weight", "alpha"))
        if down is None or up is None or alpha is None:
            raise RuntimeError(f"PEFT module {module} has no kohya entry {name} (down/up/alpha) in the converted file")
        targets.append({"name": name, "peft_module": module, "down": list(down.shape), "up": list(up.shape),
                        "alpha": int(alpha.item()) if not alpha.is_floating_point() else float(alpha.item())})
    n_down = sum(1 for k in kohya if k.endswith(".lora_down.weight"))
    if n_down != len(targets) or len(kohya) != 3 * len(targets):
        raise RuntimeError(f"PEFT made {len(targets)} LoRA layers but the kohya dict has {n_down} (of {len(kohya)} keys)")
    return {
        "family": family,
        "rank": RANK,
        "lora_alpha": ALPHA,
        "target_modules": TARGET_MODULES,
        "made_with": {"diffusers": diffusers.__version__, "peft": peft.__version__, "torch": torch.__version__.split("+")[0]},
        "recipe": f"diffusers UNet2DConditionModel(**diffusers_config) on the meta device; unet.add_adapter(LoraConfig("
                  f"r={RANK}, lora_alpha={ALPHA:g}, target_modules=target_modules)); get_peft_model_state_dict, keys "
                  "prefixed 'unet.'; diffusers.utils.convert_state_dict_to_kohya; targets in sorted PEFT module order",
        "diffusers_config": config,
        "targets": targets,
    }


def write_layout(layout: dict[str, Any], path: Path) -> None:
    """JSON with one line per target (diff-friendly), written atomically."""
    head = {k: v for k, v in layout.items() if k != "targets"}
    text = json.dumps(head, indent=2, sort_keys=True)[:-2]
    rows = ",\n".join("    " + json.dumps(t, sort_keys=True) for t in layout["targets"])
    text += f',\n  "targets": [\n{rows}\n  ]\n}}\n'
    json.loads(text)  # well-formed
    with models.atomic_path(path) as tmp:
        tmp.write_text(text)


def load_layout(family: str) -> dict[str, Any]:
    path = layout_path(family)
    if not path.exists():
        raise FileNotFoundError(f"no LoRA layout for {family!r} at {path}; `python -m bench.rank32_lora layouts` makes it "
                                "(needs diffusers and peft)")
    layout = json.loads(path.read_text())
    if layout.get("family") != family or layout.get("rank") != RANK:
        raise ValueError(f"{path} is the layout of {layout.get('family')} rank {layout.get('rank')}, not {family} rank {RANK}")
    return layout


# ---------------------------------------------------------------------------------------------
# values


def resolve_targets(model: Any, layout: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """``(target, ComfyUI weight key)`` for every target of ``layout`` through ComfyUI's key map of
    ``model`` (a ``comfy.model_base.BaseModel``); raises unless every target maps to a weight with
    the matching number of elements."""
    import comfy.lora  # noqa: PLC0415

    key_map = comfy.lora.model_lora_keys_unet(model, {})
    params = dict(model.named_parameters())
    out, problems = [], []
    for t in layout["targets"]:
        key = key_map.get(t["name"])
        if not isinstance(key, str):
            problems.append(f"{t['name']}: {'not in ComfyUI key map' if key is None else f'maps to {key!r}'}")
            continue
        weight = params.get(key)
        numel = t["up"][0] * _prod(t["down"][1:])
        if weight is None:
            problems.append(f"{t['name']} -> {key}: no such weight")
        elif weight.numel() != numel:
            problems.append(f"{t['name']} -> {key}: weight {tuple(weight.shape)} has {weight.numel()} elements, "
                            f"LoRA up {t['up']} x down {t['down']} has {numel}")
        else:
            out.append((t, key))
    if problems:
        raise RuntimeError(f"{len(problems)} of {len(layout['targets'])} {layout['family']} layout targets do not map "
                           f"to the model's weights, e.g. {problems[:3]}")
    return out


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


@torch.no_grad()
def lora_values(model: Any, layout: dict[str, Any], seed: int = SEED) -> dict[str, torch.Tensor]:
    """The kohya state dict (CPU, fp16 factors, int64 alphas) for ``model`` (a ComfyUI ``BaseModel``)."""
    resolved = resolve_targets(model, layout)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for t, key in resolved:
        weight = model.get_parameter(key)
        if weight.device != device:
            raise RuntimeError(f"{key} is on {weight.device}, the model's first weight on {device}")
        a = torch.randn(t["down"], generator=gen, device=device) * _prod(t["down"][1:]) ** -0.5
        b = torch.randn(t["up"], generator=gen, device=device)
        delta = (t["alpha"] / t["down"][0]) * (b.flatten(1) @ a.flatten(1))
        b.mul_(RELATIVE_NORM * weight.float().norm() / delta.norm())
        out[f"{t['name']}.alpha"] = torch.tensor(t["alpha"])
        out[f"{t['name']}.lora_down.weight"] = a.to("cpu", torch.float16)
        out[f"{t['name']}.lora_up.weight"] = b.to("cpu", torch.float16)
    return out


def build_lora(model: Any, family: str, path: Path, model_name: str) -> Path:
    """Make ``family``'s rank-32 LoRA for ``model`` (a ComfyUI ``BaseModel``) and save it at ``path``."""
    layout = load_layout(family)
    device = next(model.parameters()).device
    kohya = lora_values(model, layout)
    made = layout["made_with"]
    models.save_safetensors(kohya, path, metadata={
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": str(ALPHA),
        "modelspec.architecture": ARCHITECTURE[family],
        "lora_lab_bench": f"layout: peft {made['peft']} LoraConfig(r={layout['rank']}, lora_alpha={layout['lora_alpha']:g}) "
                          f"on the diffusers {made['diffusers']} UNet2DConditionModel (meta device), "
                          f"convert_state_dict_to_kohya (bench/layouts/{layout_path(family).name}); values: seeded "
                          f"(torch.Generator on {device.type}, seed {SEED}), ||dW|| = {RELATIVE_NORM:g} ||W|| of "
                          f"{model_name} through comfy.lora.model_lora_keys_unet; fp16",
    })
    log.info("wrote %s (%d targets)", path, len(layout["targets"]))
    return path


def lora_path() -> Path:
    return models.cache_root() / "bench" / f"sd15_full_kohya_r{RANK}-v{LORA_VERSION}-m{models.MODELS_VERSION}.safetensors"


def ensure_lora() -> Path:
    """The SD1.5 file for ``testkit.models.sd15_checkpoint()``, built first (in a child process) if missing."""
    path = lora_path()
    if not path.exists():
        repo = Path(__file__).resolve().parent.parent
        log.info("building the rank-%d benchmark LoRA at %s (once)", RANK, path)
        subprocess.run([sys.executable, "-m", "bench.rank32_lora"], cwd=repo, check=True)
        if not path.exists():
            raise RuntimeError(f"building the benchmark LoRA did not write {path}")
    return path


def ensure_lora_for(patcher: Any, family: str, model_name: str | None = None) -> Path:
    """The rank-32 ``family`` LoRA for the model of ``patcher``, made on the device its weights are on.

    Cached per family and device type; the model must be the deterministic testkit build of that
    family (``models.sdxl_full_patcher`` for ``"sdxl"``), since the file depends on its weights' norms."""
    device = next(patcher.model.parameters()).device
    path = models.cache_root() / "bench" / (
        f"{family}_full_kohya_r{RANK}-v{LORA_VERSION}-m{models.MODELS_VERSION}-{device.type}.safetensors")
    if not path.exists():
        build_lora(patcher.model, family, path, model_name or f"testkit {family} full-size UNet on {device.type}")
    return path


def build_sd15(path: Path) -> None:
    """Load the full-size SD1.5 checkpoint's UNet in fp16 (as the benchmark does) and make its LoRA."""
    from testkit.host import import_comfy  # noqa: PLC0415

    import_comfy()
    import comfy.sd  # noqa: PLC0415

    patcher, *_ = comfy.sd.load_checkpoint_guess_config(
        str(models.sd15_checkpoint()), output_vae=False, output_clip=False, output_clipvision=False,
        model_options={"dtype": torch.float16})
    build_lora(patcher.model, "sd15", path, "testkit sd15_full (the fp16 checkpoint's UNet)")


# ---------------------------------------------------------------------------------------------
# the diffusers twin, still used by the stack benchmark's LoRAs


def _full_unet_twin() -> torch.nn.Module:
    import comfy.supported_models  # noqa: PLC0415
    from diffusers import UNet2DConditionModel  # noqa: PLC0415

    unet_config = comfy.supported_models.SD15(models.sd15_unet_config()).unet_config
    unet = UNet2DConditionModel(**models.sd15_full_diffusers_config())
    comfy_sd = models.sd15_full_unet_state_dict()
    models.load_diffusers_unet_from_comfy(unet, comfy_sd, unet_config)
    del comfy_sd
    gc.collect()
    return unet.eval()


@torch.no_grad()
def _seed_factors(unet: torch.nn.Module, gen: torch.Generator, adapter: str = "default",
                  scale: float = ALPHA / RANK) -> int:
    """Seeded A and B for every PEFT LoRA layer of ``adapter``; returns the number of layers."""
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    layers = sorted(((n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer)), key=lambda x: x[0])
    for _, layer in layers:
        a = layer.lora_A[adapter].weight
        b = layer.lora_B[adapter].weight
        fan_in = a[0].numel()
        a.copy_(torch.randn(a.shape, generator=gen) * fan_in**-0.5)
        b.copy_(torch.randn(b.shape, generator=gen))
        delta = scale * (b.flatten(1) @ a.flatten(1))
        base = layer.get_base_layer().weight
        b.mul_(RELATIVE_NORM * base.norm() / delta.norm())
    return len(layers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rank32_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("sd15", "layouts"), default="sd15",
                        help="sd15: make the cached SD1.5 file (default); layouts: remake bench/layouts/*.json "
                             "(needs diffusers and peft)")
    args = parser.parse_args(argv)
    if args.what == "layouts":
        for family in FAMILIES:
            layout = make_layout(family)
            write_layout(layout, layout_path(family))
            log.info("wrote %s (%d targets)", layout_path(family), len(layout["targets"]))
    else:
        build_sd15(lora_path())
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
