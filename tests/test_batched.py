"""The sweep's batched kernel: ``y_b = W x_b + s_b * dW x_b`` equals the merged layer ``(W + s_b dW) x_b``
for every adapter kind and layer kind, and a row at strength 0 is exactly ``W x_b``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from testkit.host import import_pack

import_pack()  # one identity for the pack's modules: lora_lab.*, as ComfyUI loads it
from lora_lab.lora_ops.adapters import FullDiff, LohaWeights, LokrWeights, LoraWeights  # noqa: E402
from lora_lab.lora_ops.batched import (LayerCall, add_row_deltas, merge_overflow_weights,  # noqa: E402
                                       overflow_weights, prepare_deltas)
from lora_lab.lora_ops.keymap import Target  # noqa: E402
from lora_lab.lora_ops.patching import PatchEntry, apply_patches  # noqa: E402

STRENGTHS = [0.0, 0.5, 1.0, -0.7]
EVERY_ROW = [0.3, 0.5, 1.0, -0.7]  # no row at 0: the deltas are added straight into the output


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _adapter(kind: str, shape: torch.Size, g: torch.Generator):
    out, rest = shape[0], math.prod(shape[1:])
    r = 4
    if kind in ("lora", "dora"):
        if len(shape) == 4:
            down = torch.randn(r, shape[1], *shape[2:], generator=g) * 0.2
            up = torch.randn(out, r, 1, 1, generator=g) * 0.2
        else:
            down, up = torch.randn(r, rest, generator=g) * 0.2, torch.randn(out, r, generator=g) * 0.2
        magnitude = (torch.rand(out, generator=g) + 0.5) if kind == "dora" else None
        return LoraWeights(up=up, down=down, alpha=2.0, magnitude=magnitude)
    if kind == "loha":
        return LohaWeights(w1a=torch.randn(out, r, generator=g) * 0.2, w1b=torch.randn(r, rest, generator=g) * 0.2,
                           w2a=torch.randn(out, r, generator=g) * 0.2, w2b=torch.randn(r, rest, generator=g) * 0.2,
                           alpha=4.0)
    if kind == "lokr":
        assert out % 4 == 0 and rest % 4 == 0
        return LokrWeights(w1=torch.randn(4, 4, generator=g) * 0.2,
                           w2=torch.randn(out // 4, rest // 4, generator=g) * 0.2)
    if kind == "full":
        return FullDiff(diff=torch.randn(shape, generator=g) * 0.05)
    raise AssertionError(kind)


def _layers():
    torch.manual_seed(0)
    yield "linear", torch.nn.Linear(16, 24), torch.randn(len(STRENGTHS), 5, 16)
    yield "conv3x3", torch.nn.Conv2d(8, 12, 3, stride=2, padding=1), torch.randn(len(STRENGTHS), 8, 9, 9)
    yield "conv1x1", torch.nn.Conv2d(8, 12, 1), torch.randn(len(STRENGTHS), 8, 5, 5)


@pytest.mark.parametrize("strengths", [STRENGTHS, EVERY_ROW], ids=["a_row_at_0", "every_row"])
@pytest.mark.parametrize("kind", ["lora", "loha", "lokr", "full", "dora"])
@pytest.mark.parametrize("layer_name", ["linear", "conv3x3", "conv1x1"])
def test_batched_rows_equal_the_merged_layer(kind, layer_name, strengths):
    name, module, x = next(item for item in _layers() if item[0] == layer_name)
    shape = module.weight.shape
    adapter = _adapter(kind, shape, _gen(1))
    entry = PatchEntry(Target("weight"), adapter, 0.8, module="m")
    base = module.weight.detach().clone()
    deltas = prepare_deltas([entry], {"weight": shape}, base=lambda key: base)
    call = LayerCall.of(module)
    with torch.no_grad():
        y = module(x)
        plain = y.clone()
        add_row_deltas(y, x, deltas["weight"], call, torch.tensor(strengths))
        for b, s in enumerate(strengths):
            if s == 0.0:
                assert torch.equal(y[b], plain[b]), "a row at strength 0 must be exactly W x"
                continue
            weights = {"weight": base.clone()}
            apply_patches(weights, [PatchEntry(Target("weight"), adapter, 0.8 * s, module="m")])
            ref = module._conv_forward(x[b:b + 1], weights["weight"], module.bias) if name != "linear" \
                else F.linear(x[b:b + 1], weights["weight"], module.bias)
            torch.testing.assert_close(y[b:b + 1], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strengths", [[0.0, 1.0, 2.0], [0.5, 1.0, 2.0]])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_fused_offset_and_bias_delta(strengths, layout):
    """A delta on a slice of a fused weight (q of qkv) touches only that slice of the output; a bias diff
    adds; an output that is not contiguous (no in-place views of its rows) gets the same result."""
    module = torch.nn.Linear(8, 12)
    g = _gen(3)
    lora = LoraWeights(up=torch.randn(4, 2, generator=g), down=torch.randn(2, 8, generator=g), alpha=2.0)
    bias = FullDiff(diff=torch.randn(12, generator=g))
    entries = [PatchEntry(Target("weight", (0, 4, 4)), lora, 1.0, module="q"),
               PatchEntry(Target("weight"), bias, 1.0, module="b", is_bias=True)]
    base = module.weight.detach().clone()
    deltas = prepare_deltas(entries, {"weight": base.shape}, base=lambda key: base)
    x = torch.randn(3, 8)
    with torch.no_grad():
        y = module(x)
        if layout == "strided":
            y = module(x).t().contiguous().t()
            assert not y.is_contiguous()
        add_row_deltas(y, x, deltas["weight"], LayerCall.of(module), torch.tensor(strengths))
        for b, s in enumerate(strengths):
            w = base.clone()
            w[4:8] += s * lora.delta(torch.Size([4, 8]))
            ref = F.linear(x[b], w, module.bias + s * bias.diff)
            torch.testing.assert_close(y[b], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first", [0.0, 0.5])
def test_half_precision_rows_stay_in_the_activation_dtype(first):
    module = torch.nn.Linear(16, 16).to(torch.bfloat16)
    adapter = _adapter("lora", module.weight.shape, _gen(4))
    deltas = prepare_deltas([PatchEntry(Target("weight"), adapter, 1.0)], {"weight": module.weight.shape})
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        y = module(x)
        plain = y.clone()
        add_row_deltas(y, x, deltas["weight"], LayerCall.of(module), torch.tensor([first, 1.0]))
    assert y.dtype == torch.bfloat16
    if first == 0.0:
        assert torch.equal(y[0], plain[0])
    for b, s in enumerate([first, 1.0]):
        ref = F.linear(x[b].float(), module.weight.float() + s * adapter.delta(module.weight.shape), module.bias.float())
        torch.testing.assert_close(y[b].float(), ref, rtol=2e-2, atol=2e-2)


def test_merge_overflow_weights_matches_brute_force_fp16_merges():
    g = _gen(5)
    base = torch.randn(6, 6, generator=g).half()
    delta = torch.zeros(6, 6)
    delta[2, 3] = 80000.0
    delta[4, 1] = -50000.0
    up, down = merge_overflow_weights(base.float(), delta, torch.float16)
    assert 0 < up < 1 and -2 < down < 0

    def finite_at(w):
        return bool(torch.isfinite((base.float() + w * delta).half()).all())
    assert finite_at(up * (1 - 1e-6)) and not finite_at(up * (1 + 1e-6))
    assert finite_at(down * (1 - 1e-6)) and not finite_at(down * (1 + 1e-6))
    assert merge_overflow_weights(base.float(), torch.zeros(6, 6), torch.float16) == (math.inf, -math.inf)


def test_overflow_weights_per_layer_from_prepared_deltas():
    base = torch.zeros(4, 4)
    lora = LoraWeights(up=torch.tensor([[400.0], [0.0], [0.0], [0.0]]), down=torch.tensor([[200.0, 0.0, 0.0, 0.0]]),
                       alpha=1.0)
    deltas = prepare_deltas([PatchEntry(Target("w"), lora, 1.0)], {"w": base.shape})
    up, down = overflow_weights(deltas, lambda key: base, torch.float16)["w"]
    assert up == pytest.approx(65520 / 80000) and down == pytest.approx(-65520 / 80000)


def test_layer_call_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="neither a Linear nor a Conv"):
        LayerCall.of(torch.nn.GroupNorm(2, 4))
    with pytest.raises(ValueError, match="padding_mode"):
        LayerCall.of(torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
