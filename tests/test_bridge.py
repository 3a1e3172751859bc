"""What the bridge keeps between loads so that a strength change re-plans cheaply, and that what it
keeps never goes stale."""

from __future__ import annotations

import pytest
import torch

from testkit import fixtures, models
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops import keymap  # noqa: E402
from lora_lab.nodes import bridge  # noqa: E402
from lora_lab.nodes.loader import LoraLabLoader  # noqa: E402


@pytest.fixture(scope="module")
def fx():
    return fixtures.build("sd15")


def test_key_index_is_built_once_per_model_and_rebuilt_when_its_keys_change(fx, tmp_path, monkeypatch):
    (tmp_path / "k.safetensors").write_bytes(fx["kohya"].path.read_bytes())
    built = []
    real_init = keymap.KeyIndex.__init__

    def counting_init(self, key_map):
        built.append(len(key_map))
        real_init(self, key_map)

    monkeypatch.setattr(keymap.KeyIndex, "__init__", counting_init)
    model, clip = models.small_sd15()
    with use_model_dirs(loras_dir=tmp_path):
        reports = [LoraLabLoader().load(model, "k.safetensors", s, s, clip=clip)["result"][2] for s in (1.0, 0.5)]
        assert len(built) == 2  # the UNet's and the text encoders' indexes, once, for both strengths
        assert "targets: 354 of 354 applied (model 282 at strength 1," in reports[0]
        assert "targets: 354 of 354 applied (model 282 at strength 0.5" in reports[1]
        # a model whose parameter keys differ (another structure) gets its own index
        model.model.diffusion_model.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
        LoraLabLoader().load(model, "k.safetensors", 1.0, 1.0, clip=clip)
        assert len(built) == 3


def test_parameter_walk_finds_what_get_parameter_finds():
    model, _ = models.small_sd15()
    root = model.model
    for key, param in root.named_parameters():
        assert bridge._parameter(root, key) is param is root.get_parameter(key)
    with pytest.raises(AttributeError):
        bridge._parameter(root, "diffusion_model.no_such_module.weight")


def _bits(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone().view(torch.int16 if p.element_size() == 2 else torch.int32)
            for k, p in module.named_parameters()}


def _differing(module: torch.nn.Module, expected: dict[str, torch.Tensor]) -> list[str]:
    now = _bits(module)
    return [k for k in expected if not torch.equal(now[k], expected[k])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_clones_strength_changes_and_core_patches_share_one_module_bit_exactly(fx, dtype):
    """Several patchers over one torch module, loaded in turn as ComfyUI does (no unload between
    them): each load leaves exactly the weights a fresh load of that patcher gives, and unloading
    leaves the original bits. Covers a strength change, a clone made while its parent is injected,
    core LoraLoader patches under ours, and a partial unload while injected."""
    import comfy.model_management as mm
    import comfy.sd

    from lora_lab.lora_ops import load_lora
    from lora_lab.nodes.planning import apply_lora

    mm.unload_all_models()
    model, _ = models.small_sd15(dtype)
    module = model.model
    original = _bits(module)
    lora = load_lora(fx["kohya"].path)
    a = apply_lora(model, None, lora, 1.0, 0.0).model
    b = apply_lora(model, None, lora, 0.4, 0.0).model
    core_under, _ = comfy.sd.load_lora_for_models(model, None, fx["loha"].state_dict(), 0.8, 0.0)
    d = apply_lora(core_under, None, lora, 0.7, 0.0).model  # core's patches, then LoRA Lab's on top
    e = apply_lora(model, None, lora, 0.7, 0.0).model

    fresh = {}
    for name, patcher in (("a", a), ("b", b), ("d", d), ("e", e)):
        mm.load_models_gpu([patcher])
        fresh[name] = _bits(module)
        mm.unload_all_models()
        assert _differing(module, original) == [], f"unloading {name} left changed weights"
    assert _differing(module, fresh["a"]) != [] and _differing(module, fresh["d"]) != []
    assert len(_differing(module, fresh["b"])) == len(_differing(module, fresh["a"]))
    assert any(not torch.equal(fresh["d"][k], fresh["e"][k]) for k in original), "core's patches were not applied"

    try:
        mm.load_models_gpu([a])
        c = a.clone()  # made while ``a`` is injected: must inject for itself once ``a`` is unloaded
        mm.unload_all_models()
        for name, patcher in (("a", c), ("b", b), ("a", c), ("d", d), ("a", a), ("b", b), ("d", d), ("a", a)):
            mm.load_models_gpu([patcher])
            assert _differing(module, fresh[name]) == [], f"loading {name} after another patcher"
        a.partially_unload(a.offload_device, memory_to_free=1 << 40)  # ComfyUI ejects and re-injects around it
        assert _differing(module, fresh["a"]) == []
    finally:
        mm.unload_all_models()
    assert _differing(module, original) == []
