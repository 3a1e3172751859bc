"""Block weights: block maps against real ComfyUI weight-key lists, the syntax, dialects, presets, errors.

References are independent of ``lora_ops.blocks``: key lists come from ComfyUI's own model classes
(the small SD1.5/SDXL models of ``testkit.models``, Flux/SD3/WAN built on the meta device), the
diffusers-to-LDM map from ``comfy.utils.unet_to_diffusers``, the vector orders and presets are written
out here from the LDM numbering of the UNet's blocks.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit import models
from testkit.host import import_pack
from testkit.inspire_reference import inspire_ratios

pack = import_pack()
from lora_lab.lora_ops import blocks, presets  # noqa: E402
from lora_lab.lora_ops.errors import LoraLabError  # noqa: E402
from lora_lab.lora_ops.presets import DOCUMENTED_VECTORS  # noqa: E402

BlockWeightsError = blocks.BlockWeightsError
parse = blocks.parse_block_weights


def nums(prefix, n):
    return [f"{prefix}{i:02d}" for i in range(n)]


SD26 = ["BASE", *nums("IN", 12), "M00", *nums("OUT", 12)]
SD17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *nums("OUT", 12)[3:]]
SD27 = ["BASE", *nums("IN", 12)[1:], "M00.0", "M00.1", "M00.2", *nums("OUT", 12)]
XL20 = ["BASE", *nums("IN", 9), "M00", *nums("OUT", 9)]
XL12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", *nums("OUT", 6)]
XL21 = ["BASE", *nums("IN", 9)[1:], "M00.0", "M00.1", "M00.2", *nums("OUT", 9)]
FLUX58 = ["BASE", *nums("D", 19), *nums("S", 38)]
FLUX61 = ["CLIP_L", "T5", "IN", *nums("D", 19), *nums("S", 38), "OUT"]


# --- real key lists -------------------------------------------------------------------------------

def _patcher_keys(build):
    patcher, clip = build()
    unet = [k for k in patcher.model.state_dict() if k.startswith("diffusion_model.")]
    te = list(clip.cond_stage_model.state_dict())
    return unet, te


@pytest.fixture(scope="module")
def sd15_keys():
    return _patcher_keys(models.small_sd15)


@pytest.fixture(scope="module")
def sdxl_keys():
    return _patcher_keys(models.small_sdxl)


def _meta_keys(factory):
    with torch.device("meta"):
        module = factory()
    return ["diffusion_model." + k for k in module.state_dict()]


@pytest.fixture(scope="module")
def flux_keys():
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    from testkit.host import flux_params

    params = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
                  mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                  theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
    return _meta_keys(lambda: Flux(operations=comfy.ops.disable_weight_init, **flux_params(params)))


@pytest.fixture(scope="module")
def sd3_keys():
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    return _meta_keys(lambda: MMDiT(
        operations=comfy.ops.disable_weight_init, depth=24, pos_embed_max_size=192, adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear",
                                 "params": {"in_features": 4096, "out_features": 1536}},
        patch_size=2, in_channels=16, num_patches=36864, pos_embed_scaling_factor=None))


@pytest.fixture(scope="module")
def wan_keys():
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    return _meta_keys(lambda: WanModel(dim=64, ffn_dim=128, num_heads=4, num_layers=5, text_dim=64,
                                       freq_dim=32, operations=comfy.ops.disable_weight_init))


def reference_sd_block(key: str) -> str:
    """Independent reading of an LDM UNet key: the integer after input_blocks./output_blocks."""
    parts = key.split(".")
    assert parts[0] == "diffusion_model"
    if parts[1] == "input_blocks":
        return f"IN{int(parts[2]):02d}"
    if parts[1] == "output_blocks":
        return f"OUT{int(parts[2]):02d}"
    if parts[1] == "middle_block":
        return "M00"
    return "BASE"


# --- block maps -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fam,expected", [("sd1", SD26), ("sdxl", XL20)])
def test_unet_block_map_matches_real_keys(fam, expected, sd15_keys, sdxl_keys):
    unet, _ = sd15_keys if fam == "sd1" else sdxl_keys
    got: dict[str, list[str]] = {}
    for key in unet:
        block = blocks.block_of(fam, key)
        assert block == reference_sd_block(key), key
        got.setdefault(block, []).append(key)
    assert set(got) == set(expected), "every block gets keys and nothing lands outside the map"
    assert all(k.split(".")[2] == "1" for k in got["IN01"])
    if fam == "sd1":
        assert all(k.split(".")[2] == "10" for k in got["IN10"])
        assert got["IN10"] and not set(got["IN10"]) & set(got["IN01"])
    assert "diffusion_model.input_blocks.0.0.weight" in got["IN00"]  # conv_in is IN00
    assert "diffusion_model.time_embed.0.weight" in got["BASE"]
    assert "diffusion_model.out.2.weight" in got["BASE"]


@pytest.mark.parametrize("fam", ["sd1", "sdxl"])
def test_diffusers_names_map_to_the_same_blocks(fam, sd15_keys, sdxl_keys):
    unet_cfg = models.small_unet_config("sd15" if fam == "sd1" else "sdxl")
    mapping = models.diffusers_key_map(unet_cfg)
    assert mapping
    checked = 0
    for diffusers_key, ldm_key in mapping.items():
        if not re.match(r"(down_blocks|mid_block|up_blocks|conv_in)\.", diffusers_key):
            continue
        assert blocks.block_of(fam, "unet." + diffusers_key) == blocks.block_of(fam, ldm_key), diffusers_key
        checked += 1
    assert checked > 100


def test_unet_selectors_match_by_part(sd15_keys):
    unet, _ = sd15_keys
    w = parse("IN04.attn=0, IN04.mlp=0.5, IN04.res=0.25, M00.2=3", "sd1")
    for key in unet:
        f = w.factor(key)
        if ".input_blocks.4." in key:
            if ".attn1." in key or ".attn2." in key:
                assert f == 0, key
            elif ".ff." in key:
                assert f == 0.5, key
            elif re.search(r"\.4\.0\.(in_layers|emb_layers|out_layers|skip_connection)\.", key):
                assert f == 0.25, key
            else:
                assert f == 1, key
        elif ".middle_block.2." in key:
            assert f == 3
        else:
            assert f == 1, key


def test_text_encoder_entries_follow_base_unless_named(sdxl_keys):
    _, te = sdxl_keys
    w = parse("BASE=0.3, CLIP_G=0.5", "sdxl")
    for key in te:
        assert w.factor(key) == (0.5 if key.startswith("clip_g.") else 0.3), key
    assert blocks.block_of("sdxl", te[0]) in ("CLIP_L", "CLIP_G")
    assert w.vector["CLIP_L"] == 0.3 and w.vector["CLIP_G"] == 0.5
    both = parse("CLIP=0", "sdxl")
    assert all(both.factor(k) == 0 for k in te) and both.vector["BASE"] == 1
    assert blocks.block_of("sd1", "clip_g.transformer.x.weight") == "BASE"


def test_flux_block_map(flux_keys):
    got: dict[str, set[str]] = {}
    for key in flux_keys:
        got.setdefault(blocks.block_of("flux", key), set()).add(key)
    assert set(got) == {"IN", "OUT", *nums("D", 19), *nums("S", 38)}
    assert "diffusion_model.img_in.weight" in got["IN"]
    assert "diffusion_model.guidance_in.in_layer.weight" in got["IN"]
    assert "diffusion_model.final_layer.linear.weight" in got["OUT"]
    assert all(".double_blocks.1." in k for k in got["D01"])
    assert all(".single_blocks.12." in k for k in got["S12"])
    w = parse("D03.img.attn=0, D03.txt=0.5, D04.mlp=2", "flux")
    for key in flux_keys:
        f = w.factor(key)
        if ".double_blocks.3.img_attn." in key:
            assert f == 0
        elif ".double_blocks.3.txt_" in key:
            assert f == 0.5
        elif re.search(r"\.double_blocks\.4\.(img|txt)_mlp\.", key):
            assert f == 2
        else:
            assert f == 1, key
    assert blocks.block_of("flux", "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight") == "T5"


def test_general_rule_gives_flux_names_and_finds_new_dits(flux_keys, wan_keys, sd3_keys):
    for key in flux_keys:
        block = blocks.block_of("flux", key)
        if block[0] in "DS":
            assert blocks.block_of("some_new_dit", key) == block
    wan_blocks = blocks.family_blocks("wan21", model_keys=wan_keys)
    assert wan_blocks == ["BASE", "CLIP_L", "CLIP_G", "CLIP_H", "T5", *nums("B", 5)]
    for key in wan_keys:
        m = re.match(r"diffusion_model\.blocks\.(\d+)\.", key)
        assert blocks.block_of("wan21", key) == (f"B{int(m.group(1)):02d}" if m else "BASE")
    w = parse("B01-B03=0.5, B02.attn=0, *.mlp=0.25", "wan21", model_keys=wan_keys)
    attn_key = next(k for k in wan_keys if k.startswith("diffusion_model.blocks.2.self_attn.q."))
    ffn_key = next(k for k in wan_keys if k.startswith("diffusion_model.blocks.2.ffn."))
    assert w.factor(attn_key) == 0
    assert w.factor(ffn_key) == 0.25  # the later *.mlp entry wins over B01-B03=0.5
    assert parse("B00=1, B01=2, B02=3", "wan21").factor("diffusion_model.blocks.1.ffn.0.weight") == 2
    named = {"transformer_blocks": "TB", "layers": "L", "noise_refiner": "NR", "joint_blocks": "J",
             "single_transformer_blocks": "STB"}
    for container, prefix in named.items():
        assert blocks.block_of("x", f"diffusion_model.{container}.7.attn.to_q.weight") == f"{prefix}07"
    sd3 = blocks.family_blocks("sd3", model_keys=sd3_keys)
    assert sd3[-24:] == nums("J", 24) and len(sd3) == 3 + 24 + 1
    j = parse("J03.txt=0, J04=0.5", "sd3", model_keys=sd3_keys)
    for key in sd3_keys:
        expect = 0 if ".joint_blocks.3.context_block." in key else 0.5 if ".joint_blocks.4." in key else 1
        assert j.factor(key) == expect, key


# --- dialects -------------------------------------------------------------------------------------

def _named_equivalent(order, values, all_blocks, fill_zero=True, extra=()):
    entries = [f"{name}={v!r}" for name, v in zip(order, values)]
    listed = {n.split(".")[0] for n in order}
    if fill_zero:
        entries += [f"{b}=0" for b in all_blocks if b not in listed]
    entries += list(extra)
    # block-level entries first, then the part entries (M00.0...), as a user would write them
    return ", ".join(sorted(entries, key=lambda e: "." in e.split("=")[0]))


@pytest.mark.parametrize("fam,order", [("sd1", SD17), ("sd1", SD26), ("sd1", SD27), ("sd2", SD26),
                                       ("sdxl", XL12), ("sdxl", XL20), ("sdxl", XL21)])
def test_unet_dialects_equal_named_syntax(fam, order, sd15_keys, sdxl_keys):
    unet, te = sd15_keys if fam in ("sd1", "sd2") else sdxl_keys
    gen = torch.Generator().manual_seed(len(order))
    values = [round(float(v), 3) for v in torch.rand(len(order), generator=gen) * 2 - 0.5]
    all_blocks = SD26 if fam in ("sd1", "sd2") else XL20
    order_named = list(order)
    if "M00.1" in order:  # M00.1 is the transformer; the block's own value follows it
        values.append(values[order.index("M00.1")])
        order_named.append("M00")
    vec = parse(", ".join(repr(v) for v in values[:len(order)]), fam)
    named = parse(_named_equivalent(order_named, values, all_blocks), fam)
    for key in unet + te:
        assert vec.factor(key) == named.factor(key), key
    assert vec.vector == named.vector


@pytest.mark.parametrize("order", [FLUX58, FLUX61])
def test_flux_dialects_equal_named_syntax(order, flux_keys):
    values = [round(0.01 * i - 0.2, 2) for i in range(len(order))]
    te = ["clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
          "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"]
    vec = parse(",".join(map(repr, values)), "flux")
    if order is FLUX58:  # that tool counts img_in, final_layer and the text encoders as BASE
        extra = [f"IN={values[0]!r}", f"OUT={values[0]!r}"]
        named = parse(_named_equivalent(order, values, [], extra=extra), "flux")
    else:
        named = parse(_named_equivalent(order, values, ["BASE"]), "flux")
    for key in flux_keys + te:
        assert vec.factor(key) == named.factor(key), key
    if order is FLUX61:
        assert vec.factor(te[0]) == values[0] and vec.factor(te[1]) == values[1]


def test_vector_fill_rule_is_reported():
    w = parse(",".join(["1"] * 17), "sd1")
    assert w.vector["IN03"] == 0 and w.vector["IN04"] == 1
    assert any("IN00, IN03, IN06, IN09-IN11, OUT00-OUT02" in n and "set to 0" in n for n in w.notes)
    kept = parse(",".join(["1"] * 17) + ", IN03=1", "sd1")
    assert kept.vector["IN03"] == 1


# --- presets --------------------------------------------------------------------------------------

def _neighbour_fill(order, values, all_blocks):
    """Independent reference for the presets: a block with no position takes its section's nearest
    listed block before it, or after it when none comes before."""
    known = dict(zip(order, values))
    out = {}
    for name in all_blocks:
        if name in known:
            out[name] = known[name]
            continue
        section = re.match(r"[A-Z]+", name).group(0)
        same = [b for b in all_blocks if re.match(r"[A-Z]+", b).group(0) == section]
        i = same.index(name)
        before = [b for b in same[:i] if b in known]
        after = [b for b in same[i + 1:] if b in known]
        out[name] = known[before[-1]] if before else known[after[0]]
    return out


@pytest.mark.parametrize("name,length", sorted(DOCUMENTED_VECTORS))
def test_presets_resolve_to_documented_vectors(name, length, sd15_keys, sdxl_keys):
    fam, order, all_blocks = ("sd1", SD17, SD26) if length == 17 else ("sdxl", XL12, XL20)
    unet, te = sd15_keys if fam == "sd1" else sdxl_keys
    documented = DOCUMENTED_VECTORS[(name, length)]
    preset = parse(name, fam)
    raw = parse(",".join(map(str, documented)), fam)
    for pos, value in zip(order, documented):
        assert preset.vector[pos] == value == raw.vector[pos]
    expected = _neighbour_fill(order, documented, all_blocks)
    for key in unet + te:
        block = reference_sd_block(key) if key.startswith("diffusion_model.") else "BASE"
        assert preset.factor(key) == expected[block], key


def test_all_is_identity_and_none_is_zero(flux_keys, sd15_keys):
    unet, te = sd15_keys
    for fam, keys in (("sd1", unet + te), ("flux", flux_keys), ("sdxl", unet), ("my_dit", flux_keys)):
        assert all(parse("ALL", fam).factor(k) == 1 for k in keys)
        assert parse("ALL", fam).is_identity and parse("", fam).is_identity
        assert all(parse("NONE", fam).factor(k) == 0 for k in keys)
        assert all(parse("ALL0.5", fam).factor(k) == 0.5 for k in keys)


def test_flux_presets(flux_keys):
    double, single = parse("DOUBLE", "flux"), parse("SINGLE", "flux")
    for key in flux_keys:
        b = blocks.block_of("flux", key)
        assert double.factor(key) == (0 if b.startswith("S") and b != "S" else 1)
        assert single.factor(key) == (0 if b.startswith("D") else 1)


def test_preset_with_overrides_and_later_wins():
    w = parse("OUTALL, OUT05=0.5", "sd1")
    assert (w.vector["OUT05"], w.vector["OUT04"], w.vector["IN04"], w.vector["BASE"]) == (0.5, 1, 0, 1)
    assert parse("OUT05=0.5, OUTALL", "sd1").vector["OUT05"] == 1  # a preset sets every block
    w = parse("IN04-IN08=0.5, IN06=2, *=0.1", "sd1")
    assert (w.vector["IN05"], w.vector["IN06"], w.vector["M00"], w.vector["BASE"]) == (0.5, 2, 0.1, 0.1)
    w = parse("IN05.attn=0, IN05=0.5", "sd1")
    assert w.factor("diffusion_model.input_blocks.5.1.transformer_blocks.0.attn1.to_q.weight") == 0.5
    assert parse("in4-in8=0.5", "sd1").vector["IN06"] == 0.5  # case and padding are free
    assert parse("IN05-OUT06=0", "sd1").vector["M00"] == 0  # ranges follow the block order


def test_describe_round_trips(sd15_keys, flux_keys):
    unet, te = sd15_keys
    for fam, text, keys in [("sd1", "IN04-IN08=0.5, M00=0, IN05.attn=0, BASE=0.2, CLIP_L=1", unet + te),
                            ("sd1", ",".join(str(i / 10) for i in range(27)), unet + te),
                            ("sd1", "MIDD, OUT03.mlp=-1, IN07.res=R", unet + te),
                            ("flux", "D00-D06=0.3, S*=0, D03.img.attn=2, T5=0.5", flux_keys),
                            ("flux", ",".join(["U"] * 61), flux_keys)]:
        w = parse(text, fam, seed=7)
        again = parse(w.describe(), fam)
        assert all(w.factor(k) == again.factor(k) for k in keys), text
    assert "# 27-value vector" in parse(",".join(["1"] * 27), "sd1").describe()


# --- values ---------------------------------------------------------------------------------------

def test_placeholders_random_and_negative_values():
    w = parse("IN04=A, IN05=B, IN06=-A, IN07=a, OUT00=-0.75", "sd1", a=0.8, b=-2)
    assert [w.vector[n] for n in ("IN04", "IN05", "IN06", "IN07", "OUT00")] == [0.8, -2, -0.8, 0.4, -0.75]
    r1 = parse("IN*=R, OUT*=U", "sd1", seed=5)
    r2 = parse("IN*=R, OUT*=U", "sd1", seed=5)
    r3 = parse("IN*=R, OUT*=U", "sd1", seed=6)
    assert r1.vector == r2.vector and r1.vector != r3.vector
    ins = [r1.vector[n] for n in nums("IN", 12)]
    outs = [r1.vector[n] for n in nums("OUT", 12)]
    assert len(set(ins)) == 12 and all(0 <= v < 1 for v in ins)  # one draw per block
    assert all(-1.5 <= v < 1.5 for v in outs)
    gen = torch.Generator().manual_seed(5)
    draws = torch.rand(24, generator=gen, dtype=torch.float64).tolist()
    assert ins == draws[:12] and outs == pytest.approx([-1.5 + 3 * d for d in draws[12:]])
    assert any("random values (seed 5)" in n for n in r1.notes)


# --- bad input: one per kind, each names the problem ------------------------------------------------

@pytest.mark.parametrize("text,fam,kwargs,needles", [
    ("IN12=0", "sd1", {}, ["Unknown block 'IN12'", "IN00-IN11", "OUT00-OUT11"]),
    ("XYZ9=1", "flux", {}, ["Unknown block", "D00-D18", "S00-S37"]),
    ("IN04=0.5.1", "sd1", {}, ["'0.5.1'", "not a number"]),
    ("IN04=abc", "sd1", {}, ["'abc'", "not a number"]),
    ("IN04=1e999", "sd1", {}, ["too large"]),
    ("IN04=", "sd1", {}, ["no weight"]),
    ("IN08-IN04=0.5", "sd1", {}, ["runs backwards", "IN04-IN08"]),
    ("D03=0", "sdxl", {}, ["Flux block syntax", "SDXL"]),
    ("IN04=0", "flux", {}, ["SD1.x/SD2.x/SDXL UNet block syntax", "Flux"]),
    ("IN10=0", "sdxl", {}, ["SD1.x/SD2.x block syntax", "IN00-IN08"]),
    ("J03=0", "sd1", {}, ["SD3 block syntax"]),
    (",".join(["1"] * 5), "sd1", {}, ["5 values", "17, 26, 27"]),
    (",".join(["1"] * 17), "sdxl", {}, ["17 values", "SD1.x", "12, 20, 21"]),
    (",".join(["1"] * 26), "flux", {}, ["26 values", "58, 61"]),
    ("IN04=A", "sd1", {}, ["needs the A input"]),
    ("IN04=b", "sd1", {"a": 1.0}, ["needs the B input"]),
    ("FOO", "sd1", {}, ["'FOO' is neither a preset", "OUTALL"]),
    ("INS", "sdxl", {}, ["INS is for SD1.x/SD2.x", "INALL"]),
    ("IN04", "sd1", {}, ["block name without a weight"]),
    ("S03.attn=0", "flux", {}, ["does not apply to S03", "single"]),
    ("IN05.img=0", "sd1", {}, ["does not apply to IN05", "attn"]),
    ("D03.img.txt=0", "flux", {}, ["exclude each other"]),
    ("IN04=1,5", "sd1", {}, ["stands alone", "0.5"]),
    ("IN04=1,,M00=0", "sd1", {}, ["Empty entry"]),
    ("IN04=1=2", "sd1", {}, ["more than one '='"]),
])
def test_bad_input_errors(text, fam, kwargs, needles):
    with pytest.raises(BlockWeightsError) as info:
        parse(text, fam, **kwargs)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert isinstance(info.value, LoraLabError) and info.value.fix


def test_bad_arguments():
    with pytest.raises(BlockWeightsError, match="must be text"):
        parse(None, "sd1")
    with pytest.raises(BlockWeightsError, match="finite number"):
        parse("IN04=A", "sd1", a=float("nan"))
    with pytest.raises(BlockWeightsError, match="seed"):
        parse("IN04=R", "sd1", seed="x")


# --- property tests -------------------------------------------------------------------------------

_ALPHABET = ["IN04", "in4", "OUT*", "*", "M00", "D03", "S12", "J01", "B02", "TB3", "BASE", "CLIP", "CLIP_G",
             "T5", "IN", "OUT", "ALL", "OUTALL", "INS", "DOUBLE", "MIDALL", "=", "-", ",", "\n", ".", "attn",
             "img", "txt", "mlp", "res", "0", "1", "2", "0.5", "-1", "1e3", "1e999", "A", "B", "a", "R", "U",
             "#", " ", "IN08-IN04", "IN05-OUT06", "D00-D18", "12", "99999999", "0000001", ":", ";"]


def _parse_or_error(text, fam, **kwargs):
    try:
        result = parse(text, fam, **kwargs)
    except BlockWeightsError:
        return None
    assert isinstance(result, blocks.BlockWeights)
    for value in result.vector.values():
        assert math.isfinite(value)
    result.describe()
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=80), fam=st.sampled_from(["sd1", "sdxl", "flux", "sd3", "new_dit", None]))
def test_any_text_gives_weights_or_our_error(text, fam):
    _parse_or_error(text, fam)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(_ALPHABET), max_size=25),
       fam=st.sampled_from(["sd1", "sdxl", "flux", "sd3", "new_dit"]),
       a=st.one_of(st.none(), st.floats(-10, 10)), seed=st.integers(-(2**70), 2**70))
def test_grammar_shaped_text_gives_weights_or_our_error(parts, fam, a, seed):
    _parse_or_error("".join(parts), fam, a=a, b=1.0, seed=seed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.floats(-3, 3, allow_nan=False).map(lambda v: round(v, 3)), min_size=1, max_size=62),
       fam=st.sampled_from(["sd1", "sdxl", "flux"]))
def test_vectors_of_any_length(values, fam):
    w = _parse_or_error(",".join(map(repr, values)), fam)
    assert (w is not None) == (len(values) in blocks.accepted_vector_lengths(fam))


# --- the applied table ----------------------------------------------------------------------------

def test_block_table(sd15_keys):
    unet, te = sd15_keys
    w = parse("IN04-IN08=0.5, M00=0, IN05.attn=0, OUT11=2, BASE=0.7", "sd1")
    lora_targets = [k for k in unet + te if k.endswith(".weight") and (".attn" in k or "self_attn" in k)
                    and not k.startswith("diffusion_model.output_blocks.11.")]
    pairs = [(k, w.factor(k) != 0) for k in lora_targets]
    table = blocks.block_table(w, pairs)
    rows = {line.split()[0]: line for line in table.splitlines()}
    expected_m00 = sum(1 for k in lora_targets if ".middle_block." in k)
    assert re.search(rf"^M00\s+0\s+{expected_m00}\s+0$", rows["M00"])
    assert "attn=0" in rows["IN05"]
    assert "not in this LoRA" in rows["OUT11"] and rows["OUT11"].split()[1] == "2"  # named, not touched
    assert "IN00" not in rows  # not named, weight 1, no targets
    assert rows["CLIP_L"].split()[1] == "0.7"
    total = rows["total"].split()
    assert total[1:] == [str(len(pairs)), str(sum(a for _, a in pairs))]


# --- user presets ---------------------------------------------------------------------------------

def test_user_presets_json_and_text(tmp_path: Path):
    path = tmp_path / "presets.json"
    path.write_text(json.dumps({"face": "*=0, BASE=1, IN04-IN08=1", "fluxface": "DOUBLE, D00-D03=0",
                                "deep": "face, M00=1"}))
    user = blocks.load_user_presets(path)
    assert set(user) == {"FACE", "FLUXFACE", "DEEP"}
    w = parse("face, OUT05=0.5", "sd1", user_presets=user)
    assert w.vector["IN06"] == 1 and w.vector["OUT05"] == 0.5 and w.vector["M00"] == 0
    assert parse("deep", "sd1", user_presets=user).vector["M00"] == 1
    sd_names = [p.name for p in blocks.list_presets("sd1", user)]
    assert "OUTALL" in sd_names and "FACE" in sd_names and "FLUXFACE" not in sd_names
    assert "FLUXFACE" in [p.name for p in blocks.list_presets("flux", user)]
    lines = tmp_path / "lbw-preset.custom.txt"
    lines.write_text("# mine\nMYOUT:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1\n")
    assert blocks.load_user_presets(lines) == {"MYOUT": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"}
    assert blocks.load_user_presets(tmp_path / "missing.json") == {}


@pytest.mark.parametrize("content,needle", [
    ({"ALL": "*=0.5"}, "name of a built-in preset"),
    ({"IN04": "*=0"}, "reads as a block name"),
    ({"bad": "IN04=zz"}, "fits no model family"),
    ({"loop": "loop"}, "fits no model family"),
    ({"x": ""}, "no syntax text"),
    (["not", "an", "object"], "one JSON object"),
])
def test_user_presets_bad(tmp_path: Path, content, needle):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(content))
    with pytest.raises(BlockWeightsError, match=re.escape(needle)):
        blocks.load_user_presets(path)


def test_user_preset_loop_names_itself():
    with pytest.raises(BlockWeightsError, match="refers to itself"):
        parse("loop", "sd1", user_presets={"LOOP": "loop"})


def test_blocks_package_is_host_free():
    for path in Path(blocks.__file__).parent.glob("*.py"):
        nodes = list(ast.walk(ast.parse(path.read_text())))
        imported = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom)}
        assert "comfy" not in imported and "folder_paths" not in imported, path.name


# --- Inspire Pack: presets, the file-order reading, preset files ----------------------------------------

INSPIRE_FILE = """\
SD-NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
SD-ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
SD-INALL:1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0
SD-OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
SD-MOUT:1,0,0,0,0,0,1,1,1,1,1,1,1,1,0.5,0,0
SD-LyC-MIDALL:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0
SDXL-OUTALL:1,0,0,0,0,0,1,1,1,1,1,1
FLUX-DBL-TAIL:0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1
@SD-FULL-TEST:17
@SD-BLOCK1-TEST:17,12,1
"""
"""Lines of Inspire Pack's resources/lbw-preset.txt as it ships them (``@`` lines are its XY-plot tests)."""

