"""LoraLabSweep on the real host (in process): every cell against core ``LoraLoader`` + sampling at that
strength, the reference against the plain model, the shared model untouched, a LoRA that overflows fp16
above a known weight, the two-LoRA grid against the stack, and bad input refused before sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from testkit.host import import_pack

import_pack()  # one identity for the pack's modules: lora_lab.*, as ComfyUI loads it
from lora_lab.lora_ops.sweep import (Cell, SweepInputError, break_point, check_budget, flags_of, parse_axis, sweep_weights)  # noqa: E402
from testkit.host import import_pack, use_model_dirs

# Batched rows vs core's merged weights: the same maths in another order; measured differences are
# below 1e-5 on these models. Images are compared as floats in [0, 1].
CELL_TOLERANCE = 1e-3

PROMPT, NEGATIVE, SEED, STEPS = "a lighthouse on a cliff", "blurry", 7, 1


# --- host-free parts -------------------------------------------------------------------------------

def test_weights_ascending_descending_and_refusals():
    assert sweep_weights(0.1, 1.0, 10) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert sweep_weights(1.0, 0.0, 3) == [1.0, 0.5, 0.0]
    assert sweep_weights(0.7, 0.7, 1) == [0.7]
    for count in (0, -1, 65, 1000):
        with pytest.raises(SweepInputError, match="weight_count"):
            sweep_weights(0.1, 1.0, count)
    with pytest.raises(SweepInputError, match="identical cells"):
        sweep_weights(0.5, 0.5, 4)
    with pytest.raises(SweepInputError, match="weight_end"):
        sweep_weights(0.1, math.nan, 4)


def test_axis_values_and_budget():
    assert parse_axis("none", "ignored") == [""]
    assert parse_axis("prompts", "a cat\n\n a dog \n") == ["a cat", "a dog"]
    assert parse_axis("lora_b_strength", "0.3, 0.5\n0.7") == ["0.3", "0.5", "0.7"]
    with pytest.raises(SweepInputError, match="holds no prompts"):
        parse_axis("prompts", "  \n")
    with pytest.raises(SweepInputError, match="'x' in axis_values is not a number"):
        parse_axis("lora_b_strength", "0.3, x")
    with pytest.raises(SweepInputError, match="at most 16"):
        parse_axis("prompts", "\n".join(f"p{i}" for i in range(17)))
    with pytest.raises(SweepInputError, match="not one of"):
        parse_axis("colours", "x")
    with pytest.raises(SweepInputError, match="pixels; the limit"):
        check_budget(65, 1, 4096, 512)
    with pytest.raises(SweepInputError, match="cells"):
        check_budget(21, 16, 64, 64)
    check_budget(11, 1, 512, 512)


def _cells(steps, flags=None):
    cells = [Cell(0, 0, None, "ref", 0)]
    for i, d in enumerate(steps):
        c = Cell(0, i + 1, round(0.1 * (i + 1), 1), "", i + 1, list((flags or {}).get(i, [])))
        c.change_prev = d
        cells.append(c)
    return cells


def test_break_point_rule():
    # steady steps, then a jump at the 7th weight
    bp = break_point(_cells([0.02, 0.03, 0.025, 0.03, 0.02, 0.03, 0.2, 0.05]))
    assert bp is not None and bp[0].weight == 0.7 and "jumps" in bp[1]
    # a flag before any jump wins
    bp = break_point(_cells([0.02, 0.03, 0.025, 0.5], flags={2: ["black"]}))
    assert bp[0].weight == 0.3 and "black" in bp[1]
    # small wobbles below the floor are no break
    assert break_point(_cells([0.001, 0.002, 0.001, 0.01, 0.003])) is None


def test_flags_of_images():
    h = w = 16
    assert flags_of(torch.rand(h, w, 3)) == []
    assert flags_of(torch.zeros(h, w, 3)) == ["black"]
    assert flags_of(torch.ones(h, w, 3)) == ["saturated"]
    nan = torch.rand(h, w, 3)
    nan[0, 0, 0] = math.nan
    assert flags_of(nan) == ["nan"]
    assert flags_of(torch.rand(h, w, 3), latent_finite=False) == ["nan"]


# --- on the host ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The full-size SD1.5 checkpoint loaded in process, the fixture LoRAs, and an output folder."""
    import comfy.sd

    from testkit import fixtures, models

    import_pack()
    full = fixtures.build("sd15_full")
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(models.sd15_checkpoint()), output_vae=True,
                                                             output_clip=True)[:3]
    out = tmp_path_factory.mktemp("sweep-out")
    with use_model_dirs(loras_dir=full["kohya"].path.parent, output_dir=out):
        yield {"model": model, "clip": clip, "vae": vae, "full": full, "out": out}
    _release_models()


