"""Low-rank merges in place on the GPU, undone bit-exactly without a backup of the weights.

For every target weight ``W`` (fp16 or bf16, on a CUDA device) and LoRA factors ``up`` (M x r),
``down`` (r x N), one Triton kernel walks tiles of all targets at once and computes, in fp32 with
one rounding::

    W'  = round(W  + a * (up @ down))        the merge
    W'' = round(W' - a * (up @ down))        what the restore will compute

The restore runs the same kernel with ``-a`` and the same product, so ``W''`` is known while the merge
still has ``W`` in registers: wherever ``W'' != W`` (``W'`` landed in a larger binade, so its rounding
dropped a bit of ``W``; or a tie), the merge records the element's position in its tile and its
original bits. Restoring writes ``W''`` and then those recorded bits: the original weights, bit for
bit, for the memory traffic of reading and writing each weight once, where a backup would add a copy
of every patched weight (on the GPU: the model's memory twice; on the CPU: a PCIe round trip).

What is held while a LoRA is merged: the factors in the weight's dtype on the device, one record of
20 bytes per tile of ``BLOCK_M x BLOCK_N`` elements, and 4 bytes per recorded element (the share of
elements grows with ``|dW| / |W|``: about 1% at 1%, 7% at 10%). The record buffer is sized before
the launch; a tile whose records do not fit is left unmerged and flagged, and a second launch merges
the flagged tiles into a buffer of the exact size, so nothing is ever lost. A launch covers at most
``ROUND_ELEMENTS`` weight elements, so that buffer is bounded (64 MiB) whatever the model's size.

Each launch merges at most one LoRA into a weight (tiles of one launch must not overlap); a weight
with several LoRAs gets one launch per LoRA ("rounds"), undone in reverse order.

:func:`available` says whether this path can run (Triton importable and the weight on CUDA); the
caller (``lora_ops.patching``) falls back to its backup-based path otherwise.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs go without this path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

BLOCK_M = 64
BLOCK_N = 128
BLOCK_K = 16
NUM_WARPS = 4
FIX_BLOCK = 1024
# Weight elements one launch merges at most: its record buffer (capacity_fraction of them, 4 bytes each:
# 64 MiB at 1/16) is what patching needs beyond the records kept, instead of one buffer for the model.
ROUND_ELEMENTS = 1 << 28
_LOCAL_SHIFT = 16  # record = (element index in its tile) << 16 | original 16 bits

HALF = (torch.float16, torch.bfloat16)


def available(weight: torch.Tensor) -> bool:
    """Whether :func:`merge_lowrank` can merge into ``weight``."""
    return triton is not None and weight.is_cuda and weight.dtype in HALF


def as_matrix(view: torch.Tensor) -> tuple[int, int, int] | None:
    """``(rows, cols, row stride)`` of ``view`` read as a row-major matrix, or ``None`` if it is not one."""
    if view.dim() < 2:
        return None
    try:
        m = view.view(view.shape[0], -1)
    except RuntimeError:
        return None
    if m.stride(1) != 1 and m.shape[1] > 1:
        return None
    return int(m.shape[0]), int(m.shape[1]), int(m.stride(0))


if triton is not None:

    @triton.jit
    def _step(x, c, acc, DTYPE: tl.constexpr):
        # the one expression both the merge, its check and the restore evaluate
        return (x.to(tl.float32) + c * acc).to(DTYPE)

    @triton.jit(do_not_specialize=["coeff_col", "capacity", "record"])
    def _merge_kernel(base, tiles, jobs_ptr, jobs_dim, coeffs, coeff_col, fix_buf, fix_tab, counter, capacity, record,
                      DTYPE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      FB: tl.constexpr, ALIGNED: tl.constexpr):
        # record != 0: merge and record; record == 0: restore (coefficients negated) and put the
        # recorded bits back. One binary for both, so the product and _step compile the same way.
        pid = tl.program_id(0)
        job = tl.load(tiles + pid * 3)
        tm = tl.load(tiles + pid * 3 + 1)
        tn = tl.load(tiles + pid * 3 + 2)
        # element offsets from ``base``; ALIGNED launches promise 16-byte rows for vector access
        off_w = tl.load(jobs_ptr + job * 3)
        off_u = tl.load(jobs_ptr + job * 3 + 1)
        off_d = tl.load(jobs_ptr + job * 3 + 2)
        M = tl.load(jobs_dim + job * 4)
        N = tl.load(jobs_dim + job * 4 + 1)
        R = tl.load(jobs_dim + job * 4 + 2)
        ld = tl.load(jobs_dim + job * 4 + 3).to(tl.int64)
        if ALIGNED:
            off_w = tl.multiple_of(off_w, 8)
            off_u = tl.multiple_of(off_u, 8)
            off_d = tl.multiple_of(off_d, 8)
            ld = tl.multiple_of(ld, 8)
            N = tl.multiple_of(N, 8)
            R = tl.multiple_of(R, 8)
        w = base + off_w
        up = base + off_u
        dn = base + off_d
        a = tl.load(coeffs + job * 2 + coeff_col)

        rm = tm * BM + tl.arange(0, BM)
        rn = tl.max_contiguous(tl.multiple_of(tn * BN + tl.arange(0, BN), BN), BN)
        in_m = rm < M
        in_n = rn < N
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, R, BK):
            rk = k + tl.arange(0, BK)
            in_k = rk < R
            u = tl.load(up + rm[:, None].to(tl.int64) * R + rk[None, :], mask=in_m[:, None] & in_k[None, :], other=0.0)
            d = tl.load(dn + rk[:, None].to(tl.int64) * N + rn[None, :], mask=in_k[:, None] & in_n[None, :], other=0.0)
            acc = tl.dot(u, d, acc)
        mask = in_m[:, None] & in_n[None, :]
        ptrs = w + rm[:, None].to(tl.int64) * ld + rn[None, :]
        old = tl.load(ptrs, mask=mask, other=0.0)
        new = _step(old, a, acc, DTYPE)
        if record != 0:
            back = tl.load(coeffs + job * 2 + 1 - coeff_col)
            again = _step(new, back, acc, DTYPE)
            old_bits = old.to(tl.int16, bitcast=True)
            bad = ((again.to(tl.int16, bitcast=True) != old_bits) & mask).to(tl.int32)
            newf = new.to(tl.float32)
            nonfinite = tl.sum(tl.sum((((newf - newf) != 0) & mask).to(tl.int32), 1), 0)  # inf - inf, NaN: NaN
            row_bad = tl.sum(bad, 1)
            n_bad = tl.sum(row_bad, 0)
            start = tl.atomic_add(counter, n_bad)
            if nonfinite > 0:
                tl.atomic_add(counter + 1, 1)
            ok = start + n_bad <= capacity
            tl.store(fix_tab + pid * 3, start)
            tl.store(fix_tab + pid * 3 + 1, n_bad)
            tl.store(fix_tab + pid * 3 + 2, (1 - ok.to(tl.int32)) + 2 * (nonfinite > 0).to(tl.int32))
            # position of each recorded element: records of earlier rows, then earlier columns of its row
            pos = start + (tl.cumsum(row_bad, 0) - row_bad)[:, None] + tl.cumsum(bad, 1) - 1
            local = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
            tl.store(fix_buf + pos, (local << 16) | (old_bits.to(tl.int32) & 0xFFFF), mask=(bad != 0) & ok)
            tl.store(ptrs, new, mask=mask & ok)
        else:
            tl.store(ptrs, new, mask=mask)
            start = tl.load(fix_tab + pid * 3)
            count = tl.load(fix_tab + pid * 3 + 1)
            if count > 0:
                tl.debug_barrier()  # this block's tile is written before its recorded bits go over it
                wbits = w.to(tl.pointer_type(tl.int16))
                for i in range(0, count, FB):
                    idx = i + tl.arange(0, FB)
                    live = idx < count
                    code = tl.load(fix_buf + start + idx, mask=live, other=0)
                    loc = (code >> 16) & 0xFFFF
                    row = (tm * BM + loc // BN).to(tl.int64)
                    col = tn * BN + loc % BN
                    tl.store(wbits + row * ld + col, (code & 0xFFFF).to(tl.int16), mask=live)


# ---------------------------------------------------------------------------------------------
# factors on the device


class _FactorCache:
    """Device copies of LoRA factors, kept for the next merge of the same adapter (a strength change
    re-merges the same files). Least recently used first out, within a budget per device (5% of the
    GPU's memory, at most 2 GiB); an entry dies with its adapter."""

    def __init__(self, budget_fraction: float = 0.05, max_bytes: int = 2 << 30):
        self.entries: OrderedDict[tuple, tuple[weakref.ref, torch.Tensor, torch.Tensor, int]] = OrderedDict()
        self.totals: dict[torch.device, int] = {}
        self.budget_fraction = budget_fraction
        self.max_bytes = max_bytes

    def get(self, adapter, up: torch.Tensor, down: torch.Tensor, device: torch.device,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (id(adapter), device, dtype)
        hit = self.entries.get(key)
        if hit is not None and hit[0]() is adapter:
            self.entries.move_to_end(key)
            return hit[1], hit[2]
        if hit is not None:
            self._drop(key)
        u = up.to(device=device, dtype=dtype).contiguous()
        d = down.to(device=device, dtype=dtype).contiguous()
        try:
            ref = weakref.ref(adapter)
        except TypeError:
            return u, d
        size = u.numel() * u.element_size() + d.numel() * d.element_size()
        self.entries[key] = (ref, u, d, size)
        self.totals[device] = self.totals.get(device, 0) + size
        if self.totals[device] > self._budget(device):
            self._trim(device)
        return u, d

    def _budget(self, device: torch.device) -> int:
        if device.type == "cuda":
            return min(self.max_bytes, int(torch.cuda.get_device_properties(device).total_memory * self.budget_fraction))
        return self.max_bytes

    def _drop(self, key: tuple) -> None:
        _, _, _, size = self.entries.pop(key)
        self.totals[key[1]] -= size

    def _trim(self, device: torch.device) -> None:
        for key in [k for k, v in self.entries.items() if v[0]() is None]:
            self._drop(key)
        for key in [k for k in self.entries if k[1] == device]:
            if self.totals[device] <= self._budget(device):
                break
            self._drop(key)

    def clear(self) -> None:
        self.entries.clear()
        self.totals.clear()


FACTORS = _FactorCache()


# ---------------------------------------------------------------------------------------------
# jobs, rounds, and the record that undoes them


@dataclass
class Job:
    """One LoRA into one weight (or a row-major slice of one)."""

    key: str
    weight: torch.Tensor  # the whole weight tensor ``view`` is part of
    view: torch.Tensor
    up: torch.Tensor     # (M, r) in the weight's dtype, on its device, contiguous
    down: torch.Tensor   # (r, N)
    coeff: float         # strength * alpha / rank
    module: str = ""
    matrix: tuple[int, int, int] | None = None  # rows, cols, row stride of ``view`` (as_matrix)

    def __post_init__(self) -> None:
        if self.matrix is None:
            self.matrix = as_matrix(self.view)

    @property
    def aligned(self) -> bool:
        """Rows of the weight and both factors start on 16 bytes (vector loads and stores)."""
        rows, cols, ld = self.matrix
        size = self.view.element_size()
        lanes = 16 // size
        return (self.view.data_ptr() % 16 == 0 and self.up.data_ptr() % 16 == 0 and self.down.data_ptr() % 16 == 0
                and ld % lanes == 0 and cols % lanes == 0 and self.up.shape[1] % lanes == 0)


@dataclass
class _Launch:
    """Tiles merged by one launch, and where their records are."""

    tiles: torch.Tensor   # (T, 3) int32: job, tile row, tile column
    fix_tab: torch.Tensor  # (T, 3) int32: first record, number of records, status
    fix_buf: torch.Tensor  # int32 records


@dataclass
class _Round:
    jobs: list[Job]
    dtype: torch.dtype
    jobs_ptr: torch.Tensor
    jobs_dim: torch.Tensor
    coeffs: torch.Tensor   # (J, 2) fp32: merge coefficient, restore coefficient
    base: torch.Tensor     # 16-byte aligned; the tables hold element offsets from it
    aligned: bool
    launches: list[_Launch] = field(default_factory=list)

    @property
    def held_bytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in (self.jobs_ptr, self.jobs_dim, self.coeffs))
        for launch in self.launches:
            n += sum(t.numel() * t.element_size() for t in (launch.tiles, launch.fix_tab, launch.fix_buf))
        return n

    @property
    def records(self) -> int:
        return sum(int(launch.fix_buf.numel()) for launch in self.launches)


_TILES: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def _tiles_for(jobs: Sequence[Job], device: torch.device | None = None) -> torch.Tensor:
    """(T, 3) int32 table of (job, tile row, tile column), kept for the next merge of the same shapes."""
    dims = tuple((j.matrix[0], j.matrix[1]) for j in jobs)
    key = (BLOCK_M, BLOCK_N, str(device), dims)
    hit = _TILES.get(key)
    if hit is not None:
        _TILES.move_to_end(key)
        return hit
    ms = torch.tensor([d[0] for d in dims], dtype=torch.int64)
    ns = torch.tensor([d[1] for d in dims], dtype=torch.int64)
    tm = (ms + BLOCK_M - 1) // BLOCK_M
    tn = (ns + BLOCK_N - 1) // BLOCK_N
    counts = tm * tn
    job_of = torch.repeat_interleave(torch.arange(len(jobs)), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum())) - first[job_of]
    cols = tn[job_of]
    tiles = torch.stack([job_of, local // cols, local % cols], 1).to(torch.int32)
    if device is not None:
        tiles = tiles.to(device)
    _TILES[key] = tiles
    while len(_TILES) > 64:  # a model's launches, and a few more
        _TILES.popitem(last=False)
    return tiles


def _round_for(jobs: list[Job], aligned: bool) -> _Round:
    device = jobs[0].view.device
    dtype = jobs[0].view.dtype
    size = jobs[0].view.element_size()
    base = torch.empty(16 // size, dtype=dtype, device=device)
    origin = base.data_ptr()
    ptr, dim, coeff = [], [], []
    for j in jobs:
        rows, cols, ld = j.matrix
        ptr.append([(j.view.data_ptr() - origin) // size, (j.up.data_ptr() - origin) // size,
                    (j.down.data_ptr() - origin) // size])
        dim.append([rows, cols, int(j.up.shape[1]), ld])
        coeff.append([j.coeff, -j.coeff])
    return _Round(jobs, dtype,
                  torch.tensor(ptr, dtype=torch.int64).to(device),
                  torch.tensor(dim, dtype=torch.int32).to(device),
                  torch.tensor(coeff, dtype=torch.float32).to(device), base, aligned)


_TL_DTYPES = {}


def _tl_dtype(dtype: torch.dtype):
    if not _TL_DTYPES:
        _TL_DTYPES.update({torch.float16: tl.float16, torch.bfloat16: tl.bfloat16})
    return _TL_DTYPES[dtype]


def _launch_merge(rnd: _Round, tiles: torch.Tensor, capacity: int, *, record: bool, coeff_col: int,
                  fix_tab: torch.Tensor | None = None, fix_buf: torch.Tensor | None = None):
    device = tiles.device
    counter = torch.zeros(2, dtype=torch.int32, device=device)
    if fix_tab is None:
        fix_tab = torch.zeros((tiles.shape[0], 3), dtype=torch.int32, device=device)
    if fix_buf is None:
        fix_buf = torch.empty(max(capacity, 1), dtype=torch.int32, device=device)
    _merge_kernel[(tiles.shape[0],)](
        rnd.base, tiles, rnd.jobs_ptr, rnd.jobs_dim, rnd.coeffs, coeff_col, fix_buf, fix_tab, counter, capacity,
        1 if record else 0, DTYPE=_tl_dtype(rnd.dtype), BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K, FB=FIX_BLOCK,
        ALIGNED=rnd.aligned, num_warps=NUM_WARPS)
    return fix_tab, fix_buf, counter


def _merge_round(rnd: _Round, capacity_fraction: float, min_capacity: int = 4096) -> list[str]:
    """Merge one round in place; record what undoes it. Returns the keys that became non-finite."""
    tiles = _tiles_for(rnd.jobs, rnd.jobs_ptr.device)
    numel = sum(j.up.shape[0] * j.down.shape[1] for j in rnd.jobs)
    capacity = max(min_capacity, int(numel * capacity_fraction))
    fix_tab, fix_buf, counter = _launch_merge(rnd, tiles, capacity, record=True, coeff_col=0)
    used, nonfinite_tiles = counter.tolist()  # the one synchronisation of the merge
    if used <= capacity:
        rnd.launches.append(_Launch(tiles, fix_tab, fix_buf[:used].clone()))  # hold only what was used
    else:
        # tiles that did not fit stayed unmerged: keep the ones that did, redo the rest exactly sized
        skipped = (fix_tab[:, 2] & 1).bool()
        done = ~skipped
        kept_tab = fix_tab[done]
        rnd.launches.append(_Launch(tiles[done].contiguous(), kept_tab.contiguous(), fix_buf))
        rest = tiles[skipped].contiguous()
        need = int(fix_tab[skipped, 1].sum().item())
        tab2, buf2, counter2 = _launch_merge(rnd, rest, need, record=True, coeff_col=0)
        more = counter2.tolist()
        nonfinite_tiles += more[1]
        if more[0] > need:  # pragma: no cover - the same tiles give the same counts
            raise RuntimeError("LoRA Lab: the fused merge's second pass did not fit its exact buffer")
        rnd.launches.append(_Launch(rest, tab2, buf2))
    if not nonfinite_tiles:
        return []
    jobs_bad = torch.cat([launch.tiles[(launch.fix_tab[:, 2] & 2).bool(), 0] for launch in rnd.launches])
    return sorted({rnd.jobs[i].key for i in jobs_bad.unique().tolist()})


def _undo_launch(rnd: _Round, launch: _Launch) -> None:
    """Write ``W''`` over every tile of ``launch``, then the recorded original bits (one kernel)."""
    if launch.tiles.shape[0] == 0:
        return
    _launch_merge(rnd, launch.tiles, 0, record=False, coeff_col=1, fix_tab=launch.fix_tab, fix_buf=launch.fix_buf)


class FusedMerge:
    """LoRAs merged in place on the GPU by :func:`merge_lowrank`; :meth:`restore` undoes them."""

    def __init__(self, rounds: list[_Round]):
        self.rounds = rounds

    @property
    def keys(self) -> set[str]:
        return {j.key for r in self.rounds for j in r.jobs}

    @property
    def held_bytes(self) -> int:
        """Device memory this record holds besides the factors (tile tables and element records)."""
        return sum(r.held_bytes for r in self.rounds)

    @property
    def records(self) -> int:
        """Elements whose original bits were recorded."""
        return sum(r.records for r in self.rounds)

    @property
    def elements(self) -> int:
        return sum(j.up.shape[0] * j.down.shape[1] for r in self.rounds for j in r.jobs)

    def restore(self) -> None:
        """Put back the original bits of every merged weight (rounds in reverse order)."""
        with torch.no_grad():
            for rnd in reversed(self.rounds):
                for launch in rnd.launches:
                    _undo_launch(rnd, launch)
        self.rounds = []

    def original(self, key: str) -> torch.Tensor:
        """A copy of weight ``key`` as it was before the merge (the live weight is left as it is)."""
        rounds = [r for r in self.rounds if any(j.key == key for j in r.jobs)]
        if not rounds:
            raise KeyError(key)
        weight = next(j.weight for j in rounds[0].jobs if j.key == key)
        with torch.no_grad():
            copy = weight.clone(memory_format=torch.preserve_format)
            if copy.stride() != weight.stride():  # pragma: no cover - clone keeps dense strides
                raise RuntimeError(f"cannot copy {key} with its strides")
            shift = copy.data_ptr() - weight.data_ptr()
            for rnd in reversed(rounds):
                idx = [i for i, j in enumerate(rnd.jobs) if j.key == key]
                device = rnd.jobs_ptr.device
                sub = _Round([rnd.jobs[i] for i in idx], rnd.dtype, rnd.jobs_ptr[idx].clone(), rnd.jobs_dim[idx],
                             rnd.coeffs[idx], rnd.base, rnd.aligned and copy.data_ptr() % 16 == 0)
                sub.jobs_ptr[:, 0] += shift // weight.element_size()
                remap = torch.full((len(rnd.jobs),), -1, dtype=torch.int32, device=device)
                remap[idx] = torch.arange(len(idx), dtype=torch.int32, device=device)
                for launch in rnd.launches:
                    keep = remap[launch.tiles[:, 0].long()] >= 0
                    tiles = launch.tiles[keep].clone()
                    tiles[:, 0] = remap[tiles[:, 0].long()]
                    _undo_launch(sub, _Launch(tiles.contiguous(), launch.fix_tab[keep].contiguous(), launch.fix_buf))
        return copy


def merge_lowrank(jobs: list[Job], *, capacity_fraction: float = 1 / 16, min_capacity: int = 4096,
                  max_elements: int = ROUND_ELEMENTS) -> tuple[FusedMerge, list[str]]:
    """Merge every job in place; return the record that undoes them, and the keys of weights that are
    no longer finite (the caller restores and reports them).

    Jobs on the same weight go to successive rounds, in the order given. A launch merges at most
    ``max_elements`` weight elements (whole weights; a larger weight gets a launch of its own), so the
    record buffer sized before each launch stays bounded. If anything fails part-way, what was merged
    is undone before the error propagates."""
    rounds_jobs = _ordered_rounds(jobs)  # a weight's jobs run in the order given, one per round
    merged = FusedMerge([])
    bad: list[str] = []
    try:
        with torch.no_grad():
            for group in rounds_jobs:
                by_kind: dict[tuple[torch.dtype, bool], list[Job]] = {}
                for j in group:
                    by_kind.setdefault((j.view.dtype, j.aligned), []).append(j)
                for (_, aligned), kind_jobs in by_kind.items():
                    for part in _parts(kind_jobs, max_elements):
                        rnd = _round_for(part, aligned)
                        merged.rounds.append(rnd)  # before the launch: a failure undoes its recorded tiles
                        bad += _merge_round(rnd, capacity_fraction, min_capacity)
    except BaseException:
        merged.restore()
        raise
    return merged, sorted(set(bad))


def _parts(jobs: list[Job], max_elements: int) -> list[list[Job]]:
    """``jobs`` in order, cut into runs of at most ``max_elements`` elements (a larger job alone)."""
    parts: list[list[Job]] = []
    size = 0
    for job in jobs:
        n = job.matrix[0] * job.matrix[1]
        if not parts or size + n > max_elements:
            parts.append([])
            size = 0
        parts[-1].append(job)
        size += n
    return parts


def _span(view: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last byte address ``view`` can touch."""
    extent = 1 + sum((n - 1) * st for n, st in zip(view.shape, view.stride())) if view.numel() else 0
    return view.data_ptr(), view.data_ptr() + extent * view.element_size()


def _ordered_rounds(jobs: list[Job]) -> list[list[Job]]:
    """Rounds such that no two jobs of a round overlap in memory, and overlapping jobs keep their order
    (only jobs on the same weight can overlap, so only those are compared)."""
    rounds: list[list[Job]] = []
    placed: dict[int, list[tuple[tuple[int, int], int]]] = {}
    for job in jobs:
        span = _span(job.view)
        same = placed.setdefault(job.weight.data_ptr(), [])
        after = max((r for (b0, b1), r in same if span[0] < b1 and b0 < span[1]), default=-1)
        target = after + 1
        if target == len(rounds):
            rounds.append([])
        rounds[target].append(job)
        same.append((span, target))
    return rounds


def lowrank_job(key: str, weight: torch.Tensor, view: torch.Tensor, adapter, strength: float,
                module: str = "") -> Job | None:
    """A :class:`Job` for ``adapter`` on ``view``, or ``None`` if this path cannot merge it (not a
    plain low-rank adapter, not a row-major matrix, or a shape that does not fit)."""
    if getattr(adapter, "magnitude", None) is not None or not available(view):
        return None
    lr = adapter.low_rank()
    if lr is None:
        return None
    up, down, scale = lr
    mat = as_matrix(view)
    if mat is None or up.dim() != 2 or down.dim() != 2:
        return None
    rows, cols, _ = mat
    if up.shape[0] != rows or down.shape[1] != cols or up.shape[1] != down.shape[0]:
        return None
    if rows * cols >= 2**31 or (BLOCK_M * BLOCK_N) > 1 << _LOCAL_SHIFT:
        return None
    u, d = FACTORS.get(adapter, up, down, view.device, view.dtype)
    return Job(key, weight, view, u, d, float(strength) * float(scale), module, mat)


def coverage(merge: FusedMerge) -> dict[str, float]:
    """Figures for reports and benchmarks: elements merged, records held, their share."""
    n = merge.elements
    return {"elements": n, "records": merge.records, "record_share": merge.records / n if n else 0.0,
            "held_bytes": merge.held_bytes, "tiles": sum(launch.tiles.shape[0] for r in merge.rounds
                                                         for launch in r.launches),
            "launches": sum(len(r.launches) for r in merge.rounds), "rounds": len(merge.rounds),
            "block": math.prod((BLOCK_M, BLOCK_N))}
