"""Small models of every ComfyUI 0.3.75 family (testkit.families), LoRA files in each family's namings
(testkit.family_loras) and core ComfyUI's reading of them (testkit.core_ref).

References are independent of core: the file's own math in float64, PEFT's ``merge()``, LyCORIS's
``get_merged_weight``; the ComfyUI target of every module was recorded when the file was made (from the
ComfyUI module itself, diffusers' own single-file converter, or, where noted in the file's metadata, core's
key map).
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from testkit import core_ref, families, family_loras
from testkit.models import import_comfy

ALL = list(families.FAMILIES)
LIGHT = [n for n in ALL if not families.FAMILIES[n].heavy]
FP8_CASES = [(n, f) for n in ("flux", "wan21_t2v", "qwen_image") for f in ("fp8_e4m3fn", "fp8_scaled")]

# families whose files are compared value by value with core (the rest: mapping only)
VALUE_FAMILIES = (
    "sd15",
    "sd3",
    "flux",
    "flux2",
    "chroma",
    "wan21_t2v",
    "qwen_image",
    "hunyuan_video",
    "ltxv",
    "stable_cascade_c",
    "z_image",
    "hidream",
)
EXTRA_CASES = [
    (n, naming)
    for n in LIGHT
    for naming in family_loras.namings_for(n)
    if naming not in family_loras.GENERIC_NAMINGS
]

_PATCHERS: dict[tuple[str, str | None], object] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: with 2 threads torch spends most of its time waking the second one
    (measured: 7x the CPU time of one thread on this 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _PATCHERS.clear()


def _patcher(name: str, weight_format: str | None = None):
    """One model per family and format for the whole module: core_ref restores it bit for bit."""
    if families.family_spec(name).heavy:
        return families.small_family_model(name, weight_format=weight_format)
    key = (name, weight_format)
    if key not in _PATCHERS:
        _PATCHERS[key] = families.small_family_model(name, weight_format=weight_format)
    return _PATCHERS[key]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------
# the models


@pytest.mark.parametrize("name", ALL)
def test_family_builds_runs_and_samples(name: str) -> None:
    spec = families.family_spec(name)
    patcher = families.small_family_model(name)
    if not spec.heavy:
        _PATCHERS[(name, None)] = patcher  # reused by the file tests below (core_ref restores it bit for bit)
    assert type(patcher.model.model_config).__name__ == spec.config_class
    assert patcher.load_device.type == "cpu" and patcher.offload_device.type == "cpu"
    params = sum(p.numel() for p in patcher.model.diffusion_model.parameters())
    assert params < (90e6 if spec.heavy else 10e6), params
    assert all(
        p.dtype == torch.float32 for p in patcher.model.diffusion_model.parameters() if p.is_floating_point()
    )

    cond = families.family_conditioning(name)
    assert cond[0][0].shape == (1, spec.context_len, spec.context_dim)
    assert "pooled_output" in cond[0][1]
    latent = families.family_latent(name)["samples"]
    if spec.latent.kind == "video":
        assert latent.ndim == 5

    out = families.forward_check(patcher, name)
    assert torch.isfinite(out).all() and out.abs().max() > 0

    samples = families.sample_check(patcher, name, steps=2, cfg=2.0)
    assert samples.ndim == latent.ndim
    assert torch.isfinite(samples).all()
    import_comfy().model_management.unload_all_models()  # core keeps sampled models loaded otherwise


def test_unknown_family_and_format_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        families.small_family_model("nope")
    with pytest.raises(ValueError, match="unknown weight_format"):
        families.small_family_model("flux", weight_format="int4")
    with pytest.raises(ValueError, match="naming 'diffusers' does not exist for family 'flux2'"):
        family_loras.family_lora("flux2", "diffusers")
    with pytest.raises(ValueError, match="algo 'loha' does not exist"):
        family_loras.family_lora("flux", "kohya", algo="loha")


def test_state_dict_is_seeded_and_cached() -> None:
    a = families.family_state_dict("flux")
    b = families.family_state_dict("flux")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    w = a["diffusion_model.double_blocks.0.img_attn.qkv.weight"]
    assert math.isclose(float(w.std()), w.shape[1] ** -0.5, rel_tol=0.1)
    assert torch.equal(
        a["diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"],
        torch.ones_like(a["diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"]),
    )


@pytest.mark.parametrize("name,weight_format", FP8_CASES)
def test_fp8_variants_load_run_and_core_patches_them(name: str, weight_format: str) -> None:
    import_comfy()
    if weight_format == "fp8_scaled" and not families.has_scaled_fp8_ops():
        pytest.skip(
            f"ComfyUI {families.host_version()} has no scaled_fp8_ops (scaled fp8 loads as QuantizedTensor)"
        )
    patcher = _patcher(name, weight_format)
    reference = _patcher(name)
    model = patcher.model
    linears = {k: m for k, m in model.diffusion_model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears.values())
    fp32 = dict(reference.model.state_dict())
    for k, m in linears.items():
        key = f"diffusion_model.{k}.weight"
        decoded = core_ref.decoded_weight(model, key)
        if weight_format == "fp8_scaled":
            s = float(m.scale_weight)
            assert 0.5 <= s <= 2 and abs(s - 1) > 0.03 and s == families.fp8_scale(name, key)
        # one fp8 rounding of the fp32 weight (3 mantissa bits: relative step 2^-3, subnormals 2^-9)
        err = (decoded - fp32[key]).abs()
        assert (
            err
            <= fp32[key].abs() * 2**-4
            + 2**-10 * (float(m.scale_weight) if weight_format == "fp8_scaled" else 1)
        ).all(), k
    out = families.forward_check(patcher, name)
    ref_out = families.forward_check(reference, name)
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref_out.flatten(), dim=0) > 0.9

    fx = family_loras.load_family_lora(name, "kohya")
    res = core_ref.core_patched_weights(patcher, fx.path)
    deltas = fx.comfy_deltas()
    assert res.changed_keys == set(deltas) and not res.not_loaded
    for key, delta in deltas.items():
        before = core_ref.decoded_weight(model, key)
        exact = before + delta
        got = res.weights[key]
        op = model.get_submodule(key[: -len(".weight")])
        if op.weight.dtype != torch.float8_e4m3fn:  # e.g. Wan's patch embedding stays fp32
            assert _rel(got - before, delta) < 1e-5, key
            continue
        scale = float(getattr(op, "scale_weight", None) or 1.0) if weight_format == "fp8_scaled" else 1.0
        # stochastic rounding lands on one of the two fp8 neighbours of the exact fp32 sum
        step = exact.abs() * 2**-3 + 2**-9 * scale
        assert ((got - exact).abs() <= step).all(), key
        assert (
            torch.nn.functional.cosine_similarity((got - before).flatten(), delta.flatten(), dim=0) > 0.7
        ), key


@pytest.mark.parametrize("name,weight_format", sorted(families.FP8_UNSUPPORTED))
def test_fp8_unsupported_list_is_still_true(name: str, weight_format: str) -> None:
    if weight_format == "fp8_scaled" and not families.has_scaled_fp8_ops():
        pytest.skip("no scaled_fp8_ops on this host")
    with pytest.raises((NotImplementedError, RuntimeError), match="Float8_e4m3fn|not implemented"):
        families.forward_check(families.small_family_model(name, weight_format=weight_format), name)


# ---------------------------------------------------------------------------------------------
# the files: core's key map


@pytest.mark.parametrize("name", ALL)
def test_kohya_file_maps_fully_through_core_key_map(name: str) -> None:
    fx = family_loras.load_family_lora(name, "kohya")
    sd = fx.state_dict()
    meta = fx.meta
    assert meta["file_targets"] == len(meta["targets"]) > 0
    assert {k.rsplit(".", 2)[0] for k in sd if k.endswith(".lora_down.weight")} == set(meta["targets"])
    keys, not_loaded = core_ref.core_key_mapping(_patcher(name), sd)
    assert not not_loaded
    assert keys == {t["comfy_key"] for t in meta["targets"].values()}
    header = family_loras.safetensors_metadata(fx.path)
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "6"
    assert header["modelspec.architecture"].endswith("/lora")


def _check_against_core(fx: family_loras.FamilyLora, res: core_ref.CoreResult) -> None:
    meta = fx.meta
    expect = meta["core_expectation"]
    ref = fx.comfy_deltas()
    n_keys = len(family_loras.safetensors_keys(fx.path))
    if expect == "none":
        assert not res.changed_keys, "core applies a naming it has no key map for"
        assert res.not_loaded_count == n_keys
        return
    if expect == "full":
        assert not res.not_loaded, res.not_loaded[:5]
        assert res.changed_keys == set(ref), sorted(res.changed_keys ^ set(ref))[:5]
    else:  # partial: some modules are skipped with a log line, the rest land where the file means them
        assert 0 < res.not_loaded_count < n_keys
        assert res.changed_keys and res.changed_keys <= set(ref)
    algo = meta["algo"]
    permuted = {t.comfy_key for t in fx.targets.values() if t.index_key is not None}
    for key in res.changed_keys:
        core_delta = res.deltas[key]
        if algo in ("dora", "diag-oft", "boft", "glora") and key in permuted:
            # core maps diffusers norm_out.linear (and SD3's last norm1_context.linear) with a function
            # (swap_scale_shift) that it applies to a LoRA difference only: a weight-dependent adapter
            # (DoRA, OFT) is computed on the ComfyUI row order with the file's diffusers-order factors
            assert _rel(core_delta, ref[key]) > 0.1, f"core now handles {algo} on a permuted target: {key}"
            continue
        if algo == "dora":
            # core 0.3.75 normalises DoRA by ||W|| on the output axis, the tools by ||W + dW||
            assert 1e-3 < _rel(core_delta, ref[key]) < 1.0, key
            continue
        if meta["naming"] == "diffusers":
            # alpha lives only in the lora_adapter_metadata header, which core does not read: scale 1
            core_delta = core_delta * meta["scale"]
        assert _rel(core_delta, ref[key]) < 2e-5, key


GENERIC_VALUE_CASES = [(n, "kohya", "lora") for n in VALUE_FAMILIES]
GENERIC_VALUE_CASES += [
    (n, naming, "lora")
    for n in ("flux", "wan21_t2v")
    for naming in ("diffusion_model", "diffusion_model_down_up")
]
GENERIC_VALUE_CASES += [(n, "kohya", "dora") for n in ("flux", "sd15")]
LYCORIS_CASES = [("flux", "lycoris", algo) for algo in family_loras.LYCORIS_ALGOS]
LYCORIS_CASES += [("sd15", "lycoris", algo) for algo in ("locon", "loha", "lokr", "diag-oft", "full", "dora")]
LYCORIS_CASES += [(n, "lycoris", "locon") for n in ("wan21_t2v", "qwen_image")]


@pytest.mark.parametrize("name,naming,algo", GENERIC_VALUE_CASES + LYCORIS_CASES)
def test_core_patches_generic_and_lycoris_files_like_the_reference(name: str, naming: str, algo: str) -> None:
    fx = family_loras.load_family_lora(name, naming, algo=algo)
    patcher = _patcher(name)
    weights = dict(patcher.model.state_dict())
    ref = fx.comfy_deltas()
    # the deltas are about strength_of_delta of each weight (exact for the low-rank algos)
    ratios = [
        float(d.norm() / weights[k].norm())
        for k, d in ref.items()
        if k.endswith(".weight") and weights[k].norm() > 0
    ]
    if algo in ("lora", "locon", "loha", "lokr"):
        assert all(abs(r - 0.1) < 1e-3 for r in ratios), (min(ratios), max(ratios))
    else:
        assert all(0.03 < r < 0.3 for r in ratios), (min(ratios), max(ratios))
    _check_against_core(fx, core_ref.core_patched_weights(patcher, fx.path))
    if algo in ("loha", "lokr"):
        _, hi = fx.meta["lycoris_inmemory_vs_file_norm_ratio"]
        assert hi == pytest.approx(fx.meta["scale"], rel=1e-4), (
            "lycoris-lora applies alpha/rank twice in memory"
        )


@pytest.mark.parametrize("name,naming", EXTRA_CASES)
def test_core_reads_family_specific_namings_as_recorded(name: str, naming: str) -> None:
    fx = family_loras.load_family_lora(name, naming)
    meta = fx.meta
    assert meta["file_targets"] + meta.get("set_weights", 0) == len(meta["targets"])
    if naming == "diffusers":
        header = family_loras.safetensors_metadata(fx.path)
        adapter = json.loads(header["lora_adapter_metadata"])
        assert adapter["transformer.r"] == 4 and adapter["transformer.lora_alpha"] == 6.0
        assert all(k.startswith("transformer.") for k in family_loras.safetensors_keys(fx.path))
    _check_against_core(fx, core_ref.core_patched_weights(_patcher(name), fx.path))


@pytest.mark.parametrize("algo", ["diag-oft", "dora"])
def test_simpletuner_lycoris_weight_dependent_algos_on_flux(algo: str) -> None:
    fx = family_loras.load_family_lora("flux", "lycoris_simpletuner", algo=algo)
    assert any(t.index_key is not None for t in fx.targets.values()), "norm_out.linear is a permuted target"
    _check_against_core(fx, core_ref.core_patched_weights(_patcher("flux"), fx.path))


@pytest.mark.parametrize("name", [n for n, naming in EXTRA_CASES if naming == "diffusers"])
def test_diffusers_twin_is_aligned_with_core_key_map(name: str) -> None:
    """Every diffusers module whose ComfyUI target is known and that core maps: core's key map names the
    same ComfyUI weight, the same slice (tuple targets) or the same permutation (function targets, e.g.
    ``swap_scale_shift`` for ``norm_out.linear``), of the delta's shape. Where the mapping came from
    diffusers' own converter (SD3, AuraFlow, HiDream) this checks core's map against an independent source."""
    comfy = import_comfy()
    fx = family_loras.load_family_lora(name, "diffusers")
    patcher = _patcher(name)
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    shapes = {k: v.shape for k, v in patcher.model.state_dict().items()}
    index = fx.index()
    known = [t for t in fx.targets.values() if t.comfy_key is not None]
    if fx.meta["mapping_source"] != "none":
        assert known, "no ComfyUI target known"
    checked = 0
    for t in known:
        entry = key_map.get(t.name)
        if entry is None:
            continue
        key = entry if isinstance(entry, str) else entry[0]
        assert key == t.comfy_key, (t.name, key, t.comfy_key)
        offset = None if isinstance(entry, str) else entry[1]
        function = entry[2] if not isinstance(entry, str) and len(entry) > 2 else None
        if offset is not None:
            dim, start, length = offset
            assert t.slice == (dim, start, length), (t.name, offset, t.slice)
            sliced = list(shapes[key])
            sliced[dim] = length
            assert tuple(sliced) == t.shape
        else:
            assert tuple(shapes[key]) == t.shape
        if function is not None:
            n = shapes[key].numel()
            moved = function(torch.arange(n).reshape(shapes[key])).flatten()
            dest = torch.empty_like(moved)
            dest[moved] = torch.arange(n)
            assert t.index_key is not None and torch.equal(index[t.index_key], dest), t.name
        checked += 1
    assert (checked > 0) == (fx.meta["core_expectation"] != "none")


def test_core_ref_restores_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    patcher = _patcher("wan21_t2v")
    before = {k: v.clone() for k, v in patcher.model.state_dict().items()}
    fx = family_loras.load_family_lora("wan21_t2v", "diffusers")
    with caplog.at_level(logging.WARNING):
        res = core_ref.core_patched_weights(patcher, fx.path, strength=0.5)
    assert res.not_loaded_count == len(family_loras.safetensors_keys(fx.path)) and not res.changed_keys
    after = patcher.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    half = core_ref.core_patched_weights(
        patcher, family_loras.family_lora("wan21_t2v", "kohya"), strength=0.5
    )
    full = core_ref.core_patched_weights(
        patcher, family_loras.family_lora("wan21_t2v", "kohya"), strength=1.0
    )
    for k in full.deltas:
        assert _rel(half.deltas[k] * 2, full.deltas[k]) < 1e-5
