"""Errors and the families that own a block map."""

from __future__ import annotations

from ..errors import LoraLabError
from ..families import FAMILY_LABELS as _ALL_LABELS


class BlockWeightsError(LoraLabError):
    """The block-weight syntax (or a presets file) is malformed or does not fit the model."""


class _BudgetSpent(BlockWeightsError):
    """Checking a presets file used up its shared entry budget (:data:`MAX_PRESET_CHECK_ENTRIES`)."""


# The families with a block map of their own (labels from lora_ops.families, the one place they live).
# Any other family, an SDXL refiner included, is named by the general rule (its LDM UNet or DiT layout).
BLOCK_FAMILIES = ("sd1", "sd2", "sdxl", "flux", "sd3")
FAMILY_LABELS = {key: _ALL_LABELS[key] for key in BLOCK_FAMILIES}
_FAMILY_ALIASES = {"sd15": "sd1", "sd1.5": "sd1", "sd1x": "sd1", "sd20": "sd2", "sd21": "sd2", "sd2x": "sd2",
                   "xl": "sdxl", "sd3.5": "sd3", "sd35": "sd3"}
KNOWN_FAMILIES = ("sd1", "sd2", "sdxl", "flux", "sd3", "general")

_ENCODERS = {
    "sd1": ("CLIP_L",), "sd2": ("CLIP_H",), "sdxl": ("CLIP_L", "CLIP_G"), "flux": ("CLIP_L", "T5"),
    "sd3": ("CLIP_L", "CLIP_G", "T5"), "general": ("CLIP_L", "CLIP_G", "CLIP_H", "T5"),
}
ENCODER_NAMES = ("CLIP_L", "CLIP_G", "CLIP_H", "T5")
SD3_NOMINAL_DEPTH = 38


def _numbered(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:02d}" for i in range(count))


_SD_BLOCKS = _numbered("IN", 12) + ("M00",) + _numbered("OUT", 12)
_SDXL_BLOCKS = _numbered("IN", 9) + ("M00",) + _numbered("OUT", 9)
_FLUX_BLOCKS = ("IN",) + _numbered("D", 19) + _numbered("S", 38) + ("OUT",)


def normalize_family(family: str | None) -> str:
    """``sd1``, ``sd2``, ``sdxl``, ``flux``, ``sd3``, or ``general`` for anything else (None included)."""
    if not isinstance(family, str):
        return "general"
    key = family.strip().lower()
    key = _FAMILY_ALIASES.get(key, key)
    return key if key in FAMILY_LABELS else "general"


def _family_label(family: str | None) -> str:
    norm = normalize_family(family)
    if norm != "general":
        return FAMILY_LABELS[norm]
    if isinstance(family, str) and family.strip():
        return f"'{family}' (general rule)"
    return "this model (general rule)"