INSPIRE_CUSTOM = """\
SD-BODY:1,1,1,1,1,1,1,1,0,0,0,1,1,1,1,1,1
SD-LyCOBODY0.5:1,1,1,1,1,1,1,1,1,0.2,0.2,0.5,1,1,0,0,0,0.2,0,0,0.8,1,1,1,1
"""
"""Two lines of Inspire's lbw-preset.custom.txt.example; the second holds 25 values as it ships."""


def _inspire_reference(keys, tokens, *, a=4.0, b=1.0, seed=0):
    """key -> weight in Inspire Pack's reading (``testkit.inspire_reference``)."""
    return inspire_ratios(keys, tokens, a=a, b=b, seed=seed)[0]


def _attention_only(keys):
    return [k for k in keys if ".attn" in k or "proj_in" in k or "proj_out" in k or ".ff." in k or "self_attn" in k
            or "mlp" in k]


def test_inspire_reading_matches_the_reference_rule(sd15_keys, sdxl_keys):
    cases = []
    for unet, te, fam in ((*sd15_keys, "sd1"), (*sdxl_keys, "sdxl")):
        weights = [k for k in unet if k.endswith(".weight")]
        no_conv_in = [k for k in weights if ".input_blocks.0." not in k]
        cases += [(fam, weights + te), (fam, no_conv_in), (fam, _attention_only(weights) + te)]
    rng = np.random.default_rng(3)
    vectors = [[f"{0.01 * i:.2f}" for i in range(17)], [f"{0.01 * i:.2f}" for i in range(40)], ["1"] * 12,
               ["0.5"] + ["R", "U", "A", "a", "B", "b", "1", "0"] * 3, ["0.25"], ["1", "2"]]
    for fam, keys in cases:
        keys = list(rng.permutation(keys))
        for tokens in vectors:
            for seed in (0, 2**40 + 5):
                w = parse("inspire: " + ",".join(tokens), fam, a=0.7, b=-0.3, seed=seed)
                assert w.reads_file
                with pytest.raises(BlockWeightsError, match="read by the blocks of a LoRA file"):
                    w.factor(keys[0])
                bound = w.for_targets(keys)
                expected = _inspire_reference(keys, tokens, a=0.7, b=-0.3, seed=seed)
                for key in keys:
                    assert bound.factor(key) == pytest.approx(expected[key], abs=1e-12), (fam, tokens, key)


