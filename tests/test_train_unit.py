"""The training building blocks on their own: settings, data, schedule, objective, LoRA layers, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from testkit.host import import_pack

import_pack()

import comfy.model_base  # noqa: E402
import comfy.supported_models  # noqa: E402

from lora_lab.lora_ops.chart import HIGHLIGHT, _round_ticks, line_chart  # noqa: E402
from lora_lab.train.data import (BatchOrder, TrainDataError, TrainImage, assign_sizes, bucket_sizes,  # noqa: E402
                                 caption_variant, fit_image, generator, images_from_batch, split_captions,
                                 tag_frequency)
from lora_lab.train.loop import load_optimizer_state, lr_at, make_optimizer, optimizer_state  # noqa: E402
from lora_lab.train.network import AdapterLayer, AdapterNetwork, TargetLayer, checkpointed  # noqa: E402
from lora_lab.train.objective import (coefficients, loss_per_sample, native_target, noisy_input,  # noqa: E402
                                      prediction_type)
from lora_lab.train.settings import TrainSettings, TrainSettingsError  # noqa: E402


# --- settings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"rank": 0}, "rank 0"), ({"rank": 2000}, "rank 2000"), ({"steps": 0}, "steps 0"), ({"alpha": 0}, "alpha"),
    ({"learning_rate": 0}, "learning_rate"), ({"warmup_steps": 10, "steps": 10}, "warmup_steps"),
    ({"resolution": 60}, "resolution"), ({"caption_dropout": 1.0}, "caption_dropout"),
    ({"optimizer": "Lion"}, "optimizer 'Lion'"), ({"algorithm": "oft"}, "algorithm 'oft'"),
    ({"rank_dropout": 1.0}, "rank_dropout"), ({"dropout": -0.1}, "dropout"), ({"max_grad_norm": -1}, "max_grad_norm"),
])
def test_settings_out_of_range(kw, message):
    with pytest.raises(TrainSettingsError, match=message):
        TrainSettings(**kw).validate()


def test_resume_takes_the_runs_identity_from_the_checkpoint():
    saved = TrainSettings(rank=16, seed=3, learning_rate=5e-4, steps=100)
    mine = TrainSettings(rank=4, seed=9, steps=300, preview_every=10, output_name="next")
    merged = mine.resumed(saved)
    assert (merged.rank, merged.seed, merged.learning_rate, merged.schedule_steps) == (16, 3, 5e-4, 100)
    assert (merged.steps, merged.preview_every, merged.output_name) == (300, 10, "next")
    assert TrainSettings.from_json(merged.to_json()) == merged


# --- data -------------------------------------------------------------------------------------------------

def test_captions_must_match_the_images():
    assert split_captions("a\n\nc\n\n") == ["a", "", "c"]
    images = torch.rand(3, 8, 8, 3)
    assert [im.caption for im in images_from_batch(images, "a\n\nc\n")] == ["a", "", "c"]
    with pytest.raises(TrainDataError, match="3 image\\(s\\) but 2 caption"):
        images_from_batch(images, "a\nb")
    with pytest.raises(TrainDataError, match="No training images"):
        images_from_batch(None, "")


def _image(w, h):
    return TrainImage(torch.rand(h, w, 3), "", f"{w}x{h}")


def test_sizes_and_buckets():
    same = [_image(80, 64), _image(100, 80)]
    assert assign_sizes(same, 64, False) == [(72, 56)] * 2  # one size for all, area about 64^2
    mixed = [_image(128, 64), _image(64, 128), _image(64, 64)]
    with pytest.raises(TrainDataError, match="very different shapes"):
        assign_sizes(mixed, 512, False)
    sizes = assign_sizes(mixed, 512, True)
    assert sizes[0][0] > sizes[0][1] and sizes[1][0] < sizes[1][1] and sizes[2] == (512, 512)
    for w, h in bucket_sizes(512):
        assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 and 0.5 <= w / h <= 2


def test_fit_image_covers_and_crops():
    px = torch.zeros(40, 80, 3)
    px[:, 40:] = 1.0
    out = fit_image(px, 32, 32)
    assert out.shape == (32, 32, 3)
    assert float(out[:, :8].mean()) < 0.05 and float(out[:, -8:].mean()) > 0.95


def test_batch_order_is_seeded_and_covers_every_image_each_epoch():
    sizes = [(64, 64)] * 5 + [(96, 48)] * 3
    order = BatchOrder(sizes, batch_size=2, seed=4)
    assert order.per_epoch == 3 + 2
    epoch = [order.batch(i) for i in range(order.per_epoch)]
    assert sorted(i for b in epoch for i in b) == list(range(8))
    assert all(len({sizes[i] for i in b}) == 1 for b in epoch)  # batches never mix buckets
    assert [BatchOrder(sizes, 2, 4).batch(i) for i in range(10)] == [order.batch(i) for i in range(10)]
    assert [BatchOrder(sizes, 2, 5).batch(i) for i in range(10)] != [order.batch(i) for i in range(10)]


def test_caption_variants():
    caption = "zxq, red, blue, green, square"
    shuffled = {caption_variant(caption, generator(1, i), dropout=0.0, shuffle=True) for i in range(30)}
    assert len(shuffled) > 5 and all(s.startswith("zxq, ") for s in shuffled)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in shuffled)
    dropped = [caption_variant(caption, generator(2, i), dropout=0.25, shuffle=False) for i in range(400)]
    assert 0.15 < dropped.count("") / 400 < 0.35
    assert tag_frequency(["A, b", "a,  B ", "c"]) == {"a": 2, "b": 2, "c": 1}


# --- schedule ---------------------------------------------------------------------------------------------

def test_learning_rate_schedule():
    s = TrainSettings(learning_rate=1.0, steps=10, warmup_steps=4, lr_schedule="cosine")
    lrs = [lr_at(s, i) for i in range(10)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])
    assert [lr_at(TrainSettings(learning_rate=0.1, steps=5), i) for i in range(5)] == [0.1] * 5


# --- objective: against formulas written out per prediction type -------------------------------------------

def _sampling(kind):
    config = comfy.supported_models.SD15({})
    return comfy.model_base.model_sampling(config, kind)


@pytest.mark.parametrize("kind, name", [(comfy.model_base.ModelType.EPS, "eps"),
                                        (comfy.model_base.ModelType.V_PREDICTION, "v"),
                                        (comfy.model_base.ModelType.FLOW, "flow")])
def test_native_target_per_prediction_type(kind, name):
    ms = _sampling(kind)
    assert prediction_type(ms) == name
    gen = torch.Generator().manual_seed(0)
    x0, n = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    sigma = torch.tensor([0.05, 0.5, 0.9]) if name == "flow" else torch.tensor([0.03, 1.0, 14.0])
    coef = coefficients(ms, sigma)
    x_t = noisy_input(ms, sigma, n, x0)
    s = sigma.reshape(-1, 1, 1, 1)
    if name == "eps":
        expected_xt, expected = x0 + s * n, n
    elif name == "v":  # VP form: alpha_t = 1/sqrt(1+s^2), sigma_t = s/sqrt(1+s^2); v = alpha_t n - sigma_t x0
        expected_xt, expected = x0 + s * n, (n - s * x0) / torch.sqrt(1 + s * s)
    else:  # rectified flow: x_t = (1-s) x0 + s n, velocity n - x0
        expected_xt, expected = (1 - s) * x0 + s * n, n - x0
    assert torch.allclose(x_t, expected_xt, atol=1e-5)
    assert torch.allclose(native_target(coef, x_t, x0), expected, atol=1e-4)
    # A model that predicts the target exactly has zero loss; one off by d has loss mean(d^2).
    perfect = ms.calculate_denoised(sigma, expected, x_t)
    assert float(loss_per_sample(perfect, x0, coef).max()) < 1e-8
    off = ms.calculate_denoised(sigma, expected + 0.1, x_t)
    assert loss_per_sample(off, x0, coef) == pytest.approx(torch.full((3,), 0.01), rel=1e-3)


def test_min_snr_weights():
    ms = _sampling(comfy.model_base.ModelType.EPS)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    coef = coefficients(ms, sigma)
    snr = 1 / sigma**2
    x0 = torch.zeros(3, 1, 2, 2)
    denoised = x0 + 0.5 * sigma.reshape(-1, 1, 1, 1)  # eps error 0.5 everywhere
    plain = loss_per_sample(denoised, x0, coef)
    weighted = loss_per_sample(denoised, x0, coef, min_snr_gamma=5.0)
    assert weighted / plain == pytest.approx(torch.clamp(snr, max=5.0) / snr, rel=1e-5)


# --- LoRA layers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [torch.nn.Linear(12, 10), torch.nn.Conv2d(6, 8, 1),
                                    torch.nn.Conv2d(6, 8, 3, stride=2, padding=1)], ids=["linear", "1x1", "3x3"])
def test_bypass_equals_the_merged_weight_loaders_apply(module):
    layer = AdapterLayer(TargetLayer("m", module), "lora", rank=3, alpha=6.0, seed=1)
    up, down = layer.params["up"], layer.params["down"]
    assert float(up.detach().abs().max()) == 0  # kohya: up starts at zero
    with torch.no_grad():
        up.copy_(torch.randn(up.shape, generator=torch.Generator().manual_seed(2)))
    x = torch.randn((2, 12) if isinstance(module, torch.nn.Linear) else (2, 6, 9, 9))
    merged_w = module.weight + layer.weights().delta(module.weight.shape)
    if isinstance(module, torch.nn.Linear):
        reference = F.linear(x, merged_w, module.bias)
    else:
        reference = F.conv2d(x, merged_w, module.bias, stride=module.stride, padding=module.padding)
    network = AdapterNetwork([TargetLayer("m", module)], rank=3, alpha=6.0, seed=1)
    network.load_master_state({"m.down": down.detach(), "m.up": up.detach()})
    with torch.no_grad(), network.attached():
        live = module(x)
    assert torch.allclose(live, reference, atol=1e-5)
    assert not module._forward_hooks
    assert torch.equal(module(x), F.linear(x, module.weight, module.bias) if isinstance(module, torch.nn.Linear)
                       else F.conv2d(x, module.weight, module.bias, stride=module.stride, padding=module.padding))


def test_init_is_seeded_per_layer():
    a = AdapterLayer(TargetLayer("x", torch.nn.Linear(16, 16)), "lora", 4, 4.0, seed=5).params["down"]
    b = AdapterLayer(TargetLayer("x", torch.nn.Linear(16, 16)), "lora", 4, 4.0, seed=5).params["down"]
    c = AdapterLayer(TargetLayer("y", torch.nn.Linear(16, 16)), "lora", 4, 4.0, seed=5).params["down"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.detach().abs().max()) <= 1 / math.sqrt(16)


def test_hooks_and_checkpointing_are_removed_on_error():
    lin = torch.nn.Linear(4, 4)
    net = AdapterNetwork([TargetLayer("l", lin)], 2, 2.0, 0)
    with pytest.raises(RuntimeError), net.attached(), checkpointed([lin]):
        assert lin._forward_hooks and "forward" in vars(lin)
        raise RuntimeError("boom")
    assert not lin._forward_hooks and "forward" not in vars(lin)


def test_optimizer_state_round_trip():
    def run(opt, p, steps):
        for _ in range(steps):
            p.grad = torch.ones_like(p) * p.detach().sum()
            opt.step()

    p1 = torch.nn.Parameter(torch.arange(6.0))
    o1 = make_optimizer("AdamW", [p1], 0.1)
    run(o1, p1, 3)
    tensors, text = optimizer_state(o1)
    p2 = torch.nn.Parameter(p1.detach().clone())
    o2 = make_optimizer("AdamW", [p2], 0.1)
    load_optimizer_state(o2, tensors, text)
    run(o1, p1, 2)
    run(o2, p2, 2)
    assert torch.equal(p1, p2)


def test_line_chart():
    img = line_chart([3.0, 2.0, float("nan"), 1.5, 1.0], title="loss", smooth=2, width=300, height=150)
    assert img.size == (300, 150)
    assert line_chart([1.0], title="one").size[0] == 720
    assert line_chart([], title="none").size == (720, 320)


def test_loss_curve_average_runs_past_a_nan_step():
    # a NaN loss leaves a gap in the raw line; the moving average skips it and goes on to the last step
    values = [2.0 - i / 400 for i in range(400)]
    values[20] = float("nan")
    img = np.asarray(line_chart(values, title="loss", smooth=20))
    red = (np.abs(img.astype(int) - np.array(HIGHLIGHT)).sum(-1) < 30).any(0)
    assert red[600:].any() and red[120:240].any()


def test_round_ticks():
    assert _round_ticks(1, 1500) == [1, 500, 1000, 1500]
    assert _round_ticks(101, 160) == [101, 120, 140, 160]
    assert [round(t, 6) for t in _round_ticks(0.0, 1.0)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_train_is_host_free():
    """``train/`` imports neither ComfyUI nor the node side: the host comes in as a ``TrainHost``."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    code = ("import sys, types; pack = types.ModuleType('pack'); pack.__path__ = [sys.argv[1]]; "
            "sys.modules['pack'] = pack; import pack.train.session, pack.train.host_api; "
            "bad = [m for m in sys.modules if m == 'comfy' "
            "or m.startswith(('comfy.', 'pack.nodes', 'folder_paths'))]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout
