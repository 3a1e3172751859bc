"""The LoRA inspector: recognition of every fixture, verdicts on real models, health findings on crafted
files, per-block energies against independent norms, bad input, the node and the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file, save_file

from testkit import fixtures, models
from testkit.host import REPO_ROOT, import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops import LoadedLora, LoraFile, errors, load_lora  # noqa: E402
from lora_lab.lora_ops.blocks import block_of  # noqa: E402
from lora_lab.lora_ops.inspection import (VERDICT_COMPATIBLE, VERDICT_OTHER_FAMILY,  # noqa: E402
                                          VERDICT_PARTIAL, inspect_file, inspect_lora, render_chart, training_info)
from lora_lab.lora_ops.numerics import FP16_OVERFLOW  # noqa: E402
from lora_lab.lora_ops.keymap import KeyIndex  # noqa: E402
from lora_lab.nodes import bridge  # noqa: E402
from lora_lab.nodes.inspect import LoraLabInspect, inspect_for_host  # noqa: E402

NAMES = list(fixtures.SMALL_FIXTURES)
FAMILY_ID = {"sd15": "sd1", "sdxl": "sdxl"}


@pytest.fixture(scope="module")
def fx():
    return {"sd15": fixtures.build("sd15"), "sdxl": fixtures.build("sdxl")}


def _small(family, dtype=torch.float32):
    return models.small_sd15(dtype) if family == "sd15" else models.small_sdxl(dtype)


def _reference_energy(fixture, family_id):
    """sqrt(sum ||dW||^2) and target count per block, from the tool's reference deltas, grouped independently."""
    sums, counts = defaultdict(float), defaultdict(int)
    for key, delta in fixture.reference().items():
        block = block_of(family_id, key)
        sums[block] += float(delta.double().pow(2).sum())
        counts[block] += 1
    return {b: math.sqrt(s) for b, s in sums.items()}, dict(counts)


def _energy(insp):
    return {e.block: e.norm for e in insp.energy if e.targets}, {e.block: e.targets for e in insp.energy if e.targets}


def _module_names(sd, marker):
    return sorted({k[: -len(marker)] for k in sd if k.endswith(marker)})


# --- recognition ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("name", NAMES)
def test_every_fixture_is_recognised(fx, family, name):
    f = fx[family][name]
    insp = inspect_file(f.path)
    meta = f.meta
    assert meta["format"] in insp.format.split("+")
    base = {a.split("+")[0] for a in insp.algorithms}
    expected = {"lora": ({"lora", "locon"}, ("LoRA", "LoCon")), "locon": ({"lora", "locon"}, ("LoCon",)),
                "loha": ({"loha"}, ("LoHa",)), "lokr": ({"lokr"}, ("LoKr",)),
                "dora": ({"lora", "locon"}, ("DoRA (LoCon)", "DoRA (LoRA)"))}[meta["algorithm"]]
    assert base <= expected[0] and insp.algorithm in expected[1], (insp.algorithms, insp.algorithm)
    assert all(a.endswith("+dora") for a in insp.algorithms) == (meta["algorithm"] == "dora")
    ranked = {r: n for r, n in insp.ranks.items() if r is not None}
    assert max(ranked, key=ranked.get) == meta["rank"]
    assert insp.family == FAMILY_ID[meta["family"]]
    assert insp.families_agree in (True, None)
    assert insp.targets == meta["file_targets"]
    assert insp.dtypes == {"float32": insp.tensors}
    assert insp.file_size == f.path.stat().st_size
    assert insp.healthy, insp.to_text()
    text = insp.to_text()
    assert f"made for: {'SD1.x' if family == 'sd15' else 'SDXL'}" in text and "block energy" in text


def test_metadata_family_and_training_fields_are_read(fx):
    insp = inspect_file(fx["sdxl"]["kohya"].path)
    assert insp.metadata_family == "sdxl" and insp.families_agree is True
    fields = dict(insp.training.fields)
    assert fields["network"] == "networks.lora" and fields["dim (rank)"] == "4"
    assert fields["architecture"].startswith("stable-diffusion-xl")


