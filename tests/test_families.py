"""LoRA Lab's loader against core ComfyUI on every model family ComfyUI 0.3.75 runs.

For each small model of :mod:`testkit.families` (ComfyUI's own config classes, seeded weights) and each
LoRA file of :mod:`testkit.family_loras` (named as the real tools name them), the same file on the same
model through core's path (``comfy.sd.load_lora_for_models`` + ``patch_model``, :mod:`testkit.core_ref`) and
through ``LoraLabLoader`` + ComfyUI's model management:

* LoRA Lab changes every weight core changes, to core's value within fp32 rounding (fp8: within one step
  of the stored format on a few elements, where the two fp32 sums round differently before ComfyUI's
  seeded stochastic rounding);
* every weight it changes equals the tool's own result (the file's math in float64, or the tool's merge
  stored beside the file), so where core applies less (names its key map lacks), LoRA Lab is checked
  against the independent reference instead;
* no refusal where core applies; a clear error where nothing matches (core silently applies nothing);
* the report counts what was applied; every weight is restored bit for bit afterwards.
"""

from __future__ import annotations

import functools
import shutil

import pytest
import torch

from testkit import core_ref, families, family_loras
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops import errors  # noqa: E402
from lora_lab.lora_ops.keymap import canonical_name  # noqa: E402
from lora_lab.nodes.loader import LoraLabLoader  # noqa: E402

# Families whose every LyCORIS algorithm is checked; the others get LoCon (the kinds' math is pinned
# per kind in test_adapter_kinds.py, so more families would test the same code again).
ALL_ALGOS = ("flux", "wan21_t2v", "sdxl", "sd3", "qwen_image", "chroma", "hunyuan_video", "z_image")
FP8 = ("flux", "wan21_t2v", "qwen_image")
TOOL_SEMANTICS = {"dora", "diag-oft", "boft"}
WEIGHT_DEPENDENT = {"dora", "diag-oft", "boft", "glora"}  # core reads these differently at some settings (see README)


def _cases():
    out = []
    for name in families.family_names():
        for naming in family_loras.namings_for(name):
            algos = family_loras.algos_for(name, naming)
            if naming == "lycoris" and name not in ALL_ALGOS:
                algos = [a for a in algos if a == "locon"]
            elif naming == "kohya" and name not in ALL_ALGOS:
                algos = [a for a in algos if a == "lora"]
            out += [pytest.param(name, naming, algo, id=f"{name}-{naming}-{algo}") for algo in algos]
    return out


@functools.lru_cache(maxsize=4)
def _model(name: str, weight_format: str | None = None):
    return families.small_family_model(name, weight_format=weight_format)


def lora_lab_weights(patcher, fx, tmp_path, strength: float):
    """``(changed weights decoded to fp32, report)`` after LoraLabLoader applied ``fx`` and ComfyUI loaded
    the clone; the model is unloaded again and checked to be restored bit for bit."""
    name = fx.path.name
    shutil.copy(fx.path, tmp_path / name)
    before = core_ref.model_bits(patcher.model)
    with use_model_dirs(loras_dir=tmp_path), torch.inference_mode():
        out = LoraLabLoader().load(patcher, name, strength, 0.0)
    clone, report = out["result"][0], out["result"][2]
    return core_ref.loaded_weights(patcher, clone, before), report


def _tolerance(value: torch.Tensor) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5 * max(float(value.abs().max()), 1.0)}


def _strength(naming: str, algo: str) -> float:
    # OFT/BOFT: core multiplies by the strength twice; BFL control files set norm scales, which core copies
    # at any strength: only strength 1 is comparable with core there (LoRA Lab is linear in the strength
    # for every kind: test_adapter_kinds.py)
    return 1.0 if algo in ("diag-oft", "boft") or naming == "bfl_control" else 0.8


