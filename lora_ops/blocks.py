"""Per-block LoRA weights: block maps of the model, one syntax to weight them, and a table of the result.

Blocks are the *model's* blocks, found from its weight keys by :func:`block_of`; a position never depends
on which blocks a LoRA file happens to contain (the top complaint about other loaders, field-notes §3).
:func:`parse_block_weights` turns one string into a :class:`BlockWeights` whose ``factor(key)``
multiplies the strength of the LoRA target patching that model weight key (0 drops the target).

Block maps (keys as ComfyUI names them; ``diffusion_model.`` marks the model, also accepted are
``unet.``/``transformer.``; any other key is a text-encoder key):

- SD1.x / SD2.x (``sd1``, ``sd2``): ``input_blocks.N`` -> ``IN00``-``IN11`` (``input_blocks.0`` is
  conv_in, so conv_in is IN00), ``middle_block`` -> ``M00``, ``output_blocks.N`` -> ``OUT00``-``OUT11``.
  Diffusers names map as field-notes §3 states: ``down_blocks.d.{resnets|attentions}.j`` ->
  ``IN(3d+j+1)``, ``down_blocks.d.downsamplers`` -> ``IN(3d+3)``, ``mid_block`` -> ``M00``,
  ``up_blocks.u.{resnets|attentions|upsamplers}.j`` -> ``OUT(3u+j)`` (upsamplers: ``OUT(3u+2)``),
  ``conv_in`` -> ``IN00``. Everything else of the UNet (time_embed, label_emb, the final norm and conv
  ``out.``) is ``BASE``.
- SDXL (``sdxl``): the same rule, ``IN00``-``IN08``, ``M00``, ``OUT00``-``OUT08``.
- Flux (``flux``): ``double_blocks.N`` -> ``D00``-``D18``, ``single_blocks.N`` -> ``S00``-``S37``,
  ``img_in``/``txt_in``/``time_in``/``vector_in``/``guidance_in`` -> ``IN``, ``final_layer`` -> ``OUT``.
- SD3 (``sd3``): ``joint_blocks.N`` -> ``J00``...; the embedders and final layer are ``BASE``. Without
  ``model_keys`` the names J00-J37 are accepted (SD3.5 Large has 38 joint blocks, Medium 24).
- Any other family (the general rule, so a new DiT needs no new code): a LDM UNet layout is named as
  above; otherwise the leftmost path segment that ends in ``blocks``, ``layers`` or ``refiner`` and is
  followed by a number N names the block: its prefix is the uppercase initials of the segment's words
  (``blocks`` -> ``B``, ``layers`` -> ``L``, ``transformer_blocks`` -> ``TB``, ``noise_refiner`` -> ``NR``,
  ``single_transformer_blocks`` -> ``STB``), except ``double_blocks`` -> ``D``, ``single_blocks`` -> ``S``
  and ``joint_blocks`` -> ``J`` as in Flux and SD3, followed by N with at least two digits: ``B07``,
  ``TB12``, ``D03``. Everything outside numbered blocks is ``BASE``.

Text encoders: a text-encoder key belongs to ``BASE`` unless the syntax names its encoder: ``CLIP_L``
(``clip_l.``), ``CLIP_G`` (``clip_g.``), ``CLIP_H`` (``clip_h.``, SD2.x), ``T5`` (``t5xxl.``,
``umt5xxl.``...);
``CLIP`` names every CLIP encoder of the family. The caller applies ``strength_clip`` to text-encoder
targets; the block factor multiplies it, as the model's factor multiplies ``strength_model``.

Sub-block selectors (``BLOCK.sel[.sel]=value``, all selectors must hold for a key):

- UNet blocks: ``attn`` (``attn1`` self- and ``attn2`` cross-attention of the spatial transformer),
  ``attn1``, ``attn2``, ``mlp`` (its feed-forward ``ff``), ``res`` (the ResBlock: ``in_layers``,
  ``emb_layers``, ``out_layers``, ``skip_connection``), and ``0``/``1``/``2``, the LDM sub-module index
  (``M00.0`` first ResBlock, ``M00.1`` transformer, ``M00.2`` second ResBlock). The transformer's
  ``proj_in``/``proj_out``/norms and the down/upsamplers belong to no part selector.
- Flux double blocks and SD3 joint blocks: ``img`` (Flux ``img_*``, SD3 ``x_block``), ``txt`` (Flux
  ``txt_*``, SD3 ``context_block``), ``attn``, ``mlp``, ``mod`` (modulation); combine as ``D03.img.attn``.
- Blocks of the general rule: the same five, by name: ``attn`` a path segment containing ``attn`` or
  ``attention``; ``mlp`` a segment ``mlp``/``ff``/``ffn``/``feed_forward`` (with a prefix or suffix word);
  ``img`` a segment ``img_*``/``x_block``; ``txt`` a segment ``txt_*``/``context_block``/``*_context``/
  ``add_*_proj``; ``mod`` a segment containing ``mod``.
- Flux single blocks fuse attention and MLP in ``linear1``/``linear2``: no selector applies to them.

Syntax (entries separated by commas or newlines, ``#`` starts a comment, names case-insensitive):

- ``NAME=v``, ranges ``IN04-IN08=v`` (inclusive, in the family's block order, which is the order of
  :func:`family_blocks`; ``IN05-OUT06`` crosses the middle block), globs ``OUT*=v`` (``X*`` is ``X``
  followed by digits or ``_...``, or ``X`` itself: ``IN*`` on Flux is ``IN``, ``CLIP*`` the CLIP encoders),
  with selectors ``IN05.attn=0``, ``D00-D06.txt=0``, ``*.mlp=0.5``.
- ``*=v`` sets the weight of every block no entry names (1 without it), wherever it stands. Otherwise a
  later entry overrides an earlier one for what both cover.
- Preset names (:mod:`lora_ops.presets`, plus user presets), combinable with entries: ``OUTALL, OUT05=0.5``.
  A preset sets every block, so entries before it are overridden.
- Values: numbers (``-0.5``, ``1e-1``), ``A``/``B`` (the ``a``/``b`` arguments), lowercase ``a``/``b``
  (half of them, as in Inspire Pack), ``R`` uniform in [0, 1), ``U`` uniform in [-1.5, 1.5), signs
  allowed (``-A``). ``R``/``U`` are drawn from ``torch.Generator().manual_seed(seed)``, in the order the
  entries are written, one draw per block an entry covers (in block order), one per vector position,
  one for ``*=R`` (the default is one value).
- A vector: bare values first, in one run, in a dialect the family knows (:data:`DIALECT_DOCS`); named
  entries may follow it. Blocks a dialect has no position for are set to 0, as
  sd-webui-lora-block-weight does when it widens 17/12 to 26/20 (for a plain LoRA these blocks hold no
  targets; for a LoCon they hold its ResBlocks). Name them after the vector to keep them:
  ``<17 values>, IN03=1``. Text-encoder entries follow BASE unless the dialect has a position for them.

Sources: block names and vector orders of sd-webui-lora-block-weight and ComfyUI Inspire Pack; the
diffusers-to-LDM mapping of field-notes §3.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LoraLabError
from .presets import BUILTIN_PRESETS, BuiltinPreset


class BlockWeightsError(LoraLabError):
    """The block-weight syntax (or a presets file) is malformed or does not fit the model."""


# --- families ------------------------------------------------------------------------------------

FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux": "Flux", "sd3": "SD3"}
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


# --- locating a key ------------------------------------------------------------------------------

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


# --- vector dialects -----------------------------------------------------------------------------

@dataclass(frozen=True)
class VectorDialect:
    """A vector order: position i sets the entries ``positions[i]`` (block names, or ``BLOCK.sel``)."""

    length: int
    title: str
    positions: tuple[tuple[str, ...], ...]
    origin: str


def _dialect(title: str, origin: str, positions: Iterable[str | tuple[str, ...]]) -> VectorDialect:
    pos = tuple((p,) if isinstance(p, str) else tuple(p) for p in positions)
    return VectorDialect(len(pos), title, pos, origin)


_LBW = "sd-webui-lora-block-weight"
_INSPIRE = "Inspire Pack's count of a LyCORIS file"
_MID3 = ("M00.0", ("M00", "M00.1"), "M00.2")
_SD_DIALECTS = (
    _dialect("SD attention-only", _LBW, ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00")
             + _numbered("OUT", 12)[3:]),
    _dialect("SD full", _LBW, ("BASE",) + _numbered("IN", 12) + ("M00",) + _numbered("OUT", 12)),
    _dialect("SD LyCORIS", _INSPIRE, ("BASE",) + _numbered("IN", 12)[1:] + _MID3 + _numbered("OUT", 12)),
)
_SDXL_DIALECTS = (
    _dialect("SDXL attention-only", _LBW,
             ("BASE", "IN04", "IN05", "IN07", "IN08", "M00") + _numbered("OUT", 6)),
    _dialect("SDXL full", _LBW, ("BASE",) + _numbered("IN", 9) + ("M00",) + _numbered("OUT", 9)),
    _dialect("SDXL LyCORIS", _INSPIRE, ("BASE",) + _numbered("IN", 9)[1:] + _MID3 + _numbered("OUT", 9)),
)
_FLUX_DIALECTS = (
    _dialect("Flux 58", "Inspire Pack (img_in, final_layer and text encoders counted as BASE)",
             (("BASE", "IN", "OUT"),) + _numbered("D", 19) + _numbered("S", 38)),
    _dialect("Flux 61", _LBW + " (CLIP, T5, IN, double, single, OUT)",
             ("CLIP_L", "T5", "IN") + _numbered("D", 19) + _numbered("S", 38) + ("OUT",)),
)

DIALECT_DOCS = """\
Vector dialects (values in order; blocks a dialect has no position for are set to 0):
  SD1.x/SD2.x 17: BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03..OUT11 (attention blocks only;
                  IN00,IN03,IN06,IN09-IN11,OUT00-OUT02 -> 0, as sd-webui-lora-block-weight widens 17 to 26)
  SD1.x/SD2.x 26: BASE,IN00..IN11,M00,OUT00..OUT11
  SD1.x/SD2.x 27: BASE,IN01..IN11,M00.0,M00.1,M00.2,OUT00..OUT11 (Inspire Pack counts the sub-modules of the
                  middle block of a LyCORIS file as three positions: ResBlock, transformer, ResBlock, and
                  finds no conv_in; IN00 -> 0)
  SDXL 12:        BASE,IN04,IN05,IN07,IN08,M00,OUT00..OUT05 (IN00-IN03,IN06,OUT06-OUT08 -> 0)
  SDXL 20:        BASE,IN00..IN08,M00,OUT00..OUT08
  SDXL 21:        BASE,IN01..IN08,M00.0,M00.1,M00.2,OUT00..OUT08 (as 27; IN00 -> 0)
  Flux 58:        BASE,D00..D18,S00..S37 (IN and OUT take BASE's value, as the tool counting 58 does)
  Flux 61:        CLIP,T5,IN,D00..D18,S00..S37,OUT (CLIP sets CLIP_L; BASE holds nothing in Flux -> 0)
  SD3 / general:  BASE followed by the model's numbered blocks in order (the general rule needs
                  model_keys)