def test_inspire_counts_and_the_shared_position(sd15_keys, sdxl_keys):
    """Inspire's vector lengths: 17/12 for attention-only files, 27/21 for LyCORIS files without conv_in,
    28/22 with conv_in (the 27/21 counts hold for files without conv_in)."""
    for (unet, te), lengths in ((sd15_keys, (17, 27, 28)), (sdxl_keys, (12, 21, 22))):
        weights = [k for k in unet if k.endswith(".weight")]
        no_conv_in = [k for k in weights if ".input_blocks.0." not in k]
        got = [1 + len(blocks.inspire_positions(keys)) for keys in (_attention_only(weights), no_conv_in, weights)]
        assert tuple(got) == lengths
    # a middle sub-module with the number of the last input block shares its position (Inspire compares
    # numbers only)
    keys = ["diffusion_model.input_blocks.1.1.proj_in.weight", "diffusion_model.middle_block.1.proj_in.weight",
            "diffusion_model.output_blocks.3.1.proj_in.weight"]
    assert blocks.inspire_positions(keys) == [[("input_blocks", 1), ("middle_block", 1)], [("output_blocks", 3)]]
    bound = parse("inspire: 0.5, 0.25, 0.75", "sd1").for_targets(keys)
    assert [bound.factor(k) for k in keys] == [0.25, 0.25, 0.75] == [_inspire_reference(keys, ["0.5", "0.25", "0.75"])[k]
                                                                       for k in keys]
    # BASE alone: Inspire's blocks keep its initial 1
    assert parse("inspire: 0.3", "sd1").for_targets(keys).factor(keys[0]) == 1.0


