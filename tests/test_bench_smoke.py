"""The benchmark's code path on the small fp16 SD1.5 model: it runs, reports every figure, restores
bit-exactly. Speed is never asserted here; ``python -m bench`` measures it on the full-size model."""

from __future__ import annotations

import pytest
import torch

from testkit import fixtures, models
from testkit.host import import_pack


@pytest.fixture(scope="module")
def result():
    import_pack()
    from bench import lora_apply

    patcher, _ = models.small_sd15(torch.float16)
    path = fixtures.build("sd15")["kohya"].path
    return lora_apply.run(patcher, path, repeats=1, warmup=0, strength_repeats=1, cuda=False)


def test_reports_model_and_lora(result):
    assert result["model"]["unet_dtype"] == "float16"
    assert result["model"]["unet_params"] > 0
    assert result["lora"]["targets"] > 0 and result["lora"]["lora_params"] > 0
    assert result["patched_base_params"] > 0
    assert set(result["read"]) == {"core", "lora_lab"}


def test_every_figure_present(result):
    cpu = result["devices"]["cpu"]
    for name in ("core", "lora_lab"):
        apply = cpu["apply"][name]
        assert set(apply["median_s"]) == {"prepare", "patch", "unpatch", "apply_total"}
        assert set(apply["peak_bytes_max"]) == {"patch_peak_extra", "patched_held_extra", "unpatch_peak_extra"}
        assert all(len(v) == 1 for v in apply["all_s"].values())
        assert set(cpu["strength_change"][name]["median_s"]) == {"change"}
    assert cpu["apply"]["core"]["targets_patched"] == cpu["apply"]["lora_lab"]["targets_patched"] > 0


def test_restores_are_bit_exact(result):
    from bench import lora_apply

    for scenario in result["devices"]["cpu"].values():
        for name in ("core", "lora_lab"):
            assert scenario[name]["restores_checked"] >= 1
            assert scenario[name]["restores_bit_exact"], scenario[name]["restore_mismatches"]
    assert lora_apply.bit_exact(result)


def test_strength_change_gives_the_fresh_result(result):
    change = result["devices"]["cpu"]["strength_change"]
    assert change["core"]["result_equals_fresh_apply"]
    assert change["lora_lab"]["result_equals_fresh_apply"]


def test_ratio_rows(result):
    from bench import lora_apply

    rows = lora_apply.ratios(result)
    metrics = {(r["scenario"], r["metric"]) for r in rows}
    assert ("apply", "patch s") in metrics and ("strength_change", "change s") in metrics
    assert all(r["core"] is not None and r["lora_lab"] is not None for r in rows)


def test_same_bits_sees_one_ulp():
    from bench.kit import same_bits

    a = torch.tensor([1.0, -0.0], dtype=torch.float16)
    assert same_bits(a, a.clone())
    assert not same_bits(a, torch.tensor([1.0, 0.0], dtype=torch.float16))  # -0.0 == 0.0 but not the same bits
    assert not same_bits(a, torch.nextafter(a, torch.full_like(a, 2.0)))


def test_train_bench_runs_both_paths_on_the_small_model():
    """``bench.train`` on the small SD1.5 model and VAE, one timed step: every figure and ratio present."""
    import_pack()
    from bench import train as bench_train
    from testkit.small_vae import small_vae

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            patcher, clip = models.small_sd15()
            vae = small_vae()
        result = bench_train.run(patcher, clip, vae, steps=1)
    finally:
        torch.set_num_threads(threads)
    assert set(result["impls"]) == {"core", "lora_lab_locon_all", "lora_lab_lora_attn_mlp"}
    for figures in result["impls"].values():
        assert figures["steps_per_s"] > 0 and figures["peak_extra_bytes"] > 0
    rows = bench_train.ratios(result)
    assert len(rows) == 4 and all(r["ratio"] is not None and r["ratio"] > 0 for r in rows)


def test_lycoris_bench_path_on_a_loha_file():
    """``lycoris_apply`` runs ``lora_apply``'s scenarios on a LoHa file: here the small LyCORIS fixture."""
    import_pack()
    from bench import lora_apply, lycoris_apply

    patcher, _ = models.small_sd15(torch.float16)
    result = lora_apply.run(patcher, fixtures.build("sd15")["loha"].path, repeats=1, warmup=0, strength_repeats=1,
                            cuda=False)
    assert result["lora"]["targets"] > 0 and result["lora"]["ranks"] == [fixtures.RANK]
    assert lora_apply.bit_exact(result)
    apply = result["devices"]["cpu"]["apply"]
    assert apply["core"]["targets_patched"] == apply["lora_lab"]["targets_patched"] > 0
    assert all(r["benchmark"] == "lycoris_apply" for r in lycoris_apply.ratios(result))


def test_sweep_bench_runs_both_sides_and_they_agree():
    """The sweep benchmark's code path at a tiny size: both sides render the same images."""
    import_pack()
    from bench import sweep
    from testkit import models

    lora = fixtures.build("sd15_full")["kohya"].path
    result = sweep.run(models.sd15_checkpoint(), lora, settings={"cpu": {"size": 64, "steps": 1}}, weights=[0.5, 1.0])
    r = result["devices"]["cpu"]
    assert r["core_s"] > 0 and r["lora_lab_s"] > 0 and r["mode"].startswith("batched")
    assert r["reference_bit_exact"] and r["max_pixel_diff"] < 1e-3
    rows = sweep.ratios(result)
    assert rows[0]["ratio"] > 0 and r["single_image_s"] > 0
    assert rows[1]["metric"] == "x one image" and rows[1]["lora_lab"] == r["lora_lab_s"] / r["single_image_s"]
    import gc

    import comfy.model_management as mm

    mm.unload_all_models()  # the full-size model stays referenced by ComfyUI's model management otherwise
    gc.collect()
