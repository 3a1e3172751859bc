"""The GPU merge, compiled, on a CUDA device (skipped where there is none; CI has none, the lent GPU
machine runs it: see README "Benchmarks").

- ``lora_ops.fused``: merged weights equal torch's fp32 ``round(W + a * up @ down)`` bit for bit;
  ``restore()`` gives back every original bit, over hundreds of layers of real UNet sizes with LoRAs
  of 1% to 30% of the weight's magnitude; ``original()``; bf16; non-finite results refused.
- ``apply_patches`` on CUDA sends low-rank entries to the kernel and the rest to the copy path.
- Through ComfyUI's model management with the model on the GPU: a LoRA Lab clone loads merged, a
  strength change gives the bits of a fresh load at that strength without moving the model, and
  unloading restores every weight.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from testkit.host import import_pack  # noqa: E402

pack = import_pack()
ops = pack.lora_ops
from lora_lab.lora_ops import fused  # noqa: E402
from lora_lab.lora_ops import patching as merge_mod  # noqa: E402
from lora_lab.lora_ops.keymap import Target  # noqa: E402

BITS = torch.int16
CUDA = torch.device("cuda")
# (out, in) of SD1.5/SDXL attention, MLP and conv layers, and a few awkward ones
SHAPES = [(320, 320), (640, 2048), (1280, 1280), (10240, 1280), (1280, 5120), (640, 640 * 9), (1280, 2816),
          (77, 33), (1, 4096), (4096, 1)]


def _case(shape, rank, rel, dtype, g):
    w = (torch.randn(shape, generator=g, device=CUDA) * 0.02).to(dtype)
    up = (torch.randn(shape[0], rank, generator=g, device=CUDA) * 0.02).to(dtype)
    down = (torch.randn(rank, shape[1], generator=g, device=CUDA) * 0.02).to(dtype)
    coeff = rel * float(w.float().std()) / float((up.float() @ down.float()).std())
    return w, up, down, coeff


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rel,max_elements", [(0.01, fused.ROUND_ELEMENTS), (0.1, fused.ROUND_ELEMENTS),
                                              (0.3, fused.ROUND_ELEMENTS), (0.1, 1 << 20)])
def test_fused_merge_equals_fp32_math_and_restores_every_bit(dtype, rel, max_elements):
    g = torch.Generator(device=CUDA).manual_seed(5)
    cases, jobs = [], []
    for i, shape in enumerate(SHAPES * 3):
        w, up, down, coeff = _case(shape, (4, 16, 32, 64, 128)[i % 5], rel, dtype, g)
        cases.append((w, w.clone(), up, down, coeff))
        jobs.append(fused.Job(f"k{i}", w, w, up, down, coeff))
    merged, nonfinite = fused.merge_lowrank(jobs, max_elements=max_elements)
    assert nonfinite == []
    if max_elements < sum(w.numel() for w, *_ in cases):
        assert fused.coverage(merged)["rounds"] > 2  # cut into several launches
    merged_now = [w.clone() for w, *_ in cases]
    share = merged.records / merged.elements
    assert 0 < share < 0.5
    assert torch.equal(merged.original("k7").view(BITS), cases[7][1].view(BITS))
    merged.restore()
    for i, (w, orig, *_) in enumerate(cases):
        assert torch.equal(w.view(BITS), orig.view(BITS)), f"layer {i} not restored"
    eps = torch.finfo(dtype).eps
    for now, (w, orig, up, down, coeff) in zip(merged_now, cases):
        delta = coeff * (up.float() @ down.float())
        ref = (orig.float() + delta).to(dtype).float()
        # one rounding of the fp32 sum; the rank products summed in another order may cross a
        # rounding boundary (one unit in the last place) or, where W + dW cancels to near zero,
        # differ by fp32's error on dW
        slack = eps * ref.abs() + 1e-5 * float(delta.abs().max()) + 2 * torch.finfo(dtype).smallest_normal * eps
        assert bool(((now.float() - ref).abs() <= slack).all())


def test_small_record_buffer_loses_nothing():
    g = torch.Generator(device=CUDA).manual_seed(6)
    cases, jobs = [], []
    for i, shape in enumerate(SHAPES):
        w, up, down, coeff = _case(shape, 32, 0.2, torch.float16, g)
        cases.append((w, w.clone()))
        jobs.append(fused.Job(f"k{i}", w, w, up, down, coeff))
    merged, _ = fused.merge_lowrank(jobs, capacity_fraction=0.0, min_capacity=1000)
    assert fused.coverage(merged)["launches"] > 1
    merged.restore()
    assert all(torch.equal(w.view(BITS), o.view(BITS)) for w, o in cases)


def test_apply_patches_on_cuda_routes_and_refuses_overflow():
    g = torch.Generator().manual_seed(7)
    w_lora = (torch.randn(64, 96, generator=g) * 0.02).half().to(CUDA)
    w_loha = (torch.randn(64, 96, generator=g) * 0.02).half().to(CUDA)
    originals = {"a": w_lora.clone(), "b": w_loha.clone()}
    lora = ops.LoraWeights(up=torch.randn(64, 8, generator=g) * 0.05, down=torch.randn(8, 96, generator=g) * 0.05,
                           alpha=4.0)
    loha = ops.LohaWeights(torch.randn(64, 2, generator=g), torch.randn(2, 96, generator=g),
                           torch.randn(64, 2, generator=g), torch.randn(2, 96, generator=g), alpha=1.0)
    weights = {"a": w_lora, "b": w_loha}
    entries = [merge_mod.PatchEntry(Target("a"), lora, 0.7, "lora"), merge_mod.PatchEntry(Target("b"), loha, 0.01, "loha")]
    backup = merge_mod.apply_patches(weights, entries)
    assert backup.fused is not None and backup.fused.keys == {"a"} and set(backup.copies) == {"b"}
    ref = (originals["a"].float() + 0.7 * 0.5 * (lora.up.half().float().to(CUDA) @ lora.down.half().float().to(CUDA))).half()
    assert int((w_lora.view(BITS).int() - ref.view(BITS).int()).abs().max()) <= 1
    merge_mod.restore_weights(weights, backup)
    assert all(torch.equal(weights[k].view(BITS), originals[k].view(BITS)) for k in weights)

    hot = torch.full((32, 32), 60000.0, dtype=torch.float16, device=CUDA)
    cool = originals["a"].clone()
    big = ops.LoraWeights(up=torch.full((32, 1), 100.0), down=torch.full((1, 32), 100.0))
    small = ops.LoraWeights(up=torch.full((64, 1), 0.01), down=torch.full((1, 96), 0.01))
    with pytest.raises(ops.OverflowRiskError, match="hot_layer"):
        merge_mod.apply_patches({"hot": hot, "cool": cool}, [merge_mod.PatchEntry(Target("cool"), small, 1.0, "cool_layer"),
                                                             merge_mod.PatchEntry(Target("hot"), big, 1.0, "hot_layer")])
    assert bool((hot == 60000.0).all()) and torch.equal(cool.view(BITS), originals["a"].view(BITS))


# --- through ComfyUI's model management ----------------------------------------------------------

PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "in_layers.2", "out_layers.3", "emb_layers.1"]


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    """The small SD1.5 model in fp16 on the GPU (ComfyUI's ModelPatcher), a PEFT-made LoRA file for
    it, and a CPU snapshot of every weight."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    from testkit import models

    patcher, _ = models.small_sd15(torch.float16)
    twin, _ = models.small_sd15(torch.float32)
    unet = inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=PEFT_TARGETS),
                                   twin.model.diffusion_model)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    sd = {f"diffusion_model.{k}": v.half().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    path = tmp_path_factory.mktemp("gpu-lora") / "peft_small.safetensors"
    save_file(sd, str(path))
    gpu = comfy.model_patcher.ModelPatcher(patcher.model, load_device=CUDA, offload_device=torch.device("cpu"))
    snapshot = {k: p.detach().cpu().clone() for k, p in gpu.model.named_parameters()}
    yield gpu, path, snapshot
    mm.unload_all_models()


def _same_as(module, snapshot) -> list[str]:
    return [k for k, p in module.named_parameters() if not torch.equal(p.detach().cpu().view(BITS) if p.dtype == torch.float16
                                                                       else p.detach().cpu(),
                                                                       snapshot[k].view(BITS) if p.dtype == torch.float16
                                                                       else snapshot[k])]


def test_strength_change_on_the_gpu_rewrites_in_place_and_restores(gpu_model):
    import comfy.model_management as mm

    from lora_lab.lora_ops import load_lora
    from lora_lab.nodes.bridge import _ACTIVE
    from lora_lab.nodes.planning import apply_lora

    gpu, path, snapshot = gpu_model
    lora = load_lora(path)
    fresh = {}
    for strength in (1.0, 0.4):
        clone = apply_lora(gpu, None, lora, strength, strength).model
        mm.load_models_gpu([clone])
        assert isinstance(_ACTIVE[gpu.model].fused, fused.FusedMerge) and not _ACTIVE[gpu.model].copies
        assert _ACTIVE[gpu.model].fused.records > 0
        fresh[strength] = {k: p.detach().cpu().clone() for k, p in gpu.model.named_parameters()}
        mm.unload_all_models()
        assert _same_as(gpu.model, snapshot) == []
    assert any(not torch.equal(fresh[1.0][k], snapshot[k]) for k in snapshot)

    first = apply_lora(gpu, None, lora, 1.0, 1.0).model
    mm.load_models_gpu([first])
    ptrs = {k: p.data_ptr() for k, p in gpu.model.named_parameters()}
    second = apply_lora(gpu, None, lora, 0.4, 0.4).model
    mm.load_models_gpu([second])
    assert {k: p.data_ptr() for k, p in gpu.model.named_parameters()} == ptrs, "the model was moved or re-allocated"
    now = {k: p.detach().cpu() for k, p in gpu.model.named_parameters()}
    assert [k for k in now if not torch.equal(now[k].view(BITS), fresh[0.4][k].view(BITS))] == []
    mm.unload_all_models()
    assert _same_as(gpu.model, snapshot) == []