def test_training_metadata_is_readable():
    info = training_info({
        "ss_network_module": "networks.lora", "ss_network_dim": "32", "ss_network_alpha": "16",
        "ss_resolution": "(1024, 1024)", "ss_steps": "1200", "ss_learning_rate": "0.0001",
        "ss_sd_model_name": "sd_xl_base_1.0.safetensors", "ss_training_started_at": "1700000000",
        "ss_seed": "None",
        "ss_tag_frequency": json.dumps({"10_cat": {"cat": 10, " sitting": 4, "outdoors": 2},
                                        "5_dog": {"cat": 3, "dog": 5}}),
    }, top=3)
    fields = dict(info.fields)
    assert fields["learning rate"] == "0.0001" and fields["resolution"] == "(1024, 1024)"
    assert fields["steps"] == "1200" and fields["base model"] == "sd_xl_base_1.0.safetensors"
    assert fields["training started"] == "2023-11-14 22:13 UTC"
    assert "seed" not in fields
    assert info.top_tags == [("cat", 13), ("dog", 5), ("sitting", 4)] and info.tag_images == 4
    assert training_info({"ss_tag_frequency": "{not json"}).notes


# --- per-block energy --------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("name", ["peft", "diffusers", "kohya", "locon", "loha", "lokr"])
def test_block_energy_from_file_names_equals_reference_norms(fx, family, name):
    f = fx[family][name]
    want, want_counts = _reference_energy(f, FAMILY_ID[family])
    got, got_counts = _energy(inspect_file(f.path))
    assert got_counts == want_counts
    for block, norm in want.items():
        assert got[block] == pytest.approx(norm, rel=1e-4), block


@pytest.mark.parametrize("family,name", [("sd15", "kohya"), ("sd15", "dora"), ("sdxl", "dora"), ("sdxl", "peft")])
def test_block_energy_against_the_model_equals_reference_norms(fx, family, name):
    """With a model the blocks come from the matched keys, and DoRA is normalised against the base weights."""
    f = fx[family][name]
    model, clip = _small(family)
    insp = inspect_for_host(load_lora(f.path), model, clip)
    assert insp.verdict == VERDICT_COMPATIBLE and insp.block_source == "model's weight keys"
    assert insp.base_checked
    want, want_counts = _reference_energy(f, FAMILY_ID[family])
    got, got_counts = _energy(insp)
    assert got_counts == want_counts
    rel = 2e-3 if name == "dora" else 1e-4
    for block, norm in want.items():
        assert got[block] == pytest.approx(norm, rel=rel), block
    assert all(e.max_merged is not None and e.max_merged < FP16_OVERFLOW for e in insp.energy if e.targets)


# --- verdicts ------------------------------------------------------------------------------------

def test_sd15_lora_on_sdxl_model_is_other_family(fx):
    model, clip = models.small_sdxl()
    insp = inspect_for_host(load_lora(fx["sd15"]["kohya"].path), model, clip)
    assert insp.verdict == VERDICT_OTHER_FAMILY
    assert insp.matched < insp.targets and insp.unmatched
    text = insp.to_text()
    assert "model: SDXL; verdict: other family" in text and "made for: SD1.x" in text
    # blocks stay the LoRA's own (SD1.x) blocks
    assert insp.block_family == "sd1" and any(e.block == "IN11" and e.targets for e in insp.energy)


def test_text_encoder_layers_without_clip_give_partial(fx):
    model, _ = models.small_sd15()
    insp = inspect_for_host(load_lora(fx["sd15"]["kohya"].path), model, None)
    assert insp.verdict == VERDICT_PARTIAL
    assert insp.matched == insp.targets - insp.text_targets
    assert any("CLIP" in n for n in insp.notes)


# --- health on crafted files -----------------------------------------------------------------

def _crafted(fx, tmp_path, name, edit):
    sd = load_file(str(fx["sd15"]["kohya"].path))
    edit(sd)
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def _module_of(sd, fragment, suffix=".lora_up.weight"):
    return next(k for k in sorted(sd) if k.endswith(suffix) and fragment in k)[: -len(suffix)]


def test_nan_is_reported_with_its_layer(fx, tmp_path):
    target = {}

    def edit(sd):
        m = target["m"] = _module_of(sd, "attn1_to_q")
        sd[m + ".lora_up.weight"] = sd[m + ".lora_up.weight"].clone()
        sd[m + ".lora_up.weight"][0, 0] = float("nan")

    lora = load_lora(_crafted(fx, tmp_path, "nan", edit))
    insp = inspect_lora(lora)
    assert insp.layers_with("nonfinite") == [target["m"]] and insp.healthy is False
    assert "NaN/Inf: 1 layer(s): " + target["m"] in insp.to_text()
    # against a model the NaN layer is still matched (the loader would refuse the file)
    model, clip = models.small_sd15()
    against = inspect_for_host(lora, model, clip)
    assert against.verdict == VERDICT_COMPATIBLE and against.layers_with("nonfinite") == [target["m"]]


