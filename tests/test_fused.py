"""The merge's fast paths without a GPU: the CPU swap path, the fused path's bookkeeping, and the
fused Triton kernels themselves under Triton's CPU interpreter (the same kernels run compiled on a GPU
in tests/test_gpu_merge.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testkit.host import import_pack

pack = import_pack()
ops = pack.lora_ops
from lora_lab.lora_ops import fused  # noqa: E402
from lora_lab.lora_ops import patching as merge_mod  # noqa: E402
from lora_lab.lora_ops.keymap import Target  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BITS = torch.int16


def _lora(rows, cols, rank, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return ops.LoraWeights(up=(torch.randn(rows, rank, generator=g) * 0.1).to(dtype),
                           down=(torch.randn(rank, cols, generator=g) * 0.1).to(dtype), alpha=float(rank) / 2)


# --- the CPU swap path --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(40, 24), (16, 6, 3, 3)])
def test_swap_path_equals_in_place_path_and_swaps_the_original_back(dtype, shape, monkeypatch):
    monkeypatch.setattr(merge_mod, "CPU_CHUNK", 64)  # many row chunks, the last one partial
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(shape, generator=g) * 0.2).to(dtype)
    original = w.clone()
    cols = w[0].numel()
    entries = [merge_mod.PatchEntry(Target("w"), _lora(shape[0], cols, 4, seed=1), 0.8, "a"),
               merge_mod.PatchEntry(Target("w"), _lora(shape[0], cols, 2, seed=2), -1.3, "b")]
    reference = {"w": w.clone()}
    merge_mod.apply_patches(reference, entries)  # the in-place path: fp32 copy of the layer
    weights = {"w": w}
    backup = merge_mod.apply_patches(weights, entries, in_place=False)
    assert weights["w"] is not w and torch.equal(w, original)  # the original tensor is untouched
    assert torch.equal(weights["w"].float(), reference["w"].float()) or torch.allclose(
        weights["w"].float(), reference["w"].float(), rtol=torch.finfo(dtype).eps, atol=1e-7)
    assert "w" in backup and backup["w"] is w
    assert not torch.equal(weights["w"], original)
    merge_mod.restore_weights(weights, backup)
    assert weights["w"] is w and torch.equal(w, original)


def test_swap_path_overflow_restores_and_names_the_layer():
    w = torch.full((8, 8), 60000.0, dtype=torch.float16)
    entry = merge_mod.PatchEntry(Target("w"), ops.LoraWeights(up=torch.full((8, 1), 100.0),
                                                              down=torch.full((1, 8), 100.0)), 1.0, "hot")
    weights = {"w": w}
    with pytest.raises(ops.OverflowRiskError, match="hot"):
        merge_mod.apply_patches(weights, [entry], in_place=False)
    assert weights["w"] is w and bool((w == 60000.0).all())


def test_factor_scan_is_remembered_until_a_factor_changes(monkeypatch):
    scans = []
    real_isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: scans.append(t) or real_isfinite(t))
    lora = _lora(6, 5, 2, seed=4)
    entry = merge_mod.PatchEntry(Target("w"), lora, 1.0, "m")
    assert merge_mod.find_nonfinite([entry]) == [] and len(scans) == 2
    assert merge_mod.find_nonfinite([entry]) == [] and len(scans) == 2  # a strength change: no rescan
    lora.up[0, 0] = float("nan")  # written in place: the version counter moves
    assert merge_mod.find_nonfinite([entry]) == ["m"]
    lora.up = torch.ones(6, 2)  # replaced by another tensor
    assert merge_mod.find_nonfinite([entry]) == []
    with torch.inference_mode():  # as a file read inside ComfyUI's execution: no version counter
        frozen = _lora(6, 5, 2, seed=5)
    frozen_entry = merge_mod.PatchEntry(Target("w"), frozen, 1.0, "f")
    before = len(scans)
    assert merge_mod.find_nonfinite([frozen_entry]) == merge_mod.find_nonfinite([frozen_entry]) == []
    assert len(scans) == before + 2
    frozen.down = torch.full((2, 5), float("inf"))
    assert merge_mod.find_nonfinite([frozen_entry]) == ["f"]


def _every_kind(rows, cols, seed):
    """One adapter of every kind LoRA Lab applies, for a ``rows x cols`` weight (DoRA on a LoRA)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    return {
        "loha": ops.LohaWeights(w1a=r(rows, 2), w1b=r(2, cols), w2a=r(rows, 2), w2b=r(2, cols), alpha=1.0),
        "lokr": ops.LokrWeights(w1=r(2, 2), w2a=r(rows // 2, 2), w2b=r(2, cols // 2), alpha=2.0),
        "full": ops.FullDiff(diff=r(rows, cols)),
        "dora": ops.LoraWeights(up=r(rows, 2), down=r(2, cols), alpha=2.0, magnitude=r(rows).abs() + 1.0),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["loha", "lokr", "full", "dora", "slice"])
@pytest.mark.parametrize("shape", [(14, 8), (14, 4, 3, 3)])
def test_swap_path_takes_every_kind_and_equals_the_copy_path(dtype, kind, shape, monkeypatch):
    cols = shape[1] if len(shape) == 2 else shape[1] * 9
    # rows in chunks of 3, the last one partial; LoKr's 7-row blocks of w2 straddle chunks
    monkeypatch.setattr(merge_mod, "CPU_CHUNK", 3 * cols)
    g = torch.Generator().manual_seed(7)
    w = (torch.randn(shape, generator=g) * 0.3).to(dtype)
    original = w.clone()
    if kind == "slice":  # a fused weight's slice (Flux's qkv): rows 3..5 only, plus a LoRA on the whole
        entries = [merge_mod.PatchEntry(Target("w", (0, 3, 3)), _lora(3, cols, 2, seed=1), 1.0, "k"),
                   merge_mod.PatchEntry(Target("w"), _lora(14, cols, 2, seed=2), 0.5, "all")]
    else:
        entries = [merge_mod.PatchEntry(Target("w"), _every_kind(14, cols, seed=3)[kind], 0.8, kind),
                   merge_mod.PatchEntry(Target("w"), _lora(14, cols, 2, seed=4), -0.6, "lora")]
    reference = {"w": w.clone()}
    merge_mod.apply_patches(reference, entries)  # in place, behind a copy
    weights = {"w": w}
    backup = merge_mod.apply_patches(weights, entries, in_place=False)
    assert weights["w"] is not w and torch.equal(w, original) and backup.replaced["w"] is w
    assert not backup.copies
    # the same merge; only the products' summation order (BLAS blocking by block size) may differ, by
    # an ulp of fp32, which half-precision rounding almost always hides
    ulps = 4 if dtype == torch.float32 else 1
    torch.testing.assert_close(weights["w"], reference["w"], rtol=ulps * torch.finfo(dtype).eps, atol=1e-7)
    assert not torch.equal(weights["w"], original)
    merge_mod.restore_weights(weights, backup)
    assert weights["w"] is w and torch.equal(w, original)


# --- the fused path's bookkeeping (no kernel) ---------------------------------------------------

def test_tiles_cover_every_element_once():
    jobs = [fused.Job(f"k{i}", torch.empty(m, n), torch.empty(m, n), torch.empty(m, 4), torch.empty(4, n), 1.0)
            for i, (m, n) in enumerate([(1, 1), (64, 128), (65, 129), (300, 17)])]
    tiles = fused._tiles_for(jobs)
    for j, job in enumerate(jobs):
        seen = torch.zeros(job.view.shape, dtype=torch.int32)
        for _, tm, tn in tiles[tiles[:, 0] == j].tolist():
            seen[tm * fused.BLOCK_M:(tm + 1) * fused.BLOCK_M, tn * fused.BLOCK_N:(tn + 1) * fused.BLOCK_N] += 1
        assert bool((seen == 1).all()), job.key


def test_rounds_keep_overlapping_jobs_in_order_and_apart():
    w, v = torch.empty(12, 4), torch.empty(6, 4)

    def job(key, weight, view):
        return fused.Job(key, weight, view, torch.empty(view.shape[0], 1), torch.empty(1, 4), 1.0)

    a, b, c, d = job("w", w, w.narrow(0, 0, 4)), job("w", w, w.narrow(0, 4, 4)), job("w", w, w), job("v", v, v)
    e = job("w", w, w.narrow(0, 2, 4))
    rounds = fused._ordered_rounds([a, b, c, d, e])
    assert [[j.key for j in r] for r in rounds] == [["w", "w", "v"], ["w"], ["w"]]
    assert rounds[1] == [c] and rounds[2] == [e]


def test_matrix_views():
    w = torch.empty(8, 4, 3, 3)
    assert fused.as_matrix(w) == (8, 36, 36)
    assert fused.as_matrix(w.narrow(0, 2, 3)) == (3, 36, 36)
    assert fused.as_matrix(torch.empty(8, 6).narrow(1, 1, 3)) == (8, 3, 6)
    assert fused.as_matrix(torch.empty(8, 6).t()) is None
    assert fused.as_matrix(torch.empty(5)) is None


def test_cpu_weights_never_take_the_fused_path():
    assert not fused.available(torch.empty(4, 4, dtype=torch.float16))


# --- the kernels under Triton's interpreter -----------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the compiled kernels (tests/test_gpu_merge.py)")
@pytest.mark.parametrize("min_capacity,max_elements", [(1 << 16, 1 << 28), (300, 1 << 28), (300, 20000)])
def test_fused_kernels_under_the_interpreter(min_capacity, max_elements):
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = REPO / "tests" / "fused_scripts" / "interpret_check.py"
    proc = subprocess.run([sys.executable, str(script), str(REPO), str(min_capacity), str(max_elements)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failure_raised"] and result["untouched_after_failure"] == [True, True, True]
    assert result["same_as_torch"] == [True, True, True]
    assert result["original_ok"] and result["still_merged_after_original"]
    assert result["restored"] == [True, True, True]
    assert result["nonfinite"] == []
    assert result["records"] > 0 and result["rounds"] >= 2  # the fused slice's LoRA runs after the first
    if max_elements < 70 * 130 + 129 * 257:
        # cut by size: the two unaligned weights of the first round get a launch each (4 rounds, not 3)
        assert result["rounds"] == 4
    else:
        assert result["rounds"] == 3
        # a buffer of 300 records cannot hold the first launch: the skipped tiles get a second launch
        assert (result["launches"] > result["rounds"]) == (min_capacity < result["records"])
