"""Run ``lora_ops.fused``'s Triton kernels under Triton's CPU interpreter and print a JSON verdict.

Started by tests/test_fused.py in a child process, because ``TRITON_INTERPRET=1`` has to be set
before Triton is imported. Checks, on fp16 weights of awkward sizes (partial tiles, a fused slice
with a second LoRA, a small and a large rank): the merge equals ``round(W + a * up @ down)``
computed by torch in fp32, bit for bit; ``original()`` rebuilds the unmerged weight; ``restore()``
gives the original bits back; a record buffer too small for the first launch still loses nothing;
weights cut into several launches (``max_elements``) give the same bits; a launch that fails
part-way leaves every weight as it was.
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1"
sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402

from lora_ops import fused  # noqa: E402

BITS = torch.int16


def main(min_capacity: int, max_elements: int) -> dict:
    g = torch.Generator().manual_seed(11)
    cases = []
    jobs = []
    for rows, cols, rank, rel in [(70, 130, 4, 0.05), (64, 128, 32, 0.2), (129, 257, 16, 0.01)]:
        w = (torch.randn(rows, cols, generator=g) * 0.02).half()
        up = (torch.randn(rows, rank, generator=g) * 0.02).half()
        down = (torch.randn(rank, cols, generator=g) * 0.02).half()
        coeff = rel * 0.02 / float((up.float() @ down.float()).std())
        cases.append({"w": w, "orig": w.clone(), "parts": [(slice(None), up, down, coeff)]})
        jobs.append(fused.Job(f"w{rows}", w, w, up, down, coeff))
    first = cases[0]
    up2 = (torch.randn(30, 8, generator=g) * 0.02).half()
    down2 = (torch.randn(8, 130, generator=g) * 0.02).half()
    first["parts"].append((slice(10, 40), up2, down2, 2.5))
    jobs.append(fused.Job("w70", first["w"], first["w"].narrow(0, 10, 30), up2, down2, 2.5))

    # a launch that fails part-way (here: the third) leaves every weight as it was
    real_merge_round, calls = fused._merge_round, []

    def failing_merge_round(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated launch failure")
        return real_merge_round(*args, **kwargs)

    fused._merge_round = failing_merge_round
    try:
        fused.merge_lowrank(jobs, capacity_fraction=0.0, min_capacity=min_capacity, max_elements=max_elements)
        failure_raised = False
    except RuntimeError:
        failure_raised = True
    finally:
        fused._merge_round = real_merge_round
    untouched_after_failure = [bool(torch.equal(c["w"].view(BITS), c["orig"].view(BITS))) for c in cases]

    merged, nonfinite = fused.merge_lowrank(jobs, capacity_fraction=0.0, min_capacity=min_capacity,
                                            max_elements=max_elements)
    info = fused.coverage(merged)
    same_as_torch = []
    for case in cases:
        ref = case["orig"].clone()
        for rows, up, down, coeff in case["parts"]:
            ref[rows] = (ref[rows].float() + coeff * (up.float() @ down.float())).half()
        same_as_torch.append(bool(torch.equal(case["w"].view(BITS), ref.view(BITS))))
    original_ok = bool(torch.equal(merged.original("w70").view(BITS), first["orig"].view(BITS)))
    still_merged = not torch.equal(first["w"].view(BITS), first["orig"].view(BITS))
    merged.restore()
    restored = [bool(torch.equal(c["w"].view(BITS), c["orig"].view(BITS))) for c in cases]
    return {"failure_raised": failure_raised, "untouched_after_failure": untouched_after_failure,
            "same_as_torch": same_as_torch, "original_ok": original_ok, "still_merged_after_original": still_merged,
            "restored": restored, "nonfinite": nonfinite, **info}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[2]), int(sys.argv[3]))))
