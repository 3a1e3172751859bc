"""Which family a model is, and what a LoRA file's layers and metadata say it was made for.

A model's family is what the host says: ComfyUI's model config class (``type(model.model.model_config)``),
with its ancestors (the node layer passes the class names, most specific first, as ``lineage``). LoRA
Lab keeps no list of model families: a class it has never heard of is a family like any other, named by
its class, with block maps by the general rule of :mod:`lora_ops.blocks`. Six classes own a block-vector
dialect that users type (the SD1.x/SD2.x/SDXL/Flux/SD3 vectors of sd-webui-lora-block-weight and Inspire
Pack, see :mod:`lora_ops.blocks`); a model whose config class is one of them or derives from one gets
that family key (``sd1``, ``sdxl``, ...), so ``SSD1B`` reads SDXL vectors and ``FluxSchnell`` Flux ones.

What a LoRA was made for is a description, never a reason to refuse on its own: the loader refuses
only on strong evidence, which :func:`lora_ops.plan.plan_lora` finds by matching the file against the
model (layers whose shapes do not fit, or no layer that matches at all). Module names and shapes give
the evidence reported here: the UNet layout and cross-attention width of SD-type files (768 SD1.x,
1024 SD2.x, 2048 SDXL), and the block layout of DiT files (Flux-type double/single blocks, SD3-type
joint blocks); the kohya/modelspec metadata says what the trainer was told. A disagreement between the
metadata and the model is reported as a warning: LoRAs made for one model are used on its relatives
(Flux LoRAs on Chroma, Wan 2.1 LoRAs on Wan 2.2), which core ComfyUI applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .formats import ParsedLora
from .keymap import canonical_name

# Config classes whose models users weigh with a known block-vector dialect -> the dialect's family key.
DIALECT_OWNERS = {"SD15": "sd1", "SD20": "sd2", "SDXL": "sdxl", "SDXLRefiner": "sdxl-refiner", "Flux": "flux",
                  "SD3": "sd3"}

FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner", "flux": "Flux",
                 "sd3": "SD3"}

_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}

# DiT block layouts, in model weight names and LoRA layer names alike (diffusers' Flux names included).
FLUX_TYPE_LAYOUT = re.compile(r"double_blocks|single_blocks|single_transformer_blocks")
SD3_TYPE_LAYOUT = re.compile(r"joint_blocks")
_UNET_INPUT_BLOCK = re.compile(r"^(?:model\.)?(?:diffusion_model\.)?input_blocks\.(\d+)\.")
_UNET_INPUT_BLOCKS = {9: "sdxl", 12: "sd1"}  # an LDM UNet's input blocks: SDXL has 3 levels, SD1.x/SD2.x 4

# modelspec.architecture / ss_base_model_version values -> family key (the metadata's claim, for reports)
_METADATA_HINTS = (
    (re.compile(r"xl|sdxl", re.I), "sdxl"),
    (re.compile(r"flux", re.I), "flux"),
    (re.compile(r"sd[-_ ]?3|stable-diffusion-3|stable-diffusion-v3", re.I), "sd3"),
    (re.compile(r"(^|[^a-z])v2|sd[-_]?2|stable-diffusion-v2", re.I), "sd2"),
    (re.compile(r"(^|[^a-z])v1|sd[-_]?1|stable-diffusion-v1", re.I), "sd1"),
)


def family_key(lineage: Sequence[str]) -> str:
    """The family key of a model whose config class and ancestors are ``lineage`` (most specific first):
    the dialect family of the first class that owns one, else the config class name itself."""
    for name in lineage:
        if name in DIALECT_OWNERS:
            return DIALECT_OWNERS[name]
    return lineage[0] if lineage else "unknown"


def host_family(config_class_name: str) -> str:
    """:func:`family_key` of a config class known only by name (no ancestors)."""
    return family_key([config_class_name])


def family_label(family: str | None) -> str:
    """A family key for people: ``SD1.x``, ``SDXL``, ``Flux``...; any other family is its class name."""
    return FAMILY_LABELS.get(family or "", family or "unknown")


def model_label(lineage: Sequence[str]) -> str:
    """How a report names a model: its family's label, and its own config class where that differs
    (``Flux (FluxSchnell)``, ``SDXL (SSD1B)``, ``Chroma``)."""
    key = family_key(lineage)
    label = family_label(key)
    own = lineage[0] if lineage else None
    return label if own is None or own == label or DIALECT_OWNERS.get(own) == key else f"{label} ({own})"


@dataclass
class FamilyGuess:
    """What a file's layers say it was made for: a family key when its layers and shapes tell an SD-type
    family (SD1.x/SD2.x/SDXL; ``None`` otherwise: DiT layouts are shared by related models, e.g. Flux and
    Chroma), the evidence in words, and what its metadata names."""

    family: str | None
    evidence: list[str] = field(default_factory=list)
    metadata_family: str | None = None
    metadata_value: str | None = None

    @property
    def agrees_with_metadata(self) -> bool | None:
        if self.family is None or self.metadata_family is None:
            return None
        return self.family == self.metadata_family

    def describe(self) -> str:
        """``SD1.x (attention in the first UNet level; ...)``, or the layout in words."""
        evidence = f" ({'; '.join(self.evidence)})" if self.evidence else ""
        return f"{family_label(self.family)}{evidence}" if self.family else (
            "; ".join(self.evidence) if self.evidence else "unknown")


def family_from_metadata(metadata: dict[str, str]) -> tuple[str | None, str | None]:
    """``(family key, the raw value)`` from ``modelspec.architecture`` / ``ss_base_model_version``."""
    for key in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(key)
        if not value or not isinstance(value, str):
            continue
        for pattern, fam in _METADATA_HINTS:
            if pattern.search(value):
                return fam, value
        return None, value
    return None, None


def detect_family(parsed: ParsedLora, metadata: dict[str, str] | None = None) -> FamilyGuess:
    """What the file's module names, shapes and metadata say it was made for."""
    names = [canonical_name(n) for n in parsed.modules]
    evidence: list[str] = []
    family: str | None = None

    def has(pattern: str) -> bool:
        rx = re.compile(pattern)
        return any(rx.search(n) for n in names)

    if any(FLUX_TYPE_LAYOUT.search(n) for n in names):
        evidence = ["a Flux-type layout (double and single transformer blocks)"]
    elif any(SD3_TYPE_LAYOUT.search(n) for n in names):
        evidence = ["an SD3-type layout (joint transformer blocks)"]
    else:
        if has(r"^lora_te2_text_model_"):
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
    meta_family, meta_value = family_from_metadata(metadata or {})
    return FamilyGuess(family=family, evidence=evidence, metadata_family=meta_family, metadata_value=meta_value)


