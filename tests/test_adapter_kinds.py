"""Every adapter kind against independent references, one parametrised test per question.

* The merged weight against core ComfyUI's own ``comfy/weight_adapter`` math (``comfy.lora.load_lora`` +
  ``comfy.lora.calculate_weight``) at strength 1, for every kind core applies, with the key map's
  transform function where core's map carries one.
* OFT, BOFT and GLoRA against LyCORIS' own modules built from the same tensors
  (``make_module_from_state_dict`` -> ``get_merged_weight``), including OFT's ``rescale`` and an active
  constraint, where core reads the file differently (named in ``lora_ops.adapters.oft``).
* The bypass forward ``dW x`` against the merged layer ``(W + dW) x - W x`` for every kind x layer kind x
  dtype, with a per-dtype tolerance table (the test shape of LyCORIS' own functional tests).
* Parse -> write back -> parse is lossless for every kind.
"""

from __future__ import annotations

import math

import pytest
import torch

from testkit.host import import_pack

import_pack()  # one identity for the pack's modules: lora_lab.*, as ComfyUI loads it
from lora_lab.lora_ops.adapters import KINDS, effective_delta  # noqa: E402
from lora_lab.lora_ops.errors import LoraFileError  # noqa: E402
from lora_lab.lora_ops.formats import parse_lora  # noqa: E402
from lora_lab.lora_ops.keymap import Target  # noqa: E402
from lora_lab.lora_ops.layers import LayerCall  # noqa: E402
from lora_lab.lora_ops.patching import PatchEntry, apply_patches, restore_weights  # noqa: E402

NAME = "m"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rnd(*shape, seed: int, std: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed)) * std