def test_inspire_text_forms_and_errors(sd15_keys):
    unet, _ = sd15_keys
    keys = [k for k in unet if k.endswith(".weight")]
    plain = parse("inspire: " + ",".join(["1"] * 12 + ["0"] * 5), "sd1").for_targets(keys)
    assert parse("# from Inspire\n  INSPIRE :MYNAME:" + ",".join(["1"] * 12 + ["0"] * 5), "sd1").for_targets(
        keys).vector == plain.vector
    preset = parse("inspire: SD-INALL", "sd1").for_targets(keys)
    raw = parse("inspire: " + presets.INSPIRE_PRESETS[4].vector, "sd1").for_targets(keys)
    assert presets.INSPIRE_PRESETS[4].name == "SD-INALL" and preset.vector == raw.vector
    # named entries after the vector override it, by the model's blocks
    over = parse("inspire: SD-INALL, OUT05=0.5, IN04.attn=0", "sd1").for_targets(keys)
    assert over.vector["OUT05"] == 0.5 and over.vector["IN05"] == raw.vector["IN05"]
    assert over.factor("diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight") == 0
    w = parse("inspire: SD-INALL", "sd1")
    assert parse(w.describe(), "sd1").for_targets(keys).vector == preset.vector  # describe round-trips
    for text, needles in [
        ("inspire: 1,1 0.5,0", ["space-separated", "IN05.attn=0"]),
        ("inspire: %default=0, in=1", ["'%'", "*=0, IN*=1"]),
        ("inspire: NOSUCH", ["neither a value nor a preset", "SD-INALL"]),
        ("inspire: SDXL-ALL", ["for SD1.x", "SD-ALL"]),
        ("inspire: 1,0,1, OUTALL", ["only BLOCK=weight entries"]),
        ("inspire: 1,0,1, IN99=1", ["Unknown block 'IN99'"]),
        ("inspire:", ["no vector"]),
        ("inspire: A,1,1", ["needs the A input", "default A is 4"]),
        ("inspire: OUTALL", ["not a vector"]),
        ("SD-BODY:1,1,1", ["line of a preset file", "inspire:"]),
    ]:
        with pytest.raises(BlockWeightsError) as info:
            parse(text, "sd1")
        for needle in needles:
            assert needle in str(info.value), (text, str(info.value))
    with pytest.raises(BlockWeightsError, match="only the whole text"):
        parse("MINE, IN04=1", "sd1", user_presets={"MINE": "inspire: 1,0,1"})


