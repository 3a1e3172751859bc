"""Where a weight key lies: its block (``block_of``), block names, and each family's block list."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._base import (
    _ENCODERS,
    _FLUX_BLOCKS,
    _SD_BLOCKS,
    _SDXL_BLOCKS,
    ENCODER_NAMES,
    SD3_NOMINAL_DEPTH,
    _family_label,
    _numbered,
    normalize_family,
)
from .dialects import _FLUX_DIALECTS, _SD_DIALECTS, _SDXL_DIALECTS, VectorDialect, _dialect

_MODEL_PREFIX_RX = re.compile(r"^(?:model\.)?(?:diffusion_model|unet|transformer)\.")
_ENCODER_RX = re.compile(r"^(?:(clip_l)|(clip_g)|(clip_h)|((?:u?m?t5)[a-z0-9_]*))\.")
_UNET_LDM_RX = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(?:(\d+)\.(.*))?")
_UNET_MID_RX = re.compile(r"^middle_block\.(?:(\d+)\.(.*))?")
_DIFF_BLOCK_RX = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)")
_DIFF_MID_RX = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)")
_DIFF_CONV_IN_RX = re.compile(r"^conv_in\.")
_RES_RX = re.compile(
    r"^(?:in_layers|emb_layers|out_layers|skip_connection"  # LDM ResBlock
    r"|norm1|norm2|conv1|conv2|time_emb_proj|conv_shortcut)\.")  # diffusers ResnetBlock2D
_ATTN1_RX = re.compile(r"(?:^|\.)attn1\.")
_ATTN2_RX = re.compile(r"(?:^|\.)attn2\.")
_FF_RX = re.compile(r"(?:^|\.)ff\.")
_FLUX_DOUBLE_RX = re.compile(r"^double_blocks\.(\d+)\.(.*)")
_FLUX_SINGLE_RX = re.compile(r"^single_blocks\.(\d+)\.(.*)")
_FLUX_IN_RX = re.compile(r"^(?:img_in|txt_in|time_in|vector_in|guidance_in)\.")
_FLUX_OUT_RX = re.compile(r"^final_layer\.")
_FLUX_PART_RX = re.compile(r"^(img|txt)_(attn|mlp|mod)\.")
_SD3_JOINT_RX = re.compile(r"^joint_blocks\.(\d+)\.(.*)")
_CONTAINER_RX = re.compile(r"(?:^|\.)((?:[A-Za-z][A-Za-z0-9_]*)?(?:blocks|layers|refiner))\.(\d+)(?=\.|$)")
_KNOWN_CONTAINERS = {"double_blocks": "D", "single_blocks": "S", "joint_blocks": "J"}
_SEG_ATTN_RX = re.compile(r"attn|attention")
_SEG_MLP_RX = re.compile(r"^(?:[a-z0-9]+_)?(?:mlp|ff|ffn|feed_forward)(?:_[a-z0-9]+)?$")
_SEG_IMG_RX = re.compile(r"^(?:img_[a-z0-9_]*|img|x_block)$")
_SEG_TXT_RX = re.compile(
    r"^(?:txt_[a-z0-9_]*|txt|context_block|[a-z0-9_]+_context|add_[qkv]_proj|to_add_out)$")


def _container_prefix(name: str) -> str:
    known = _KNOWN_CONTAINERS.get(name)
    if known:
        return known
    return "".join(w[0] for w in name.split("_") if w).upper()


def _unet_atoms(index: str | None, rest: str) -> frozenset[str]:
    atoms: set[str] = set()
    if index is not None:
        atoms.add(str(int(index)))
    if _RES_RX.match(rest):
        atoms.add("res")
    if _ATTN1_RX.search(rest):
        atoms |= {"attn", "attn1"}
    elif _ATTN2_RX.search(rest):
        atoms |= {"attn", "attn2"}
    if _FF_RX.search(rest):
        atoms.add("mlp")
    return frozenset(atoms)


def _generic_atoms(rest: str) -> frozenset[str]:
    atoms: set[str] = set()
    for seg in rest.lower().split("."):
        if _SEG_ATTN_RX.search(seg):
            atoms.add("attn")
        if _SEG_MLP_RX.match(seg):
            atoms.add("mlp")
        if "mod" in seg:
            atoms.add("mod")
        if _SEG_IMG_RX.match(seg):
            atoms.add("img")
        if _SEG_TXT_RX.match(seg):
            atoms.add("txt")
    return frozenset(atoms)


def _locate_unet(path: str, family: str) -> tuple[str, str, frozenset[str]] | None:
    m = _UNET_LDM_RX.match(path)
    if m:
        prefix = "IN" if m.group(1) == "input_blocks" else "OUT"
        return f"{prefix}{int(m.group(2)):02d}", "unet", _unet_atoms(m.group(3), m.group(4) or "")
    m = _UNET_MID_RX.match(path)
    if m:
        return "M00", "unet", _unet_atoms(m.group(1), m.group(2) or "")
    m = _DIFF_BLOCK_RX.match(path)
    if m:
        level, kind, j, rest = int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if m.group(1) == "down_blocks":
            number = 3 * level + 3 if kind == "downsamplers" else 3 * level + j + 1
            index = "0" if kind in ("resnets", "downsamplers") else "1"
            return f"IN{number:02d}", "unet", _unet_atoms(index, rest)
        if kind == "upsamplers":
            # the upsampler is the last sub-module of the level's last output block: index 1 where that
            # block has no attention (SD1.x/2.x up_blocks.0), 2 elsewhere
            index = "1" if family in ("sd1", "sd2") and level == 0 else "2"
            return f"OUT{3 * level + 2:02d}", "unet", _unet_atoms(index, rest)
        index = "0" if kind == "resnets" else "1"
        return f"OUT{3 * level + j:02d}", "unet", _unet_atoms(index, rest)
    m = _DIFF_MID_RX.match(path)
    if m:
        index = "1" if m.group(1) == "attentions" else ("0" if m.group(2) == "0" else "2")
        return "M00", "unet", _unet_atoms(index, m.group(3))
    if _DIFF_CONV_IN_RX.match(path):
        return "IN00", "unet", frozenset({"0"})
    return None


def _locate_model(family: str, path: str) -> tuple[str, str, frozenset[str]]:
    """(block, kind, selector atoms) of a model path (the key without ``diffusion_model.``)."""
    if family in ("sd1", "sd2", "sdxl"):
        return _locate_unet(path, family) or ("BASE", "base", frozenset())
    if family == "flux":
        m = _FLUX_DOUBLE_RX.match(path)
        if m:
            part = _FLUX_PART_RX.match(m.group(2))
            atoms = frozenset(part.groups()) if part else frozenset()
            return f"D{int(m.group(1)):02d}", "double", atoms
        m = _FLUX_SINGLE_RX.match(path)
        if m:
            return f"S{int(m.group(1)):02d}", "single", frozenset()
        if _FLUX_IN_RX.match(path):
            return "IN", "io", frozenset()
        if _FLUX_OUT_RX.match(path):
            return "OUT", "io", frozenset()
        return "BASE", "base", frozenset()
    if family == "sd3":
        m = _SD3_JOINT_RX.match(path)
        if m:
            return f"J{int(m.group(1)):02d}", "joint", _generic_atoms(m.group(2))
        return "BASE", "base", frozenset()
    found = _locate_unet(path, family)
    if found:
        return found
    m = _CONTAINER_RX.search(path)
    if m:
        rest = path[m.end() + 1:]
        return f"{_container_prefix(m.group(1))}{int(m.group(2)):02d}", "dit", _generic_atoms(rest)
    return "BASE", "base", frozenset()


def _encoder_of(key: str) -> str | None:
    m = _ENCODER_RX.match(key)
    if not m:
        return None
    return ("CLIP_L", "CLIP_G", "CLIP_H", "T5")[next(i for i, g in enumerate(m.groups()) if g)]


def _locate(family: str, key: str) -> tuple[str, str, frozenset[str]]:
    m = _MODEL_PREFIX_RX.match(key)
    if m:
        return _locate_model(family, key[m.end():])
    encoder = _encoder_of(key)
    if encoder and encoder in _ENCODERS[family]:
        return encoder, "encoder", frozenset()
    return "BASE", "base", frozenset()


def block_of(family: str | None, weight_key: str) -> str:
    """The block a model (or text-encoder) weight key belongs to, for ``family``; pure.

    >>> block_of("sd1", "diffusion_model.input_blocks.10.0.in_layers.2.weight")
    'IN10'
    >>> block_of("flux", "diffusion_model.double_blocks.3.img_attn.qkv.weight")
    'D03'

    Text-encoder keys give their encoder entry (``CLIP_L``...) where the family has one, else ``BASE``.
    """
    return _locate(normalize_family(family), weight_key)[0]


# --- block names ---------------------------------------------------------------------------------

_NAME_RX = re.compile(r"^([A-Z]+)(\d{1,6})$")
_SPECIAL_NAMES = {"BASE", "CLIP", "CLIP_L", "CLIP_G", "CLIP_H", "T5", "IN", "OUT"}
_UNET_NAME_RX = re.compile(r"^(?:IN\d{2,}|M00|OUT\d{2,})$")


def _normalize_name(raw: str) -> str | None:
    """Upper-case a block name and pad its number to two digits (``in4`` -> ``IN04``); None if no name."""
    name = raw.strip().upper()
    if name in _SPECIAL_NAMES:
        return name
    m = _NAME_RX.match(name)
    if not m:
        return None
    return f"{m.group(1)}{int(m.group(2)):02d}"


def _split_numbered(name: str) -> tuple[str, int] | None:
    m = re.match(r"^([A-Z]+)(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else None


def compact_names(names: Iterable[str]) -> str:
    """``IN00, IN01, IN02, M00`` -> ``IN00-IN02, M00`` (runs of one prefix with consecutive numbers)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            out.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run.clear()

    for name in names:
        cur = _split_numbered(name)
        prev = _split_numbered(run[-1]) if run else None
        if cur and prev and cur[0] == prev[0] and cur[1] == prev[1] + 1:
            run.append(name)
            continue
        flush()
        if cur:
            run.append(name)
        else:
            out.append(name)
    flush()
    return ", ".join(out)