def _release_models() -> None:
    """Let go of the full-size models this module loaded in process (ComfyUI keeps loaded models
    referenced), so the rest of the session, and its server, have the memory back."""
    import gc

    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache()
    gc.collect()


def _sweep(host, lora, start, end, count, model=None, **kw):
    from lora_lab.nodes.sweep import LoraLabSweep

    args = dict(include_reference=True, block_weights="", axis="none", axis_values="")
    args.update(kw)
    res = LoraLabSweep().sweep(model or host["model"], host["clip"], host["vae"], lora, PROMPT, NEGATIVE, SEED, STEPS,
                               5.0, "euler", "normal", 64, 64, start, end, count, **args)
    return res, json.loads(res["result"][3])


def _core_image(host, loras: list[tuple[str, float]], model=None, prompt=PROMPT):
    """The oracle: core LoraLoader (chained) + core sampling with the same seed, batch of one."""
    import comfy.sample
    import comfy.sd
    import comfy.utils
    import folder_paths

    m, c = model or host["model"], host["clip"]
    for name, w in loras:
        m, c = comfy.sd.load_lora_for_models(m, c, comfy.utils.load_torch_file(folder_paths.get_full_path("loras", name)),
                                             w, w)
    enc = lambda t: c.encode_from_tokens_scheduled(c.tokenize(t))  # noqa: E731
    latent = torch.zeros(1, 4, 8, 8)
    s = comfy.sample.sample(m, comfy.sample.prepare_noise(latent, SEED), STEPS, 5.0, "euler", "normal", enc(prompt),
                            enc(NEGATIVE), latent, seed=SEED)
    return host["vae"].decode(s)[0].float()