"""


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


# --- rules and the result ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Rule:
    """One entry: it sets ``value`` on the blocks it covers, on keys carrying every ``selector`` atom."""

    names: frozenset[str] | None  # explicit blocks; None with ``pattern``: open family glob
    pattern: re.Pattern[str] | None
    selector: frozenset[str]
    value: float | Mapping[str, float]
    label: str
    head: str = ""

    def covers(self, block: str) -> bool:
        if self.names is not None and block in self.names:
            return True
        return bool(self.pattern and self.pattern.match(block))

    def value_for(self, block: str) -> float:
        if isinstance(self.value, Mapping):
            # a block outside the family's list (a model variant) takes the entry's first draw
            return self.value.get(block, next(iter(self.value.values())))
        return self.value


def _fmt(value: float) -> str:
    """Shortest text that reads back as exactly ``value``."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _short(value: float) -> str:
    return f"{value:.4g}"


@dataclass
class BlockWeights:
    """Resolved block weights for one model family.

    ``vector``: every entry of the family in order (BASE, text encoders, model blocks) -> weight;
    text encoders show BASE's weight unless named. Sub-block selector entries live in ``rules`` and
    show in :meth:`describe`. ``factor(key)`` is the multiplier for the target at that model key.
    """

    family: str
    label: str
    vector: dict[str, float]
    default: float = 1.0
    notes: tuple[str, ...] = ()
    text: str = ""
    named: tuple[str, ...] = ()
    rules: tuple[_Rule, ...] = field(default=(), repr=False)
    _spec: _FamilySpec | None = field(default=None, repr=False, compare=False)
    _cache: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def _lookup(self, block: str, atoms: frozenset[str], whole_block_only: bool = False) -> float | None:
        for rule in reversed(self.rules):
            if rule.covers(block) and (not rule.selector if whole_block_only else rule.selector <= atoms):
                return rule.value_for(block)
        return None

    def block_of(self, weight_key: str) -> str:
        return _locate(self.family, weight_key)[0]

    def factor(self, weight_key: str) -> float:
        """Multiplier for the LoRA target patching ``weight_key`` (a ComfyUI model or text-encoder key)."""
        cached = self._cache.get(weight_key)
        if cached is not None:
            return cached
        block, _, atoms = _locate(self.family, weight_key)
        value = None
        if block in ENCODER_NAMES:
            value = self._lookup(block, atoms)
            block = "BASE"
        if value is None:
            value = self._lookup(block, atoms)
        if value is None:
            value = self.default
        self._cache[weight_key] = value
        return value

    @property
    def is_identity(self) -> bool:
        """True when every key gets 1 (the plain load)."""
        return self.default == 1.0 and all(
            all(v == 1.0 for v in (r.value.values() if isinstance(r.value, Mapping) else (r.value,)))
            for r in self.rules)

    def part_entries(self) -> list[tuple[str, str, float]]:
        """Live selector entries as (block, selector text, value), in the order they apply."""
        out: list[tuple[str, str, float]] = []
        blocks = self._spec.order if self._spec and self._spec.closed else tuple(self.vector)
        for i, rule in enumerate(self.rules):
            if not rule.selector:
                continue
            for block in blocks:
                if not rule.covers(block):
                    continue
                later = self.rules[i + 1:]
                if any(r.covers(block) and (not r.selector or r.selector <= rule.selector) for r in later):
                    continue
                out.append((block, ".".join(_sorted_atoms(rule.selector)), rule.value_for(block)))
        return out

    def canonical(self) -> str:
        """The weights as syntax that parses back to the same factors."""
        spec = self._spec
        if spec is not None and not spec.closed:
            return self._canonical_open()
        entries: list[str] = []
        names = [n for n in self.vector if n not in ENCODER_NAMES]
        i = 0
        while i < len(names):
            j = i
            first = _split_numbered(names[i])
            while j + 1 < len(names) and self.vector[names[j + 1]] == self.vector[names[i]]:
                nxt = _split_numbered(names[j + 1])
                if not (first and nxt and nxt[0] == first[0]):
                    break
                j += 1
            head = names[i] if i == j else f"{names[i]}-{names[j]}"
            entries.append(f"{head}={_fmt(self.vector[names[i]])}")
            i = j + 1
        for enc in (spec.encoders if spec else ()):
            if enc in self.vector and self._lookup(enc, frozenset(), whole_block_only=True) is not None:
                entries.append(f"{enc}={_fmt(self.vector[enc])}")
        for block, sel, value in self.part_entries():
            entries.append(f"{block}.{sel}={_fmt(value)}")
        if spec is not None and not spec.closed and self.default != 1.0:
            entries.insert(0, f"*={_fmt(self.default)}")
        return ", ".join(entries)

    def _canonical_open(self) -> str:
        entries = [f"*={_fmt(self.default)}"] if self.default != 1.0 else []
        for rule in self.rules:
            sel = "".join("." + a for a in _sorted_atoms(rule.selector))
            if rule.names is None:
                head = "*" if rule.pattern is _ALL_BLOCKS_RX else rule.head
                entries.append(f"{head}{sel}={_fmt(rule.value_for(''))}")
                continue
            for name in sorted(rule.names, key=lambda n: _split_numbered(n) or (n, -1)):
                entries.append(f"{name}{sel}={_fmt(rule.value_for(name))}")
        return ", ".join(entries)

    def describe(self) -> str:
        """Human-readable summary; every line is valid syntax (notes are ``#`` comments)."""
        lines = [f"# block weights for {self.label}"]
        if self._spec is not None and not self._spec.closed:
            lines.append(f"# blocks not named: {_fmt(self.default)}")
        lines.append(self.canonical() or "*=1")
        lines += [f"# {note}" for note in self.notes]
        return "\n".join(lines)


