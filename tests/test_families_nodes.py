"""Stacks, the sweep's batch, merges and the inspector on every model family, against core ComfyUI.

The loader's weights are compared with core's on every family and naming in ``test_families.py``; here
the other nodes run on the same small models (``testkit.families``) with kohya-named files:

* ``LoraLabApplyStack`` of two LoRAs equals two chained core ``load_lora_for_models`` (within fp32
  rounding);
* the sweep's batch (``bridge.with_row_strengths``: every cell's strength inside one sampler batch) gives,
  row for row, the latent core's sampler gives with core's LoRA at that strength, same seed and noise;
* ``LoraLabMerge`` (concat, exact) -> ``LoraLabSave`` -> ``LoraLabLoader`` of the saved file gives the
  stack's weights, and core's loader reads the saved file to the same weights;
* ``LoraLabInspect`` against the model matches every target and says "compatible".
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import replace

import comfy.model_management as mm
import comfy.sample
import comfy.sd
import pytest
import torch
from safetensors.torch import load_file

from testkit import core_ref, families, family_loras
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops.batched import BatchLayoutError, prepare_deltas  # noqa: E402
from lora_lab.lora_ops.plan import load_lora  # noqa: E402
from lora_lab.nodes import bridge  # noqa: E402
from lora_lab.nodes.inspect import inspect_for_host  # noqa: E402
from lora_lab.nodes.loader import LoraLabLoader  # noqa: E402
from lora_lab.nodes.planning import plan_for  # noqa: E402
from lora_lab.nodes.merge import LoraLabMerge, LoraLabSave  # noqa: E402
from lora_lab.nodes.stack import LoraLabApplyStack, LoraLabStack  # noqa: E402

FAMILIES = families.family_names()
SAMPLED = [n for n in FAMILIES if not families.family_spec(n).heavy]
# Families with layers whose first axis is not the sampler's batch (video frames folded into it, tokens
# flattened or routed to experts): the sweep's batch cannot tell their rows apart and renders cell by cell.
BATCH_LAYOUT_FALLBACK = {"svd", "sv3d_u", "sv3d_p", "pixart_alpha", "pixart_sigma", "hunyuan_dit", "hunyuan_dit1",
                         "chroma_radiance", "hidream", "mochi", "cosmos_t2v", "cosmos_i2v", "wan22_s2v", "hunyuan3d2_1"}


@functools.lru_cache(maxsize=2)
def _model(name: str):
    return families.small_family_model(name)


def _close(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs), (sorted(set(ours) ^ set(theirs))[:4])
    for k, v in theirs.items():
        torch.testing.assert_close(ours[k], v, rtol=1e-5, atol=1e-5 * max(float(v.abs().max()), 1.0), msg=k)


def _files(name: str, tmp_path) -> list[str]:
    """Two LoRAs for ``name`` in the loras folder: kohya (seed 0) and ComfyUI-trainer names (seed 1)."""
    out = []
    for naming, seed in (("kohya", 0), ("diffusion_model", 1)):
        path = family_loras.family_lora(name, naming, seed=seed)
        shutil.copy(path, tmp_path / path.name)
        out.append(path.name)
    return out


ROWS = ((0.7, 0), (-0.4, 1))  # (strength, file index)


@pytest.mark.parametrize("name", FAMILIES)
def test_stack_merge_and_inspect_match_core(name, tmp_path):
    patcher = _model(name)
    files = _files(name, tmp_path)
    with use_model_dirs(loras_dir=tmp_path), torch.inference_mode():
        stack = None
        for strength, i in ROWS:
            stack = LoraLabStack().add(files[i], strength, 0.0, "", True, lora_stack=stack)[0]
        applied = LoraLabApplyStack().apply(patcher, stack, "none", 1.0)["result"][0]
    ours = core_ref.loaded_weights(patcher, applied)

    core_model = patcher
    for strength, i in ROWS:
        core_model, _ = comfy.sd.load_lora_for_models(core_model, None, load_file(str(tmp_path / files[i])),
                                                      strength, 0.0)
    _close(ours, core_ref.loaded_weights(patcher, core_model))

    # merge (exact) -> save -> load the saved file: the stack's weights, in LoRA Lab and in core
    with use_model_dirs(loras_dir=tmp_path), torch.inference_mode():
        merged = LoraLabMerge().merge(model=patcher, lora_stack=stack, method="concat", rank=0, energy=0.0,
                                      density=0.5, seed=0, normalization="none", normalization_target=1.0,
                                      name="merged")["result"][0]
        LoraLabSave().save(merged, "merged_rt", overwrite=False)
        reloaded = LoraLabLoader().load(patcher, "merged_rt.safetensors", 1.0, 0.0)["result"][0]
    _close(core_ref.loaded_weights(patcher, reloaded), ours)
    core_saved, _ = comfy.sd.load_lora_for_models(patcher, None, load_file(str(tmp_path / "merged_rt.safetensors")),
                                                  1.0, 0.0)
    _close(core_ref.loaded_weights(patcher, core_saved), ours)

    # the inspector: every target of the kohya file matches this model
    inspection = inspect_for_host(load_lora(tmp_path / files[0], convert=bridge.convert_lora), patcher)
    assert inspection.verdict == "compatible" and inspection.matched == inspection.targets, inspection.to_text()


@pytest.mark.parametrize("name", SAMPLED)
def test_sweep_batch_rows_equal_core_samples(name, tmp_path):
    """The sweep renders its cells in one batch with a per-row strength inside the forward pass; each row
    must be the latent core's sampler makes with core's LoRA at that strength (same seed, same noise)."""
    patcher = _model(name)
    path = family_loras.family_lora(name, "kohya")
    lora = load_lora(path, convert=bridge.convert_lora)
    plan, _ = plan_for(patcher, None, lora, 1.0, 0.0)
    shapes = bridge.weight_shapes(patcher.model)
    deltas = prepare_deltas(plan.model_entries, shapes, bridge.base_weight_lookup(patcher, None))
    strengths = [0.5, 1.0]
    latent = comfy.sample.fix_empty_latent_channels(patcher, families.family_latent(name)["samples"])
    noise = comfy.sample.prepare_noise(latent, 7)
    pos, neg = families.family_conditioning(name, 0), families.family_conditioning(name, 1)
    ones = [1] * (noise.dim() - 1)

    def sample(model, n):
        with torch.inference_mode():
            try:
                return comfy.sample.sample(model, noise.repeat(n, *ones), 2, 2.0, "euler", "simple", pos, neg,
                                           latent.repeat(n, *ones), disable_pbar=True, seed=7)
            finally:
                mm.unload_all_models()

    sd = load_file(str(path))
    try:
        rows = sample(bridge.with_row_strengths(patcher, deltas, strengths), len(strengths))
    except BatchLayoutError:
        # layers of this model do not keep the batch axis (tokens reshaped or routed): the sweep renders
        # cell by cell through the merge instead, which must equal core at each strength as well
        assert name in BATCH_LAYOUT_FALLBACK, f"{name} unexpectedly cannot run the batched sweep"
        rows = [sample(bridge.with_patches(patcher, [replace(e, strength=e.strength * s) for e in plan.model_entries]),
                       1)[0] for s in strengths]
    else:
        assert name not in BATCH_LAYOUT_FALLBACK, f"{name} runs batched now: update BATCH_LAYOUT_FALLBACK"
    for row, s in enumerate(strengths):
        core_model, _ = comfy.sd.load_lora_for_models(patcher, None, sd, s, 0.0)
        expect = sample(core_model, 1)[0]
        scale = max(float(expect.abs().max()), 1.0)
        torch.testing.assert_close(rows[row], expect, rtol=1e-4, atol=1e-4 * scale, msg=f"strength {s}")
    plain = sample(patcher, 1)[0]
    assert not torch.allclose(rows[1], plain)  # the LoRA changes the result


@pytest.mark.parametrize("name", ["flux", "chroma", "hidream"])
def test_sweep_node_on_a_dit_family_equals_core_loader_and_ksampler(name, tmp_path):
    """``LoraLabSweep`` end to end on a DiT family, with the conditioning of the user's own encode nodes
    connected (``positive_cond``/``negative_cond``) and ComfyUI's tiny autoencoder: the reference cell is
    core's plain sample, every LoRA cell core's ``LoraLoader`` + ``KSampler`` + ``VAEDecode`` at that weight."""
    from testkit.small_vae import small_taesd

    from lora_lab.nodes.sweep import LoraLabSweep

    patcher = _model(name)
    vae = small_taesd(16)
    path = family_loras.family_lora(name, "kohya")
    shutil.copy(path, tmp_path / path.name)
    pos, neg = families.family_conditioning(name, 0), families.family_conditioning(name, 1)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with use_model_dirs(loras_dir=tmp_path, output_dir=out_dir):
        result = LoraLabSweep().sweep(
            model=patcher, clip=None, vae=vae, lora_name=path.name, positive="", negative="", seed=3, steps=2,
            cfg=2.0, sampler_name="euler", scheduler="simple", width=64, height=64, weight_start=0.5,
            weight_end=1.0, weight_count=2, include_reference=True, block_weights="", axis="none",
            axis_values="", positive_cond=pos, negative_cond=neg)["result"]
    cells = result[1]
    assert cells.shape[0] == 3
    mode = json.loads(result[3])["mode"]
    if name in BATCH_LAYOUT_FALLBACK:  # HiDream routes tokens to experts: the sweep says it went cell by cell
        assert mode.startswith("repatch (batched was not possible: the layer"), mode
    else:
        assert mode.startswith("batched"), mode
    latent = comfy.sample.fix_empty_latent_channels(patcher, torch.zeros([1, 4, 8, 8]))
    noise = comfy.sample.prepare_noise(latent, 3)
    sd = load_file(str(path))
    for i, w in enumerate([0.0, 0.5, 1.0]):
        model = patcher if w == 0 else comfy.sd.load_lora_for_models(patcher, None, sd, w, 0.0)[0]
        with torch.inference_mode():
            try:
                lat = comfy.sample.sample(model, noise, 2, 2.0, "euler", "simple", pos, neg, latent,
                                          disable_pbar=True, seed=3)
            finally:
                mm.unload_all_models()
            image = vae.decode(lat)[0]
        torch.testing.assert_close(cells[i], image.float(), rtol=0, atol=2e-3, msg=f"weight {w}")
    assert not torch.allclose(cells[0], cells[2])
    assert list(out_dir.rglob("*.png")) and list(out_dir.rglob("*.json"))