# --- the family's block list ----------------------------------------------------------------------

@dataclass(frozen=True)
class _FamilySpec:
    key: str
    label: str
    encoders: tuple[str, ...]
    blocks: tuple[str, ...] | None  # model blocks in order; None: open (general rule, model unknown)
    dialects: Mapping[int, VectorDialect]

    @property
    def closed(self) -> bool:
        return self.blocks is not None

    @property
    def order(self) -> tuple[str, ...]:
        return ("BASE",) + self.encoders + (self.blocks or ())

    def kind(self, name: str) -> str:
        if name == "BASE":
            return "base"
        if name in ENCODER_NAMES:
            return "encoder"
        if self.key == "flux":
            return {"IN": "io", "OUT": "io"}.get(name) or ("double" if name.startswith("D") else "single")
        if self.key == "sd3":
            return "joint"
        if self.key in ("sd1", "sd2", "sdxl") or _UNET_NAME_RX.match(name):
            return "unet"
        return "dit"


def _discover_blocks(family: str, model_keys: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for key in model_keys:
        if not isinstance(key, str):
            continue
        block, kind, _ = _locate(family, key)
        if kind not in ("base", "encoder"):
            seen.setdefault(block, None)
    prefixes: dict[str, None] = {}
    for name in seen:
        split = _split_numbered(name)
        prefixes.setdefault(split[0] if split else name, None)
    rank = {p: i for i, p in enumerate(prefixes)}
    if family == "general" and {"IN", "M", "OUT"} & set(rank):
        rank.update({"IN": -3, "M": -2, "OUT": -1})

    def sort_key(name: str) -> tuple[int, int]:
        split = _split_numbered(name)
        return (rank[split[0]], split[1]) if split else (rank[name], -1)

    return tuple(sorted(seen, key=sort_key))


def family_spec(family: str | None, model_keys: Iterable[str] | None) -> _FamilySpec:
    """A family's blocks, text encoders and vector dialects (by length); ``model_keys`` lets the general
    rule discover the blocks of a family without a built-in map."""
    norm = normalize_family(family)
    label = _family_label(family)
    encoders = _ENCODERS[norm]
    if norm in ("sd1", "sd2"):
        return _FamilySpec(norm, label, encoders, _SD_BLOCKS, {d.length: d for d in _SD_DIALECTS})
    if norm == "sdxl":
        return _FamilySpec(norm, label, encoders, _SDXL_BLOCKS, {d.length: d for d in _SDXL_DIALECTS})
    if norm == "flux":
        return _FamilySpec(norm, label, encoders, _FLUX_BLOCKS, {d.length: d for d in _FLUX_DIALECTS})
    blocks: tuple[str, ...] | None = None
    if model_keys is not None:
        blocks = _discover_blocks(norm, model_keys)
    if norm == "sd3" and not blocks:
        blocks = _numbered("J", SD3_NOMINAL_DEPTH)
    dialects: dict[int, VectorDialect] = {}
    if blocks:
        native = _dialect(f"{label} native", "LoRA Lab (BASE and the model's blocks in order)",
                          ("BASE",) + blocks)
        dialects[native.length] = native
    return _FamilySpec(norm, label, encoders, blocks, dialects)


def family_blocks(family: str | None, model_keys: Iterable[str] | None = None) -> list[str]:
    """Every entry of ``family`` in order: BASE, its text encoders, its model blocks."""
    return list(family_spec(family, model_keys).order)


def accepted_vector_lengths(family: str | None, model_keys: Iterable[str] | None = None) -> list[int]:
    return sorted(family_spec(family, model_keys).dialects)
