"""lora_ops on its own: formats, scale rule, deltas against LyCORIS' functional math, the merge kernel.

These tests need no host. References are independent: LyCORIS' ``lycoris.functional`` for the
LoCon/LoHa/LoKr math, float64 formulas written out here for LoRA and DoRA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lycoris.functional import locon as ly_locon
from lycoris.functional import loha as ly_loha
from lycoris.functional import lokr as ly_lokr

from testkit.host import import_pack

pack = import_pack()
ops = pack.lora_ops
from lora_lab.lora_ops import patching as merge_mod  # noqa: E402  (import_pack registers the package)
from lora_lab.lora_ops.keymap import Target  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- scale rule -------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,rank,expected", [(None, 8, 1.0), (0, 8, 1.0), (8, 8, 1.0), (4, 8, 0.5), (16, 4, 4.0)])
def test_scale_rule(alpha, rank, expected):
    assert ops.lora_scale(alpha, rank) == expected


def test_scale_rule_rejects_zero_rank():
    with pytest.raises(ValueError, match="rank"):
        ops.lora_scale(1.0, 0)


# --- parsing every naming convention ----------------------------------------------------------

def _lora_pair(out=6, inn=5, r=2, seed=0):
    g = gen(seed)
    return torch.randn(out, r, generator=g), torch.randn(r, inn, generator=g)


@pytest.mark.parametrize("up_sfx,down_sfx,fmt", [
    (".lora_up.weight", ".lora_down.weight", "kohya"),
    (".lora_B.weight", ".lora_A.weight", "peft"),
    (".lora.up.weight", ".lora.down.weight", "diffusers"),
    ("_lora.up.weight", "_lora.down.weight", "diffusers-old"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", "diffusers-old"),
])
def test_parse_lora_conventions(up_sfx, down_sfx, fmt):
    up, down = _lora_pair()
    sd = {f"m.a{up_sfx}": up, f"m.a{down_sfx}": down, "m.a.alpha": torch.tensor(1.0)}
    parsed = ops.parse_lora(sd)
    assert list(parsed.modules) == ["m.a"]
    a = parsed.modules["m.a"]
    assert torch.equal(a.up, up) and torch.equal(a.down, down) and a.alpha == 1.0
    assert fmt in parsed.formats
    assert not parsed.unknown_keys


def test_parse_lycoris_kinds_and_leftovers():
    g = gen(1)
    sd = {
        "lycoris_x.hada_w1_a": torch.randn(4, 2, generator=g), "lycoris_x.hada_w1_b": torch.randn(2, 3, generator=g),
        "lycoris_x.hada_w2_a": torch.randn(4, 2, generator=g), "lycoris_x.hada_w2_b": torch.randn(2, 3, generator=g),
        "lycoris_x.alpha": torch.tensor(1.0),
        "lycoris_y.lokr_w1": torch.randn(2, 2, generator=g), "lycoris_y.lokr_w2_a": torch.randn(3, 2, generator=g),
        "lycoris_y.lokr_w2_b": torch.randn(2, 4, generator=g),
        "z.diff": torch.randn(3, 3, generator=g), "z.diff_b": torch.randn(3, generator=g),
        "w.oft_blocks": torch.randn(2, 2, 2, generator=g), "what.is.this": torch.zeros(1),
    }
    parsed = ops.parse_lora(sd)
    assert {type(parsed.modules[k]).__name__ for k in parsed.modules} == {"LohaWeights", "LokrWeights", "FullDiff",
                                                                          "OftWeights"}
    assert "z" in parsed.bias_diffs
    assert parsed.unsupported == {}
    assert parsed.unknown_keys == ["what.is.this"]
    assert parsed.format == "full-diff+lycoris"


def test_parse_refuses_a_file_without_lora_weights():
    with pytest.raises(ops.LoraFileError, match="no LoRA weights"):
        ops.parse_lora({"model.diffusion_model.x.weight": torch.zeros(2, 2)})
    with pytest.raises(ops.LoraFileError, match="IA3"):
        ops.parse_lora({"a.weight": torch.zeros(2, 2), "a.on_input": torch.zeros(1)})


# --- deltas against LyCORIS' functional math --------------------------------------------------

def test_lora_delta_linear_and_conv_against_lycoris():
    g = gen(2)
    down, up = torch.randn(4, 8, 3, 3, generator=g), torch.randn(6, 4, 1, 1, generator=g)
    a = ops.LoraWeights(up=up, down=down, alpha=2.0)
    ref = ly_locon.diff_weight(down, up, None, gamma=2.0 / 4, backend="torch")
    torch.testing.assert_close(a.delta(torch.Size((6, 8, 3, 3))), ref)
    # Tucker (LoCon "cp"): 1x1 down/up around a k x k core
    mid = torch.randn(4, 4, 3, 3, generator=g)
    down1 = torch.randn(4, 8, 1, 1, generator=g)
    a = ops.LoraWeights(up=up, down=down1, alpha=8.0, mid=mid)
    ref = ly_locon.diff_weight(down1, up, mid, gamma=8.0 / 4, backend="torch")
    torch.testing.assert_close(a.delta(torch.Size((6, 8, 3, 3))), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tucker", [False, True])
def test_loha_delta_against_lycoris(tucker):
    g = gen(3)
    r, out, inn = 3, 6, 5
    if tucker:
        w1a, w1b = torch.randn(r, out, generator=g), torch.randn(r, inn, generator=g)
        w2a, w2b = torch.randn(r, out, generator=g), torch.randn(r, inn, generator=g)
        t1, t2 = torch.randn(r, r, 3, 3, generator=g), torch.randn(r, r, 3, 3, generator=g)
        shape = torch.Size((out, inn, 3, 3))
    else:
        w1a, w1b = torch.randn(out, r, generator=g), torch.randn(r, inn, generator=g)
        w2a, w2b = torch.randn(out, r, generator=g), torch.randn(r, inn, generator=g)
        t1 = t2 = None
        shape = torch.Size((out, inn))
    a = ops.LohaWeights(w1a, w1b, w2a, w2b, alpha=1.5, t1=t1, t2=t2)
    ref = ly_loha.diff_weight(w1b, w1a, w2b, w2a, t1, t2, gamma=1.5 / r, backend="torch")
    torch.testing.assert_close(a.delta(shape), ref.reshape(shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [False, True])
def test_lokr_delta_against_lycoris(conv):
    g = gen(4)
    r = 2
    w1 = torch.randn(2, 4, generator=g)
    w2a = torch.randn(3, r, generator=g)
    w2b = torch.randn(r, 2, 3, 3, generator=g) if conv else torch.randn(r, 2, generator=g)
    shape = torch.Size((6, 8, 3, 3)) if conv else torch.Size((6, 8))
    a = ops.LokrWeights(w1=w1, w2a=w2a, w2b=w2b, alpha=4.0)
    # lycoris' functional lokr divides gamma by the rank itself
    ref = ly_lokr.diff_weight(w1, None, None, None, w2a, w2b, None, gamma=4.0, backend="torch")
    torch.testing.assert_close(a.delta(shape), ref.reshape(shape), rtol=1e-5, atol=1e-5)


def test_lokr_with_both_factors_full_ignores_alpha():
    g = gen(5)
    w1, w2 = torch.randn(2, 2, generator=g), torch.randn(3, 4, generator=g)
    a = ops.LokrWeights(w1=w1, w2=w2, alpha=7.0)
    torch.testing.assert_close(a.delta(torch.Size((6, 8))), torch.kron(w1, w2))


# --- DoRA -------------------------------------------------------------------------------------

def _dora_reference(w0, up, down, scale, m):
    """PEFT's definition in float64: W' = m * (W0 + s*up@down) / ||W0 + s*up@down||_row."""
    merged = w0.double() + scale * up.double() @ down.double()
    return (merged * (m.double().reshape(-1, 1) / merged.norm(dim=1, keepdim=True))).float()


def test_dora_delta_matches_peft_definition():
    g = gen(6)
    w0 = torch.randn(6, 5, generator=g)
    up, down = _lora_pair(6, 5, 2, seed=7)
    m = torch.rand(6, generator=g) + 0.5
    a = ops.LoraWeights(up=up, down=down, alpha=1.0, magnitude=m.reshape(6, 1))
    torch.testing.assert_close(w0 + ops.dora_delta(w0, a), _dora_reference(w0, up, down, 0.5, m), rtol=1e-5, atol=1e-5)


def test_stacked_doras_are_order_independent():
    g = gen(8)
    w0 = torch.randn(6, 5, generator=g)
    adapters = []
    for seed in (9, 10, 11):
        up, down = _lora_pair(6, 5, 2, seed=seed)
        adapters.append(ops.LoraWeights(up=up, down=down, alpha=2.0, magnitude=torch.rand(6, 1, generator=g) + 0.5))
    results = []
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        w = w0.clone()
        entries = [merge_mod.PatchEntry(Target("w"), adapters[i], strength=0.8, module=str(i)) for i in order]
        merge_mod.apply_patches({"w": w}, entries)
        results.append(w)
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-6, atol=1e-6)


# --- the merge kernel -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_merge_matches_reference_and_restores_bit_exactly(dtype):
    g = gen(12)
    w = (torch.randn(16, 12, generator=g) * 0.1).to(dtype)
    original = w.clone()
    up, down = _lora_pair(16, 12, 4, seed=13)
    entries = [merge_mod.PatchEntry(Target("w"), ops.LoraWeights(up=up, down=down, alpha=2.0), strength=0.7, module="m")]
    backup = ops.apply_patches({"w": w}, entries)
    ref = (original.double() + 0.7 * 0.5 * up.double() @ down.double()).to(dtype)
    # CPU path: fp32 math, one rounding -> equal to the float64 reference rounded once, within 1 ulp
    torch.testing.assert_close(w.float(), ref.float(), rtol=torch.finfo(dtype).eps * 2, atol=1e-6)
    ops.restore_weights({"w": w}, backup)
    assert torch.equal(w, original)


def test_merge_into_fused_slice_leaves_the_rest_alone():
    w = torch.zeros(9, 4)
    up, down = _lora_pair(3, 4, 2, seed=14)
    entry = merge_mod.PatchEntry(Target("w", (0, 3, 3)), ops.LoraWeights(up=up, down=down), strength=1.0, module="k")
    ops.apply_patches({"w": w}, [entry])
    torch.testing.assert_close(w[3:6], up @ down)
    assert not w[:3].any() and not w[6:].any()


def test_fp16_overflow_is_refused_and_weights_restored():
    w = torch.full((4, 4), 60000.0, dtype=torch.float16)
    untouched = torch.ones(4, 4, dtype=torch.float16)
    original = w.clone()
    up, down = torch.full((4, 1), 100.0), torch.full((1, 4), 100.0)
    entries = [
        merge_mod.PatchEntry(Target("ok"), ops.LoraWeights(up=torch.ones(4, 1), down=torch.ones(1, 4)), 1.0, "fine_layer"),
        merge_mod.PatchEntry(Target("w"), ops.LoraWeights(up=up, down=down), 1.0, "hot_layer"),
    ]
    weights = {"ok": untouched, "w": w}
    with pytest.raises(ops.OverflowRiskError, match="hot_layer") as err:
        ops.apply_patches(weights, entries)
    assert "65504" in str(err.value) and "black image" in str(err.value)
    assert torch.equal(w, original)
    assert torch.equal(untouched, torch.ones(4, 4, dtype=torch.float16))


def test_shape_mismatch_names_the_layer():
    up, down = _lora_pair(6, 5, 2)
    entry = merge_mod.PatchEntry(Target("w"), ops.LoraWeights(up=up, down=down), 1.0, "lora_unet_x")
    with pytest.raises(ops.ShapeMismatchError, match="lora_unet_x"):
        merge_mod.validate_shapes([entry], {"w": torch.Size((6, 4))})


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_shape_mismatch_is_caught_before_merging(kind):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if kind == "loha":
        adapter = ops.LohaWeights(w1a=r(6, 2), w1b=r(2, 5), w2a=r(6, 2), w2b=r(2, 5))
    else:  # kron((2, 2), (3, 5)) is 6 x 10
        adapter = ops.LokrWeights(w1=r(2, 2), w2a=r(3, 2), w2b=r(2, 5), alpha=2.0)
    entry = merge_mod.PatchEntry(Target("w"), adapter, 1.0, f"lycoris_{kind}")
    fits = (6, 5) if kind == "loha" else (6, 10)
    merge_mod.validate_shapes([entry], {"w": torch.Size(fits)})
    merge_mod.validate_shapes([entry], {"w": torch.Size((fits[0], fits[1] // 5, 5))})  # a conv of that size
    with pytest.raises(ops.ShapeMismatchError, match=f"lycoris_{kind}"):
        merge_mod.validate_shapes([entry], {"w": torch.Size((6, 4))})


# --- key mapping ------------------------------------------------------------------------------

def test_canonical_names_unify_dialects():
    c = ops.canonical_name
    assert c("unet.mid_block.attentions.0.processor.to_out.0") == "lora_unet_mid_block_attentions_0_to_out_0"
    assert c("unet.mid_block.attentions.0.to_out.0") == c("lora_unet_mid_block_attentions_0_to_out_0")
    assert c("lycoris_down_blocks_0_resnets_0_conv1") == "lora_unet_down_blocks_0_resnets_0_conv1"
    assert c("text_encoder_2.text_model.encoder.layers.0.mlp.fc1") == "lora_te2_text_model_encoder_layers_0_mlp_fc1"
    assert c("lora_te_text_model_encoder_layers_0_mlp_fc1") == c("text_encoder.text_model.encoder.layers.0.mlp.fc1")


def test_match_modules_reports_unmatched_and_ambiguous():
    key_map = {"lora_unet_a_b": "diffusion_model.a.b.weight", "lora_unet_a.b": "diffusion_model.other.weight"}
    matched, unmatched = ops.match_modules(["lora_unet_a_b", "unet.a.b", "nowhere"], key_map)
    assert matched["lora_unet_a_b"].key == "diffusion_model.a.b.weight"  # exact names always win
    assert "unet.a.b" in unmatched  # two weights behind one canonical spelling: refuse to guess
    assert "nowhere" in unmatched


# --- files ------------------------------------------------------------------------------------

def test_read_refuses_bad_files(tmp_path):
    sd = {"a.lora_up.weight": torch.ones(2, 1), "a.lora_down.weight": torch.ones(1, 2)}
    good = ops.write_safetensors_atomic(sd, tmp_path / "good.safetensors", {"ss_network_dim": "1"})
    assert ops.read_lora_file(good).metadata == {"ss_network_dim": "1"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 5])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "text.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    torch.save(sd, tmp_path / "pickled.ckpt")
    with pytest.raises(ops.LoraFileError, match="truncated"):
        ops.read_lora_file(tmp_path / "trunc.safetensors")
    with pytest.raises(ops.LoraFileError, match="too short"):
        ops.read_lora_file(tmp_path / "empty.safetensors")
    with pytest.raises(ops.LoraFileError, match="corrupt"):
        ops.read_lora_file(tmp_path / "text.safetensors")
    with pytest.raises(ops.LoraFileError, match="pickle"):
        ops.read_lora_file(tmp_path / "pickled.ckpt")
    with pytest.raises(ops.LoraFileError, match="does not exist"):
        ops.read_lora_file(tmp_path / "missing.safetensors")
    # weights-only pickle loading is available on request
    assert set(ops.read_lora_file(tmp_path / "pickled.ckpt", allow_pickle=True).tensors) == set(sd)


def test_lora_ops_imports_without_comfy():
    code = ("import sys, lora_ops; from lora_ops import plan_lora, apply_patches; "
            "assert not any(m == 'comfy' or m.startswith('comfy.') for m in sys.modules), 'comfy imported'; "
            "print('clean')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout


@pytest.mark.parametrize("total,overflows", [(65519.0, False), (65520.0, True), (-65520.0, True)])
def test_fp16_overflow_boundary_is_exact(total, overflows):
    # 65519 still rounds to 65504 in fp16; 65520 rounds to inf (round half to even at the top binade)
    w = torch.zeros(1, 1, dtype=torch.float16)
    entry = merge_mod.PatchEntry(Target("w"), ops.LoraWeights(up=torch.tensor([[total]]), down=torch.ones(1, 1)), 1.0, "edge")
    if overflows:
        with pytest.raises(ops.OverflowRiskError, match="edge"):
            ops.apply_patches({"w": w}, [entry])
        assert torch.equal(w, torch.zeros(1, 1, dtype=torch.float16))
    else:
        ops.apply_patches({"w": w}, [entry])
        assert w.item() == 65504.0


def test_numeric_facts_live_in_one_place():
    """fp16's overflow limit is where a value becomes inf (65520), for the merge, the sweep and the
    inspector alike; 8-bit pixels are truncated as SaveImage writes them."""
    import numpy as np

    from lora_lab.lora_ops import numerics

    assert numerics.FP16_OVERFLOW == 65520.0 and numerics.FP16_MAX == 65504.0
    assert torch.tensor(65519.9).half().isfinite() and not torch.tensor(numerics.FP16_OVERFLOW).half().isfinite()
    assert numerics.overflow_limit(torch.bfloat16) == float("inf") or numerics.overflow_limit(torch.bfloat16) > 3e38
    assert numerics.to_uint8(np.array([0.0, 0.999, 1.0, 2.0, float("nan"), 0.5039])).tolist() == [0, 254, 255, 255, 0, 128]
