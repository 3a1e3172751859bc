"""lora_ops.combine: merging several LoRAs on one weight, against independent references.

References: float64 formulas written out here (concat, sum), ``torch.linalg.svdvals`` in float64 for
the Eckart-Young error, ``adapters.dora_delta`` for DoRA, and ``peft.utils.merge_utils`` for TIES,
DARE and magnitude pruning (PEFT's DARE draws from the global RNG: it is seeded with
``torch.manual_seed(s)`` and ours gets ``torch.Generator().manual_seed(s)``, the same CPU stream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from peft.utils import merge_utils as peft_merge

from testkit.host import import_pack

# PEFT warns that density 1 prunes nothing; that is the case being compared.
pytestmark = pytest.mark.filterwarnings("ignore:The density 1.0 is greater than or equal to 1")

import_pack()
from lora_lab.lora_ops import combine  # noqa: E402  (import_pack registers the package)
from lora_lab.lora_ops.adapters import (FullDiff, LohaWeights, LokrWeights, LoraWeights,  # noqa: E402
                                        dora_delta)
from lora_lab.lora_ops.errors import LoraLabError, ShapeMismatchError  # noqa: E402
from lora_lab.lora_ops.keymap import Target  # noqa: E402
from lora_lab.lora_ops.patching import PatchEntry, apply_patches  # noqa: E402


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@dataclass
class Part:
    adapter: object
    strength: float


def lora(out, inn, r, alpha=None, kernel=None, seed=0, dtype=torch.float32):
    g = gen(seed)
    if kernel is None:
        return LoraWeights(up=torch.randn(out, r, generator=g).to(dtype),
                           down=torch.randn(r, inn, generator=g).to(dtype), alpha=alpha)
    return LoraWeights(up=torch.randn(out, r, 1, 1, generator=g).to(dtype),
                       down=torch.randn(r, inn, *kernel, generator=g).to(dtype), alpha=alpha)


def ref_lora_delta64(a: LoraWeights, strength: float) -> torch.Tensor:
    """``s * (alpha / r) * up @ down`` in float64, written out (with the Tucker core contracted)."""
    r = a.down.shape[0]
    scale = 1.0 if not a.alpha else a.alpha / r
    up = a.up.double().reshape(a.up.shape[0], -1)
    down = a.down.double().reshape(r, -1)
    if a.mid is not None:
        down = torch.einsum("mnkl,nj->mjkl", a.mid.double(), down).reshape(r, -1)
    return strength * scale * (up @ down)


def flat(t):
    return t.reshape(t.shape[0], -1)


# --- concat -------------------------------------------------------------------------------------

CONCAT_CASES = {
    "linear": (None, [(4, 2.0, 0.8), (8, None, -0.5), (2, 1.0, 1.3)]),
    "conv3x3": ((3, 3), [(4, 2.0, 0.8), (6, 3.0, 0.7)]),
}


@pytest.mark.parametrize("case", list(CONCAT_CASES))
def test_concat_equals_weighted_sum_and_ranks_add(case):
    kernel, spec = CONCAT_CASES[case]
    out, inn = 40, 30  # larger than the total rank, so the rank of the sum is the sum of ranks
    parts = [Part(lora(out, inn, r, alpha, kernel, seed=i), s) for i, (r, alpha, s) in enumerate(spec)]
    merged = combine.merge_concat(parts)
    ref = sum(ref_lora_delta64(p.adapter, p.strength) for p in parts)
    total_rank = sum(r for r, _, _ in spec)
    assert merged.rank == total_rank and merged.alpha == total_rank and merged.scale == 1.0
    if kernel:
        assert merged.down.shape == (total_rank, inn, *kernel) and merged.up.shape == (out, total_rank, 1, 1)
        shape = (out, inn, *kernel)
    else:
        assert merged.down.shape == (total_rank, inn) and merged.up.shape == (out, total_rank)
        shape = (out, inn)
    got = merged.delta(torch.Size(shape), dtype=torch.float64)
    assert combine.relative_error(got, ref) < 1e-6
    torch.testing.assert_close(flat(got), ref, rtol=1e-5, atol=1e-5)
    assert int(torch.linalg.matrix_rank(ref)) == total_rank  # generic factors: the rank really adds up


def test_concat_tucker_part_folds_core_exactly():
    g = gen(7)
    tucker = LoraWeights(up=torch.randn(8, 3, 1, 1, generator=g), down=torch.randn(3, 5, 1, 1, generator=g),
                         alpha=1.5, mid=torch.randn(3, 3, 3, 3, generator=g))
    plain = lora(8, 5, 2, 4.0, (3, 3), seed=8)
    merged = combine.merge_concat([Part(tucker, 0.9), Part(plain, 1.1)])
    ref = ref_lora_delta64(tucker, 0.9) + ref_lora_delta64(plain, 1.1)
    assert merged.mid is None and merged.down.shape == (5, 5, 3, 3)
    torch.testing.assert_close(flat(merged.delta(torch.Size((8, 5, 3, 3)), torch.float64)), ref,
                               rtol=1e-5, atol=1e-5)


def test_concat_matches_the_live_stack_kernel():
    """concat at strength 1 == apply_patches of the stack (the merge kernel the loader uses)."""
    base = torch.randn(12, 10, generator=gen(3))
    parts = [Part(lora(12, 10, 4, 2.0, seed=1), 0.7), Part(lora(12, 10, 3, 6.0, seed=2), -1.2)]
    live = {"w": base.clone()}
    apply_patches(live, [PatchEntry(Target("w"), p.adapter, p.strength) for p in parts])
    merged = {"w": base.clone()}
    apply_patches(merged, [PatchEntry(Target("w"), combine.merge_concat(parts), 1.0)])
    torch.testing.assert_close(merged["w"], live["w"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("adapter", [
    FullDiff(torch.randn(6, 5)),
    LohaWeights(torch.randn(6, 2), torch.randn(2, 5), torch.randn(6, 2), torch.randn(2, 5)),
    LokrWeights(w1=torch.randn(2, 1), w2=torch.randn(3, 5)),
    LoraWeights(up=torch.randn(6, 2), down=torch.randn(2, 5), magnitude=torch.rand(6) + 0.5),
], ids=["full", "loha", "lokr", "dora"])
def test_concat_refuses_non_low_rank_parts(adapter):
    with pytest.raises(LoraLabError, match="not low-rank.*part 1"):
        combine.merge_concat([Part(lora(6, 5, 2), 1.0), Part(adapter, 1.0)])


# --- sum and svd --------------------------------------------------------------------------------

def mixed_parts(out=16, inn=12):
    g = gen(11)
    return [
        Part(lora(out, inn, 4, 2.0, seed=1), 0.8),
        Part(LohaWeights(torch.randn(out, 2, generator=g), torch.randn(2, inn, generator=g),
                         torch.randn(out, 2, generator=g), torch.randn(2, inn, generator=g), alpha=1.0),
             -0.6),
        Part(LokrWeights(w1=torch.randn(4, 3, generator=g), w2a=torch.randn(4, 2, generator=g),
                         w2b=torch.randn(2, 4, generator=g), alpha=2.0), 1.1),
        Part(FullDiff(torch.randn(out, inn, generator=g) * 0.1), 0.5),
    ]


def ref_sum64(parts, shape):
    return sum(p.strength * p.adapter.delta(torch.Size(shape), dtype=torch.float64) for p in parts)


def test_sum_materialises_every_format():
    parts = mixed_parts()
    got = combine.merge_sum(parts, shape=(16, 12))
    assert isinstance(got, FullDiff) and got.diff.shape == (16, 12)
    assert combine.relative_error(got.diff, ref_sum64(parts, (16, 12))) < 1e-6


@pytest.mark.parametrize("solver", ["gram", "svd"])
@pytest.mark.parametrize("shape", [(16, 12), (10, 6, 3, 3)], ids=["tall-linear", "wide-conv3x3"])
def test_svd_full_rank_reproduces_the_sum(shape, solver):
    if len(shape) == 2:
        parts = mixed_parts()
    else:
        parts = [Part(lora(10, 6, 5, 2.0, (3, 3), seed=4), 0.9),
                 Part(lora(10, 6, 4, None, (3, 3), seed=5), 0.4)]
    full = min(shape[0], math.prod(shape[1:]))
    merged, err = combine.merge_svd(parts, rank=full, shape=shape, solver=solver)
    exact = ref_sum64(parts, shape)
    # a cap at full size keeps the delta's own rank (9 for two LoCons of rank 5 and 4), no zero directions
    own = int(torch.linalg.matrix_rank(exact.reshape(shape[0], -1)))
    assert merged.rank == min(full, own) and merged.scale == 1.0
    assert merged.down.shape == (min(full, own), *shape[1:])
    approx = merged.delta(torch.Size(shape), torch.float64)
    assert combine.relative_error(approx, exact) < 1e-5
    assert err < 1e-5
    no_target, _ = combine.merge_svd(parts, shape=shape, solver=solver)  # neither rank nor energy: full rank
    assert no_target.rank == full


@pytest.mark.parametrize("solver", ["gram", "svd"])
@pytest.mark.parametrize("shape,rank", [((16, 12), 3), ((16, 12), 7), ((12, 30), 5), ((10, 6, 3, 3), 4)])
def test_svd_low_rank_error_is_measured_and_optimal(shape, rank, solver):
    g = gen(21)
    parts = [Part(FullDiff(torch.randn(*shape, generator=g)), 0.7),
             Part(FullDiff(torch.randn(*shape, generator=g)), 0.3)]
    merged, err = combine.merge_svd(parts, rank=rank, solver=solver)
    exact = flat(ref_sum64(parts, shape))
    measured = combine.relative_error(flat(merged.delta(torch.Size(shape), torch.float64)), exact)
    sv = torch.linalg.svdvals(exact)
    eckart_young = float(sv[rank:].square().sum().sqrt() / exact.norm())
    assert merged.rank == rank
    assert err == pytest.approx(measured, rel=1e-5)
    assert err == pytest.approx(eckart_young, rel=1e-5)
    assert 0.0 < err < 1.0


@pytest.mark.parametrize("solver", ["gram", "svd"])
@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95, 0.999, 1.0])
def test_svd_energy_picks_smallest_rank(energy, solver):
    g = gen(5)
    d = torch.randn(20, 14, generator=g) @ torch.diag(torch.logspace(0, -2, 14))
    merged, err = combine.merge_svd([Part(FullDiff(d), 1.0)], energy=energy, solver=solver)
    sv2 = torch.linalg.svdvals(d.double()).square()
    frac = torch.cumsum(sv2, 0) / sv2.sum()
    r = merged.rank
    assert frac[r - 1] >= energy - 1e-6
    if r > 1:
        assert frac[r - 2] < energy
    assert err == pytest.approx(math.sqrt(max(0.0, 1.0 - float(frac[r - 1]))), abs=1e-5)


def test_merged_to_lora_takes_any_method_output():
    deltas = [torch.randn(9, 7, generator=gen(i)) for i in range(3)]
    ties = combine.merge_ties(deltas, [1.0, 0.5, 0.8], density=0.5)
    lo, err = combine.merged_to_lora(ties, rank=7)
    assert err < 1e-5 and combine.relative_error(lo.delta(ties.shape), ties) < 1e-5


@pytest.mark.parametrize("solver", ["gram", "svd"])
@pytest.mark.parametrize("shape", [(8, 6), (6, 8)], ids=["tall", "wide"])
def test_svd_factors_are_balanced(shape, solver):
    d = torch.randn(*shape, generator=gen(2)) * 100
    lo, _ = combine.merged_to_lora(d, rank=3, solver=solver)
    torch.testing.assert_close(lo.up.norm(dim=0), lo.down.norm(dim=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver", ["gram", "svd"])
def test_svd_of_rank_deficient_and_zero_deltas(solver):
    low = torch.randn(9, 2, generator=gen(3)) @ torch.randn(2, 7, generator=gen(4))
    lo, err = combine.merged_to_lora(low, solver=solver)  # full rank 7 of a rank-2 delta: no 0/0
    assert lo.rank == 7 and torch.isfinite(lo.up).all() and torch.isfinite(lo.down).all() and err < 1e-5
    lo, err = combine.merged_to_lora(low, energy=1.0 - 1e-9, solver=solver)
    assert lo.rank == 2 and err < 1e-5
    zero, err = combine.merged_to_lora(torch.zeros(5, 4), energy=0.9, solver=solver)
    assert zero.rank == 1 and err == 0.0 and not zero.up.any()


# --- DoRA ---------------------------------------------------------------------------------------

def test_dora_parts_materialise_against_base():
    g = gen(9)
    base = torch.randn(10, 8, generator=g)
    dora = LoraWeights(up=torch.randn(10, 2, generator=g) * 0.3, down=torch.randn(2, 8, generator=g),
                       alpha=1.0, magnitude=base.norm(dim=1) * 1.2)
    dora_in = LoraWeights(up=torch.randn(10, 3, generator=g) * 0.3, down=torch.randn(3, 8, generator=g),
                          magnitude=base.norm(dim=0) * 0.9)  # magnitude on the input axis
    plain = lora(10, 8, 3, 2.0, seed=10)
    parts = [Part(dora, 0.7), Part(dora_in, 0.4), Part(plain, -0.5)]
    ref = (0.7 * dora_delta(base.double(), dora, torch.float64)
           + 0.4 * dora_delta(base.double(), dora_in, torch.float64)
           + ref_lora_delta64(plain, -0.5))
    summed = combine.merge_sum(parts, base=base)
    assert combine.relative_error(summed.diff, ref) < 1e-6
    merged, err = combine.merge_svd(parts, rank=8, base=base)
    assert err < 1e-5 and combine.relative_error(merged.delta(base.shape), ref) < 1e-5
    live = {"w": base.clone()}  # the loader's kernel agrees: the merged file equals the live stack
    apply_patches(live, [PatchEntry(Target("w"), p.adapter, p.strength) for p in parts])
    assert combine.relative_error(live["w"] - base, summed.diff) < 1e-6


def test_dora_without_base_is_refused():
    dora = LoraWeights(up=torch.randn(4, 1), down=torch.randn(1, 3), magnitude=torch.ones(4))
    with pytest.raises(LoraLabError, match="dora.*base"):
        combine.merge_sum([Part(dora, 1.0)])


# --- TIES / DARE / magnitude prune against PEFT merge_utils -------------------------------------

def task_deltas(shape=(24, 18), n=3, seed=0):
    g = gen(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


WEIGHTS = [0.9, -0.4, 1.3]


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("shape", [(24, 18), (8, 4, 3, 3)], ids=["linear", "conv"])
def test_magnitude_prune_matches_peft(density, shape):
    deltas = task_deltas(shape)
    ref = peft_merge.magnitude_prune(deltas, torch.tensor(WEIGHTS), density)
    got = combine.merge_magnitude_prune(deltas, WEIGHTS, density)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["total", "frequency"])
@pytest.mark.parametrize("density", [0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(24, 18), (8, 4, 3, 3)], ids=["linear", "conv"])
def test_ties_matches_peft(method, density, shape):
    deltas = task_deltas(shape, seed=1)
    ref = peft_merge.ties(deltas, torch.tensor(WEIGHTS), density, majority_sign_method=method)
    got = combine.merge_ties(deltas, WEIGHTS, density, majority_sign_method=method)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_magnitude_mask_matches_peft_pruning():
    t = torch.randn(13, 11, generator=gen(4))
    for density in (0.05, 0.29, 0.5, 0.99):
        ref = peft_merge.magnitude_based_pruning(t, density) != 0
        assert torch.equal(combine.magnitude_mask(t, density), ref)


def test_elect_sign_and_disjoint_mean_match_peft_steps():
    stacked = torch.stack(task_deltas((7, 5), seed=6)) * torch.stack([combine.magnitude_mask(t, 0.5)
                                                                        for t in task_deltas((7, 5), seed=6)])
    for method in ("total", "frequency"):
        agree = combine.elect_sign(stacked, method)
        assert torch.equal(agree, peft_merge.calculate_majority_sign_mask(stacked, method))
        torch.testing.assert_close(combine.disjoint_mean(stacked, agree),
                                   peft_merge.disjoint_merge(stacked, agree), rtol=0, atol=0)


def _peft_rescales() -> bool:
    """Whether the installed PEFT's random_pruning applies its 1/density (fixed in huggingface/peft#3152)."""
    torch.manual_seed(0)
    pruned = peft_merge.random_pruning(torch.ones(64), 0.5, rescale=True)
    return bool((pruned == 2.0).any())


