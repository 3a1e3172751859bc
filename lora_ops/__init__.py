"""LoRA Lab's kernel package: LoRA formats, key mapping, deltas and the in-place merge.

Host-free by design: torch, safetensors and numpy only; ComfyUI never gets imported here. The node
layer passes in what it knows of the host (key maps, weight shapes, the model family) as plain data.
"""

from .adapters import FullDiff, LohaWeights, LokrWeights, LoraWeights, dora_delta, lora_scale
from .errors import (FamilyMismatchError, LoraFileError, LoraLabError, NonFiniteError, OverflowRiskError,
                     ShapeMismatchError)
from .families import detect_family, family_label, host_family
from .formats import ParsedLora, parse_lora
from .keymap import KeyIndex, Target, canonical_name, match_modules
from .merge import PatchEntry, apply_patches, restore_weights
from .plan import LoadedLora, LoraPlan, load_lora, plan_lora
from .report import load_report
from .safeio import LoraFile, read_lora_file, write_safetensors_atomic

__all__ = [
    "FullDiff", "LohaWeights", "LokrWeights", "LoraWeights", "dora_delta", "lora_scale",
    "FamilyMismatchError", "LoraFileError", "LoraLabError", "NonFiniteError", "OverflowRiskError",
    "ShapeMismatchError", "detect_family", "family_label", "host_family", "ParsedLora", "parse_lora",
    "KeyIndex", "Target", "canonical_name", "match_modules", "PatchEntry", "apply_patches", "restore_weights",
    "LoadedLora", "LoraPlan", "load_lora", "plan_lora", "load_report", "LoraFile", "read_lora_file",
    "write_safetensors_atomic", "Inspection", "inspect_lora", "inspect_file", "plan_for_inspection", "render_chart",
]

# The inspector is exported lazily (PEP 562), so that `python -m lora_ops.inspect` runs a module that
# the package import did not load first.
_LAZY = {"Inspection", "inspect_lora", "inspect_file", "plan_for_inspection", "render_chart"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import inspect

        return getattr(inspect, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