def _fingerprint(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_cells_match_core_loraloader_and_reference_is_exact(host):
    lora = host["full"]["kohya"].path.name
    before = _fingerprint(host["model"].model)
    res, report = _sweep(host, lora, 0.5, 1.0, 2)
    after = _fingerprint(host["model"].model)
    assert all(torch.equal(before[k], after[k]) for k in before), "the sweep left weights changed in the shared model"
    images = res["result"][1]
    assert images.shape[0] == 3 and report["mode"].startswith("batched")
    assert torch.equal(images[0], _core_image(host, [])), "the reference column is not the plain model's image"
    for i, w in enumerate([0.5, 1.0], start=1):
        diff = (images[i] - _core_image(host, [(lora, w)])).abs().max().item()
        assert diff < CELL_TOLERANCE, f"cell {w}: {diff}"
    assert (images[2] - images[0]).abs().mean() > 0.01, "the LoRA did not change the image"
    assert report["cells"][2]["metrics"]["change_ref"] > report["cells"][1]["metrics"]["change_ref"] > 0
    assert (host["out"] / "lora_lab").is_dir()
    saved = report["grid_file"]
    png = host["out"] / saved["subfolder"] / saved["filename"]
    assert png.exists() and png.with_suffix(".json").exists()


def test_repatch_mode_matches_batched_mode(host):
    lora = host["full"]["kohya"].path.name
    res_b, _ = _sweep(host, lora, 0.8, 0.8, 1, include_reference=False, batch_mode="batched")
    res_r, report = _sweep(host, lora, 0.8, 0.8, 1, include_reference=False, batch_mode="repatch")
    assert report["mode"] == "repatch"
    assert (res_b["result"][1] - res_r["result"][1]).abs().max().item() < CELL_TOLERANCE


def test_two_lora_grid_matches_the_stack(host):
    from lora_lab.lora_ops.stack import LoraStack, StackRow
    from lora_lab.nodes.stack import LoraLabApplyStack

    a, b = host["full"]["kohya"].path.name, host["full"]["diffusers"].path.name
    res, report = _sweep(host, a, 1.0, 1.0, 1, axis="lora_b_strength", axis_values="0.5, 1.0", lora_name_b=b)
    images = res["result"][1]
    assert [r["label"] for r in report["rows"]] == [f"{b} 0.5", f"{b} 1"]
    for r, wb, col, wa in ((0, 0.5, 0, None), (1, 1.0, 1, 1.0)):  # B alone; A and B together
        rows = ([StackRow(a, wa, wa)] if wa else []) + [StackRow(b, wb, wb)]
        m, c, _ = LoraLabApplyStack().apply(host["model"], LoraStack(tuple(rows)), "none", 1.0, clip=host["clip"])[
            "result"]
        oracle = _core_image({**host, "clip": c}, [], model=m)
        diff = (images[r * 2 + col] - oracle).abs().max().item()
        assert diff < CELL_TOLERANCE, f"row {wb}, column {wa}: {diff}"


def test_block_preset_rows_and_prompt_rows(host):
    lora = host["full"]["kohya"].path.name
    res, report = _sweep(host, lora, 1.0, 1.0, 1, axis="block_presets", axis_values="ALL\nOUTD")
    images = res["result"][1]
    assert torch.equal(images[0], images[2]), "block-preset rows share the plain reference"
    assert (images[1] - _core_image(host, [(lora, 1.0)])).abs().max() < CELL_TOLERANCE
    assert (images[3] - images[1]).abs().mean() > 1e-3, "the OUTD row equals the ALL row"
    assert report["cells"][3]["metrics"]["change_ref"] > 0
    res, report = _sweep(host, lora, 1.0, 1.0, 1, axis="prompts", axis_values="a red barn\na city at night")
    images = res["result"][1]
    assert torch.equal(images[2], _core_image(host, [], prompt="a city at night"))


@pytest.mark.parametrize("kw, match", [
    (dict(count=0), "weight_count"),
    (dict(count=500), "weight_count"),
    (dict(start=0.5, end=0.5, count=3), "identical"),
    (dict(axis="prompts", axis_values=" "), "holds no prompts"),
    (dict(axis="lora_b_strength", axis_values="0.5"), "no lora_name_b"),
    (dict(block_weights="IN99=1"), "IN99"),
])
def test_bad_input_is_refused_before_sampling(host, monkeypatch, kw, match):
    from lora_lab.lora_ops.errors import LoraLabError
    from lora_lab.nodes import sampling

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started before the input was checked")
    monkeypatch.setattr(sampling, "sample_latent", no_sampling)
    start, end, count = kw.pop("start", 0.1), kw.pop("end", 1.0), kw.pop("count", 2)
    with pytest.raises(LoraLabError, match=match):
        _sweep(host, host["full"]["kohya"].path.name, start, end, count, **kw)


def test_lora_that_overflows_fp16_above_a_known_weight(host, tmp_path):
    """One element of dW is 80000: merged into fp16 weights it overflows from w = 65520 / 80000 = 0.819 on.
    The sweep flags 0.9 and 1.0 as overflow and names 0.9 as the break point; core's merge at 0.9
    really makes a non-finite image, and at 0.8 a finite one."""
    import comfy.sd

    from testkit import models

    module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    up, down = torch.zeros(320, 1), torch.zeros(1, 320)
    up[0, 0], down[0, 0] = 400.0, 200.0
    up[1:, 0] = torch.linspace(-0.01, 0.01, 319)
    name = "overflow_above_0.82.safetensors"
    folder = host["full"]["kohya"].path.parent
    save_file({f"{module}.lora_up.weight": up, f"{module}.lora_down.weight": down, f"{module}.alpha": torch.tensor(1.0)},
              str(tmp_path / name))
    model16 = comfy.sd.load_checkpoint_guess_config(str(models.sd15_checkpoint()), output_vae=False, output_clip=False,
                                                    model_options={"dtype": torch.float16})[0]
    with use_model_dirs(loras_dir=tmp_path, output_dir=host["out"]):
        res, report = _sweep(host, name, 0.7, 1.0, 4, model=model16)
        bp = report["break_points"][0]
        assert bp is not None and bp["weight"] == 0.9 and "overflow" in bp["reason"]
        flags = {c["weight"]: c["flags"] for c in report["cells"] if c["weight"] is not None}
        assert flags == {0.7: [], 0.8: [], 0.9: ["overflow"], 1.0: ["overflow"]}
        assert report["overflow_weight"][0]["above"] == pytest.approx(0.819, abs=1e-3)
        assert torch.isfinite(_core_image(host, [(name, 0.8)], model=model16)).all()
        assert not torch.isfinite(_core_image(host, [(name, 0.9)], model=model16)).all()
    assert folder.exists()


def test_auto_mode_fits_the_batch_to_free_memory(host, monkeypatch):
    """auto: the whole row when memory allows, chunks when it does not, cell by cell below two cells."""
    import comfy.model_management as mm

    from lora_lab.nodes.sweep import LoraLabSweep

    model = host["model"]
    shape = torch.Size([1, 4, 8, 8])
    per_cell = model.memory_required([2, 4, 8, 8])
    base = model.model_size()

    monkeypatch.setattr(mm, "loaded_models", lambda *a, **k: [])  # the model still has to be loaded

    def mode_with(free):
        monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: free)
        return LoraLabSweep._choose_mode(model, "auto", 0, 10, shape, [{}])

    assert mode_with(base + 1000 * per_cell) == ("batched", 10)
    mode, chunk = mode_with(base + 5 * per_cell)
    assert mode == "batched" and 1 < chunk < 10
    assert mode_with(0) == ("repatch", 1)
    assert LoraLabSweep._choose_mode(model, "batched", 3, 10, shape, [{}]) == ("batched", 3)
    assert LoraLabSweep._choose_mode(model, "repatch", 0, 10, shape, [{}]) == ("repatch", 1)
