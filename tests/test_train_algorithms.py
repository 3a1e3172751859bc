"""Training's adapter kinds (LoRA, LoCon, LoHa, LoKr, each optionally DoRA) and their dropout, against
independent references, and the saved file against the previews for each kind in the real host.

* The live training forward of every kind x DoRA x layer kind equals the layer with the loaders' merged
  delta (``effective_delta`` of the saved adapter): a trained adapter is the adapter the loaders read.
* DoRA: the live forward equals LyCORIS' ``LoConModule(weight_decompose=True)`` and PEFT's DoRA layer built
  from the same tensors (the magnitude on the output axis), and the saved ``dora_scale`` has LyCORIS' shape.
* Dropout: with every mask of mean 1 the training forward averages to the saved layer; LyCORIS' DoRA with
  rank dropout (rows of ``dW`` dropped inside the DoRA norm) does not, which is the mismatch other
  trainers have (measured here on LyCORIS itself).
* In the host (reduced-width SD1.5): every kind with dropout, rank dropout and module dropout trains, saves
  in kohya/LyCORIS format with metadata, and the saved file renders the last preview through LoraLabLoader
  (and core LoraLoader where core reads DoRA the same way); the DoRA + rank-dropout case included.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from testkit.host import import_pack
from testkit.train_workflows import loras_folder, one_torch_thread, pattern_images

import_pack()

import comfy.lora  # noqa: E402
import comfy.utils  # noqa: E402

from lora_lab.lora_ops.adapters import DropoutRates, effective_delta  # noqa: E402
from lora_lab.lora_ops.formats import parse_lora  # noqa: E402
from lora_lab.nodes.train import prepare, train_and_report  # noqa: E402
from lora_lab.train.checkpoint import PrecisionReport, state_path_for  # noqa: E402
from lora_lab.train.network import AdapterNetwork, TargetLayer, factorization  # noqa: E402
from lora_lab.train.parity import image_difference  # noqa: E402
from lora_lab.train.session import precision_warning  # noqa: E402
from lora_lab.train.settings import TrainSettings  # noqa: E402

LIVE_ATOL = 2e-5         # live forward vs the merged layer, fp32 (measured: < 3e-6)
REFERENCE_ATOL = 1e-5    # against LyCORIS / PEFT DoRA built from the same tensors (measured: < 1e-6)
MEAN_TOLERANCE = 0.06    # mean of 3000 dropout draws vs the saved layer, relative (measured ~0.01-0.02)
LYCORIS_BIAS = 0.15      # LyCORIS' DoRA + rank dropout is further off than this (measured 0.28 and 0.52)
PARITY_LEVELS = 1        # saved file vs live preview, 8-bit levels (measured: at most 1)
CHANGED_LEVELS = 4       # the trained adapter changes the preview by more than this (parity means something)

KINDS = ["lora", "locon", "loha", "lokr"]
LAYERS = {"linear": lambda: torch.nn.Linear(12, 8), "conv1x1": lambda: torch.nn.Conv2d(6, 8, 1),
          "conv3x3": lambda: torch.nn.Conv2d(6, 8, 3, stride=2, padding=1)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def layer_input(module: torch.nn.Module, batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    shape = (batch, 5, 12) if isinstance(module, torch.nn.Linear) else (batch, 6, 9, 9)
    return torch.randn(shape, generator=gen)


def plain(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, torch.nn.Linear):
        return F.linear(x, weight, module.bias)
    return F.conv2d(x, weight, module.bias, stride=module.stride, padding=module.padding)


def trained_network(module: torch.nn.Module, algorithm: str, dora: bool, rates=DropoutRates(), rank: int = 3):
    """A one-layer network whose zero-initialised factors were moved off zero (as after training)."""
    net = AdapterNetwork([TargetLayer("m", module, "m.weight")], rank, 2.0 * rank, seed=4,
                         algorithm=algorithm, dora=dora, rates=rates)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in net.layers[0].params.items():
            if name == "magnitude":
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=gen))
            else:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return net


# --- the live forward is the loaders' adapter -------------------------------------------------------------

@pytest.mark.parametrize("dora", [False, True], ids=["plain", "dora"])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("algorithm", KINDS)
def test_live_forward_equals_the_merged_file_adapter(algorithm, layer, dora):
    module = LAYERS[layer]()
    if algorithm == "lora" and layer == "conv3x3":
        pytest.skip("lora trains Linear and 1x1 convs (locon adds the others)")
    net = trained_network(module, algorithm, dora)
    x = layer_input(module)
    with torch.no_grad(), net.attached():
        live = module(x)
    saved = net.layers[0].weights()
    merged = module.weight + effective_delta(saved, module.weight.shape, base=module.weight.detach())
    reference = plain(module, x, merged)
    assert torch.allclose(live, reference, atol=LIVE_ATOL), float((live - reference).abs().max())
    # and the file's tensors parse back into the same adapter kind and values
    parsed = parse_lora(saved.file_tensors("m")).modules["m"]
    assert type(parsed) is type(saved)
    back = effective_delta(parsed, module.weight.shape, base=module.weight.detach())
    assert torch.equal(back, effective_delta(saved, module.weight.shape, base=module.weight.detach()))


def test_lokr_factors_follow_lycoris():
    from lycoris.functional.general import factorization as lycoris_factorization

    for dim in (1, 7, 12, 64, 320, 360, 1280, 3072):
        assert factorization(dim) == lycoris_factorization(dim, -1), dim


# --- DoRA against LyCORIS and PEFT -----------------------------------------------------------------------

def test_dora_equals_lycoris_and_peft_on_the_output_axis():
    from lycoris.modules.locon import LoConModule
    from peft import LoraConfig, get_peft_model

    lin = torch.nn.Linear(16, 12)
    net = trained_network(lin, "lora", True, rank=4)
    params = net.layers[0].params
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), net.attached():
        ours = lin(x)

    lyco = LoConModule("m", lin, 1.0, lora_dim=4, alpha=8.0, weight_decompose=True)
    with torch.no_grad():
        lyco.lora_down.weight.copy_(params["down"])
        lyco.lora_up.weight.copy_(params["up"])
        lyco.dora_scale.copy_(params["magnitude"])
    lyco.eval()
    with torch.no_grad():
        assert torch.allclose(lyco(x), ours, atol=REFERENCE_ATOL)
    assert tuple(lyco.custom_state_dict()["dora_scale"].shape) == tuple(params["magnitude"].shape) == (12, 1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, t):
            return self.lin(t)

    peft_model = get_peft_model(Net(), LoraConfig(r=4, lora_alpha=8, target_modules=["lin"], use_dora=True))
    layer = peft_model.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(params["down"])
        layer.lora_B["default"].weight.copy_(params["up"])
        layer.lora_magnitude_vector["default"].weight.copy_(params["magnitude"].reshape(-1))
    peft_model.eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(x), ours, atol=REFERENCE_ATOL)


# --- dropout: only while training, unbiased, and where other trainers are not -----------------------------

def mean_over_draws(net: AdapterNetwork, module, x, draws: int) -> torch.Tensor:
    total = torch.zeros(())
    with torch.no_grad(), net.attached():
        for i in range(draws):
            with net.drop_context(i):
                total = total + module(x)
    return total / draws


@pytest.mark.parametrize("algorithm, dora", [("lora", True), ("loha", False), ("lokr", True)])
def test_dropout_averages_to_the_saved_layer_and_is_off_outside_training(algorithm, dora):
    lin = torch.nn.Linear(12, 8)
    rates = DropoutRates(dropout=0.2, rank=0.5)
    net = trained_network(lin, algorithm, dora, rates)
    x = layer_input(lin)
    with torch.no_grad(), net.attached():
        clean = lin(x)
        with net.drop_context(0):
            dropped = lin(x)
        with net.drop_context(0):
            again = lin(x)
    base = lin(x).detach()
    assert not torch.allclose(dropped, clean) and torch.equal(dropped, again)  # seeded per micro-batch
    mean = mean_over_draws(net, lin, x, 3000)
    bias = float((mean - clean).norm() / (clean - base).norm())
    assert bias < MEAN_TOLERANCE, bias


@pytest.mark.parametrize("rank_dropout_scale", [False, True])
def test_lycoris_dora_with_rank_dropout_trains_another_layer_than_it_saves(rank_dropout_scale):
    """The cause of the DoRA + rank-dropout mismatch: LyCORIS drops rows of ``dW`` inside the DoRA norm
    (``m * (W0 + M dW) / ||W0 + M dW||``), by default without rescaling, so what it trains on is not, even on
    average, the layer its saved file describes. LoRA Lab's masks act on ``dW x`` after the norm of the whole
    ``W0 + dW`` (the test above): the average is the saved layer."""
    from lycoris.modules.locon import LoConModule

    lin = torch.nn.Linear(12, 8)
    net = trained_network(lin, "lora", True, rank=4)
    params = net.layers[0].params
    lyco = LoConModule("m", lin, 1.0, lora_dim=4, alpha=8.0, rank_dropout=0.5, weight_decompose=True,
                       rank_dropout_scale=rank_dropout_scale)
    with torch.no_grad():
        lyco.lora_down.weight.copy_(params["down"])
        lyco.lora_up.weight.copy_(params["up"])
        lyco.dora_scale.copy_(params["magnitude"])
    x = layer_input(lin)
    base = lin(x).detach()
    lyco.eval()
    with torch.no_grad():
        saved = lyco(x)
        lyco.train()
        torch.manual_seed(0)  # LyCORIS draws its masks from the global generator
        draws = [lyco(x) for _ in range(3000)]
    # (with rank_dropout_scale, a draw that drops every row divides by a kept fraction of 0: NaN, left out)
    finite = [d for d in draws if torch.isfinite(d).all()]
    mean = sum(finite) / len(finite)
    assert float((mean - saved).norm() / (saved - base).norm()) > LYCORIS_BIAS


def test_precision_warning_names_the_layers():
    report = PrecisionReport("bf16", layers=[("lora_unet_b", 0.02), ("lora_unet_a", 0.001)])
    assert precision_warning(report, 1) is None
    text = precision_warning(report, 3)
    assert "up to 3 levels" in text and text.index("lora_unet_b") < text.index("lora_unet_a")
    without_previews = precision_warning(report, None)
    assert "lora_unet_b" in without_previews and "lora_unet_a" not in without_previews


# --- in the host -----------------------------------------------------------------------------------------


@pytest.fixture
def loras(tmp_path):
    with loras_folder(tmp_path) as folder:
        yield folder


def train(small, **kw):
    patcher, clip, vae = small
    base = dict(output_name="t", rank=4, alpha=4.0, steps=4, learning_rate=2e-2, resolution=64,
                preview_every=4, preview_prompt="zxq style", preview_seed=5, preview_steps=3)
    base.update(kw)
    resume_from = base.pop("resume_from", "none")
    with torch.inference_mode():
        plan = prepare(patcher, TrainSettings(**base), images=pattern_images(),
                       captions="zxq style, red\nzxq style, grey", clip=clip, resume_from=resume_from)
        return train_and_report(patcher, clip, vae, plan)


def file_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


CASES = {
    "lora": dict(algorithm="lora", dropout=0.1, rank_dropout=0.25, module_dropout=0.1),
    "locon": dict(algorithm="locon", targets="all linear and conv", rank_dropout=0.25),
    "loha": dict(algorithm="loha", dropout=0.1, rank_dropout=0.25, module_dropout=0.1),
    "lokr": dict(algorithm="lokr", rank_dropout=0.25, module_dropout=0.1),
    "dora+rank_dropout": dict(algorithm="lora", dora=True, rank_dropout=0.5, dropout=0.1),
}
SUFFIXES = {"lora": ".lora_up.weight", "locon": ".lora_up.weight", "loha": ".hada_w1_a", "lokr": ".lokr_w1"}


@pytest.mark.parametrize("case", list(CASES))
def test_every_kind_trains_saves_and_reproduces_the_last_preview(small, loras, case):
    kw = CASES[case]
    out, result = train(small, output_name=case.replace("+", "_"), **kw)
    live, lab, core = result.final_preview, result.parity["lora_lab"], result.parity["core"]
    assert image_difference(lab, live).max_levels <= PARITY_LEVELS
    patcher, clip, vae = small
    from lora_lab.nodes import sampling, train_host

    unpatched = train_host.render(patcher, vae, sampling.encode_prompt(clip, "zxq style"),
                                  sampling.encode_prompt(clip, ""), seed=5, steps=3,
                                  latent_shape=train_host.latent_shape(patcher, vae, 64, 64))
    assert image_difference(unpatched, live).max_levels > CHANGED_LEVELS
    if not kw.get("dora"):
        assert image_difference(core, live).max_levels <= PARITY_LEVELS
    assert result.parity["core_keys"] == len(result.targets)

    tensors, meta = file_tensors(result.saved.path)
    suffix = SUFFIXES[kw["algorithm"]]
    assert sum(k.endswith(suffix) for k in tensors) == len(result.targets)
    # what is saved is the master weights, with no dropout mask or scale folded in
    with safe_open(str(state_path_for(result.saved.path)), framework="pt") as f:
        master = {k: f.get_tensor(k) for k in f.keys() if k.startswith("master.")}
    assert sum(v.numel() for v in master.values()) == sum(v.numel() for k, v in tensors.items()
                                                          if not k.endswith(".alpha"))
    args = json.loads(meta["ss_network_args"]) if meta["ss_network_args"] else {}
    if kw["algorithm"] in ("loha", "lokr") or kw.get("dora"):
        assert meta["ss_network_module"] == "lycoris.kohya" and args["algo"] == kw["algorithm"]
        assert args.get("dora_wd") == ("True" if kw.get("dora") else None)
        assert args["rank_dropout"] == f"{kw['rank_dropout']:g}" and args["rank_dropout_scale"] == "True"
    else:
        assert meta["ss_network_module"] == "networks.lora"
        assert args["rank_dropout"] == f"{kw['rank_dropout']:g}"
    if kw.get("dora"):
        scales = [v for k, v in tensors.items() if k.endswith(".dora_scale")]
        assert len(scales) == len(result.targets) and all(v.shape[1:] == (1,) * (v.dim() - 1) for v in scales)
        assert "core ComfyUI normalises a DoRA layer" in out["result"][5]
    # core reads every key of the file
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    sd = comfy.utils.load_torch_file(str(result.saved.path), safe_load=True)
    assert len(comfy.lora.load_lora(sd, key_map)) == len(result.targets)


def test_half_precision_save_is_measured_on_the_preview(small, loras):
    out, result = train(small, output_name="half", algorithm="loha", dora=True, save_precision="bf16")
    assert result.precision_levels is not None and result.precision.layers
    report = out["result"][5]
    assert "the last preview with the bf16-rounded values" in report
    if result.precision_levels > 1:
        assert result.warnings and result.precision.layers[0][0] in result.warnings[0]
    lab = result.parity["lora_lab"]
    assert abs(image_difference(lab, result.final_preview).max_levels - result.precision_levels) <= 1


def test_text_encoder_training_and_gradient_clipping(small, loras):
    _, result = train(small, output_name="te", text_encoders="clip_l", text_encoder_lr=5e-3, optimizer="SGD",
                      learning_rate=1.0, max_grad_norm=1e-3, steps=1, preview_every=0)
    tensors, meta = file_tensors(result.saved.path)
    te = [k for k in tensors if k.startswith("lora_te_") and k.endswith(".lora_up.weight")]
    assert te and len(te) == sum(t.name.startswith("text_encoders.") for t in result.targets)
    assert meta["ss_network_train_unet_only"] == "False" and meta["ss_text_encoder_lr"] == "0.005"
    # SGD moves each parameter by lr * clipped gradient: the whole update's norm is at most lr * max_grad_norm
    # for the UNet group (lr 1.0) and text_encoder_lr * max_grad_norm for the text encoders'
    with safe_open(str(state_path_for(result.saved.path)), framework="pt") as f:
        ups = {k: f.get_tensor(k) for k in f.keys() if k.startswith("master.") and k.endswith(".up")}
    moved = torch.cat([v.reshape(-1) for v in ups.values()]).norm()
    assert 0 < float(moved) <= 1e-3 * (1 + 1e-4) and result.clipped_steps == 1
    clip_sd = comfy.utils.load_torch_file(str(result.saved.path), safe_load=True)
    clip = small[1]
    clip_keys = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    loaded = comfy.lora.load_lora(clip_sd, clip_keys)
    assert len(loaded) == len(te)


def test_fp16_training_scales_the_loss_and_resumes_exactly(small, loras):
    common = dict(training_dtype="fp16", algorithm="lokr", dora=True, rank_dropout=0.3, steps=4,
                  preview_every=0)
    _, full = train(small, output_name="full16", **common)
    assert all(torch.isfinite(torch.tensor(full.losses)))
    train(small, output_name="cut16", **{**common, "steps": 2})
    _, resumed = train(small, output_name="resumed16", resume_from="cut16.safetensors", **common)
    assert resumed.losses == full.losses[2:]
    with safe_open(str(state_path_for(full.saved.path)), framework="pt") as f:
        a = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(str(state_path_for(resumed.saved.path)), framework="pt") as f:
        b = {k: f.get_tensor(k) for k in f.keys()}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
