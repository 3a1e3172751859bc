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
from testkit.inspire_reference import inspire_ratios

import_pack()
from lora_lab.lora_ops import errors, load_lora  # noqa: E402
from lora_lab.lora_ops.blocks import parse_block_weights  # noqa: E402
from lora_lab.lora_ops.presets import BUILTIN_PRESETS  # noqa: E402
from lora_lab.nodes.bake import LoraLabBake  # noqa: E402
from lora_lab.nodes.loader import LoraLabLoader  # noqa: E402
from lora_lab.nodes.planning import apply_lora  # noqa: E402


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


# --- Inspire Pack's reading, and what a vector leaves out ---------------------------------------------

def _variant(fixture, variant, folder):
    """The fixture file as is (conv_in, ResBlocks, attention), without conv_in, or attention only: a
    subset of the keys the tool wrote, saved under a new name in ``folder``."""
    from safetensors.torch import save_file

    with safe_open(str(fixture.path), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}
    module = lambda k: k.split(".", 1)[0]  # noqa: E731

    def keep(k):
        if variant == "no_conv_in":
            return not module(k).endswith("conv_in")
        if variant == "attention":
            return "attentions" in module(k) or "_te" in module(k)[:9] or module(k).startswith(("lora_te", "text"))
        return True

    name = f"{fixture.path.stem}_{variant}.safetensors"
    save_file({k: v for k, v in sd.items() if keep(k)}, str(folder / name), meta)
    return name, {k: v for k, v in sd.items() if keep(k)}


def _core_patches(model, clip, sd):
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    return comfy.lora.load_lora(sd, key_map, log_missing=False)


def _inspire_core(model, clip, loaded, tokens, *, a, b, seed):
    """Inspire Pack's LoraLoaderBlockWeight on core ComfyUI, written out from its source as the reference:
    core's own key matching (``comfy.lora.load_lora``), Inspire's rule for the per-key ratio (keys of the
    five groups sorted by group and block number, a new vector position whenever the number changes, the
    last value repeating, every other key at the first value; R/U from NumPy's seeded global generator),
    and core's ``add_patches`` at strength x ratio, keys at ratio 0 left out. ``loaded``: core's patches
    for the file (:func:`_core_patches`)."""
    ratios, positions = inspire_ratios(loaded, tokens, a=a, b=b, seed=seed)
    new_model, new_clip = model.clone(), clip.clone()
    for key, patch in loaded.items():
        if ratios[key] == 0:
            continue
        k = key[0] if isinstance(key, tuple) else key
        target = new_model if k.startswith("diffusion_model.") else new_clip
        target.add_patches({key: patch}, ratios[key])
    return new_model, new_clip, positions


INSPIRE_CASES = [("sd15", "kohya", "full"), ("sd15", "kohya", "attention"), ("sd15", "locon", "no_conv_in"),
                 ("sd15", "loha", "full"), ("sdxl", "locon", "no_conv_in"), ("sdxl", "kohya", "attention")]


@pytest.mark.parametrize("family,name,variant", INSPIRE_CASES)
def test_inspire_reading_gives_inspires_weights(fx, tmp_path, family, name, variant):
    model, clip = _small(family)
    base_model, base_clip = _loaded(model), _loaded(clip.patcher)
    file_name, sd = _variant(fx[family][name], variant, tmp_path)
    expected_positions = {("sd15", "attention"): 16, ("sd15", "no_conv_in"): 26, ("sd15", "full"): 27,
                          ("sdxl", "attention"): 11, ("sdxl", "no_conv_in"): 20, ("sdxl", "full"): 21}
    loaded = _core_patches(model, clip, sd)
    vectors = [([f"{0.9 - 0.02 * i:.2f}" for i in range(17)], 0)]
    if family == "sd15":  # SDXL takes ~20 s a vector on CPU: one vector there
        vectors.append((["0.5", "R", "U", "A", "a", "b", "0", "1", "R"], 2**40 + 7))
    if variant == "attention" and family == "sd15":  # more values than the file has blocks: the rest unused
        vectors.append(([f"{0.05 * i:.2f}" for i in range(40)], 0))
    for tokens, seed in vectors:
        text = "inspire: " + ",".join(tokens)
        with use_model_dirs(loras_dir=tmp_path):
            ours_model, ours_clip, report = LoraLabLoader().load(model, file_name, 1.0, 1.0, text, clip=clip,
                                                                 block_a=4.0, block_b=0.6, block_seed=seed)["result"]
        ref_model, ref_clip, positions = _inspire_core(model, clip, loaded, tokens, a=4.0, b=0.6, seed=seed)
        assert positions == expected_positions[(family, variant)]
        assert f"the {positions} block positions this LoRA patches" in report
        for ours, ref, base in ((_loaded(ours_model), _loaded(ref_model), base_model),
                                (_loaded(ours_clip.patcher), _loaded(ref_clip.patcher), base_clip)):
            for k in base:
                if torch.equal(ref[k], base[k]):
                    assert torch.equal(ours[k], base[k]), (text, k)
                    continue
                torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_inspire_differs_from_ours_where_the_file_decides(fx, tmp_path):
    """The same 17 values: by the model's blocks (LoRA Lab) and by the file's blocks (Inspire) agree on an
    attention-only file and disagree on a LoCon, where Inspire's positions shift."""
    model, clip = models.small_sd15()
    values = ",".join(f"{0.9 - 0.05 * i:.2f}" for i in range(17))
    attention, _ = _variant(fx["sd15"]["kohya"], "attention", tmp_path)
    locon, _ = _variant(fx["sd15"]["locon"], "full", tmp_path)
    with use_model_dirs(loras_dir=tmp_path):
        load = lambda f, t: _loaded(LoraLabLoader().load(model, f, 1.0, 1.0, t, clip=clip)["result"][0])  # noqa: E731
        a, b = load(attention, values), load(attention, "inspire: " + values)
        assert all(torch.equal(a[k], b[k]) for k in a)
        c, d = load(locon, values), load(locon, "inspire: " + values)
        assert any(not torch.equal(c[k], d[k]) for k in c)


