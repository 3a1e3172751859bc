"""Bad input to ``LoraLabLoader``: each gets our clear error, and nothing is left patched."""

from __future__ import annotations

import comfy.model_management as mm
import pytest
import torch
from safetensors.torch import load_file, save_file

from testkit import fixtures, models
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops import errors  # noqa: E402
from lora_lab.nodes.loader import LoraLabLoader  # noqa: E402


@pytest.fixture(scope="module")
def fx():
    return {"sd15": fixtures.build("sd15"), "sdxl": fixtures.build("sdxl")}


@pytest.fixture
def loras(tmp_path):
    with use_model_dirs(loras_dir=tmp_path):
        yield tmp_path


def _load(model, clip, name, **kw):
    out = LoraLabLoader().load(model, name, kw.pop("strength_model", 1.0), kw.pop("strength_clip", 1.0), clip=clip, **kw)
    return out["result"]


def _weights(patcher):
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


@pytest.mark.parametrize("lora_family,model_family", [("sd15", "sdxl"), ("sdxl", "sd15")])
def test_lora_of_another_family_is_refused_with_both_names(fx, loras, lora_family, model_family):
    (loras / "other.safetensors").write_bytes(fx[lora_family]["kohya"].path.read_bytes())
    model, clip = models.small_sdxl() if model_family == "sdxl" else models.small_sd15()
    with pytest.raises(errors.FamilyMismatchError) as err:
        _load(model, clip, "other.safetensors")
    msg = str(err.value)
    assert "SD1.x" in msg and "SDXL" in msg and "allow_other_family" in msg


def test_allow_other_family_applies_what_fits_and_says_so(fx, loras):
    (loras / "sd15.safetensors").write_bytes(fx["sd15"]["kohya"].path.read_bytes())
    model, clip = models.small_sdxl()
    _, _, report = _load(model, clip, "sd15.safetensors", allow_other_family=True)
    assert "made for SD1.x" in report and "model: SDXL" in report
    assert "WARNING" in report and "do not fit" in report


def test_nan_in_file_names_the_layer(fx, loras):
    sd = load_file(str(fx["sd15"]["kohya"].path))
    key = next(k for k in sd if k.endswith(".lora_up.weight") and "attn1_to_q" in k)
    sd[key] = sd[key].clone()
    sd[key][0, 0] = float("nan")
    save_file(sd, str(loras / "nan.safetensors"))
    model, clip = models.small_sd15()
    with pytest.raises(errors.NonFiniteError, match=key.rsplit(".lora_up", 1)[0]):
        _load(model, clip, "nan.safetensors")


def test_fp16_overflow_names_the_layers_and_leaves_the_model_clean(fx, loras):
    sd = load_file(str(fx["sd15"]["kohya"].path))
    hot = next(k for k in sd if k.endswith(".lora_up.weight") and "attn2_to_v" in k)
    # every entry of dW = 2 * (300 * 300 * rank) = 720000, far past fp16's 65504
    sd[hot] = torch.full_like(sd[hot], 300.0)
    down = hot.replace(".lora_up.", ".lora_down.")
    sd[down] = torch.full_like(sd[down], 300.0)
    save_file(sd, str(loras / "hot.safetensors"))
    model, clip = models.small_sd15(torch.float16)
    base = _weights(model)
    patched, _, _ = _load(model, None, "hot.safetensors")
    with pytest.raises(errors.OverflowRiskError) as err:
        mm.load_models_gpu([patched])
    assert hot.rsplit(".lora_up", 1)[0] in str(err.value) and "black image" in str(err.value)
    mm.load_models_gpu([model])
    assert all(torch.equal(v, base[k]) for k, v in _weights(model).items())


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_files_get_a_clear_error(fx, loras, damage):
    data = fx["sd15"]["kohya"].path.read_bytes()
    content = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * 64}[damage]
    (loras / f"{damage}.safetensors").write_bytes(content)
    model, clip = models.small_sd15()
    with pytest.raises(errors.LoraFileError, match="again"):
        _load(model, clip, f"{damage}.safetensors")


def test_shapes_that_do_not_fit_are_named(fx, loras):
    sd = load_file(str(fx["sd15"]["kohya"].path))
    key = next(k for k in sd if k.endswith(".lora_down.weight") and "attn1_to_k" in k)
    sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 3)
    save_file(sd, str(loras / "misfit.safetensors"))
    model, clip = models.small_sd15()
    with pytest.raises(errors.ShapeMismatchError, match=key.rsplit(".lora_down", 1)[0]):
        _load(model, clip, "misfit.safetensors")


def test_missing_lora_file_is_named(fx, loras):
    model, clip = models.small_sd15()
    with pytest.raises(errors.LoraFileError, match="not in ComfyUI's loras folder"):
        _load(model, clip, "nowhere.safetensors")
