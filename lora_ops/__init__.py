"""LoRA Lab's kernel package: LoRA formats, key mapping, deltas and the in-place merge.

Host-free by design: torch, safetensors and numpy only; ComfyUI never gets imported here. The node
layer passes in what it knows of the host (key maps, weight shapes, the model family) as plain data.
"""

from .adapters import (BoftWeights, FullDiff, GloraWeights, LohaWeights, LokrWeights, LoraWeights, OftWeights,
                       SetWeight, dora_delta, effective_delta, lora_scale)
from .errors import (FamilyMismatchError, LoraFileError, LoraLabError, NonFiniteError, OverflowRiskError,
                     ShapeMismatchError)
from .families import detect_family, family_label, host_family
from .formats import ParsedLora, parse_lora
from .keymap import KeyIndex, Target, canonical_name, match_modules
from .patching import PatchEntry, apply_patches, restore_weights
from .plan import LoadedLora, LoraPlan, load_lora, plan_lora
from .inspection import Inspection, inspect_file, inspect_lora, plan_for_inspection, render_chart
from .report import load_report
from .safeio import LoraFile, read_lora_file, write_safetensors_atomic

__all__ = [
    "BoftWeights", "FullDiff", "GloraWeights", "LohaWeights", "LokrWeights", "LoraWeights", "OftWeights", "SetWeight",
    "dora_delta", "effective_delta", "lora_scale",
    "FamilyMismatchError", "LoraFileError", "LoraLabError", "NonFiniteError", "OverflowRiskError",
    "ShapeMismatchError", "detect_family", "family_label", "host_family", "ParsedLora", "parse_lora",
    "KeyIndex", "Target", "canonical_name", "match_modules", "PatchEntry", "apply_patches", "restore_weights",
    "LoadedLora", "LoraPlan", "load_lora", "plan_lora", "load_report", "LoraFile", "read_lora_file",
    "write_safetensors_atomic", "Inspection", "inspect_lora", "inspect_file", "plan_for_inspection", "render_chart",
]