def test_inspire_preset_names_read_by_the_models_blocks(sd15_keys, sdxl_keys, flux_keys):
    """An Inspire preset name means its vector read as for the file it was written for, blocks without a
    position taking their nearest neighbour's weight (as LoRA Lab's presets); where LoRA Lab has the
    preset, the two are the same weights."""
    from lora_lab.lora_ops.presets import BUILTIN_PRESETS, INSPIRE_PRESETS

    ours = {p.name for p in BUILTIN_PRESETS}
    checked = 0
    for preset in INSPIRE_PRESETS:
        values = [float(v) if v not in "ABR" else v for v in preset.vector.split(",")]
        fam = preset.families[0]
        if fam == "flux":
            keys = flux_keys
            padded = values + [values[-1]] * (58 - len(values))
            expected = dict(zip(FLUX58, padded))
            expected.update(IN=padded[0], OUT=padded[0])

            def block(k):
                return blocks.block_of("flux", k)
        else:
            unet, te = sd15_keys if fam == "sd1" else sdxl_keys
            keys = unet + te
            order = {17: SD17, 27: SD27, 12: XL12, 21: XL21}[len(values)]
            whole = [n for n in order if "." not in n or n == "M00.1"]
            flat = [v for n, v in zip(order, values) if "." not in n or n == "M00.1"]
            expected = _neighbour_fill([n.split(".")[0] for n in whole], flat, SD26 if fam == "sd1" else XL20)

            def block(k):
                return reference_sd_block(k) if k.startswith("diffusion_model.") else "BASE"
        if any(isinstance(v, str) for v in values):
            continue
        w = parse(preset.name.lower(), fam)
        for key in keys:
            want = expected[block(key)]
            if len(values) in (27, 21) and ".middle_block." in key:
                want = values[order.index("M00." + key.split(".middle_block.")[1][0])]
            assert w.factor(key) == want, (preset.name, key)
        short = preset.name.split("-", 1)[1]
        if short in ours:
            same = parse(short, fam)
            assert all(w.factor(k) == same.factor(k) for k in keys), preset.name
            checked += 1
    assert checked == 15  # SD: NONE ALL INS IND INALL MIDD OUTD OUTS OUTALL ALL0.5; SDXL: NONE ALL INALL MIDALL OUTALL