def file_of(kind: str, shape: tuple[int, ...], seed: int = 0, *, rescale: bool = False,
            alpha: float | None = None) -> dict[str, torch.Tensor]:
    """A file's tensors for one module of ``kind`` fitting a weight of ``shape``."""
    out, inner = shape[0], math.prod(shape[1:])
    k = shape[2:]
    r = 3
    t: dict[str, torch.Tensor] = {}
    if kind == "lora":
        t = {"lora_up.weight": rnd(out, r, *[1] * len(k), seed=seed), "lora_down.weight": rnd(r, *shape[1:], seed=seed + 1)}
    elif kind == "locon_tucker":
        t = {"lora_up.weight": rnd(out, r, 1, 1, seed=seed), "lora_down.weight": rnd(r, shape[1], 1, 1, seed=seed + 1),
             "lora_mid.weight": rnd(r, r, *k, seed=seed + 2)}
    elif kind == "loha":
        t = {"hada_w1_a": rnd(out, r, seed=seed), "hada_w1_b": rnd(r, inner, seed=seed + 1),
             "hada_w2_a": rnd(out, r, seed=seed + 2), "hada_w2_b": rnd(r, inner, seed=seed + 3)}
    elif kind == "lokr":
        t = {"lokr_w1": rnd(2, 2, seed=seed), "lokr_w2_a": rnd(out // 2, r, seed=seed + 1),
             "lokr_w2_b": rnd(r, inner // 2, seed=seed + 2)}
    elif kind == "glora":
        t = {"a1.weight": rnd(shape[1], r, *[1] * len(k), seed=seed), "a2.weight": rnd(r, shape[1], *[1] * len(k), seed=seed + 1),
             "b1.weight": rnd(out, r, *[1] * len(k), seed=seed + 2), "b2.weight": rnd(r, *shape[1:], seed=seed + 3)}
    elif kind == "oft":
        t = {"oft_blocks": rnd(out // 4, 4, 4, seed=seed, std=0.3)}
        if rescale:
            t["rescale"] = 1 + rnd(out, *[1] * (len(shape) - 1), seed=seed + 1, std=0.1)
    elif kind == "boft":
        t = {"oft_blocks": rnd(2, out // 4, 4, 4, seed=seed, std=0.3)}
        if rescale:
            t["rescale"] = 1 + rnd(out, *[1] * (len(shape) - 1), seed=seed + 1, std=0.1)
    elif kind == "full":
        t = {"diff": rnd(*shape, seed=seed, std=0.05)}
    elif kind == "set":
        t = {"set_weight": rnd(*shape, seed=seed)}
    else:
        raise ValueError(kind)
    tensors = {f"{NAME}.{key}": v for key, v in t.items()}
    if alpha is not None:
        tensors[f"{NAME}.alpha"] = torch.tensor(float(alpha))
    elif kind in ("lora", "locon_tucker", "loha", "lokr", "glora"):
        tensors[f"{NAME}.alpha"] = torch.tensor(2.0)
    elif kind in ("oft", "boft"):  # LyCORIS always saves the constraint; core's BOFT fails without it
        tensors[f"{NAME}.alpha"] = torch.tensor(0.0)
    return tensors


CONV = (8, 4, 3, 3)
LINEAR = (8, 6)
KIND_SHAPES = [("lora", LINEAR), ("lora", CONV), ("locon_tucker", CONV), ("loha", LINEAR), ("loha", CONV),
               ("lokr", LINEAR), ("glora", LINEAR), ("glora", CONV), ("oft", LINEAR), ("oft", CONV),
               ("boft", LINEAR), ("full", LINEAR), ("full", CONV), ("set", LINEAR)]


def ours(tensors: dict[str, torch.Tensor], base: torch.Tensor, strength: float = 1.0, transform=None) -> torch.Tensor:
    """LoRA Lab's merged weight through the real merge path (``apply_patches``, CPU swap)."""
    parsed = parse_lora(tensors)
    adapter = parsed.modules[NAME]
    weights = {"w": base.clone()}
    backup = apply_patches(weights, [PatchEntry(Target("w", None, transform), adapter, strength, NAME)],
                           in_place=False)
    merged = weights["w"].clone()
    restore_weights(weights, backup)
    assert torch.equal(weights["w"], base)  # restored bit for bit
    return merged


def core(tensors: dict[str, torch.Tensor], base: torch.Tensor, strength: float = 1.0, function=None) -> torch.Tensor:
    """Core ComfyUI's merged weight: its loader's patch for the module, its calculate_weight."""
    import comfy.lora

    target = ("w", None, function) if function is not None else "w"
    patches = comfy.lora.load_lora(tensors, {NAME: target}, log_missing=False)
    assert len(patches) == 1, patches
    (key, patch), = patches.items()
    return comfy.lora.calculate_weight([(strength, patch, 1.0, None, function)], base.clone(), "w")


@pytest.mark.parametrize("kind,shape", KIND_SHAPES, ids=lambda v: str(v))
def test_merge_equals_core_comfyui_at_strength_1(kind, shape):
    base = rnd(*shape, seed=99, std=1.0)
    tensors = file_of(kind, shape)
    torch.testing.assert_close(ours(tensors, base), core(tensors, base), rtol=1e-5, atol=1e-5)


def test_norm_diffs_equal_core():
    base_w, base_b = 1 + rnd(8, seed=1), rnd(8, seed=2)
    tensors = {f"{NAME}.w_norm": rnd(8, seed=3), f"{NAME}.b_norm": rnd(8, seed=4)}
    parsed = parse_lora(tensors)
    assert parsed.modules[NAME].describe() == "norm" and NAME in parsed.bias_diffs
    import comfy.lora

    patches = comfy.lora.load_lora(tensors, {NAME: "w.weight"}, log_missing=False)
    weights = {"w.weight": base_w.clone(), "w.bias": base_b.clone()}
    entries = [PatchEntry(Target("w.weight"), parsed.modules[NAME], 0.7, NAME),
               PatchEntry(Target("w.weight"), parsed.bias_diffs[NAME], 0.7, NAME, is_bias=True)]
    apply_patches(weights, entries, in_place=False)
    for key, base in (("w.weight", base_w), ("w.bias", base_b)):
        expect = comfy.lora.calculate_weight([(0.7, patches[key], 1.0, None, None)], base.clone(), key)
        torch.testing.assert_close(weights[key], expect, rtol=1e-6, atol=1e-6)


def test_key_map_transform_is_applied_like_core():
    """diffusers' ``norm_out.linear`` maps onto ComfyUI's modulation with ``swap_scale_shift``: the
    delta's two halves swap. Core applies the function; LoRA Lab must too (it used to drop it)."""
    import comfy.utils

    shape = (8, 6)
    base = rnd(*shape, seed=5, std=1.0)
    tensors = file_of("lora", shape, seed=6)
    fn = comfy.utils.swap_scale_shift
    merged = ours(tensors, base, 0.8, transform=fn)
    torch.testing.assert_close(merged, core(tensors, base, 0.8, function=fn), rtol=1e-5, atol=1e-5)
    plain = ours(tensors, base, 0.8)
    assert not torch.allclose(merged, plain)  # the transform matters for this delta


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr", "full", "glora", "oft", "boft", "set"])
def test_strength_is_linear_for_every_kind(kind):
    shape = LINEAR if kind != "boft" else (8, 6)
    base = rnd(*shape, seed=7, std=1.0)
    tensors = file_of(kind, shape)
    d1 = ours(tensors, base, 1.0) - base
    torch.testing.assert_close(ours(tensors, base, 0.3) - base, 0.3 * d1, rtol=1e-4, atol=1e-5)
    assert torch.equal(ours(tensors, base, 0.0), base)


def _lycoris_merged(kind: str, tensors: dict[str, torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    layer = torch.nn.Linear(base.shape[1], base.shape[0], bias=False) if base.dim() == 2 else \
        torch.nn.Conv2d(base.shape[1], base.shape[0], base.shape[2:], bias=False)
    with torch.no_grad():
        layer.weight.copy_(base)
    get = lambda k: tensors.get(f"{NAME}.{k}")  # noqa: E731
    alpha = float(get("alpha")) if get("alpha") is not None else 0.0
    with torch.no_grad():
        return _lycoris_module(kind, layer, get, alpha).get_merged_weight(multiplier=1.0)[0].reshape(base.shape).float()


def _lycoris_module(kind, layer, get, alpha):
    from lycoris.modules.boft import ButterflyOFTModule
    from lycoris.modules.diag_oft import DiagOFTModule
    from lycoris.modules.glora import GLoRAModule

    if kind == "oft":
        return DiagOFTModule.make_module_from_state_dict(NAME, layer, get("oft_blocks"), get("rescale"), alpha)
    if kind == "boft":
        return ButterflyOFTModule.make_module_from_state_dict(NAME, layer, get("oft_blocks"), get("rescale"), alpha)
    module = GLoRAModule.make_module_from_state_dict(NAME, layer, get("a1.weight"), get("a2.weight"),
                                                         get("b1.weight"), get("b2.weight"), None, alpha)
    return module


@pytest.mark.parametrize("kind,shape,rescale,alpha", [
    ("oft", (16, 6), False, 0.0), ("oft", (16, 4, 3, 3), True, 0.0), ("oft", (16, 6), True, 0.01),
    ("boft", LINEAR, False, 0.0), ("boft", LINEAR, True, 0.0), ("boft", LINEAR, False, 0.01),
    ("glora", LINEAR, False, None), ("glora", CONV, False, None)], ids=lambda v: str(v))
def test_merge_equals_lycoris_module(kind, shape, rescale, alpha):
    # (OFT blocks of 4 on 16 rows: the factorisation LyCORIS itself picks for that size)
    base = rnd(*shape, seed=11, std=1.0)
    tensors = file_of(kind, shape, rescale=rescale, alpha=alpha)
    torch.testing.assert_close(ours(tensors, base), _lycoris_merged(kind, tensors, base), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rescale,alpha", [(True, 0.0), (False, 0.01)])
def test_core_reads_rescaled_or_constrained_oft_differently(rescale, alpha):
    """Where core differs (rescale dropped; constraint taken as alpha, not alpha * out), LoRA Lab follows
    the file's maker: this pins the difference the README names, so a change in either is noticed."""
    base = rnd(*LINEAR, seed=12, std=1.0)
    tensors = file_of("oft", LINEAR, rescale=rescale, alpha=alpha)
    assert not torch.allclose(ours(tensors, base), core(tensors, base), rtol=1e-4, atol=1e-5)


TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind,shape", KIND_SHAPES, ids=lambda v: str(v))
def test_bypass_forward_equals_merged_layer(kind, shape, dtype):
    base = rnd(*shape, seed=21, std=0.5)
    parsed = parse_lora(file_of(kind, shape))
    adapter = parsed.modules[NAME]
    if len(shape) == 4:
        layer = LayerCall("conv", (1, 1), (1, 1), (1, 1), 1)
        x = rnd(2, shape[1], 6, 6, seed=22, std=1.0)
    else:
        layer = LayerCall("linear")
        x = rnd(2, 5, shape[1], seed=22, std=1.0)
    delta = effective_delta(adapter, shape, base=base)
    expect = layer.apply(x, base + delta) - layer.apply(x, base)
    got = adapter.bypass(x.to(dtype), layer, torch.Size(shape), base=base.to(dtype))
    torch.testing.assert_close(got.float(), expect, **TOLERANCE[dtype])


@pytest.mark.parametrize("kind,shape", KIND_SHAPES, ids=lambda v: str(v))
def test_parse_write_parse_is_lossless(kind, shape):
    tensors = file_of(kind, shape, rescale=kind in ("oft", "boft"))
    adapter = parse_lora(tensors).modules[NAME]
    again = parse_lora(adapter.file_tensors(NAME)).modules[NAME]
    assert type(again) is type(adapter)
    base = rnd(*shape, seed=31)
    torch.testing.assert_close(effective_delta(again, shape, base=base), effective_delta(adapter, shape, base=base),
                               rtol=0, atol=0)


def test_every_kind_is_covered():
    covered = {type(parse_lora(file_of(k, s)).modules[NAME]) for k, s in KIND_SHAPES}
    assert covered == set(KINDS)


@pytest.mark.parametrize("bad,match", [
    ({"m.lora_up.weight": torch.zeros(4, 2), "m.lora_down.weight": torch.zeros(3, 5)}, "rank"),
    ({"m.lora_up.weight": torch.zeros(4, 0), "m.lora_down.weight": torch.zeros(0, 5)}, "rank 0"),
    ({"m.lora_up.weight": torch.zeros(4, 2), "m.lora_down.weight": torch.zeros(2, 5), "m.alpha": torch.tensor(float("nan"))}, "alpha"),
    ({"m.lora_up.weight": torch.zeros(4, 2), "m.lora_down.weight": torch.zeros(2, 5), "m.alpha": torch.tensor(float("inf"))}, "alpha"),
    ({"m.lora_up.weight": torch.zeros(4, 2), "m.lora_down.weight": torch.zeros(2, 5), "m.alpha": torch.zeros(0)}, "alpha"),
    ({"m.oft_blocks": torch.zeros(2, 3, 4)}, "square"),
    ({"m.hada_w1_a": torch.zeros(4, 2), "m.hada_w1_b": torch.zeros(3, 5), "m.hada_w2_a": torch.zeros(4, 2),
      "m.hada_w2_b": torch.zeros(2, 5)}, "ranks"),
])
def test_malformed_layers_are_named(bad, match):
    with pytest.raises(LoraFileError, match=match) as err:
        parse_lora(bad)
    assert "'m'" in str(err.value)


@pytest.mark.parametrize("kind", ["lora_dora", "oft", "glora"])
def test_base_dependent_kinds_through_a_transform_work_in_the_files_layout(kind):
    """A DoRA/OFT/GLoRA layer reached through ``swap_scale_shift`` (diffusers' ``norm_out.linear``): its
    factors, magnitude and rotations are in the file's row order. Applying it to the weight as the file
    sees it (rows swapped) and swapping the result back must equal LoRA Lab's merge through the transform
    (core applies the function only to the delta and normalises/rotates in the wrong order)."""
    import comfy.utils

    fn = comfy.utils.swap_scale_shift
    shape = (16, 6)
    base = rnd(*shape, seed=41, std=1.0)
    if kind == "lora_dora":
        tensors = file_of("lora", shape, seed=42)
        tensors[f"{NAME}.dora_scale"] = 1 + rnd(16, 1, seed=43, std=0.1)
    else:
        tensors = file_of(kind, shape, seed=42)
    through = ours(tensors, base, 0.7, transform=fn)
    in_file_layout = ours(tensors, fn(base), 0.7)
    torch.testing.assert_close(through, fn(in_file_layout), rtol=1e-5, atol=1e-6)