def _warning(report):
    lines = [line for line in report.splitlines() if line.lstrip().startswith("WARNING: the 17-value vector")]
    assert len(lines) == 1, report
    return lines[0]


def test_every_report_names_the_blocks_a_vector_left_out(fx, tmp_path, monkeypatch):
    """Loader, stack, bake and sweep reports name the blocks a 17-value vector has no position for, when
    the LoRA patches them (a LoCon's ResBlocks and conv_in), with their share of the targets and the fix."""
    import folder_paths
    from lora_lab.nodes.stack import LoraLabApplyStack, LoraLabStack
    from lora_lab.nodes.sweep import LoraLabSweep, SweepRequest

    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(tmp_path / "user"))
    model, clip = models.small_sd15()
    locon = fx["sd15"]["locon"]
    (tmp_path / locon.path.name).write_bytes(locon.path.read_bytes())
    ones = ",".join(["1"] * 17)
    loaded = _core_patches(model, clip, locon.state_dict())
    zeroed = {"input_blocks.0.", "input_blocks.3.", "input_blocks.6.", "input_blocks.9.", "input_blocks.10.",
              "input_blocks.11.", "output_blocks.0.", "output_blocks.1.", "output_blocks.2."}
    held = sum(1 for k in loaded if any(k.startswith("diffusion_model." + z) for z in zeroed))
    assert held > 0
    expect = f"no position for IN00, IN03, IN06, IN09-IN11, OUT00-OUT02, which this LoRA patches ({held} of its"
    with use_model_dirs(loras_dir=tmp_path, output_dir=tmp_path / "out"):
        _, _, report = LoraLabLoader().load(model, locon.path.name, 1.0, 1.0, ones, clip=clip)["result"]
        assert expect in _warning(report) and "IN09-IN11=1" in _warning(report)
        _, _, fixed = LoraLabLoader().load(model, locon.path.name, 1.0, 1.0,
                                           ones + ", IN00=1, IN03=1, IN06=1, IN09-IN11=1, OUT00-OUT02=1",
                                           clip=clip)["result"]
        assert "WARNING: the 17-value" not in fixed
        (stack,) = LoraLabStack().add(locon.path.name, 1.0, 1.0, ones, True)
        _, _, stack_report = LoraLabApplyStack().apply(model, stack, "none", 1.0, clip=clip)["result"]
        assert expect in _warning(stack_report)
        _, bake_report = LoraLabBake().bake(model, locon.path.name, ones, "baked_ones", clip=clip)["result"]
        assert expect in _warning(bake_report)
        request = SweepRequest(model, clip, None, locon.path.name, "", "", 0, 1, 1.0, "euler", "normal", 64, 64,
                               0.5, 1.0, 2, False, ones, "block_presets", ones)
        plan = LoraLabSweep()._plan(request)  # every check and row plan, nothing sampled
        assert expect in _warning("\n".join(plan.rows[0].block_notes))


def test_inspire_presets_and_preset_files_through_the_loader(fx, tmp_path, monkeypatch, caplog):
    import folder_paths
    from lora_lab.nodes import loader

    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(tmp_path))
    (tmp_path / "lora_lab").mkdir()
    presets = tmp_path / "lora_lab" / "block_presets.json"
    model, clip = models.small_sd15()
    locon = fx["sd15"]["locon"]
    # Inspire's lbw-preset.txt lines in the .json file: read as lines, its own names the built-in ones
    presets.write_text("SD-ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n@SD-FULL-TEST:17\n"
                       "SD-FACE:1,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0\n")
    assert "SD-FACE" in LoraLabLoader.INPUT_TYPES()["required"]["block_weights"][1]["tooltip"]
    with use_model_dirs(loras_dir=locon.path.parent):
        load = lambda t: LoraLabLoader().load(model, locon.path.name, 1.0, 1.0, t, clip=clip)["result"]  # noqa: E731
        inall, named = _loaded(load("SD-INALL")[0]), _loaded(load("INALL")[0])
        assert all(torch.equal(inall[k], named[k]) for k in inall)
        assert "WARNING: the 17-value vector of preset SD-FACE" in load("SD-FACE")[2]
        assert "block positions this LoRA patches" in load("inspire: SD-FACE")[2]
        # a presets file that does not parse: one warning; built-in presets load as before
        presets.write_text('{"FACE": "IN04=1", ')
        with caplog.at_level("WARNING", logger="lora_lab.lora_ops.blocks"):
            a = _loaded(load("OUTALL")[0])
            load("OUTALL, OUT05=0.5")
        assert len([r for r in caplog.records if "presets file" in r.getMessage()]) == 1
        assert any(not torch.equal(a[k], inall[k]) for k in a)
        with pytest.raises(errors.LoraLabError, match="has problems"):
            load("FACE")
    assert loader.resolve_block_weights("OUTALL", model).vector["OUT05"] == 1