def test_inspire_random_and_placeholder_tokens():
    keys = [f"diffusion_model.input_blocks.{i}.1.proj_in.weight" for i in (1, 2, 4, 5)]
    w = parse("inspire: R, R, U, A, a", "sd1", a=4.0, seed=2**33 + 11).for_targets(keys)
    rng = np.random.RandomState((2**33 + 11) % 2**31)
    draws = [round(rng.uniform(0, 3.0), 2), round(rng.uniform(-1.5, 1.5), 2)]
    base = round(rng.uniform(0, 3.0), 2)  # BASE is drawn last
    assert [w.factor(k) for k in keys] == [draws[0], draws[1], 4.0, 2.0]
    assert w.vector["BASE"] == base and 0 <= base < 3
    ours = parse("IN01=R", "sd1", seed=5).vector["IN01"]
    assert 0 <= ours < 1  # LoRA Lab's own R stays in [0, 1)


def test_vector_zeroes_are_reported_with_the_share_and_the_fix(sd15_keys):
    unet, _ = sd15_keys
    keys = [k for k in unet if k.endswith(".weight")]
    pairs = [(k, True) for k in keys]
    lines = blocks.block_notes(parse(",".join(["1"] * 17), "sd1"), pairs)
    warning = [line for line in lines if line.startswith("WARNING")]
    assert len(warning) == 1
    held = sum(1 for k in keys if reference_sd_block(k) in
               {"IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"})
    assert f"IN00, IN03, IN06, IN09-IN11, OUT00-OUT02, which this LoRA patches ({held} of its {len(keys)}" in warning[0]
    assert "IN09-IN11=1" in warning[0] and "inspire:" in warning[0]
    assert "WARNING" in blocks.block_table(parse(",".join(["1"] * 17), "sd1"), pairs)
    # named after the vector: kept, no warning; a block the LoRA does not patch: no warning
    fixed = parse(",".join(["1"] * 17) + ", IN00=1, IN03=1, IN06=1, IN09-IN11=1, OUT00-OUT02=1", "sd1")
    assert not [x for x in blocks.block_notes(fixed, pairs) if x.startswith("WARNING")]
    attn = [(k, True) for k in _attention_only(keys)]
    assert not [x for x in blocks.block_notes(parse(",".join(["1"] * 17), "sd1"), attn) if x.startswith("WARNING")]
    # presets set their zeroes on purpose: no warning
    assert not [x for x in blocks.block_notes(parse("OUTALL", "sd1"), pairs) if x.startswith("WARNING")]
    # a user preset that is a vector warns too, naming the preset
    user = {"MINE": ",".join(["1"] * 17)}
    assert "preset MINE" in blocks.block_notes(parse("MINE", "sd1", user_presets=user), pairs)[-1]