_ATOM_ORDER = ("img", "txt", "attn", "attn1", "attn2", "mlp", "res", "mod")


def _sorted_atoms(atoms: Iterable[str]) -> list[str]:
    return sorted(atoms, key=lambda a: (_ATOM_ORDER.index(a) if a in _ATOM_ORDER else len(_ATOM_ORDER), a))


# --- the parser ----------------------------------------------------------------------------------

_NUMBER_RX = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_TOKEN_RX = re.compile(r"^([+-]?)([RrUuAaBb])$")
_PRESET_NAME_RX = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,63}$")
_SELECTORS = {
    "unet": frozenset({"attn", "attn1", "attn2", "mlp", "res", "0", "1", "2"}),
    "double": frozenset({"img", "txt", "attn", "mlp", "mod"}),
    "joint": frozenset({"img", "txt", "attn", "mlp", "mod"}),
    "dit": frozenset({"img", "txt", "attn", "mlp", "mod"}),
}
_KIND_WORDS = {"single": "Flux single blocks (attention and MLP are fused in linear1/linear2)",
               "io": "Flux IN/OUT layers", "base": "BASE", "encoder": "text-encoder entries"}
_MAX_PRESET_DEPTH = 8
_ALL_BLOCKS_RX = re.compile(r"^(?!CLIP_|T5$).+")


