"""LoRA Lab's benchmarks: each one runs LoRA Lab and core ComfyUI in the same process, on the same
model and files, and reports ``core / LoRA Lab`` ratios (above 1: LoRA Lab is faster or smaller).

``python -m bench`` runs every benchmark in :data:`BENCHMARKS`, prints one table and writes it, with
the raw figures and the machine, to ``bench/results/latest.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import lora_apply, lycoris_apply, stack_apply, sweep, train

# name -> (run the benchmark -> raw result, raw result -> table rows)
BENCHMARKS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], list[dict[str, Any]]]]] = {
    "lora_apply": (lora_apply.full_size, lora_apply.ratios),
    "lora_apply_sdxl": (lora_apply.sdxl_gpu, lora_apply.sdxl_ratios),  # GPU only: skipped (no rows) without CUDA
    "lycoris_apply": (lycoris_apply.full_size, lycoris_apply.ratios),
    "stack_apply": (stack_apply.full_size, stack_apply.ratios),
    "sweep": (sweep.full_size, sweep.ratios),
    "train": (train.full_size, train.ratios),
}