@pytest.mark.parametrize("name,naming,algo", _cases())
def test_loader_matches_core_and_the_tool_on_every_family(name, naming, algo, tmp_path):
    fx = family_loras.load_family_lora(name, naming, algo=algo)
    patcher = _model(name)
    strength = _strength(naming, algo)
    core = core_ref.core_patched_weights(patcher, fx.path, strength)
    expect = fx.meta["core_expectation"]
    base = {k: core_ref.decoded_weight(patcher.model, k) for k, _ in patcher.model.named_parameters()}
    reference = fx.comfy_deltas()

    if expect == "none":
        assert not core.changed_keys
    try:
        ours, report = lora_lab_weights(patcher, fx, tmp_path, strength)
    except errors.FamilyMismatchError as err:
        # allowed only where core applies nothing either: then LoRA Lab says so instead of doing nothing
        assert expect == "none" and not core.changed_keys, f"refused where core applies: {err}"
        assert "None of the" in str(err) and "would change nothing" in str(err)
        return

    missing = core.changed_keys - set(ours)
    assert not missing, f"core changes {len(missing)} weights LoRA Lab leaves alone, e.g. {sorted(missing)[:4]}"
    # diffusers/PEFT files keep alpha in the lora_adapter_metadata header, which core does not read: core
    # applies them at scale 1, LoRA Lab (like PEFT) at alpha / r; their deltas differ by exactly that factor
    peft_alpha = str(fx.meta.get("alpha_in_file", "")).startswith("safetensors metadata")
    core_scale = fx.meta["scale"] if peft_alpha else 1.0
    if algo not in TOOL_SEMANTICS:
        for key in core.changed_keys:
            b = _pad(base[key], core.weights[key].shape)  # a widened weight is zero-padded first
            want = b + core_scale * (core.weights[key] - b)
            torch.testing.assert_close(ours[key], want, **_tolerance(core.weights[key]), msg=key)
    for key, value in ours.items():
        if key not in reference:
            continue
        want = base[key]
        if want.shape != value.shape:  # a widened weight (BFL control LoRA): zero-padded first
            want = _pad(want, value.shape)
        torch.testing.assert_close(value - want, strength * reference[key], **_tolerance(reference[key]), msg=key)
    extra = set(ours) - core.changed_keys - set(reference)
    if extra:
        # Weights the file names but neither core's key map nor the tool's recorded mapping place (e.g. the
        # approximator of SimpleTuner's Chroma files, whose diffusers path is ComfyUI's own): allowed only where
        # the file's module IS that path, by name, and the change is that module's own delta.
        by_path = {canonical_name(m).split("_", 2)[-1] if m.startswith(("lycoris_", "lora_unet_")) else m: d
                   for m, d in fx.module_deltas().items()}
        for key in sorted(extra):
            path = key[len("diffusion_model."):-len(".weight")].replace(".", "_")
            assert path in by_path, f"LoRA Lab changed {key}, which no module of the file names"
            if algo in WEIGHT_DEPENDENT:  # the tool's delta was taken on its own copy of an unplaced layer
                continue
            torch.testing.assert_close(ours[key] - base[key], strength * by_path[path].reshape(base[key].shape),
                                       **_tolerance(by_path[path]), msg=key)
    applied = report.split("targets: ", 1)[1].split(" applied", 1)[0]
    done, total = (int(v) for v in applied.split(" of "))
    if expect == "full":
        assert done == total, report


def _pad(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    out = torch.zeros(shape, dtype=t.dtype)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def _fp8_step(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` at each of ``values`` (one step of the stored format)."""
    finfo = torch.finfo(dtype)
    exp = torch.floor(torch.log2(values.abs().clamp(min=finfo.smallest_normal)))
    return torch.pow(2.0, exp - (3 if dtype == torch.float8_e4m3fn else 2))


@pytest.mark.parametrize("weight_format", ["fp8_e4m3fn", "fp8_scaled", "fp8_quantized"])
@pytest.mark.parametrize("name", FP8)
def test_fp8_models_merge_like_core(name, weight_format, tmp_path):
    """fp8 weights, ComfyUI 0.3.75's scaled fp8 (a per-layer ``scale_weight``) and 0.8.0's quantized layers
    (``QuantizedTensor`` with a scale) are decoded with the layer's scale, merged in fp32 and stored back
    through the host's own encoder, like core; restored bit for bit."""
    if weight_format == "fp8_scaled" and not families.has_scaled_fp8_ops():
        pytest.skip("this ComfyUI loads scaled fp8 as quantized layers (the fp8_quantized case)")
    if weight_format == "fp8_quantized" and not families.has_quantized_layers():
        pytest.skip("this ComfyUI has no quantized layers (comfy_quant); 0.8.0 has")
    fx = family_loras.load_family_lora(name, "kohya")
    patcher = _model(name, weight_format)
    core = core_ref.core_patched_weights(patcher, fx.path, 0.8)
    assert core.changed_keys
    ours, report = lora_lab_weights(patcher, fx, tmp_path, 0.8)
    assert core.changed_keys <= set(ours)
    mismatched = total = 0
    for key in core.changed_keys:
        a, b = ours[key], core.weights[key]
        module = patcher.model.get_submodule(key.rsplit(".", 1)[0])
        stored = getattr(module.weight, "_qdata", module.weight).dtype
        if stored not in (torch.float8_e4m3fn, torch.float8_e5m2):  # a layer the format keeps in float
            torch.testing.assert_close(a, b, **_tolerance(b), msg=key)
            continue
        if weight_format == "fp8_e4m3fn":
            scale = 1.0
        elif weight_format == "fp8_scaled":
            scale = float(module.scale_weight)
        else:  # quantized layers recompute their scale from the merged values (amax / 448)
            scale = max(float(b.abs().max()), float(a.abs().max())) / 448.0
        off = (a - b).abs()
        step = _fp8_step(b / scale, torch.float8_e4m3fn) * scale
        assert bool((off <= step * 1.0001 + 1e-12).all()), f"{key}: more than one fp8 step from core"
        mismatched += int((off > 0).sum())
        total += off.numel()
    assert mismatched <= 0.01 * total, f"{mismatched} of {total} values differ from core"


def test_flux2_and_chroma_are_not_refused_as_flux(tmp_path):
    """The old guess called every double/single-block file "Flux" and refused it on Chroma and Flux 2."""
    for name in ("chroma", "flux2"):
        fx = family_loras.load_family_lora(name, "kohya")
        ours, report = lora_lab_weights(_model(name), fx, tmp_path, 1.0)
        assert ours and "model: " in report and "WARNING" not in report.split("targets:")[0]