def _is_value(item: str) -> bool:
    return bool(_NUMBER_RX.match(item) or _TOKEN_RX.match(item))


def _foreign_family(name: str, spec: _FamilySpec) -> str | None:
    """Which other architecture a block name belongs to, for the error message."""
    if re.match(r"^[DS]\d+$", name) or (name in ("IN", "OUT") and spec.key != "flux"):
        return "Flux"
    if re.match(r"^J\d+$", name):
        return "SD3"
    if name in _SDXL_BLOCKS:
        return "SD1.x/SD2.x/SDXL UNet"
    if name in _SD_BLOCKS:
        return "SD1.x/SD2.x"
    if name in ENCODER_NAMES:
        return "another model's text-encoder"
    return None


def _split_items(text: str) -> list[str]:
    items: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if parts[-1] == "":
            parts.pop()
        for part in parts:
            if part == "":
                raise BlockWeightsError(f"Empty entry in '{line.strip()}' (two commas in a row).",
                                        "remove the extra comma.")
            items.append(part)
    return items


class _Parser:
    def __init__(self, spec: _FamilySpec, a: float | None, b: float | None, seed: int,
                 presets: Mapping[str, tuple[str, tuple[str, ...] | None]]):
        self.spec = spec
        self.a = a
        self.b = b
        self.seed = seed
        self.presets = presets
        self.gen: torch.Generator | None = None
        self.rules: list[_Rule] = []
        self.default = 1.0
        self.notes: list[str] = []
        self.named: dict[str, None] = {}
        self.open_named: dict[str, None] = {}
        self.draws: list[str] = []

    # values
    def _draw(self) -> float:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(self.seed)
        return float(torch.rand((), generator=self.gen, dtype=torch.float64).item())

    def value(self, token: str, where: str) -> float:
        token = token.strip()
        if _NUMBER_RX.match(token):
            value = float(token)
            if not math.isfinite(value):
                raise BlockWeightsError(f"The weight '{token}' in '{where}' is too large to be a number.",
                                        "use a weight between about -10 and 10.")
            return value
        m = _TOKEN_RX.match(token)
        if not m:
            hint = " Use '.' as the decimal point." if re.match(r"^[+-]?\d+,\d+$", token) else ""
            raise BlockWeightsError(f"'{token}' in '{where}' is not a number.{hint}",
                                    "write a number such as 0.5 or -1, or one of A, B (inputs), "
                                    "R, U (random).")
        sign = -1.0 if m.group(1) == "-" else 1.0
        letter = m.group(2)
        if letter in "Rr":
            return sign * self._draw()
        if letter in "Uu":
            return sign * (-1.5 + 3.0 * self._draw())
        given = self.a if letter in "Aa" else self.b
        if given is None:
            raise BlockWeightsError(f"'{letter}' in '{where}' needs the {letter.upper()} input, which "
                                    "was not given.",
                                    f"connect or set the {letter.upper()} input, or write a number instead.")
        return sign * (given / 2.0 if letter in "ab" else given)

    def per_block_value(self, token: str, names: list[str], where: str) -> float | dict[str, float]:
        if _TOKEN_RX.match(token.strip()) and token.strip()[-1] in "RrUu" and names:
            values = {n: self.value(token, where) for n in names}
            self.draws.append(", ".join(f"{n}={_short(v)}" for n, v in values.items()))
            return values
        value = self.value(token, where)
        if _TOKEN_RX.match(token.strip()) and token.strip()[-1] in "RrUu":
            self.draws.append(f"{where.split('=')[0]}={_short(value)}")
        return value

    # names
    def _unknown(self, raw: str, where: str) -> BlockWeightsError:
        name = _normalize_name(raw) or raw.strip().upper()
        valid = compact_names(self.spec.order) if self.spec.closed else \
            "BASE, " + ", ".join(self.spec.encoders) + " and numbered blocks of the general rule " \
            "(B00, TB03, D05...)"
        foreign = _foreign_family(name, self.spec) if name else None
        if foreign:
            return BlockWeightsError(
                f"'{raw.strip()}' in '{where}' is {foreign} block syntax, but the model is "
                f"{self.spec.label}.",
                f"use {self.spec.label} blocks: {valid}.")
        return BlockWeightsError(f"Unknown block '{raw.strip()}' in '{where}' for {self.spec.label}.",
                                 f"use one of: {valid}.")

    def resolve_name(self, raw: str, where: str) -> list[str]:
        name = _normalize_name(raw)
        if name == "CLIP":
            found = [e for e in self.spec.encoders if e.startswith("CLIP_")]
            if found:
                return found
        if name is None:
            raise self._unknown(raw, where)
        if name in ("BASE",) + self.spec.encoders:
            return [name]
        if self.spec.closed:
            if name in self.spec.order:
                return [name]
            raise self._unknown(raw, where)
        if name in _SPECIAL_NAMES or not _split_numbered(name) and name != "M00":
            raise self._unknown(raw, where)
        return [name]

    def resolve_blocks(self, head: str, where: str) -> tuple[list[str], re.Pattern[str] | None]:
        """Block names (closed families, or explicit names) or a pattern (open-family glob)."""
        head = head.strip()
        if head.endswith("*") and head != "*":
            prefix = head[:-1].strip().upper()
            if not re.match(r"^[A-Z][A-Z0-9_]*$", prefix):
                raise BlockWeightsError(f"'{head}' in '{where}' is not a block pattern.",
                                        "write a block prefix before '*', e.g. OUT*=1 or S*=0.")
            rx = re.compile(rf"^{re.escape(prefix)}(?:\d+|_[A-Z0-9]+)?$")
            if self.spec.closed:
                found = [n for n in self.spec.order if rx.match(n)]
                if not found:
                    raise self._unknown(prefix + "00" if prefix not in _SPECIAL_NAMES else prefix, where)
                return found, None
            found = [n for n in ("BASE",) + self.spec.encoders if rx.match(n)]
            if found:
                return found, None
            return [], rx
        if "-" in head:
            left, _, right = head.partition("-")
            if not left.strip() or not right.strip():
                raise BlockWeightsError(f"The range '{head}' in '{where}' needs a block on both sides.",
                                        "write ranges as IN04-IN08.")
            lo = self.resolve_name(left, where)
            hi = self.resolve_name(right, where)
            if len(lo) != 1 or len(hi) != 1:
                raise BlockWeightsError(f"The range '{head}' in '{where}' must run between two blocks.",
                                        "write ranges as IN04-IN08.")
            lo_name, hi_name = lo[0], hi[0]
            if self.spec.closed:
                order = self.spec.order
                i, j = order.index(lo_name), order.index(hi_name)
            else:
                a, b = _split_numbered(lo_name), _split_numbered(hi_name)
                if not a or not b or a[0] != b[0]:
                    raise BlockWeightsError(
                        f"The range '{head}' in '{where}' joins different block kinds, which the general "
                        "rule "
                        "can only order once it knows the model's blocks.",
                        "write one range per prefix (B00-B09, TB00-TB05), or pass the model's keys.")
                i, j = a[1], b[1]
            if i > j:
                raise BlockWeightsError(f"The range '{head}' in '{where}' runs backwards ({lo_name} comes "
                                        "after "
                                        f"{hi_name}).", f"write it as {hi_name}-{lo_name}.")
            if self.spec.closed:
                return list(self.spec.order[i:j + 1]), None
            prefix = _split_numbered(lo_name)[0]
            if j - i > 10000:
                raise BlockWeightsError(f"The range '{head}' in '{where}' spans {j - i + 1} blocks.",
                                        "no model has that many blocks; check the numbers.")
            return [f"{prefix}{n:02d}" for n in range(i, j + 1)], None
        return self.resolve_name(head, where), None

    def selector(self, parts: list[str], where: str) -> frozenset[str]:
        atoms: list[str] = []
        for part in parts:
            atom = part.strip().lower()
            if re.match(r"^\d{1,6}$", atom):
                atom = str(int(atom))
            if not atom:
                raise BlockWeightsError(f"Empty selector in '{where}'.", "write BLOCK.attn, BLOCK.mlp, ...")
            atoms.append(atom)
        s = set(atoms)
        streams = s & {"img", "txt"}
        part_set = s & {"attn", "attn1", "attn2", "mlp", "res", "mod"}
        indices = {a for a in s if a.isdigit()}
        attn_refine = part_set & {"attn1", "attn2"}
        pure_parts = part_set - {"attn"} if attn_refine else part_set
        if len(streams) > 1 or len(indices) > 1 or len(pure_parts) > 1:
            raise BlockWeightsError(f"The selectors in '{where}' exclude each other; no weight matches them "
                                    "all.",
                                    "use one of img/txt, one of attn/mlp/res/mod, one index.")
        return frozenset(s)

    # entries
    def _add(self, names: list[str], pattern: re.Pattern[str] | None, selector: frozenset[str],
             value: float | Mapping[str, float], label: str, head: str = "") -> None:
        explicit = frozenset(names) if names or pattern is None else None
        self.rules.append(_Rule(explicit, pattern, selector, value, label, head))
        for n in names:
            if n not in ENCODER_NAMES or n in self.spec.encoders:
                self.named.setdefault(n, None)
                if not self.spec.closed:
                    self.open_named.setdefault(n, None)

    def _everything(self) -> list[str]:
        return ["BASE"] + list(self.spec.blocks or ())

    def entry(self, item: str, nested: bool) -> None:
        lhs, _, rhs = item.partition("=")
        if "=" in rhs:
            raise BlockWeightsError(f"'{item}' has more than one '='.", "write one BLOCK=weight per entry.")
        if not rhs.strip():
            raise BlockWeightsError(f"'{item}' has no weight after '='.",
                                    "write a number after '=', e.g. IN04=0.5.")
        if not lhs.strip():
            raise BlockWeightsError(f"'{item}' has no block before '='.",
                                    "write a block name, e.g. IN04=0.5.")
        head, *sel_parts = lhs.strip().split(".")
        selector = self.selector(sel_parts, item) if sel_parts else frozenset()
        if head.strip() == "*":
            if not selector and not nested:
                self.default = self.value(rhs, item)
                if _TOKEN_RX.match(rhs.strip()) and rhs.strip()[-1] in "RrUu":
                    self.draws.append(f"*={_short(self.default)}")
                return
            # every block, also those of a model variant outside the family's list
            names, pattern = self._everything() if self.spec.closed else [], _ALL_BLOCKS_RX
        else:
            names, pattern = self.resolve_blocks(head, item)
        if selector:
            names = self._selectable(names, pattern, selector, item)
        value = self.per_block_value(rhs, names, item)
        self._add(names, pattern, selector, value, item, head.strip().upper())

    def _selectable(self, names: list[str], pattern: re.Pattern[str] | None, selector: frozenset[str],
                    where: str) -> list[str]:
        if pattern is not None and not names:
            if not selector <= _SELECTORS["dit"] | _SELECTORS["unet"]:
                bad = ", ".join(sorted(selector - (_SELECTORS["dit"] | _SELECTORS["unet"])))
                raise BlockWeightsError(f"Unknown selector '{bad}' in '{where}'.",
                                        "selectors are attn, attn1, attn2, mlp, res, 0-2 (UNet) and img, "
                                        "txt, "
                                        "attn, mlp, mod (transformer blocks).")
            return names
        keep = [n for n in names if selector <= _SELECTORS.get(self.spec.kind(n), frozenset())]
        if keep:
            return keep
        kinds = {self.spec.kind(n) for n in names}
        allowed = sorted(set().union(*(_SELECTORS.get(k, frozenset()) for k in kinds)))
        what = ", ".join(_KIND_WORDS.get(k, f"{k} blocks") for k in sorted(kinds))
        if allowed:
            fix = f"selectors for {compact_names(names)}: {', '.join(allowed)}."
        else:
            fix = f"weight the whole block instead ({names[0]}=...); {what} take no selector."
        shown = ".".join(_sorted_atoms(selector))
        raise BlockWeightsError(f"The selector '.{shown}' in '{where}' does not apply to "
                                f"{compact_names(names)} on {self.spec.label}.", fix)

    def vector(self, values: list[str]) -> None:
        n = len(values)
        dialect = self.spec.dialects.get(n)
        if dialect is None:
            accepted = ", ".join(str(k) for k in sorted(self.spec.dialects))
            accepted = accepted or "none without the model's keys"
            other = []
            for fam in ("sd1", "sdxl", "flux"):
                dialects = family_spec(fam, None).dialects
                if fam != self.spec.key and n in dialects:
                    other.append(f"{FAMILY_LABELS[fam]} ({dialects[n].title})")
            hint = f" {n} values is the vector length for {other[0]}." if other else ""
            raise BlockWeightsError(
                f"A block-weight vector of {n} values does not fit {self.spec.label}.{hint}",
                f"{self.spec.label} accepts vectors of {accepted} values, or named entries such as "
                "IN04-IN08=0.5.")
        parsed = [self.value(v, f"position {i + 1} of the {n}-value vector") for i, v in enumerate(values)]
        covered: set[str] = set()
        part_rules: list[tuple[str, str, float]] = []
        for entries, value in zip(dialect.positions, parsed):
            for entry in entries:
                block, _, sel = entry.partition(".")
                covered.add(block)
                if sel:
                    part_rules.append((block, sel, value))
                else:
                    self._add([block], None, frozenset(), value, f"{n}-value vector")
        for block, sel, value in part_rules:
            self._add([block], None, frozenset({sel}), value, f"{n}-value vector")
        missing = [b for b in self._everything() if b not in covered]
        if missing:
            self._add(missing, None, frozenset(), 0.0, f"{n}-value vector (no position)")
        note = f"{n}-value vector read as {dialect.title} ({dialect.origin})"
        if missing:
            note += f"; no position for {compact_names(missing)}: set to 0"
            if dialect.length in (17, 12):
                note += (" (they hold no attention; sd-webui-lora-block-weight sets them to 0 too). To "
                         "keep a "
                         "LoCon's ResBlocks there, name them after the vector, e.g. "
                         f"'..., {missing[0]}=1'")
        self.notes.append(note)

    def _preset_names(self) -> str:
        return ", ".join(p for p, (_, fams) in self.presets.items() if fams is None or self.spec.key in fams)

    def preset(self, raw: str, depth: int) -> None:
        name = raw.strip().upper()
        found = self.presets.get(name)
        if found is None:
            block = _normalize_name(raw)
            is_block = block and (block in self.spec.order or block in _SPECIAL_NAMES
                                  or _foreign_family(block, self.spec))
            if is_block:
                raise BlockWeightsError(f"'{raw.strip()}' is a block name without a weight.",
                                        f"write {raw.strip()}=<weight>, e.g. {raw.strip()}=0.5.")
            raise BlockWeightsError(f"'{raw.strip()}' is neither a preset nor a BLOCK=weight entry.",
                                    f"presets for {self.spec.label}: {self._preset_names()}; or write "
                                    "entries such as IN04=0.5.")
        syntax, families = found
        if families is not None and self.spec.key not in families:
            owners = "/".join(FAMILY_LABELS.get(f, f) for f in families)
            raise BlockWeightsError(f"The preset {name} is for {owners}, not {self.spec.label}.",
                                    f"presets for {self.spec.label}: {self._preset_names()}.")
        if depth >= _MAX_PRESET_DEPTH:
            raise BlockWeightsError(f"The preset {name} refers to itself (directly or through other "
                                    "presets).",
                                    "edit the presets file so that no preset names itself.")
        self.text(syntax, nested=True, depth=depth + 1, where=f"preset {name}")

    def text(self, text: str, *, nested: bool, depth: int, where: str = "") -> None:
        items = _split_items(text)
        values: list[str] = []
        started = False
        for item in items:
            if _is_value(item):
                if started:
                    raise BlockWeightsError(
                        f"The value '{item}'{' in ' + where if where else ''} stands alone after named "
                        "entries or presets.",
                        "put a whole vector first (all bare values in one run) and BLOCK=weight entries "
                        "after it; a decimal comma (0,5) also splits a value: write 0.5.")
                values.append(item)
                continue
            if values and not started:
                self.vector(values)
            started = True
            if "=" in item:
                self.entry(item, nested)
            else:
                self.preset(item, depth)
        if values and not started:
            self.vector(values)

    def build(self, text: str) -> BlockWeights:
        spec = self.spec
        vector: dict[str, float] = {}
        order = list(spec.order) if spec.closed else ["BASE", *spec.encoders, *sorted(
            (n for n in self.open_named if n not in ENCODER_NAMES and n != "BASE"),
            key=lambda n: (_split_numbered(n) or (n, -1)))]
        weights = BlockWeights(family=spec.key, label=spec.label, vector=vector, default=self.default,
                               notes=(), text=text, named=tuple(self.named), rules=tuple(self.rules),
                               _spec=spec)
        for name in order:
            if name in ENCODER_NAMES:
                continue
            v = weights._lookup(name, frozenset(), whole_block_only=True)
            vector[name] = self.default if v is None else v
        for name in order:
            if name in ENCODER_NAMES:
                v = weights._lookup(name, frozenset(), whole_block_only=True)
                vector[name] = vector["BASE"] if v is None else v
        vector_sorted = {n: vector[n] for n in order}
        weights.vector = vector_sorted
        notes = list(self.notes)
        if self.draws:
            notes.append(f"random values (seed {self.seed}): " + "; ".join(self.draws))
        weights.notes = tuple(notes)
        return weights


