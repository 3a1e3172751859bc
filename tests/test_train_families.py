"""LoraLabTrain on small models of every family it trains besides SD1.x, in the real host, through the models'
own forward and ComfyUI's sampler: SDXL (CLIP-L + CLIP-G, pooled text and size/crop conditioning), Flux
(CLIP-L + T5, guidance input, 16-channel latents), Chroma (T5, 16-channel latents), Z-Image (Qwen3) and Wan
T2V (UMT5, a video model trained on images as one-frame videos through Wan's own 3-D VAE: 5-D latents).

Models from :mod:`testkit.families`, text encoders from :mod:`testkit.small_text` (ComfyUI's own classes,
reduced configs), VAEs from :mod:`testkit.small_vae` (Wan's the video VAE, the others image VAEs). Each run is a few steps at 64x64 on one thread,
seeded: the same settings give the same adapter bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from testkit.families import small_family_model
from testkit.host import import_pack
from testkit.small_text import small_family_clip
from testkit.small_vae import small_taesd, small_vae, small_wan_vae
from testkit.train_workflows import loras_folder, one_torch_thread, pattern_images

import_pack()

import comfy.lora  # noqa: E402
import comfy.utils  # noqa: E402

from lora_lab.lora_ops.errors import LoraLabError  # noqa: E402
from lora_lab.nodes import sampling, train_host  # noqa: E402
from lora_lab.nodes.train import prepare, train_and_report  # noqa: E402
from lora_lab.train.checkpoint import state_path_for  # noqa: E402
from lora_lab.train.host_api import ImageSize  # noqa: E402
from lora_lab.train.parity import image_difference  # noqa: E402
from lora_lab.train.session import encode_dataset, targets_for  # noqa: E402
from lora_lab.train.settings import TrainSettings  # noqa: E402

PARITY_LEVELS = 1    # saved file (both loaders) vs the live preview, 8-bit levels (measured: at most 1)
CHANGED_LEVELS = 4   # the trained adapter moves the preview by more than this from the model's own image

# family -> (text encoders trained with it, file-name prefixes of its layers, modelspec architecture)
FAMILIES = {
    "sdxl": ("clip_l, clip_g", ("lora_unet_", "lora_te1_", "lora_te2_"), "stable-diffusion-xl-v1-base/lora"),
    "flux": ("t5xxl", ("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_te2_"),
             "flux-1-dev/lora"),
    "chroma": ("", ("lora_unet_double_blocks_", "lora_unet_single_blocks_"), "Chroma/lora"),
    "z_image": ("qwen3_4b", ("lora_unet_layers_", "lora_unet_noise_refiner_", "text_encoders.qwen3_4b."),
                "ZImage/lora"),
    "wan21_t2v": ("umt5xxl", ("lora_unet_blocks_", "text_encoders.umt5xxl."), "WAN21_T2V/lora"),
}
# family -> (target_blocks in the family's block syntax, the only layers it may select)
BLOCKS = {"sdxl": ("OUT*=1, *=0", "output_blocks."), "flux": ("S*=1, *=0", "single_blocks."),
          "chroma": ("D01=1, *=0", "double_blocks.1."), "z_image": ("NR00=1, *=0", "noise_refiner.0."), "wan21_t2v": ("B01=1, *=0", "blocks.1.")}

# The host decides how these models run (0.8.0 runs rotary embeddings through kernels without a backward
# pass, which training swaps): CI runs this file on every ComfyUI version it tests.
pytestmark = pytest.mark.hosts

_BUILT: dict[str, tuple] = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def family(name: str):
    """``(model, clip, vae)`` of the small ``name`` family, built once per session."""
    if name not in _BUILT:
        with torch.inference_mode():
            vae = {"sdxl": small_vae, "wan21_t2v": small_wan_vae}.get(name, lambda: small_taesd(16))()
            _BUILT[name] = (small_family_model(name), small_family_clip(name), vae)
    return _BUILT[name]


@pytest.fixture
def loras(tmp_path):
    with loras_folder(tmp_path) as folder:
        yield folder


def settings(**kw) -> TrainSettings:
    base = dict(output_name="t", rank=4, alpha=4.0, steps=3, learning_rate=5e-2, resolution=64,
                preview_every=3, preview_prompt="zxq style", preview_seed=2, preview_steps=2)
    base.update(kw)
    return TrainSettings(**base)


def run(name: str, s: TrainSettings):
    model, clip, vae = family(name)
    with torch.inference_mode():
        plan = prepare(model, s, images=pattern_images(), captions="zxq style, red\nzxq style, grey",
                       clip=clip)
        return train_and_report(model, clip, vae, plan)


def untrained_preview(name: str) -> torch.Tensor:
    """The preview :func:`settings` asks for, rendered from the model without an adapter."""
    model, clip, vae = family(name)
    return train_host.render(model, vae, sampling.encode_prompt(clip, "zxq style"), sampling.encode_prompt(clip, ""),
                             seed=2, steps=2, latent_shape=train_host.latent_shape(model, vae, 64, 64))


def master(path) -> dict[str, torch.Tensor]:
    with safe_open(str(state_path_for(path)), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("master.")}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_trains_and_the_saved_file_reproduces_the_preview(name, loras):
    encoders, prefixes, architecture = FAMILIES[name]
    out, result = run(name, settings(output_name=name, text_encoders=encoders))
    assert all(torch.isfinite(torch.tensor(result.losses))) and len(result.losses) == 3

    live, lab, core = result.final_preview, result.parity["lora_lab"], result.parity["core"]
    assert image_difference(lab, live).max_levels <= PARITY_LEVELS
    assert image_difference(core, live).max_levels <= PARITY_LEVELS
    assert result.parity["core_keys"] == len(result.targets)
    assert image_difference(untrained_preview(name), live).max_levels > CHANGED_LEVELS

    with safe_open(str(result.saved.path), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    modules = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".lora_up.weight")}
    assert len(modules) == len(result.targets)
    assert all(any(m.startswith(p) for m in modules) for p in prefixes), sorted(modules)[:5]
    assert meta["modelspec.architecture"] == architecture
    # core reads every layer of the file, the text encoders' included
    model, clip, _ = family(name)
    sd = comfy.utils.load_torch_file(str(result.saved.path), safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    assert len(comfy.lora.load_lora(sd, key_map)) == len(result.targets)

    # seeded: the same settings without previews train the same adapter bit for bit
    _, again = run(name, settings(output_name=f"{name}_again", text_encoders=encoders, preview_every=0))
    a, b = master(result.saved.path), master(again.saved.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.losses == result.losses


KIND_CASES = {
    "locon": dict(algorithm="locon", targets="all linear and conv", rank_dropout=0.25),
    "loha": dict(algorithm="loha", dropout=0.1, rank_dropout=0.25, module_dropout=0.1),
    "lokr": dict(algorithm="lokr", rank_dropout=0.25, module_dropout=0.1, save_precision="fp16"),
    "dora+rank_dropout": dict(algorithm="lora", dora=True, rank_dropout=0.5, dropout=0.1, save_precision="fp16"),
}


@pytest.mark.parametrize("case", list(KIND_CASES))
@pytest.mark.parametrize("name", ["flux", "wan21_t2v"])
def test_every_kind_trains_on_a_dit_and_the_saved_file_reproduces_the_preview(name, case, loras):
    """LoCon, LoHa, LoKr and DoRA with the dropouts on a DiT and on a video model, saved in fp32 and fp16: the
    file through LoraLabLoader renders the last preview within a level (through core too, except DoRA, whose
    norm core takes of the weight without the LoRA)."""
    kw = KIND_CASES[case]
    _, result = run(name, settings(output_name=f"{name}_{case.replace('+', '_')}", **kw))
    want = torch.float16 if kw.get("save_precision") == "fp16" else torch.float32
    with safe_open(str(result.saved.path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if not k.endswith(".alpha")} == {want}
    live = result.final_preview
    assert image_difference(result.parity["lora_lab"], live).max_levels <= PARITY_LEVELS
    if not kw.get("dora"):
        assert image_difference(result.parity["core"], live).max_levels <= PARITY_LEVELS
    assert result.parity["core_keys"] == len(result.targets)
    assert image_difference(untrained_preview(name), live).max_levels > CHANGED_LEVELS


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_selection_uses_the_familys_block_syntax(name, loras):
    syntax, prefix = BLOCKS[name]
    model, clip, vae = family(name)
    with torch.inference_mode():
        plan = prepare(model, settings(targets="block selection", target_blocks=syntax),
                       images=pattern_images(), captions="a\nb")
        hm = train_host.ComfyTrainHost().load(model, clip, vae)
        targets = targets_for(hm, plan)
    assert targets and all(t.name.startswith(prefix) for t in targets), [t.name for t in targets][:5]


def test_sdxl_gets_each_images_size_and_crop_conditioning(loras):
    """Training passes each image's original size, crop and target size, and the training forward gives the
    model what ``SDXL.encode_adm`` makes of them when called directly."""
    model, clip, vae = family("sdxl")
    wide = torch.rand(1, 64, 96, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plan = prepare(model, settings(), images=wide, captions="zxq style")
        hm = train_host.ComfyTrainHost().load(model, clip, vae)
        (w, h), = plan.sizes
        crop_left = (96 * h // 64 - w) // 2
        expected = [ImageSize(original=(96, 64), crop=(0, crop_left), target=(w, h))]
        assert encode_dataset(hm, plan).conditioning == expected
        cond = hm.encode_caption("zxq style")
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        sigma = torch.tensor([1.0])
        size = ImageSize(original=(96, 64), crop=(0, 16), target=(64, 64))
        ours = hm.denoise(x, sigma, [cond], [size])
        adm = model.model.encode_adm(pooled_output=cond[0][1]["pooled_output"], width=96, height=64,
                                     crop_w=16, crop_h=0, target_width=64, target_height=64)
        reference = model.model.apply_model(x, sigma, c_crossattn=cond[0][0], y=adm)
        other = hm.denoise(x, sigma, [cond], [ImageSize(original=(64, 64), crop=(0, 0), target=(64, 64))])
    assert torch.allclose(ours, reference, atol=1e-5)
    assert not torch.allclose(ours, other, atol=1e-4)


def test_unknown_text_encoder_is_named(loras):
    model, clip, _ = family("flux")
    with pytest.raises(LoraLabError, match="clip_g.*name some of: clip_l, t5xxl"):
        prepare(model, settings(text_encoders="clip_g"), images=pattern_images(), captions="a\nb", clip=clip)


def test_gradient_checkpointing_is_exact_on_blocks_that_update_in_place(loras):
    """ComfyUI's Flux blocks add to their activations in place (``img += ...``): checkpointed, they must still
    give the gradients of the plain run (torch's own checkpoint gives other ones here: it recomputes into
    tensors the block then changes)."""
    common = dict(steps=2, preview_every=0, algorithm="locon", targets="all linear and conv",
                  rank_dropout=0.3, dropout=0.1)
    _, plain = run("flux", settings(output_name="plain", **common))
    _, ckpt = run("flux", settings(output_name="ckpt", gradient_checkpointing=True, **common))
    a, b = master(plain.saved.path), master(ckpt.saved.path)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if k.endswith(".up"))
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_training_rope_equals_the_hosts_and_has_a_backward_pass():
    """The rotary embedding training swaps in computes what the host's own does (a Python function on 0.3.75,
    a ``comfy_kitchen`` kernel without a backward pass on 0.8.0)."""
    import comfy.ldm.flux.math as flux_math

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 6, 8, generator=gen, requires_grad=True)
    pe = flux_math.rope(torch.arange(6.0).reshape(1, 6), 8, 10000).unsqueeze(1)
    with torch.no_grad():
        assert torch.allclose(train_host.rope_pairs(x, pe), flux_math.apply_rope1(x, pe), atol=1e-6)
    with train_host.differentiable_ops():
        flux_math.apply_rope1(x, pe).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_dora_on_8_bit_weights_is_refused_before_training(loras):
    _, clip, vae = family("flux")
    with torch.inference_mode():
        model = small_family_model("flux", weight_format="fp8_e4m3fn")
        plan = prepare(model, settings(dora=True), images=pattern_images(), captions="a\nb", clip=clip)
        with pytest.raises(LoraLabError, match="8-bit weights"):
            train_and_report(model, clip, vae, plan)
    assert list(loras.iterdir()) == []