def test_preset_files_in_inspire_form_are_read_by_content(tmp_path: Path, caplog):
    path = tmp_path / "block_presets.json"  # the .json name does not force JSON
    path.write_text(INSPIRE_FILE + INSPIRE_CUSTOM)
    user = blocks.load_user_presets(path)
    assert set(user) == {"SD-BODY", "SD-LYCOBODY0.5"}  # Inspire's own lines are the built-in presets
    w = parse("SD-BODY", "sd1", user_presets=user)
    assert w.vector["OUT03"] == 0 and w.vector["IN03"] == 0  # a user vector is read as typed
    with pytest.raises(BlockWeightsError, match="inspire: SD-LYCOBODY0.5"):
        parse("SD-LyCOBODY0.5", "sd1", user_presets=user)  # 25 values: no dialect; Inspire's reading fits
    assert parse("inspire: SD-LyCOBODY0.5", "sd1", user_presets=user).reads_file
    names = [p.name for p in blocks.list_presets("sd1", user)]
    assert {"SD-INALL", "SD-LyC-OUTALL", "SD-BODY", "SD-LYCOBODY0.5"} <= set(names)
    assert "SDXL-OUTALL" not in names and "SDXL-OUTALL" in [p.name for p in blocks.list_presets("sdxl", user)]
    # Inspire's name with other values is a problem, not a silent shadow
    path.write_text("SD-ALL:1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\nGOOD:OUTALL, OUT05=0.5\n")
    with pytest.raises(BlockWeightsError, match="Inspire Pack's preset SD-ALL"):
        blocks.load_user_presets(path)
    assert blocks.read_user_presets(path) == {"GOOD": "OUTALL, OUT05=0.5"}


@pytest.mark.parametrize("content,needle", [
    ('{"A1": "IN04=1", ', "not valid JSON"),
    ("[" * 100_000, "not valid JSON"),
    ('{"ALL": "*=0.5", "GOOD": "IN04=0.5"}', "name of a built-in preset"),
    ("GOOD: IN04=0.5\nthis line has no name\n", "no 'NAME:'"),
    ('{"GOOD": "IN04=0.5", "LOOP": "loop"}', "fits no model family"),
], ids=["truncated-json", "deep-json", "builtin-name", "line-without-name", "loop"])
def test_a_broken_presets_file_is_one_warning_and_never_breaks_builtins(tmp_path: Path, caplog, content, needle):
    path = tmp_path / "block_presets.json"
    path.write_text(content)
    with caplog.at_level("WARNING", logger="lora_lab.lora_ops.blocks"):
        first = blocks.read_user_presets(path)
        again = blocks.read_user_presets(path)
    records = [r for r in caplog.records if "presets file" in r.getMessage()]
    assert len(records) == 1 and needle in records[0].getMessage() and str(path) in records[0].getMessage()
    assert first is again and any(needle in p for p in first.problems)
    assert parse("OUTALL, OUT05=0.5", "sd1", user_presets=first).vector["OUT05"] == 0.5
    if "GOOD" in first:
        assert parse("GOOD", "sd1", user_presets=first).vector["IN04"] == 0.5
    with pytest.raises(BlockWeightsError) as info:
        parse("NOTTHERE", "sd1", user_presets=first)
    assert "block_presets.json' has problems" in str(info.value)
    with pytest.raises(BlockWeightsError, match=re.escape(needle)):
        blocks.load_user_presets(path)


