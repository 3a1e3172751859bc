"""Block weights applied through LoraLabLoader, and baked files, on real ComfyUI models."""

from __future__ import annotations

import comfy.lora
import comfy.lora_convert
import comfy.model_management as mm
import comfy.sd
import pytest
import torch
from safetensors import safe_open

from testkit import fixtures, models
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops import errors, load_lora  # noqa: E402
from lora_lab.lora_ops.blocks import parse_block_weights  # noqa: E402
from lora_lab.lora_ops.presets import BUILTIN_PRESETS  # noqa: E402
from lora_lab.nodes.bake import LoraLabBake  # noqa: E402
from lora_lab.nodes.loader import LoraLabLoader, apply_lora  # noqa: E402


@pytest.fixture(scope="module")
def fx():
    return {"sd15": fixtures.build("sd15"), "sdxl": fixtures.build("sdxl")}


def _small(family, dtype=torch.float32):
    return models.small_sd15(dtype) if family == "sd15" else models.small_sdxl(dtype)


def _loaded(patcher):
    mm.load_models_gpu([patcher])
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


def _presets_for(family):
    fam = "sd1" if family == "sd15" else "sdxl"
    return [p.name for p in BUILTIN_PRESETS if fam in p.families]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_builtin_preset_zeroes_or_scales_exactly(fx, family):
    model, clip = _small(family)
    base = _loaded(model)
    lora = load_lora(fx[family]["locon"].path)
    full = _loaded(apply_lora(model, None, lora, 1.0, 1.0).model)
    family_id = "sd1" if family == "sd15" else "sdxl"
    keys = list(base)
    checked = 0
    for preset in _presets_for(family):
        bw = parse_block_weights(preset, family_id, model_keys=keys)
        got = _loaded(apply_lora(model, None, lora, 1.0, 1.0, block_weights=bw).model)
        for k in keys:
            if torch.equal(full[k], base[k]):
                assert torch.equal(got[k], base[k]), f"{preset}: {k} changed but the LoRA does not touch it"
                continue
            f = bw.factor(k)
            if f == 0.0:
                assert torch.equal(got[k], base[k]), f"{preset}: {k} is in a block at 0 but changed"
            else:
                torch.testing.assert_close(got[k] - base[k], f * (full[k] - base[k]), rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked > 0
    assert torch.equal(torch.stack([v.sum() for v in _loaded(model).values()]),
                       torch.stack([v.sum() for v in base.values()]))


def test_all_equals_the_plain_load_and_the_table_is_reported(fx):
    model, clip = models.small_sd15()
    plain = apply_lora(model, clip, load_lora(fx["sd15"]["kohya"].path), 1.0, 1.0)
    plain_w = _loaded(plain.model)
    with use_model_dirs(loras_dir=fx["sd15"]["kohya"].path.parent):
        new_model, _, report = LoraLabLoader().load(model, fx["sd15"]["kohya"].path.name, 1.0, 1.0, "ALL",
                                                    clip=clip)["result"]
    assert all(torch.equal(v, plain_w[k]) for k, v in _loaded(new_model).items())
    assert "block weights:" in report and "block" in report and "applied" in report
    with use_model_dirs(loras_dir=fx["sd15"]["kohya"].path.parent):
        _, _, report = LoraLabLoader().load(model, fx["sd15"]["kohya"].path.name, 1.0, 1.0, "OUTD, M00=0.5",
                                            clip=clip)["result"]
    assert "weight 0 (left out)" in report
    rows = {line.split()[0]: line.split() for line in report.splitlines()[report.splitlines().index("block weights:") + 1:]}
    assert rows["M00"][1] == "0.5"


def test_vector_dialect_and_named_syntax_load_identically(fx):
    model, _ = models.small_sd15()
    keys = list(model.model.state_dict())
    lora = load_lora(fx["sd15"]["kohya"].path)
    vector = "0.5,1,0,1,0.2,1,0,0.7,1,1,0,0.3,1,1,1,0,1"
    named = ("BASE=0.5, IN01=1, IN02=0, IN04=1, IN05=0.2, IN07=1, IN08=0, M00=0.7, OUT03=1, OUT04=1, OUT05=0, "
             "OUT06=0.3, OUT07=1, OUT08=1, OUT09=1, OUT10=0, OUT11=1, IN00=0, IN03=0, IN06=0, IN09-IN11=0, OUT00-OUT02=0")
    a = _loaded(apply_lora(model, None, lora, 1.0, 1.0, block_weights=parse_block_weights(vector, "sd1", model_keys=keys)).model)
    b = _loaded(apply_lora(model, None, lora, 1.0, 1.0, block_weights=parse_block_weights(named, "sd1", model_keys=keys)).model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flux_syntax_on_sdxl_is_refused_by_the_loader(fx):
    model, clip = models.small_sdxl()
    with use_model_dirs(loras_dir=fx["sdxl"]["kohya"].path.parent):
        with pytest.raises(errors.LoraLabError, match="Flux"):
            LoraLabLoader().load(model, fx["sdxl"]["kohya"].path.name, 1.0, 1.0, "D03=0", clip=clip)


@pytest.mark.parametrize("name", ["kohya", "locon", "loha", "lokr", "dora"])
def test_baked_file_equals_the_block_weighted_load_in_any_loader(fx, tmp_path, name):
    fixture = fx["sd15"][name]
    model, clip = models.small_sd15()
    spec = "OUTALL, OUT05=0.5, IN07.attn=0.25"
    keys = list(model.model.state_dict())
    weighted = _loaded(apply_lora(model, clip, load_lora(fixture.path), 1.0, 1.0,
                                  block_weights=parse_block_weights(spec, "sd1", model_keys=keys)).model)
    (tmp_path / fixture.path.name).write_bytes(fixture.path.read_bytes())
    with use_model_dirs(loras_dir=tmp_path):
        path, report = LoraLabBake().bake(model, fixture.path.name, spec, f"baked_{name}", clip=clip)["result"]
        assert path.endswith(f"baked_{name}.safetensors") and "baked" in report
        ours = _loaded(apply_lora(model, clip, load_lora(path), 1.0, 1.0).model)
        with safe_open(path, "pt") as f:
            meta = f.metadata()
            baked_sd = {k: f.get_tensor(k) for k in f.keys()}
        assert meta["ss_network_module"] in ("networks.lora", "lycoris.kohya")
        assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
        assert "OUT05" in meta["lora_lab.block_weights"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for k in weighted:
        torch.testing.assert_close(ours[k], weighted[k], rtol=1e-5, atol=1e-6)
    # core ComfyUI reads every key of the baked file and gives the same weights
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(baked_sd), key_map, log_missing=False)
    n_targets = len({k.rsplit(".", 1)[0] if not k.endswith(".weight") else k.rsplit(".", 2)[0] for k in baked_sd
                     if not k.endswith(".alpha")})
    assert len(patches) == n_targets
    core_model, _ = comfy.sd.load_lora_for_models(model, clip, baked_sd, 1.0, 1.0)
    core = _loaded(core_model)
    for k in weighted:
        torch.testing.assert_close(core[k], weighted[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["../escape", "sub/dir", "/abs/path", "", "a" * 300])
def test_bake_refuses_names_that_leave_the_folder_and_writes_nothing(fx, tmp_path, bad):
    model, clip = models.small_sd15()
    (tmp_path / "src.safetensors").write_bytes(fx["sd15"]["kohya"].path.read_bytes())
    with use_model_dirs(loras_dir=tmp_path):
        with pytest.raises(errors.LoraLabError, match="plain file name"):
            LoraLabBake().bake(model, "src.safetensors", "ALL", bad, clip=clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


def test_user_presets_from_the_user_folder_are_listed_and_used(fx, tmp_path, monkeypatch):
    import json

    import folder_paths

    from lora_lab.nodes import loader

    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(tmp_path))
    (tmp_path / "lora_lab").mkdir()
    (tmp_path / "lora_lab" / "block_presets.json").write_text(json.dumps({"FACEONLY": "*=0, IN04-IN05=1"}))
    assert "FACEONLY" in LoraLabLoader.INPUT_TYPES()["required"]["block_weights"][1]["tooltip"]
    model, _ = models.small_sd15()
    bw = loader.resolve_block_weights("FACEONLY", model)
    assert bw.vector["IN04"] == 1.0 and bw.vector["OUT05"] == 0.0
