"""The test kit itself: seeded models run, fixture files and references are complete and sane, and
core ComfyUI reads the kohya / LyCORIS fixtures exactly as their references say."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from testkit import fixtures, models

SMALL_FAMILIES = ("sd15", "sdxl")


@pytest.fixture(scope="module")
def small_fixtures() -> dict[str, dict[str, fixtures.Fixture]]:
    return {fam: fixtures.build(fam) for fam in SMALL_FAMILIES}


@pytest.mark.parametrize("family", SMALL_FAMILIES)
def test_small_model_forward_is_finite(family: str) -> None:
    patcher, clip = models.small_model(family)
    assert type(patcher.model.model_config).__name__ == {"sd15": "SD15", "sdxl": "SDXL"}[family]
    out = models.forward_check(patcher, clip)
    assert out.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


@pytest.mark.parametrize("family", SMALL_FAMILIES)
def test_small_model_is_fresh_and_deterministic(family: str) -> None:
    a, _ = models.small_model(family)
    b, _ = models.small_model(family)
    assert a.model is not b.model
    sa, sb = a.model.state_dict(), b.model.state_dict()
    key = next(k for k in sa if k.endswith("to_q.weight"))
    assert torch.equal(sa[key], sb[key])
    sa[key].add_(1.0)
    assert not torch.equal(sa[key], sb[key])


@pytest.mark.parametrize("family", SMALL_FAMILIES)
def test_small_model_key_maps_build(family: str) -> None:
    comfy = models.import_comfy()
    patcher, clip = models.small_model(family)
    unet_config = patcher.model.model_config.unet_config
    assert comfy.utils.unet_to_diffusers(unet_config)
    unet_keys = comfy.lora.model_lora_keys_unet(patcher.model, {})
    clip_keys = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in unet_keys
    assert "lora_te1_text_model_encoder_layers_11_self_attn_q_proj" in clip_keys
    if family == "sdxl":
        assert "lora_te2_text_model_encoder_layers_31_self_attn_q_proj" in clip_keys


@pytest.mark.parametrize("family", SMALL_FAMILIES)
def test_diffusers_twin_matches_comfy_forward(family: str) -> None:
    patcher, _ = models.small_model(family)
    unet = models.diffusers_unet(family)
    gen = torch.Generator().manual_seed(0)
    ctx_dim = patcher.model.model_config.unet_config["context_dim"]
    x = torch.randn(1, 4, 8, 8, generator=gen)
    ctx = torch.randn(1, 77, ctx_dim, generator=gen)
    t = torch.tensor([500.0])
    kwargs, dkwargs = {}, {}
    if family == "sdxl":
        pooled = torch.randn(1, unet.config.projection_class_embeddings_input_dim - 6 * 256, generator=gen)
        kwargs["y"] = patcher.model.encode_adm(pooled_output=pooled, width=64, height=64)
        dkwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        ours = patcher.model.diffusion_model(x, t, context=ctx, **kwargs)
        theirs = unet(x, t, encoder_hidden_states=ctx, **dkwargs).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", SMALL_FAMILIES)
@pytest.mark.parametrize("name", fixtures.SMALL_FIXTURES)
def test_fixture_files_and_references(small_fixtures, family: str, name: str) -> None:
    fx = small_fixtures[family][name]
    assert fx.path.is_file() and fx.reference_path is not None and fx.reference_path.is_file()
    meta = fx.meta
    for key in ("family", "format", "algorithm", "rank", "alpha", "targets", "tool", "tool_versions", "base_model"):
        assert key in meta, key
    assert meta["family"] == family
    assert meta["base_model"] == f"small_{family}"
    ref = fx.reference()
    assert len(ref) == meta["targets"] == meta["file_targets"]
    with safe_open(str(fx.path), framework="pt") as f:
        assert fixtures.count_file_targets(list(f.keys())) == meta["targets"]
    base = models.small_state_dict(family)
    for key, delta in ref.items():
        assert key in base, key
        assert delta.shape == base[key].shape, key
        assert delta.dtype == torch.float32
        assert torch.isfinite(delta).all(), key
        rel = float(delta.norm() / base[key].norm())
        assert 0.01 < rel < 0.5, (key, rel)


@pytest.mark.parametrize("family", SMALL_FAMILIES)
def test_lycoris_double_scale_is_recorded(small_fixtures, family: str) -> None:
    loha = small_fixtures[family]["loha"].meta["lycoris_inmemory_vs_file"]
    ratio = fixtures.ALPHA / fixtures.RANK
    assert math.isclose(loha["norm_ratio_min"], ratio, rel_tol=1e-4)
    assert math.isclose(loha["norm_ratio_max"], ratio, rel_tol=1e-4)
    assert small_fixtures[family]["locon"].meta["lycoris_merge_vs_file_max_rel_err"] < 1e-5
    assert small_fixtures[family]["dora"].meta["lycoris_merge_vs_dora_formula_max_rel_err"] < 1e-5


def _core_deltas(family: str, fx: fixtures.Fixture) -> dict[str, torch.Tensor]:
    """Weight changes core ComfyUI's LoraLoader path makes for ``fx`` at strength 1."""
    comfy = models.import_comfy()
    patcher, clip = models.small_model(family)
    lora = comfy.utils.load_torch_file(str(fx.path), safe_load=True)
    new_patcher, new_clip = comfy.sd.load_lora_for_models(patcher, clip, lora, 1.0, 1.0)
    out = {}
    for p in (new_patcher, new_clip.patcher):
        before = {k: v.detach().clone() for k, v in p.model.state_dict().items()}
        comfy.model_management.load_models_gpu([p], force_full_load=True)
        after = p.model.state_dict()
        out.update({k: after[k].float() - before[k].float() for k in p.patches})
        comfy.model_management.unload_all_models()
    return out


@pytest.mark.parametrize("family", SMALL_FAMILIES)
@pytest.mark.parametrize("name", ["kohya", "locon", "loha", "lokr"])
def test_core_comfy_applies_reference_exactly(small_fixtures, family: str, name: str) -> None:
    fx = small_fixtures[family][name]
    ref = fx.reference()
    core = _core_deltas(family, fx)
    assert set(core) == set(ref)
    for key, delta in ref.items():
        torch.testing.assert_close(core[key], delta, rtol=1e-4, atol=1e-5, msg=key)


def test_full_sd15_checkpoint_and_fixtures() -> None:
    comfy = models.import_comfy()
    path = models.sd15_checkpoint()
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        assert f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").dtype == torch.float16
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys)
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    unet_config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
    assert type(comfy.model_detection.model_config_from_unet_config(unet_config, sd)).__name__ == "SD15"
    del sd
    full = fixtures.build("sd15_full")
    assert set(full) == set(fixtures.FULL_FIXTURES)
    for fx in full.values():
        assert fx.path.is_file() and fx.reference_path is None
        assert fx.meta["base_model"] == "sd15_full"
        assert fx.meta["file_targets"] > 0
