"""Merging a stack into one LoRA: the saved file reproduces the live stack (concat, svd at full rank), the
reported error is the measured one, and bad input is refused."""

from __future__ import annotations

import comfy.model_management as mm
import pytest
import torch
from safetensors import safe_open

from testkit import fixtures, models
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops import errors, load_lora  # noqa: E402
from lora_lab.nodes.planning import apply_lora  # noqa: E402
from lora_lab.nodes.merge import LoraLabMerge, LoraLabSave  # noqa: E402
from lora_lab.nodes.stack import LoraLabApplyStack, LoraLabStack  # noqa: E402


@pytest.fixture(scope="module")
def fx():
    return fixtures.build("sd15")


@pytest.fixture
def loras(fx, tmp_path):
    for name, f in fx.items():
        (tmp_path / f"{name}.safetensors").write_bytes(f.path.read_bytes())
    with use_model_dirs(loras_dir=tmp_path):
        yield tmp_path


def _stack(rows):
    stack = None
    for name, sm, sc, bw in rows:
        (stack,) = LoraLabStack().add(f"{name}.safetensors", sm, sc, bw, True, lora_stack=stack)
    return stack


def _loaded(patcher):
    mm.load_models_gpu([patcher])
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


def _both(model, clip, patched_model, patched_clip):
    return {**_loaded(patched_model), **{f"clip::{k}": v for k, v in _loaded(patched_clip.patcher).items()}}


def _merge(model, clip, stack, method, rank=0, energy=0.0, density=0.5, normalization="none"):
    return LoraLabMerge().merge(model, stack, method, rank, energy, density, 0, normalization, 1.0, "m", clip=clip)["result"]


PLAIN = [("kohya", 0.8, 0.5, ""), ("locon", -0.6, 1.0, "OUTALL"), ("peft", 0.4, 0.7, "")]


@pytest.mark.parametrize("method,rank", [("concat", 0), ("svd", 10_000), ("sum", 0)])
def test_merged_and_saved_file_reproduces_the_live_stack(loras, method, rank):
    model, clip = models.small_sd15()
    stack = _stack(PLAIN)
    live_model, live_clip, _ = LoraLabApplyStack().apply(model, stack, "none", 1.0, clip=clip)["result"]
    live = _both(model, clip, live_model, live_clip)
    # svd with a rank cap above every layer's width: each layer keeps its full rank, which is exact
    lora, report = _merge(model, clip, stack, method, rank=rank)
    assert "relative error against the live stack" in report
    (path,) = LoraLabSave().save(lora, f"merged_{method}")["result"]
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["lora_lab.merge_method"] == method and "kohya.safetensors" in meta["lora_lab.sources"]
    reloaded = apply_lora(model, clip, load_lora(path), 1.0, 1.0)
    assert not reloaded.plan.unmatched
    got = _both(model, clip, reloaded.model, reloaded.clip)
    for k in live:
        torch.testing.assert_close(got[k], live[k], rtol=1e-4, atol=2e-5, msg=lambda m: f"{k}: {m}")


def test_concat_with_lycoris_parts_writes_exact_sums_and_says_so(loras):
    model, clip = models.small_sd15()
    stack = _stack([("kohya", 1.0, 1.0, ""), ("loha", 0.5, 1.0, ""), ("dora", 0.7, 1.0, "")])
    live_model, live_clip, _ = LoraLabApplyStack().apply(model, stack, "none", 1.0, clip=clip)["result"]
    live = _both(model, clip, live_model, live_clip)
    lora, report = _merge(model, clip, stack, "concat")
    assert "written as the exact sum" in report
    reloaded = apply_lora(model, clip, lora, 1.0, 1.0)
    got = _both(model, clip, reloaded.model, reloaded.clip)
    for k in live:
        torch.testing.assert_close(got[k], live[k], rtol=1e-4, atol=2e-5)


def test_low_rank_svd_reports_the_error_it_makes(loras):
    model, clip = models.small_sd15()
    stack = _stack(PLAIN)
    live_model, live_clip, _ = LoraLabApplyStack().apply(model, stack, "none", 1.0, clip=clip)["result"]
    base = {**_loaded(model), **{f"clip::{k}": v for k, v in _loaded(clip.patcher).items()}}
    live = _both(model, clip, live_model, live_clip)
    lora, report = _merge(model, clip, stack, "svd", rank=3)
    reported = float(report.split("overall ")[1].split()[0])
    reloaded = apply_lora(model, clip, lora, 1.0, 1.0)
    got = _both(model, clip, reloaded.model, reloaded.clip)
    num = sum(float(((got[k].double() - live[k].double()) ** 2).sum()) for k in live)
    den = sum(float(((live[k].double() - base[k].double()) ** 2).sum()) for k in live)
    measured = (num / den) ** 0.5
    assert 0.05 < measured < 1.0
    assert abs(reported - measured) / measured < 1e-3


@pytest.mark.parametrize("method", ["ties", "dare", "magnitude_prune"])
def test_delta_space_methods_give_a_loadable_lora(loras, method):
    model, clip = models.small_sd15()
    lora, report = _merge(model, clip, _stack(PLAIN), method, density=0.5)
    assert "merge: " + method in report
    reloaded = apply_lora(model, clip, lora, 1.0, 1.0)
    assert not reloaded.plan.unmatched and reloaded.plan.model_entries


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "svd"}, "needs a rank or an energy"),
    ({"method": "svd", "rank": 4, "energy": 0.9}, "Both rank"),
    ({"method": "svd", "energy": 1.5}, "outside"),
    ({"method": "ties", "density": 0.0}, "density"),
    ({"method": "average"}, "Unknown merge method"),
])
def test_bad_merge_settings_are_refused(loras, kwargs, match):
    model, clip = models.small_sd15()
    with pytest.raises(errors.LoraLabError, match=match):
        _merge(model, clip, _stack(PLAIN), **kwargs)


def test_save_refuses_escaping_names_and_existing_files(loras):
    model, clip = models.small_sd15()
    lora, _ = _merge(model, clip, _stack(PLAIN[:1]), "concat")
    with pytest.raises(errors.LoraLabError, match="plain file name"):
        LoraLabSave().save(lora, "../outside")
    with pytest.raises(errors.LoraLabError, match="already exists"):
        LoraLabSave().save(lora, "kohya")


def test_a_merged_lora_value_goes_straight_into_the_loader(loras):
    from lora_lab.nodes.loader import LoraLabLoader

    model, clip = models.small_sd15()
    stack = _stack(PLAIN)
    live_model, live_clip, _ = LoraLabApplyStack().apply(model, stack, "none", 1.0, clip=clip)["result"]
    live = _both(model, clip, live_model, live_clip)
    lora, _ = _merge(model, clip, stack, "concat")
    # lora_name is ignored when a LORA value is connected
    new_model, new_clip, report = LoraLabLoader().load(model, "kohya.safetensors", 1.0, 1.0, clip=clip, lora=lora)["result"]
    assert report.startswith("LoRA: m")
    got = _both(model, clip, new_model, new_clip)
    for k in live:
        torch.testing.assert_close(got[k], live[k], rtol=1e-4, atol=2e-5)