def _builtin_table() -> dict[str, tuple[str, tuple[str, ...] | None]]:
    return {p.name: (p.syntax, p.families) for p in BUILTIN_PRESETS}


def parse_block_weights(text: str, family: str | None, *, a: float | None = None, b: float | None = None,
                        seed: int = 0, model_keys: Iterable[str] | None = None,
                        user_presets: Mapping[str, str] | None = None) -> BlockWeights:
    """Parse block-weight syntax for ``family``; raise :class:`BlockWeightsError` on anything malformed.

    ``a``/``b`` fill the ``A``/``B`` placeholders; ``seed`` seeds the ``R``/``U`` draws; ``model_keys``
    (the model's weight keys) fixes the block list of SD3 and of the general rule; ``user_presets``
    (from :func:`load_user_presets`) adds presets. Empty text means every weight 1.
    """
    if not isinstance(text, str):
        raise BlockWeightsError(f"Block weights must be text, got {type(text).__name__}.",
                                "pass a string such as 'IN04-IN08=0.5'.")
    for name, given in (("A", a), ("B", b)):
        if given is not None and (isinstance(given, bool) or not isinstance(given, (int, float))
                                  or not math.isfinite(given)):
            raise BlockWeightsError(f"The {name} input must be a finite number, got {given!r}.",
                                    f"set {name} to a number such as 0.5.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BlockWeightsError(f"The seed must be an integer, got {seed!r}.", "set seed to a whole number.")
    spec = family_spec(family, model_keys)
    presets = _builtin_table()
    for name, syntax in (user_presets or {}).items():
        presets.setdefault(name.upper(), (syntax, None))
    parser = _Parser(spec, None if a is None else float(a), None if b is None else float(b),
                     seed % (1 << 64), presets)
    parser.text(text, nested=False, depth=0)
    return parser.build(text)


# --- the applied table ---------------------------------------------------------------------------

def block_table(weights: BlockWeights, targets: Iterable[tuple[str, bool]]) -> str:
    """Text table: block -> weight -> targets in the file -> targets applied.

    ``targets``: one ``(model_weight_key, applied)`` pair per LoRA target that matched a model or
    text-encoder weight (applied False when the factor was 0 or the target was left out). Rows: every
    block the LoRA touches, and every block the syntax named or set away from 1 that it does not touch.
    """
    in_file: dict[str, int] = {}
    applied: dict[str, int] = {}
    factors: dict[str, set[float]] = {}
    for key, was_applied in targets:
        block = weights.block_of(key)
        in_file[block] = in_file.get(block, 0) + 1
        applied[block] = applied.get(block, 0) + (1 if was_applied else 0)
        factors.setdefault(block, set()).add(weights.factor(key))
    parts: dict[str, list[str]] = {}
    for block, sel, value in weights.part_entries():
        parts.setdefault(block, []).append(f"{sel}={_short(value)}")
    order = list(weights.vector) + sorted(b for b in in_file if b not in weights.vector)
    rows: list[tuple[str, str, str, str, str]] = []
    for block in order:
        weight = weights.vector.get(block, weights.default)
        touched = in_file.get(block, 0)
        if not touched and block not in weights.named and weight == 1.0 and block not in parts:
            continue
        shown = _short(weight) + (f" ({', '.join(parts[block])})" if block in parts else "")
        note = "not in this LoRA" if not touched else ""
        if touched and len(factors[block]) > 1 and block not in parts:
            note = "mixed: " + ", ".join(_short(f) for f in sorted(factors[block]))
        rows.append((block, shown, str(touched), str(applied.get(block, 0)), note))
    header = ("block", "weight", "in file", "applied", "")
    total = ("total", "", str(sum(in_file.values())), str(sum(applied.values())), "")
    table = [header, *rows, total]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = []
    for r in table:
        line = f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
        lines.append((line + ("  " + r[4] if r[4] else "")).rstrip())
    return "\n".join(lines)


# --- presets -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PresetInfo:
    name: str
    syntax: str
    source: str  # "built-in" or "user"
    doc: str = ""


def _check_preset_name(name: object, seen: set[str], where: str) -> str:
    if not isinstance(name, str) or not _PRESET_NAME_RX.match(name.strip()):
        raise BlockWeightsError(f"{where}: {name!r} is not a valid preset name.",
                                "start with a letter; use letters, digits, '_', '.', '+', '-' (64 at most).")
    upper = name.strip().upper()
    builtin = {p.name for p in BUILTIN_PRESETS}
    if upper in builtin:
        raise BlockWeightsError(f"{where}: the user preset '{name}' has the name of a built-in preset.",
                                "rename it; built-in presets cannot be redefined, so ALL always means the "
                                "plain load.")
    block = _normalize_name(upper)
    if block is not None or _is_value(upper) or upper == "*":
        raise BlockWeightsError(f"{where}: the preset name '{name}' reads as a block name or a value.",
                                "choose a name that is not a block (IN04, D03, BASE...) nor A, B, R, U.")
    if upper in seen:
        raise BlockWeightsError(f"{where}: the preset '{name}' is defined twice.", "keep one definition.")
    seen.add(upper)
    return upper


def load_user_presets(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read user presets: a JSON object ``{"NAME": "syntax"}`` or text lines ``NAME: syntax`` (the
    sd-webui-lora-block-weight / Inspire Pack preset-file form; ``#`` comments).

    A missing file gives ``{}``. Every preset must parse for at least one model family. A user preset
    may not reuse a built-in name: that is an error, never a silent shadow.
    """
    path = Path(path)
    if not path.exists():
        return {}
    where = f"presets file '{path.name}'"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BlockWeightsError(f"Cannot read the {where}: {exc}.",
                                "check the file is readable UTF-8 text.") from exc
    raw: list[tuple[object, object]] = []
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BlockWeightsError(f"The {where} is not valid JSON: {exc}.",
                                    'write it as {"NAME": "IN04-IN08=0.5, M00=0"}.') from exc
        if not isinstance(data, dict):
            raise BlockWeightsError(f"The {where} must hold one JSON object of name -> syntax.",
                                    'write it as {"NAME": "IN04-IN08=0.5, M00=0"}.')
        raw = list(data.items())
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, syntax = line.partition(":")
            if not sep:
                raise BlockWeightsError(f"Line {number} of the {where} has no 'NAME:' before its syntax.",
                                        "write one preset per line as NAME: syntax.")
            raw.append((name.strip(), syntax.strip()))
    presets: dict[str, str] = {}
    seen: set[str] = set()
    for name, syntax in raw:
        upper = _check_preset_name(name, seen, where)
        if not isinstance(syntax, str) or not syntax.strip():
            raise BlockWeightsError(f"{where}: the preset '{name}' has no syntax text.",
                                    "give it block weights, e.g. IN04-IN08=0.5.")
        presets[upper] = syntax
    for name, syntax in presets.items():
        errors = []
        for fam in KNOWN_FAMILIES:
            try:
                parse_block_weights(syntax, fam, a=1.0, b=1.0, user_presets=presets)
                break
            except BlockWeightsError as exc:
                errors.append(f"{_family_label(fam)}: {exc.problem}")
        else:
            raise BlockWeightsError(f"{where}: the preset '{name}' fits no model family "
                                    f"({'; '.join(errors[:3])}).",
                                    "fix its syntax; test it in the block_weights input first.")
    return presets


def list_presets(family: str | None, user_presets: Mapping[str, str] | None = None) -> list[PresetInfo]:
    """Built-in presets for ``family``, then the user presets that parse for it."""
    norm = normalize_family(family)
    out = [PresetInfo(p.name, p.syntax, "built-in", p.doc) for p in BUILTIN_PRESETS if norm in p.families]
    for name, syntax in (user_presets or {}).items():
        try:
            parse_block_weights(syntax, family, a=1.0, b=1.0, user_presets=user_presets)
        except BlockWeightsError:
            continue
        out.append(PresetInfo(name, syntax, "user"))
    return out


def builtin_preset(name: str) -> BuiltinPreset | None:
    return next((p for p in BUILTIN_PRESETS if p.name == name.upper()), None)