# --- resource limits: any text parses (or is refused) quickly ---------------------------------------------

def _timed(fn):
    start = time.perf_counter()
    try:
        fn()
        outcome = None
    except BlockWeightsError as exc:
        outcome = exc
    return outcome, time.perf_counter() - start


def test_nested_presets_cannot_grow_exponentially():
    user = {f"P{i}": ", ".join([f"P{i + 1}"] * 40) for i in range(7)}
    user["P7"] = "IN04=0.5"
    err, seconds = _timed(lambda: parse("P0", "sd1", user_presets=user))
    assert err is not None and f"more than {blocks.MAX_ENTRIES} entries" in err.problem
    assert "P0 > P1 > P2" in err.problem and seconds < 2
    user = {"P0": "P1, P1", "P1": "P2, P2", "P2": "IN04=0.5"}  # small nesting still works
    assert parse("P0", "sd1", user_presets=user).vector["IN04"] == 0.5


@pytest.mark.parametrize("text,fam,needle", [
    (", ".join(["B00-B9999=1"] * 400), "new_dit", "at most 1000"),
    (", ".join(["B00-B999=1"] * 30), "new_dit", "block names"),
    ("IN04=0.5, " * 10_000, "sd1", "characters long"),
    (", ".join(["IN04=0.5"] * (blocks.MAX_ENTRIES + 1)), "sd1", "entries"),
    ("#" + "x" * 10_000_000, "sd1", "characters long"),
    ("inspire: " + ",".join(["1"] * (blocks.MAX_ENTRIES + 1)), "sd1", "at most"),
], ids=["open-range-x400", "names", "long-text", "entries", "10MB-comment", "inspire-values"])
def test_work_is_bounded_with_a_clear_error(text, fam, needle):
    err, seconds = _timed(lambda: parse(text, fam))
    assert err is not None and needle in str(err) and err.fix, err
    assert seconds < 1.0


def test_worst_texts_within_the_limits_stay_fast(sd15_keys):
    unet, te = sd15_keys
    keys = unet + te
    gen_keys = [f"diffusion_model.blocks.{i}.{p}.weight" for i in range(600) for p in ("attn.q", "ffn.0")]
    n = blocks.MAX_ENTRIES - 10

    def most(names_each):  # as many entries as both limits allow
        return min(n, blocks.MAX_BLOCK_NAMES // names_each - 1)

    for text, fam, targets in [(", ".join(["IN00-OUT11=0.5"] * most(25)), "sd1", keys),
                               (", ".join(["IN*.attn=0", "OUT*.res=1"] * (most(12) // 2)), "sd1", keys),
                               (", ".join(["*.mlp=0.5"] * most(26)), "sd1", keys),
                               (", ".join(["IN05.attn=0"] * n), "sd1", keys),
                               (", ".join(["IN*=R"] * most(12)), "sd1", keys),
                               (", ".join(["B00-B599=1"] * most(600)), "new_dit", gen_keys),
                               (", ".join(["B*=0.5"] * n), "new_dit", gen_keys),
                               ("inspire: " + ",".join(["U"] * n), "sd1", keys)]:
        def work(text=text, fam=fam, targets=targets):
            w = parse(text, fam, seed=1)
            w = w.for_targets(targets)
            w.describe()
            blocks.block_table(w, [(k, True) for k in targets])
        err, seconds = _timed(work)
        assert err is None and seconds < 3.0, (text[:40], err, seconds)


def test_family_labels_and_block_maps_are_one_fact():
    """Labels live in lora_ops.families only; the SDXL refiner is a family of its own whose blocks follow the
    general rule (its UNet layout), named the same way everywhere."""
    from lora_lab.lora_ops import families

    assert all(blocks.FAMILY_LABELS[k] == families.family_label(k) for k in blocks.FAMILY_LABELS)
    assert families.family_label("sdxl-refiner") == "SDXL refiner"
    assert blocks.normalize_family("sdxl-refiner") == "general"
    assert families.family_key(["SDXLRefiner"]) == "sdxl-refiner"


def test_family_from_model_keys_reads_layouts_and_the_cross_attention_width():
    """The rule the page's model-file route falls back on when ComfyUI's detection does not match a file:
    the same layout facts the LoRA guess uses (one module), on model weight names and shapes."""
    from lora_lab.lora_ops.families import family_from_model_keys

    def unet(levels: int, context: int) -> dict[str, tuple[int, ...]]:
        keys = {f"model.diffusion_model.input_blocks.{i}.0.in_layers.0.weight": (8,) for i in range(levels)}
        keys["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = (8, context)
        return keys

    assert family_from_model_keys(unet(12, 768)) == "sd1"
    assert family_from_model_keys(unet(12, 1024)) == "sd2"
    assert family_from_model_keys(unet(9, 2048)) == "sdxl"
    assert family_from_model_keys(unet(10, 768)) is None
    assert family_from_model_keys({"double_blocks.0.img_attn.qkv.weight": (9, 3)}) == "flux"
    assert family_from_model_keys({"transformer.single_transformer_blocks.0.proj_out.weight": (3, 3)}) == "flux"
    assert family_from_model_keys({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (9, 3)}) == "sd3"
    assert family_from_model_keys({"decoder.conv_in.weight": (1,)}) is None