def family_from_model_keys(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """The dialect family of a model file from its weight names and shapes, for files the host's own
    detection does not match (reduced-width or unusual variants): a Flux-type layout is ``flux``, an
    SD3-type one ``sd3``; an LDM UNet is told by its input-block count (9: SDXL; 12: SD1.x, or SD2.x with
    1024-wide cross-attention). ``None`` for anything else."""
    if any(FLUX_TYPE_LAYOUT.search(k) for k in shapes):
        return "flux"
    if any(SD3_TYPE_LAYOUT.search(k) for k in shapes):
        return "sd3"
    inputs: set[int] = set()
    context = None
    for key, shape in shapes.items():
        m = _UNET_INPUT_BLOCK.match(key)
        if m:
            inputs.add(int(m.group(1)))
            if context is None and key.endswith("attn2.to_k.weight") and len(shape) == 2:
                context = int(shape[1])
    family = _UNET_INPUT_BLOCKS.get(max(inputs) + 1) if inputs else None
    if family == "sd1" and _CONTEXT_WIDTH.get(context) == "sd2":
        return "sd2"
    return family


def same_family(lora_family: str | None, model_family: str | None) -> bool:
    """Whether a LoRA described as ``lora_family`` is of the model's family: unknown on either side
    counts as the same; an SDXL refiner takes SDXL LoRAs only partly."""
    if not lora_family or not model_family:
        return True
    return lora_family.split("-")[0] == model_family.split("-")[0]