@pytest.mark.parametrize("seed", [0, 1234])
@pytest.mark.parametrize("density", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("method", ["linear", "ties"])
def test_dare_matches_peft_with_same_seed(method, density, seed):
    deltas = task_deltas(seed=2)
    peft_fn = peft_merge.dare_linear if method == "linear" else peft_merge.dare_ties
    torch.manual_seed(seed)  # PEFT draws its masks from the global RNG
    ref = peft_fn(deltas, torch.tensor(WEIGHTS), density)
    torch.manual_seed(seed + 1)  # ours must not read the global RNG: move it away from the seed
    rescaled = combine.merge_dare(deltas, WEIGHTS, density, gen(seed), method=method)
    plain = combine.merge_dare(deltas, WEIGHTS, density, gen(seed), method=method, rescale=False)
    if _peft_rescales():
        torch.testing.assert_close(rescaled, ref, rtol=0, atol=0)
    else:  # PEFT 0.17.1 drops its torch.div result: it equals ours without the 1/density
        torch.testing.assert_close(plain, ref, rtol=0, atol=0)
    torch.testing.assert_close(rescaled * density, plain, rtol=1e-6, atol=1e-6)
    if density < 1.0:
        assert (plain == 0).any()


def test_dare_is_seeded_and_leaves_global_rng_alone():
    deltas = task_deltas()
    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    a = combine.merge_dare(deltas, WEIGHTS, 0.5, gen(7))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = combine.merge_dare(deltas, WEIGHTS, 0.5, gen(7))
    c = combine.merge_dare(deltas, WEIGHTS, 0.5, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dare_mask_is_unbiased_in_expectation():
    d = [torch.ones(200, 200)]
    got = combine.merge_dare(d, [1.0], 0.25, gen(3))
    assert float(got.mean()) == pytest.approx(1.0, abs=0.03)
    assert set(got.unique().tolist()) == {0.0, 4.0}


def test_part_deltas_feed_the_delta_methods():
    parts = mixed_parts()
    deltas, strengths = combine.part_deltas(parts, shape=(16, 12))
    assert strengths == [p.strength for p in parts]
    ref = peft_merge.ties([d.clone() for d in deltas], torch.tensor(strengths), 0.5)
    torch.testing.assert_close(combine.merge_ties(deltas, strengths, 0.5), ref, rtol=0, atol=0)


# --- bad input ----------------------------------------------------------------------------------

def _two_parts():
    return [Part(lora(6, 5, 2, seed=1), 1.0), Part(lora(6, 5, 3, seed=2), 0.5)]


@pytest.mark.parametrize("call", [
    lambda: combine.merge_concat([]),
    lambda: combine.merge_sum([]),
    lambda: combine.merge_svd([], rank=1),
    lambda: combine.part_deltas([]),
], ids=["concat", "sum", "svd", "part_deltas"])
def test_empty_parts(call):
    with pytest.raises(LoraLabError, match=r"empty \(got \[\]\)"):
        call()


def test_empty_deltas():
    for call in (lambda: combine.merge_ties([], [], 0.5), lambda: combine.merge_magnitude_prune([], [], 0.5),
                 lambda: combine.merge_dare([], [], 0.5, gen())):
        with pytest.raises(LoraLabError, match=r"empty \(got \[\]\)"):
            call()


def test_mismatched_shapes():
    parts = [Part(lora(6, 5, 2), 1.0), Part(lora(6, 7, 2), 1.0)]
    for call in (lambda: combine.merge_concat(parts), lambda: combine.merge_sum(parts),
                 lambda: combine.merge_svd(parts, rank=2)):
        with pytest.raises(ShapeMismatchError, match=r"6x7.*\(6, 5\)"):
            call()
    with pytest.raises(ShapeMismatchError, match=r"\(6, 5, 3, 3\)"):
        combine.merge_concat([Part(lora(6, 5, 2, kernel=(3, 3)), 1.0),
                              Part(lora(6, 5, 2, kernel=(1, 1)), 1.0)],
                             shape=(6, 5, 3, 3))
    with pytest.raises(ShapeMismatchError, match=r"\(4, 4\)"):
        combine.merge_sum([Part(LohaWeights(torch.randn(6, 2), torch.randn(2, 5), torch.randn(6, 2),
                                            torch.randn(2, 5)), 1.0)], shape=(4, 4))
    with pytest.raises(ShapeMismatchError, match=r"delta 1 has shape \(3, 3\)"):
        combine.merge_ties([torch.ones(2, 2), torch.ones(3, 3)], [1.0, 1.0], 0.5)
    with pytest.raises(ShapeMismatchError, match=r"\(3, 3\)"):
        combine.merge_sum(_two_parts(), base=torch.zeros(3, 3))


@pytest.mark.parametrize("rank", [0, -1, 6, 100, 2.5, True])
def test_rank_out_of_range(rank):
    with pytest.raises(LoraLabError, match=rf"rank must be .*\[1, 5\].*got {rank!r}"):
        combine.merge_svd(_two_parts(), rank=rank)


@pytest.mark.parametrize("energy", [0, 0.0, -0.1, 1.01, float("nan"), 2])
def test_energy_out_of_range(energy):
    with pytest.raises(LoraLabError, match=rf"energy must be in \(0, 1\], got {energy!r}"):
        combine.merge_svd(_two_parts(), energy=energy)


def test_rank_and_energy_together():
    with pytest.raises(LoraLabError, match=r"rank=2, energy=0.9"):
        combine.merge_svd(_two_parts(), rank=2, energy=0.9)


@pytest.mark.parametrize("density", [0, 0.0, -0.5, 1.5, float("nan")])
def test_density_out_of_range(density):
    deltas = task_deltas()
    for call in (lambda: combine.merge_ties(deltas, WEIGHTS, density),
                 lambda: combine.merge_magnitude_prune(deltas, WEIGHTS, density),
                 lambda: combine.merge_dare(deltas, WEIGHTS, density, gen())):
        with pytest.raises(LoraLabError, match=rf"density must be in \(0, 1\], got {density!r}"):
            call()


def test_unknown_method_names():
    deltas = task_deltas()
    with pytest.raises(LoraLabError, match="majority_sign_method 'median'"):
        combine.merge_ties(deltas, WEIGHTS, 0.5, majority_sign_method="median")
    with pytest.raises(LoraLabError, match="DARE method 'quadratic'"):
        combine.merge_dare(deltas, WEIGHTS, 0.5, gen(), method="quadratic")
    with pytest.raises(LoraLabError, match="SVD solver 'lapack'"):
        combine.merge_svd(_two_parts(), rank=2, solver="lapack")
    with pytest.raises(LoraLabError, match="majority_sign_method 'count'"):
        combine.merge_dare(deltas, WEIGHTS, 0.5, gen(), method="ties", majority_sign_method="count")


def test_other_bad_input():
    deltas = task_deltas()
    with pytest.raises(LoraLabError, match=r"2 weights for 3 deltas"):
        combine.merge_ties(deltas, [1.0, 1.0], 0.5)
    with pytest.raises(LoraLabError, match=r"finite.*inf"):
        combine.merge_magnitude_prune(deltas, [1.0, float("inf"), 1.0], 0.5)
    with pytest.raises(LoraLabError, match="torch.Generator.*int"):
        combine.merge_dare(deltas, WEIGHTS, 0.5, 42)
    with pytest.raises(LoraLabError, match=r"strength=nan"):
        combine.merge_sum([Part(lora(6, 5, 2), float("nan"))])
    with pytest.raises(LoraLabError, match=r"bias"):
        combine.merged_to_lora(torch.ones(5), rank=1)
    with pytest.raises(LoraLabError, match=r"\['loha'\].*shape="):
        combine.merge_sum([Part(LohaWeights(torch.randn(6, 2), torch.randn(2, 5), torch.randn(6, 2),
                                            torch.randn(2, 5)), 1.0)])
    assert issubclass(LoraLabError, ValueError)


@pytest.mark.parametrize("solver", ["gram", "svd"])
def test_a_rank_cap_above_the_deltas_rank_keeps_no_zero_directions(solver):
    """Two rank-4 LoRAs merged with a rank cap of 64: the file must hold rank 8, not 56 zero directions."""
    parts = [Part(lora(96, 80, 4, 4.0, seed=s), w) for s, w in ((21, 0.8), (22, -0.5))]
    merged, err = combine.merge_svd(parts, rank=64, solver=solver)
    assert merged.rank == 8 and err < 1e-5