def test_file_value_beyond_fp16_is_reported(fx, tmp_path):
    target = {}

    def edit(sd):
        m = target["m"] = _module_of(sd, "ff_net_2")
        sd[m + ".lora_down.weight"] = sd[m + ".lora_down.weight"].clone()
        sd[m + ".lora_down.weight"][0, 0] = 70000.0

    insp = inspect_lora(load_lora(_crafted(fx, tmp_path, "big", edit)))
    assert insp.layers_with("file_overflow") == [target["m"]]
    assert insp.healthy is False and "stored values beyond fp16" in insp.to_text()


def test_w_plus_dw_overflowing_fp16_is_found_per_block(fx, tmp_path):
    """dW alone fits fp16 (1e4), the fp16 base weight (6e4) too; W + dW (7e4) does not."""
    target = {}
    c = math.sqrt(10000.0 / (2.0 * 4))  # dW = (alpha / r) * r * c^2 = 2 * 4 * c^2 = 1e4

    def edit(sd):
        m = target["m"] = _module_of(sd, "down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v")
        for part in (".lora_up.weight", ".lora_down.weight"):
            sd[m + part] = torch.full_like(sd[m + part], c)

    lora = load_lora(_crafted(fx, tmp_path, "hot", edit))
    model, clip = models.small_sd15(torch.float16)
    key = KeyIndex(bridge.model_key_map(model.model)).lookup(target["m"]).key
    model.model.get_parameter(key).data.fill_(60000.0)
    insp = inspect_for_host(lora, model, clip)
    assert insp.layers_with("merged_overflow") == [target["m"]]
    assert not insp.layers_with("delta_overflow") and not insp.layers_with("file_overflow")
    block = block_of("sd1", key)
    assert block == "IN04"
    by_block = {e.block: e for e in insp.energy}
    assert by_block[block].max_merged == pytest.approx(70000.0, rel=2e-3)
    assert all(e.max_merged < FP16_OVERFLOW for e in insp.energy if e.targets and e.block != block)
    text = insp.to_text()
    assert "renders black" in text and "<- problem" in text
    # without the base weights the same file looks healthy: the delta alone fits fp16
    assert inspect_lora(lora).healthy is True


def test_delta_beyond_fp16_is_reported(fx, tmp_path):
    target = {}

    def edit(sd):
        m = target["m"] = _module_of(sd, "attn2_to_k")
        for part in (".lora_up.weight", ".lora_down.weight"):
            sd[m + part] = torch.full_like(sd[m + part], 100.0)  # dW = 2 * 4 * 1e4 = 8e4

    insp = inspect_lora(load_lora(_crafted(fx, tmp_path, "hotdelta", edit)))
    assert insp.layers_with("delta_overflow") == [target["m"]]
    assert not insp.layers_with("file_overflow")


def test_zeroed_block_and_layer_are_reported(fx, tmp_path):
    zeroed = {}

    def edit(sd):
        zeroed["block"] = _module_names(sd, ".lora_up.weight")
        zeroed["block"] = [m for m in zeroed["block"]
                           if m.startswith(("lora_unet_down_blocks_1_attentions_0_", "lora_unet_down_blocks_1_resnets_0_"))]
        zeroed["layer"] = _module_of(sd, "up_blocks_3_resnets_2_conv1")
        for m in zeroed["block"] + [zeroed["layer"]]:
            sd[m + ".lora_up.weight"] = torch.zeros_like(sd[m + ".lora_up.weight"])

    insp = inspect_lora(load_lora(_crafted(fx, tmp_path, "zero", edit)))
    assert sorted(insp.layers_with("zero")) == sorted(zeroed["block"] + [zeroed["layer"]])
    blocks = {f.layer: f.block for f in insp.findings if f.kind == "zero"}
    assert {blocks[m] for m in zeroed["block"]} == {"IN04"} and blocks[zeroed["layer"]] == "OUT11"
    by_block = {e.block: e for e in insp.energy}
    assert by_block["IN04"].norm == 0.0 and by_block["IN04"].targets == len(zeroed["block"])
    assert "all-zero delta" in insp.to_text()


