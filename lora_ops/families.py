"""Which base-model family a LoRA was made for, and which family a model is.

A LoRA made for SD1.5 and applied to SDXL mostly finds no weights of the right shape, and core
ComfyUI then does almost nothing without a word (field-notes §6). LoRA Lab names both families
instead. Evidence comes from the module names (block layout), the shapes (cross-attention width:
768 SD1.x, 1024 SD2.x, 2048 SDXL) and the kohya/modelspec metadata, and is reported with the verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .formats import ParsedLora
from .keymap import canonical_name

FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux": "Flux", "sd3": "SD3"}

# ComfyUI model-config class names -> family
_HOST_CLASSES = {
    "SD15": "sd1", "SD15_instructpix2pix": "sd1", "SD20": "sd2", "SD21UnclipL": "sd2", "SD21UnclipH": "sd2",
    "SD_X4Upscaler": "sd2", "SDXL": "sdxl", "SDXLRefiner": "sdxl-refiner", "SDXL_instructpix2pix": "sdxl",
    "SSD1B": "sdxl", "Segmind_Vega": "sdxl", "KOALA_700M": "sdxl", "KOALA_1B": "sdxl", "Flux": "flux",
    "FluxSchnell": "flux", "FluxInpaint": "flux", "SD3": "sd3",
}

_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}

_METADATA_HINTS = (
    (re.compile(r"xl|sdxl", re.I), "sdxl"),
    (re.compile(r"flux", re.I), "flux"),
    (re.compile(r"sd[-_ ]?3|stable-diffusion-3|v3", re.I), "sd3"),
    (re.compile(r"v2|sd[-_]?2|stable-diffusion-v2", re.I), "sd2"),
    (re.compile(r"v1|sd[-_]?1|stable-diffusion-v1", re.I), "sd1"),
)


def family_label(family: str | None) -> str:
    return FAMILY_LABELS.get(family or "", family or "unknown")


def host_family(config_class_name: str) -> str:
    """Family of a host model from its config class name (``type(model.model.model_config).__name__``)."""
    return _HOST_CLASSES.get(config_class_name, config_class_name.lower())


@dataclass
class FamilyGuess:
    family: str | None
    evidence: list[str] = field(default_factory=list)
    metadata_family: str | None = None

    @property
    def agrees_with_metadata(self) -> bool | None:
        if self.family is None or self.metadata_family is None:
            return None
        return self.family == self.metadata_family


def family_from_metadata(metadata: dict[str, str]) -> str | None:
    for key in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(key)
        if not value:
            continue
        for pattern, fam in _METADATA_HINTS:
            if pattern.search(value):
                return fam
    return None


def detect_family(parsed: ParsedLora, metadata: dict[str, str] | None = None) -> FamilyGuess:
    """Guess the family a LoRA was made for from its module names, shapes and metadata."""
    names = [canonical_name(n) for n in parsed.modules]
    evidence: list[str] = []
    family: str | None = None

    def has(pattern: str) -> bool:
        rx = re.compile(pattern)
        return any(rx.search(n) for n in names)

    if has(r"double_blocks|single_blocks|single_transformer_blocks"):
        family, evidence = "flux", ["Flux double/single transformer blocks"]
    elif has(r"joint_blocks"):
        family, evidence = "sd3", ["SD3 joint blocks"]
    else:
        if has(r"^lora_te2_"):
            family = "sdxl"
            evidence.append("a second text encoder (te2 / text_encoder_2)")
        if has(r"(down_blocks_[12]_attentions_\d+|input_blocks_[4578]_1)_transformer_blocks_[1-9]"):
            family = "sdxl"
            evidence.append("transformer depth above 1 in the UNet blocks")
        level0_attention = has(r"down_blocks_0_attentions_|input_blocks_[12]_1_")
        if level0_attention and family is None:
            family = "sd1"
            evidence.append("attention in the first UNet level")
        # Cross-attention width separates SD1.x, SD2.x and SDXL when the file has attn2 weights.
        for name, adapter in parsed.modules.items():
            if re.search(r"attn2_to_k$", canonical_name(name)) and hasattr(adapter, "down"):
                width = int(adapter.down.reshape(adapter.down.shape[0], -1).shape[1])
                fam = _CONTEXT_WIDTH.get(width)
                if fam:
                    evidence.append(f"cross-attention width {width}")
                    if family in (None, "sd1") and fam in ("sd1", "sd2"):
                        family = fam
                break
    return FamilyGuess(family=family, evidence=evidence, metadata_family=family_from_metadata(metadata or {}))


def same_family(lora_family: str | None, model_family: str | None) -> bool:
    """Unknown on either side counts as compatible; an SDXL refiner takes SDXL LoRAs only partly."""
    if not lora_family or not model_family:
        return True
    return lora_family.split("-")[0] == model_family.split("-")[0]