def test_fp16_underflow_is_reported(fx, tmp_path):
    target = {}

    def edit(sd):
        m = target["m"] = _module_of(sd, "attn1_to_v")
        sd[m + ".lora_up.weight"] = sd[m + ".lora_up.weight"] * 1e-9

    insp = inspect_lora(load_lora(_crafted(fx, tmp_path, "tiny", edit)))
    assert target["m"] in insp.layers_with("file_underflow")
    assert target["m"] in insp.layers_with("delta_underflow")


# --- bad input and files without metadata --------------------------------------------------------

@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage", "pickle"])
def test_bad_files_get_a_clear_error(fx, tmp_path, damage):
    data = fx["sd15"]["kohya"].path.read_bytes()
    path = tmp_path / ("bad.ckpt" if damage == "pickle" else "bad.safetensors")
    content = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00" * 64,
               "pickle": b"\x80\x04K\x01."}.get(damage)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(errors.LoraFileError) as err:
        inspect_file(path)
    assert err.value.fix


def test_file_without_metadata_is_inspected(fx, tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file(load_file(str(fx["sdxl"]["kohya"].path)), str(path))
    insp = inspect_file(path)
    assert insp.family == "sdxl" and insp.metadata_family is None and insp.families_agree is None
    assert insp.training.fields == [] and insp.healthy
    assert "training metadata: none in the file" in insp.to_text()


# --- the node, the chart, the command line -------------------------------------------------------

def test_node_returns_report_chart_and_ui_text(fx, tmp_path):
    (tmp_path / "x.safetensors").write_bytes(fx["sd15"]["loha"].path.read_bytes())
    model, clip = models.small_sd15()
    with use_model_dirs(loras_dir=tmp_path):
        out = LoraLabInspect().inspect(lora_name="x.safetensors", model=model, clip=clip)
    report, image = out["result"]
    assert out["ui"]["text"] == [report] and "verdict: compatible" in report
    assert image.dtype == torch.float32 and image.dim() == 4 and image.shape[0] == 1 and image.shape[3] == 3
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    lora = load_lora(fx["sd15"]["loha"].path)
    report2, _ = LoraLabInspect().inspect(lora=lora)["result"]
    assert "kind: LoHa" in report2 and "verdict" not in report2
    with pytest.raises(errors.LoraLabError, match="no LoRA"):
        LoraLabInspect().inspect()


def test_in_memory_lora_value_is_inspected(fx):
    """A LORA value from a merge or training has no file: counts come from its adapters."""
    loaded = load_lora(fx["sd15"]["kohya"].path)
    value = LoadedLora(file=LoraFile(tensors={}, metadata={}), parsed=loaded.parsed, family=loaded.family,
                       display_name="merged")
    report, _ = LoraLabInspect().inspect(lora=value)["result"]
    assert report.startswith("LoRA: merged (in memory, 708 tensors")  # up + down; alphas are numbers here
    assert inspect_lora(value).energy == inspect_lora(loaded).energy


def test_chart_shows_ranks_when_they_vary(fx, tmp_path):
    def edit(sd):
        m = _module_of(sd, "attn1_to_q")
        sd[m + ".lora_up.weight"] = sd[m + ".lora_up.weight"][:, :2].clone()
        sd[m + ".lora_down.weight"] = sd[m + ".lora_down.weight"][:2].clone()

    insp = inspect_lora(load_lora(_crafted(fx, tmp_path, "ranks", edit)))
    assert insp.ranks_vary and "rank: 2-4" in insp.to_text()
    plain = render_chart(inspect_file(fx["sd15"]["kohya"].path))
    varied = render_chart(insp)
    assert varied.height > plain.height and varied.mode == "RGB"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lora_ops.inspection", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_prints_the_report_and_json(fx, tmp_path):
    path = fx["sdxl"]["lokr"].path
    run = _cli(path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(f"LoRA: {path.name}")
    assert "made for: SDXL" in run.stdout and "block energy" in run.stdout
    assert "Warning" not in run.stderr
    run = _cli(path, "--json", "--chart", tmp_path)
    assert run.returncode == 0, run.stderr
    (data,) = json.loads(run.stdout)
    assert data["family"] == "sdxl" and data["algorithm"] == "LoKr" and data["healthy"] is True
    assert (tmp_path / f"{path.stem}.png").is_file()


def test_cli_bad_file_exits_2_with_the_error(fx, tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(fx["sd15"]["kohya"].path.read_bytes()[:1000])
    run = _cli(fx["sd15"]["kohya"].path, bad)
    assert run.returncode == 2
    assert "truncated" in run.stderr and "cut.safetensors" in run.stderr
    assert "made for: SD1.x" in run.stdout  # the good file is still reported
