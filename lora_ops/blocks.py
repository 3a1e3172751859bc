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
  A preset sets every block, so entries before it are overridden. Inspire Pack's preset names (``SD-INALL``,
  ``SDXL-OUTALL``, ``SD-LyC-MIDALL``, ``FLUX-DBL-TAIL``...) are read by the model's blocks as for the file
  they were written for (attention blocks for 17/12 values, a LyCORIS file without conv_in for 27/21, every
  block for Flux's 18), a block without a position taking its nearest neighbour's weight in its section,
  as LoRA Lab's own presets do: ``SD-INALL`` is ``INALL``.
- Values: numbers (``-0.5``, ``1e-1``), ``A``/``B`` (the ``a``/``b`` arguments), lowercase ``a``/``b``
  (half of them, as in Inspire Pack), ``R`` uniform in [0, 1), ``U`` uniform in [-1.5, 1.5), signs
  allowed (``-A``). ``R``/``U`` are drawn from ``torch.Generator().manual_seed(seed)``, in the order the
  entries are written, one draw per block an entry covers (in block order), one per vector position,
  one for ``*=R`` (the default is one value).
- A vector: bare values first, in one run, in a dialect the family knows (:data:`DIALECT_DOCS`); named
  entries may follow it. Blocks a dialect has no position for are set to 0, as
  sd-webui-lora-block-weight does when it widens 17/12 to 26/20 (for a plain LoRA these blocks hold no
  targets; for a LoCon they hold its ResBlocks); :func:`block_notes` names those a LoRA patches in the
  report. Name them after the vector to keep them: ``<17 values>, IN03=1``. Text-encoder entries follow
  BASE unless the dialect has a position for them.
- ``inspire: <vector or preset>[, BLOCK=weight...]`` (the whole text): Inspire Pack's reading, by the blocks
  the LoRA *file* patches (:func:`inspire_positions`, :func:`inspire_values`): BASE first, then one
  position per block present in file order, the last value repeating; R in [0, 3) and U in [-1.5, 1.5)
  rounded to 0.01 from NumPy's generator as Inspire draws them. Read for one LoRA by
  :meth:`BlockWeights.for_targets`; entries after the vector override it by the model's blocks.
- Limits (any text is parsed in bounded time): :data:`MAX_TEXT_CHARS`, :data:`MAX_ENTRIES` (presets
  expanded), :data:`MAX_BLOCK_NAMES`, :data:`MAX_RANGE_BLOCKS`; each gives a clear error.

Sources: block names and vector orders of sd-webui-lora-block-weight and ComfyUI Inspire Pack (its
``inspire/lora_block_weight.py`` and ``resources/lbw-preset.txt``, facts re-implemented); the
diffusers-to-LDM mapping of field-notes §3.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import LoraLabError
from .presets import BUILTIN_PRESETS, INSPIRE_PRESETS, BuiltinPreset

log = logging.getLogger(__name__)


class BlockWeightsError(LoraLabError):
    """The block-weight syntax (or a presets file) is malformed or does not fit the model."""


class _BudgetSpent(BlockWeightsError):
    """Checking a presets file used up its shared entry budget (:data:`MAX_PRESET_CHECK_ENTRIES`)."""


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
_INSPIRE = "Inspire Pack's count of a LyCORIS file without conv_in"
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
                  middle block of a LyCORIS file as three positions: ResBlock, transformer, ResBlock; 27 for
                  a file without conv_in, 28 with it; IN00 -> 0. 'inspire:' reads any file as Inspire does)
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
    """One entry: it sets ``value`` on the blocks it covers, on keys carrying every ``selector`` atom.

    ``unpositioned``: the rule a vector adds for the blocks its dialect has no position for (value 0);
    the report names the blocks of a LoRA it leaves out (:func:`block_notes`).
    """

    names: frozenset[str] | None  # explicit blocks; None with ``pattern``: open family glob
    pattern: re.Pattern[str] | None
    selector: frozenset[str]
    value: float | Mapping[str, float]
    label: str
    head: str = ""
    unpositioned: bool = False

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


@dataclass(frozen=True)
class _InspireSource:
    """What an ``inspire:`` text needs to be read once the LoRA's blocks are known (see
    :meth:`BlockWeights.for_targets`): the vector's tokens (v0 is BASE) and the entries that follow it."""

    tokens: tuple[str, ...]
    rest: str
    origin: str  # "the vector" or "preset NAME"
    family: str | None
    model_keys: tuple[str, ...] | None
    a: float | None
    b: float | None
    seed: int
    user_presets: Mapping[str, str] | None


@dataclass
class BlockWeights:
    """Resolved block weights for one model family.

    ``vector``: every entry of the family in order (BASE, text encoders, model blocks) -> weight;
    text encoders show BASE's weight unless named. Sub-block selector entries live in ``rules`` and
    show in :meth:`describe`. ``factor(key)`` is the multiplier for the target at that model key.

    An ``inspire:`` text (Inspire Pack's reading, positions follow the blocks the LoRA file patches) is
    read in two steps: :func:`parse_block_weights` checks it and returns weights with ``reads_file``
    True, whose ``vector`` shows the reading for a file that patches every block; :meth:`for_targets`
    gives the weights for one LoRA's targets. ``factor`` refuses to answer before that.
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
    _inspire: _InspireSource | None = field(default=None, repr=False, compare=False)
    _lookups: dict = field(default_factory=dict, repr=False, compare=False)
    _index: dict[str, list[int]] | None = field(default=None, repr=False, compare=False)

    def _candidates(self, block: str) -> list[int]:
        """Indices of the rules that may cover ``block``, ascending (explicit names indexed once)."""
        if self._index is None:
            index: dict[str, list[int]] = {}
            patterns: list[int] = []
            for i, rule in enumerate(self.rules):
                if rule.pattern is not None:
                    patterns.append(i)
                for name in rule.names or ():
                    index.setdefault(name, []).append(i)
            index["\0patterns"] = patterns
            self._index = index
        named = self._index.get(block, [])
        patterns = self._index["\0patterns"]
        if not patterns or not named:
            return patterns or named
        return sorted(set(named).union(patterns))

    def _rule_index(self, block: str, atoms: frozenset[str], whole_block_only: bool = False) -> int | None:
        memo_key = (block, atoms, whole_block_only)
        if memo_key in self._lookups:
            return self._lookups[memo_key]
        found = None
        for i in reversed(self._candidates(block)):
            rule = self.rules[i]
            if rule.covers(block) and (not rule.selector if whole_block_only else rule.selector <= atoms):
                found = i
                break
        self._lookups[memo_key] = found
        return found

    def _lookup(self, block: str, atoms: frozenset[str], whole_block_only: bool = False) -> float | None:
        i = self._rule_index(block, atoms, whole_block_only)
        return None if i is None else self.rules[i].value_for(block)

    def block_of(self, weight_key: str) -> str:
        return _locate(self.family, weight_key)[0]

    @property
    def reads_file(self) -> bool:
        """True for an ``inspire:`` text not yet read for a LoRA's targets (:meth:`for_targets`)."""
        return self._inspire is not None

    def for_targets(self, target_keys: Iterable[str]) -> BlockWeights:
        """These weights for one LoRA whose targets patch ``target_keys`` (ComfyUI model and text-encoder
        weight keys). Weights that do not read the file are returned as they are."""
        if self._inspire is None:
            return self
        return _inspire_bind(self._inspire, list(target_keys), self.text)

    def factor(self, weight_key: str) -> float:
        """Multiplier for the LoRA target patching ``weight_key`` (a ComfyUI model or text-encoder key)."""
        cached = self._cache.get(weight_key)
        if cached is not None:
            return cached
        if self._inspire is not None:
            raise BlockWeightsError(
                "'inspire:' block weights are read by the blocks of a LoRA file, and here there is none "
                "(e.g. a training target or a merge without a file).",
                "write the weights by the model's blocks (IN04-IN08=0.5, OUT*=1, or a vector without "
                "'inspire:').")
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

    def rule_for(self, weight_key: str) -> _Rule | None:
        """The entry that decides the factor of ``weight_key`` (None: the default applies)."""
        block, _, atoms = _locate(self.family, weight_key)
        if block in ENCODER_NAMES:
            i = self._rule_index(block, atoms)
            if i is not None:
                return self.rules[i]
            block = "BASE"
        i = self._rule_index(block, atoms)
        return None if i is None else self.rules[i]

    @property
    def is_identity(self) -> bool:
        """True when every key gets 1 (the plain load)."""
        return self.default == 1.0 and all(
            all(v == 1.0 for v in (r.value.values() if isinstance(r.value, Mapping) else (r.value,)))
            for r in self.rules)

    def part_entries(self) -> list[tuple[str, str, float]]:
        """Live selector entries as (block, selector text, value), in the order they apply.

        An entry is live on a block unless a later entry covers that block with no selector or with a
        selector it implies (one pass from the last entry back: O(entries x blocks x selectors seen)).
        """
        blocks = self._spec.order if self._spec and self._spec.closed else tuple(self.vector)
        position = {b: i for i, b in enumerate(blocks)}
        whole: set[str] = set()
        seen: dict[str, set[frozenset[str]]] = {}
        found: list[list[tuple[str, str, float]]] = []
        for rule in reversed(self.rules):
            here: list[tuple[str, str, float]] = []
            if rule.pattern is None:
                covered = sorted((b for b in rule.names or () if b in position and b not in whole), key=position.get)
            else:
                covered = [b for b in blocks if b not in whole and rule.covers(b)]
            for block in covered:
                if not rule.selector:
                    whole.add(block)
                    continue
                earlier = seen.setdefault(block, set())
                if not any(s <= rule.selector for s in earlier):
                    here.append((block, ".".join(_sorted_atoms(rule.selector)), rule.value_for(block)))
                earlier.add(rule.selector)
            found.append(here)
        return [entry for here in reversed(found) for entry in here]

    def canonical(self) -> str:
        """The weights as syntax that parses back to the same factors."""
        if self._inspire is not None:
            return self.text.strip()
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
        if self._spec is not None and not self._spec.closed and self._inspire is None:
            lines.append(f"# blocks not named: {_fmt(self.default)}")
        lines += self.canonical().splitlines() or ["*=1"]
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

MAX_TEXT_CHARS = 65_536
"""Longest block-weight text (or preset syntax) read; a longer one is refused before it is split."""
MAX_ENTRIES = 2_000
"""Most entries and vector values one text may expand to, presets included: nested presets would
otherwise grow exponentially with their depth."""
MAX_BLOCK_NAMES = 20_000
"""Most block names all entries of one text may list together (a range or glob counts each block)."""
MAX_RANGE_BLOCKS = 1_000
"""Widest range in a family without a fixed block list (no model has that many numbered blocks)."""


def _check_length(text: str, where: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise BlockWeightsError(f"The {where} is {len(text)} characters long; LoRA Lab reads at most "
                                f"{MAX_TEXT_CHARS}.",
                                "shorten it: a range (IN04-IN08=0.5), a glob (OUT*=1) or a preset says in one "
                                "entry what many entries say.")


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


@dataclass(frozen=True)
class _PresetDef:
    syntax: str
    families: tuple[str, ...] | None  # None: a user preset, tried on any family
    inspire: bool = False  # an Inspire Pack name: its vector read as for the file it was written for
    display: str = ""  # the name as its source writes it


class _Parser:
    def __init__(self, spec: _FamilySpec, a: float | None, b: float | None, seed: int,
                 presets: Mapping[str, _PresetDef], user_presets: Mapping[str, str] | None = None,
                 budget: list[int] | None = None):
        self.spec = spec
        self.budget = budget
        self.a = a
        self.b = b
        self.seed = seed
        self.presets = presets
        self.user_presets = user_presets
        self.gen: torch.Generator | None = None
        self.rules: list[_Rule] = []
        self.default = 1.0
        self.notes: list[str] = []
        self.named: dict[str, None] = {}
        self.open_named: dict[str, None] = {}
        self.draws: list[str] = []
        self.spent = 0  # entries and vector values read, presets expanded (MAX_ENTRIES)
        self.names_listed = 0  # block names over all rules (MAX_BLOCK_NAMES)
        self.chain: list[str] = []  # the presets being expanded, outermost first

    def _via(self) -> str:
        return f" (through the presets {' > '.join(self.chain)})" if self.chain else ""

    def spend(self, count: int) -> None:
        self.spent += count
        if self.budget is not None:
            self.budget[0] -= count
            if self.budget[0] < 0:
                raise _BudgetSpent("The presets file takes too many entries to check.", "")
        if self.spent > MAX_ENTRIES:
            raise BlockWeightsError(
                f"The block weights expand to more than {MAX_ENTRIES} entries{self._via()}.",
                "write fewer entries; if presets name other presets several times each, the expansion "
                "multiplies at every level: name each preset once.")

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
            if j - i >= MAX_RANGE_BLOCKS:
                raise BlockWeightsError(f"The range '{head}' in '{where}' spans {j - i + 1} blocks; LoRA Lab "
                                        f"takes ranges of at most {MAX_RANGE_BLOCKS}.",
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
             value: float | Mapping[str, float], label: str, head: str = "", unpositioned: bool = False) -> None:
        self.names_listed += len(names)
        if self.names_listed > MAX_BLOCK_NAMES:
            raise BlockWeightsError(
                f"The block weights list more than {MAX_BLOCK_NAMES} block names in all{self._via()}.",
                "write fewer or narrower ranges; one glob (B*=0.5) covers every block of a kind.")
        explicit = frozenset(names) if names or pattern is None else None
        self.rules.append(_Rule(explicit, pattern, selector, value, label, head, unpositioned))
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

    def vector(self, values: list[str], *, where: str = "", fill: str = "zero", pad_to: int | None = None) -> None:
        """A bare vector, read in the family's dialect of its length.

        ``fill``: what the blocks the dialect has no position for get: ``"zero"`` (as
        sd-webui-lora-block-weight does when it widens 17/12 values to 26/20; the report names those
        the LoRA touches) or ``"neighbour"`` (the nearest block with a position in the same section,
        before it or else after it: how LoRA Lab reads a preset written for the attention blocks).
        ``pad_to``: repeat the last value up to this length first (Inspire Pack's rule for short vectors).
        """
        n = len(values)
        length = max(n, pad_to or 0)
        dialect = self.spec.dialects.get(length)
        if dialect is None:
            accepted = ", ".join(str(k) for k in sorted(self.spec.dialects))
            accepted = accepted or "none without the model's keys"
            other = []
            for fam in ("sd1", "sdxl", "flux"):
                dialects = family_spec(fam, None).dialects
                if fam != self.spec.key and n in dialects:
                    other.append(f"{FAMILY_LABELS[fam]} ({dialects[n].title})")
            hint = f" {n} values is the vector length for {other[0]}." if other else ""
            what = f"The {where} is a block-weight vector" if where else "A block-weight vector"
            fix = (f"{self.spec.label} accepts vectors of {accepted} values, or named entries such as "
                   "IN04-IN08=0.5")
            name = where[len("preset "):] if where.startswith("preset ") else ""
            fix += (f"; or read it by the blocks of the LoRA file, as Inspire Pack does: 'inspire: {name}'."
                    if name else "; or read it as Inspire Pack does: 'inspire: <the values>'.")
            raise BlockWeightsError(f"{what} of {n} values that does not fit {self.spec.label}.{hint}", fix)
        parsed = [self.value(v, f"position {i + 1} of the {n}-value vector") for i, v in enumerate(values)]
        parsed += [parsed[-1]] * (length - n)
        covered: set[str] = set()
        whole: dict[str, float] = {}
        part_rules: list[tuple[str, str, float]] = []
        label = f"{n}-value vector" + (f" ({where})" if where else "")
        for entries, value in zip(dialect.positions, parsed):
            for entry in entries:
                block, _, sel = entry.partition(".")
                covered.add(block)
                if sel:
                    part_rules.append((block, sel, value))
                else:
                    whole[block] = value
                    self._add([block], None, frozenset(), value, label)
        for block, sel, value in part_rules:
            if whole.get(block) != value:  # a part at its block's own value says nothing more
                self._add([block], None, frozenset({sel}), value, label)
        missing = [b for b in self._everything() if b not in covered]
        note = (f"{where}: " if where else "") + f"{n}-value vector read as {dialect.title} ({dialect.origin})"
        if length > n:
            note += f"; the last value repeats for positions {n + 1}-{length}, as Inspire Pack repeats it"
        if missing and fill == "neighbour":
            for block in missing:
                self._add([block], None, frozenset(), self._neighbour(block, whole), label + " (nearest block)")
            note += (f"; the blocks without a position ({compact_names(missing)}) get the weight of the nearest "
                     "block with one in their section, as LoRA Lab's presets do")
        elif missing:
            self._add(missing, None, frozenset(), 0.0,
                      f"{n}-value vector{' of ' + where if where else ''} (no position)", unpositioned=True)
            note += f"; no position for {compact_names(missing)}: set to 0"
            if dialect.length in (17, 12):
                note += (" (they hold no attention; sd-webui-lora-block-weight sets them to 0 too, Inspire Pack "
                         "reads the vector by the file's blocks instead)")
        self.notes.append(note)

    def _neighbour(self, block: str, whole: Mapping[str, float]) -> float:
        def section(name: str) -> str:
            split = _split_numbered(name)
            return split[0] if split else name

        same = [b for b in self._everything() if section(b) == section(block)]
        i = same.index(block)
        before = [b for b in same[:i] if b in whole]
        after = [b for b in same[i + 1:] if b in whole]
        if before:
            return whole[before[-1]]
        return whole[after[0]] if after else 0.0

    def _preset_names(self) -> str:
        return ", ".join(p for p, d in self.presets.items()
                         if (d.families is None or self.spec.key in d.families) and not d.inspire)

    def preset(self, raw: str, depth: int) -> None:
        name = raw.strip().upper()
        if ":" in raw:
            raise BlockWeightsError(
                f"'{raw.strip()}' looks like a line of a preset file (NAME:vector, as Inspire Pack's "
                "lbw-preset.txt writes presets).",
                "put such lines into the user presets file (<ComfyUI user folder>/lora_lab/block_presets.json) "
                "and write the name here; to read a vector as Inspire Pack does, start the text with "
                "'inspire:'.")
        found = self.presets.get(name)
        if found is None:
            block = _normalize_name(raw)
            is_block = block and (block in self.spec.order or block in _SPECIAL_NAMES
                                  or _foreign_family(block, self.spec))
            if is_block:
                raise BlockWeightsError(f"'{raw.strip()}' is a block name without a weight.",
                                        f"write {raw.strip()}=<weight>, e.g. {raw.strip()}=0.5.")
            raise BlockWeightsError(f"'{raw.strip()}' is neither a preset nor a BLOCK=weight entry"
                                    f"{self._presets_problem()}.",
                                    f"presets for {self.spec.label}: {self._preset_names()}; or write "
                                    "entries such as IN04=0.5.")
        if found.families is not None and self.spec.key not in found.families:
            owners = "/".join(FAMILY_LABELS.get(f, f) for f in found.families)
            raise BlockWeightsError(f"The preset {name} is for {owners}, not {self.spec.label}.",
                                    f"presets for {self.spec.label}: {self._preset_names()}.")
        if depth >= _MAX_PRESET_DEPTH:
            raise BlockWeightsError(f"The preset {name} refers to itself (directly or through other "
                                    "presets).",
                                    "edit the presets file so that no preset names itself.")
        if _inspire_body(found.syntax) is not None:
            raise BlockWeightsError(f"The preset {name} reads its vector by the blocks of the LoRA file "
                                    "('inspire:'), which only the whole text can do.",
                                    f"write 'inspire: {name}' as the whole block_weights text.")
        self.chain.append(name)
        if found.inspire:
            values = _split_items(found.syntax)
            self.spend(len(values))
            pad = 58 if self.spec.key == "flux" and len(values) not in self.spec.dialects else None
            self.vector(values, where=f"preset {found.display or name}", fill="neighbour", pad_to=pad)
        else:
            self.text(found.syntax, nested=True, depth=depth + 1, where=f"preset {name}")
        self.chain.pop()

    def _presets_problem(self) -> str:
        problems = getattr(self.user_presets, "problems", ())
        if not problems:
            return ""
        return (f" (the user presets file '{self.user_presets.path.name}' has problems, so some of its presets "
                f"were not loaded: {problems[0]})")

    def text(self, text: str, *, nested: bool, depth: int, where: str = "") -> None:
        _check_length(text, where or "block_weights text")
        items = _split_items(text)
        self.spend(len(items))
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
                self.vector(values, where=where)
            started = True
            if "=" in item:
                self.entry(item, nested)
            else:
                self.preset(item, depth)
        if values and not started:
            self.vector(values, where=where)

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


def _builtin_table() -> dict[str, _PresetDef]:
    table = {p.name: _PresetDef(p.syntax, p.families) for p in BUILTIN_PRESETS}
    table.update({p.name.upper(): _PresetDef(p.vector, p.families, inspire=True, display=p.name)
                  for p in INSPIRE_PRESETS})
    return table


def _check_inputs(text: object, a: object, b: object, seed: object) -> None:
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


def parse_block_weights(text: str, family: str | None, *, a: float | None = None, b: float | None = None,
                        seed: int = 0, model_keys: Iterable[str] | None = None,
                        user_presets: Mapping[str, str] | None = None) -> BlockWeights:
    """Parse block-weight syntax for ``family``; raise :class:`BlockWeightsError` on anything malformed.

    ``a``/``b`` fill the ``A``/``B`` placeholders; ``seed`` seeds the ``R``/``U`` draws; ``model_keys``
    (the model's weight keys) fixes the block list of SD3 and of the general rule; ``user_presets``
    (from :func:`read_user_presets`) adds presets. Empty text means every weight 1. A text that starts
    with ``inspire:`` is read as Inspire Pack reads a vector (see :func:`inspire_positions`); the result
    then ``reads_file`` until :meth:`BlockWeights.for_targets` is given the LoRA's targets.

    Work is bounded for any text: :data:`MAX_TEXT_CHARS`, :data:`MAX_ENTRIES` (presets expanded),
    :data:`MAX_BLOCK_NAMES`, :data:`MAX_RANGE_BLOCKS`.
    """
    return _parse(text, family, a=a, b=b, seed=seed, model_keys=model_keys, user_presets=user_presets)


def _parse(text: str, family: str | None, *, a: float | None = None, b: float | None = None, seed: int = 0,
           model_keys: Iterable[str] | None = None, user_presets: Mapping[str, str] | None = None,
           budget: list[int] | None = None) -> BlockWeights:
    _check_inputs(text, a, b, seed)
    _check_length(text, "block_weights text")
    keys = None if model_keys is None else tuple(k for k in model_keys if isinstance(k, str))
    spec = family_spec(family, keys)
    presets = _builtin_table()
    for name, syntax in (user_presets or {}).items():
        presets.setdefault(name.upper(), _PresetDef(syntax, None))
    fa, fb = None if a is None else float(a), None if b is None else float(b)
    body = _inspire_body(text)
    if body is not None:
        source = _inspire_source(body, spec, presets, family=family, model_keys=keys, a=fa, b=fb,
                                 seed=seed % (1 << 64), user_presets=user_presets)
        return _inspire_unbound(source, spec, text)
    parser = _Parser(spec, fa, fb, seed % (1 << 64), presets, user_presets, budget)
    parser.text(text, nested=False, depth=0)
    return parser.build(text)


# --- Inspire Pack's reading: positions follow the blocks the LoRA file patches ----------------------

_INSPIRE_HEAD_RX = re.compile(r"^\s*inspire\s*:", re.IGNORECASE)
_INSPIRE_GROUPS = ("input_blocks", "middle_block", "output_blocks", "double_blocks", "single_blocks")
# Inspire reads a block's number from the (at most) two characters after the group's name
_INSPIRE_UNIT_RX = re.compile(r"^diffusion_model\.(input_blocks|middle_block|output_blocks|double_blocks"
                              r"|single_blocks)\.(\d{1,2})")


def _inspire_body(text: str) -> str | None:
    """The text after a leading ``inspire:`` (blank and ``#`` lines may come before it), else None."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        content = line.split("#", 1)[0]
        if not content.strip():
            continue
        m = _INSPIRE_HEAD_RX.match(content)
        if m is None:
            return None
        return "\n".join([line[m.end():], *lines[i + 1:]])
    return None


def inspire_positions(target_keys: Iterable[str]) -> list[list[tuple[str, int]]]:
    """The vector positions Inspire Pack's LoraLoaderBlockWeight gives a LoRA's targets, after BASE.

    Facts from Inspire's ``inspire/lora_block_weight.py`` (re-implemented, not copied): every patched
    model key ``diffusion_model.<group>.<N>...`` of the groups ``input_blocks``, ``middle_block``,
    ``output_blocks``, ``double_blocks``, ``single_blocks`` is sorted by group in that order, then by N
    (for ``middle_block`` N is the sub-module: ResBlock 0, transformer 1, ResBlock 2). Walking them, a
    new position starts whenever N differs from the previous key's N, also across groups (so the last
    input block and a middle sub-module with the same number share a position). Every other key (text
    encoders, time embedding, Flux ``img_in``/``final_layer``, SD3 joint blocks...) takes BASE, the
    vector's first value. Returns the positions as lists of ``(group, N)`` units, in order.
    """
    units = set()
    for key in target_keys:
        m = _INSPIRE_UNIT_RX.match(key)
        if m:
            units.add((_INSPIRE_GROUPS.index(m.group(1)), int(m.group(2))))
    positions: list[list[tuple[str, int]]] = []
    previous = None
    for group, number in sorted(units):
        if positions and number == previous:
            positions[-1].append((_INSPIRE_GROUPS[group], number))
        else:
            positions.append([(_INSPIRE_GROUPS[group], number)])
        previous = number
    return positions


def inspire_values(tokens: list[str] | tuple[str, ...], n_positions: int, *, a: float | None, b: float | None,
                   seed: int) -> tuple[float, list[float]]:
    """(BASE, the value of each of ``n_positions`` positions) for a vector read as Inspire Pack reads it.

    Position p takes value p + 1; past the vector's end the last value read repeats (with a vector of
    BASE alone every position keeps Inspire's initial 1.0). ``R`` is uniform in [0, 3) and ``U`` in
    [-1.5, 1.5), each rounded to 2 decimals and drawn from NumPy's legacy generator seeded with
    ``seed % 2**31``, in position order and BASE last, as Inspire draws them; ``A``/``B`` are the
    inputs, ``a``/``b`` half of them.
    """
    rng = np.random.RandomState(seed % (1 << 31))

    def convert(token: str, where: str) -> float:
        token = token.strip()
        if _NUMBER_RX.match(token):
            value = float(token)
            if not math.isfinite(value):
                raise BlockWeightsError(f"The weight '{token}' in '{where}' is too large to be a number.",
                                        "use a weight between about -10 and 10.")
            return value
        m = _TOKEN_RX.match(token)
        if m is None:
            raise BlockWeightsError(f"'{token}' in '{where}' is not a number.",
                                    "write a number such as 0.5, or one of A, B (inputs), R, U (random).")
        sign = -1.0 if m.group(1) == "-" else 1.0
        letter = m.group(2)
        if letter in "Rr":
            return sign * round(float(rng.uniform(0.0, 3.0)), 2)
        if letter in "Uu":
            return sign * round(float(rng.uniform(-1.5, 1.5)), 2)
        given = a if letter in "Aa" else b
        if given is None:
            raise BlockWeightsError(f"'{letter}' in '{where}' needs the {letter.upper()} input, which was not "
                                    "given.", f"set the {letter.upper()} input (Inspire Pack's default A is 4).")
        return sign * (given / 2.0 if letter in "ab" else given)

    values: list[float] = []
    ratio = 1.0
    for p in range(n_positions):
        if p + 1 < len(tokens):
            ratio = convert(tokens[p + 1], f"position {p + 2} of the inspire: vector")
        values.append(ratio)
    return convert(tokens[0], "position 1 (BASE) of the inspire: vector"), values


def _inspire_source(body: str, spec: _FamilySpec, presets: Mapping[str, _PresetDef], *, family: str | None,
                    model_keys: tuple[str, ...] | None, a: float | None, b: float | None, seed: int,
                    user_presets: Mapping[str, str] | None) -> _InspireSource:
    """Check an ``inspire:`` text (a vector or a preset name, then optional BLOCK=weight entries)."""
    fix_form = ("write 'inspire:' followed by Inspire Pack's block_vector (values such as 1,0,0,...,1, or a "
                "preset name such as SD-INALL), then optional BLOCK=weight entries.")
    if body.lstrip().startswith("%"):
        raise BlockWeightsError("Inspire Pack's '%' block-spec form is not read by LoRA Lab.",
                                "write the same thing by the model's blocks without 'inspire:', e.g. "
                                "'*=0, IN*=1' for '%default=0, in=1'.")
    items = _split_items(body)
    if items and ":" in items[0]:
        # Inspire's own field takes 'NAME:vector' and reads the part after the colon
        label, _, first = items[0].partition(":")
        if not _PRESET_NAME_RX.match(label.strip()):
            raise BlockWeightsError(f"'{items[0]}' after 'inspire:' is neither a value nor NAME:value.", fix_form)
        items = ([first.strip()] if first.strip() else []) + items[1:]
    for item in items:
        if ":" in item:
            raise BlockWeightsError(f"'{item}' in the inspire: text holds a ':' too many.", fix_form)
    if not items:
        raise BlockWeightsError("'inspire:' is followed by no vector.", fix_form)
    tokens: list[str] = []
    for item in items:
        if _is_value(item):
            tokens.append(item)
            continue
        parts = item.split()
        if len(parts) > 1 and all(_is_value(p) for p in parts):
            raise BlockWeightsError(
                f"'{item}' gives one vector position several space-separated values; Inspire Pack hands them "
                "to the position's layers one by one in the order its loader lists them, which LoRA Lab does "
                "not reproduce.",
                "give each position one value, and weight parts of a block by name after the vector, e.g. "
                "'..., IN05.attn=0'.")
        break
    origin = "the vector"
    rest = items[len(tokens):]
    if not tokens:
        name = items[0].upper()
        found = presets.get(name)
        if found is None or (found.families is not None and spec.key not in found.families):
            names = ", ".join(p.name for p in INSPIRE_PRESETS if spec.key in p.families) or "none"
            raise BlockWeightsError(f"'{items[0]}' after 'inspire:' is neither a value nor a preset that is a "
                                    f"vector{' for ' + spec.label if found else ''}.",
                                    f"Inspire Pack's presets for {spec.label}: {names}; or a user preset "
                                    "written as NAME:vector.")
        syntax = _inspire_body(found.syntax)
        syntax = found.syntax if syntax is None else syntax
        tokens = _split_items(syntax)
        if not tokens or not all(_is_value(t) for t in tokens):
            raise BlockWeightsError(f"The preset {name} is not a vector, so it has no positions to read by the "
                                    "file's blocks.",
                                    f"write '{name}' without 'inspire:' (it names the model's blocks).")
        origin = f"preset {name}"
        rest = items[1:]
    for item in rest:
        if "=" not in item:
            raise BlockWeightsError(f"'{item}' follows the inspire: vector, where only BLOCK=weight entries go.",
                                    fix_form)
    if len(tokens) > MAX_ENTRIES:
        raise BlockWeightsError(f"The inspire: vector has {len(tokens)} values; LoRA Lab reads at most "
                                f"{MAX_ENTRIES}.", "no model has that many blocks; check the text.")
    for i, token in enumerate(tokens):
        letter = token.strip().lstrip("+-")
        if letter in ("A", "a", "B", "b") and (a if letter in "Aa" else b) is None:
            raise BlockWeightsError(f"'{letter}' at position {i + 1} of the inspire: vector needs the "
                                    f"{letter.upper()} input, which was not given.",
                                    f"set the {letter.upper()} input (Inspire Pack's default A is 4).")
        if _NUMBER_RX.match(token.strip()) and not math.isfinite(float(token)):
            raise BlockWeightsError(f"The weight '{token}' at position {i + 1} of the inspire: vector is too "
                                    "large to be a number.", "use a weight between about -10 and 10.")
    rest_text = ", ".join(rest)
    if rest_text:
        check = _Parser(spec, a, b, seed, presets, user_presets)
        check.text(rest_text, nested=False, depth=0, where="entries after the inspire: vector")
    return _InspireSource(tuple(tokens), rest_text, origin, family, model_keys, a, b, seed, user_presets)


def _unit_rule(group: str, number: int) -> str:
    if group == "middle_block":
        return f"M00.{number}"
    prefix = {"input_blocks": "IN", "output_blocks": "OUT", "double_blocks": "D", "single_blocks": "S"}[group]
    return f"{prefix}{number:02d}"


def _inspire_bind(source: _InspireSource, target_keys: list[str], text: str) -> BlockWeights:
    """The weights Inspire Pack gives ``target_keys``, as LoRA Lab entries (then the text's own entries)."""
    spec = family_spec(source.family, source.model_keys)
    positions = inspire_positions(target_keys)
    base, values = inspire_values(source.tokens, len(positions), a=source.a, b=source.b, seed=source.seed)
    unit_value = {_unit_rule(g, n): v for units, v in zip(positions, values) for g, n in units}
    entries = [f"BASE={_fmt(base)}"]
    # keys outside Inspire's groups take BASE: name their blocks (Flux IN/OUT, SD3 joint blocks...)
    others: dict[str, None] = {}
    for key in target_keys:
        if _INSPIRE_UNIT_RX.match(key) is None:
            block, kind, _ = _locate(spec.key, key)
            if kind not in ("base", "encoder"):
                others.setdefault(block, None)
    entries += [f"{block}={_fmt(base)}" for block in others]
    middle = {u: v for u, v in unit_value.items() if u.startswith("M00.")}
    for unit, value in unit_value.items():
        if not unit.startswith("M00."):
            entries.append(f"{unit}={_fmt(value)}")
    if middle:
        first = next(iter(middle.values()))
        entries.append(f"M00={_fmt(first)}")
        if len(set(middle.values())) > 1:
            entries += [f"{unit}={_fmt(value)}" for unit, value in middle.items()]
    if source.rest:
        entries.append(source.rest)
    presets = _builtin_table()
    for name, syntax in (source.user_presets or {}).items():
        presets.setdefault(name.upper(), _PresetDef(syntax, None))
    parser = _Parser(spec, source.a, source.b, source.seed, presets, source.user_presets)
    parser.text(", ".join(entries), nested=False, depth=0)
    weights = parser.build(text)
    n = len(source.tokens)
    names = [[_unit_rule(g, k) for g, k in units] for units in positions]
    shown = ", ".join(f"{'+'.join(units)}={_short(v)}" for units, v in zip(names, values))
    note = (f"read as Inspire Pack reads a vector ({source.origin}, {n} values): BASE={_short(base)}, then the "
            f"{len(positions)} block positions this LoRA patches, in file order: {shown or 'none'}")
    if n == 1 and positions:
        note += "; with BASE alone every block keeps 1, as in Inspire Pack"
    elif len(positions) > n - 1:
        repeated = [u for units in names[n - 1:] for u in units]
        note += f"; the last value repeats for {compact_names(repeated)}"
    elif len(positions) < n - 1:
        note += f"; values {len(positions) + 2}-{n} fall on no block of this LoRA and are not used"
    weights.notes = (note, *weights.notes)
    return weights


def _full_file_keys(spec: _FamilySpec) -> list[str]:
    """Model keys of a LoRA that patches every block of ``spec`` (conv_in and ResBlocks included)."""
    keys = []
    for block in spec.blocks or ():
        split = _split_numbered(block)
        if block == "M00":
            keys += [f"diffusion_model.middle_block.{i}.w" for i in range(3)]
        elif split and split[0] in ("IN", "OUT", "D", "S"):
            group = {"IN": "input_blocks", "OUT": "output_blocks", "D": "double_blocks",
                     "S": "single_blocks"}[split[0]]
            keys.append(f"diffusion_model.{group}.{split[1]}.0.w")
    return keys


def _inspire_unbound(source: _InspireSource, spec: _FamilySpec, text: str) -> BlockWeights:
    weights = _inspire_bind(source, _full_file_keys(spec), text)
    weights._inspire = source
    weights._cache = {}
    note = (f"inspire: {source.origin} ({len(source.tokens)} values) is read by the blocks each LoRA file "
            "patches, in file order, as Inspire Pack reads it; the load report shows the weight each block got")
    weights.notes = (note, *weights.notes[1:])
    return weights


# --- the applied table ---------------------------------------------------------------------------

def block_notes(weights: BlockWeights, targets: Iterable[tuple[str, bool]]) -> list[str]:
    """Report lines for these weights on one LoRA: its notes (``note: ...``), and a ``WARNING: ...`` that
    names every block the LoRA patches which a vector set to 0 because its dialect has no position for it,
    with the share of the LoRA's targets they hold and the fix.

    ``targets`` as for :func:`block_table`. An ``inspire:`` text is read for these targets first.
    """
    targets = list(targets)
    if weights.reads_file:
        weights = weights.for_targets(k for k, _ in targets)
    lines = [f"note: {note}" for note in weights.notes]
    zeroed: dict[str, int] = {}
    vectors: dict[str, None] = {}
    for key, _ in targets:
        rule = weights.rule_for(key)
        if rule is not None and rule.unpositioned:
            block = weights.block_of(key)
            zeroed[block] = zeroed.get(block, 0) + 1
            vectors.setdefault(rule.label.split(" (", 1)[0], None)
    if zeroed:
        order = list(weights.vector)
        names = compact_names(sorted(zeroed, key=lambda n: order.index(n) if n in order else len(order)))
        held = sum(zeroed.values())
        share = 100.0 * held / max(1, len(targets))
        keep = ", ".join(f"{name}=1" for name in names.split(", "))
        lines.append(
            f"WARNING: the {' / '.join(vectors)} has no position for {names}, which this LoRA patches "
            f"({held} of its {len(targets)} targets, {share:.0f}%): left out (weight 0). To apply them, name them "
            f"after the vector ('..., {keep}'), or read the vector by this file's blocks as Inspire Pack does "
            "('inspire: <the same values>').")
    return lines


def block_table(weights: BlockWeights, targets: Iterable[tuple[str, bool]]) -> str:
    """Text table: block -> weight -> targets in the file -> targets applied, then :func:`block_notes`.

    ``targets``: one ``(model_weight_key, applied)`` pair per LoRA target that matched a model or
    text-encoder weight (applied False when the factor was 0 or the target was left out). Rows: every
    block the LoRA touches, and every block the syntax named or set away from 1 that it does not touch.
    An ``inspire:`` text is read for these targets (:meth:`BlockWeights.for_targets`).
    """
    targets = list(targets)
    if weights.reads_file:
        weights = weights.for_targets(k for k, _ in targets)
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
    return "\n".join(lines + block_notes(weights, targets))


# --- presets -------------------------------------------------------------------------------------

MAX_PRESETS_FILE_BYTES = 1 << 20
"""Largest user presets file read."""
MAX_USER_PRESETS = 1_000
"""Most presets read from the user presets file."""
MAX_PRESET_CHECK_ENTRIES = 50_000
"""Most entries checking a presets file may read in all (each preset is parsed for the families in turn
until one fits); past it the remaining presets are not loaded."""

_FAMILY_TRIES = ("sd1", "sdxl", "flux", "sd3", "general")


@dataclass(frozen=True)
class PresetInfo:
    name: str
    syntax: str
    source: str  # "built-in", "Inspire Pack" or "user"
    doc: str = ""


class UserPresets(dict):
    """User presets (upper-case name -> syntax) read from ``path``, with the ``problems`` (one line each)
    of the presets that were left out; an empty mapping when the file is missing or unreadable."""

    def __init__(self, presets: Mapping[str, str] | None = None, *, path: Path | None = None,
                 problems: Iterable[str] = ()):
        super().__init__(presets or {})
        self.path = path
        self.problems = list(problems)


def _is_vector(syntax: str) -> bool:
    body = _inspire_body(syntax)
    items = _split_items(syntax if body is None else body)
    return bool(items) and all(_is_value(i) for i in items)


def _same_vector(a: str, b: str) -> bool:
    return [float(x) if _NUMBER_RX.match(x) else x for x in _split_items(a)] == \
        [float(x) if _NUMBER_RX.match(x) else x for x in _split_items(b)]


def _raw_presets(text: str, where: str, problems: list[str]) -> list[tuple[object, object]]:
    """(name, syntax) pairs of a presets file, decided by its content: a JSON object, or ``NAME:syntax``
    lines (sd-webui-lora-block-weight / Inspire Pack; ``#`` comments, Inspire's ``@`` XY-plot lines skipped)."""
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            problems.append(f"the {where} is not valid JSON ({str(exc)[:120]}); write it as "
                            '{"NAME": "IN04-IN08=0.5, M00=0"} or as NAME:syntax lines')
            return []
        if not isinstance(data, dict):
            problems.append(f"the {where} must hold one JSON object of name -> syntax, e.g. "
                            '{"NAME": "IN04-IN08=0.5, M00=0"}')
            return []
        return list(data.items())
    raw: list[tuple[object, object]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "@")):
            continue
        name, sep, syntax = stripped.partition(":")
        if not sep:
            problems.append(f"line {number} of the {where} has no 'NAME:' before its syntax (write one preset "
                            "per line as NAME: syntax)")
            continue
        raw.append((name.strip(), syntax.strip()))
    return raw


def _checked_presets(raw: list[tuple[object, object]], where: str, problems: list[str]) -> dict[str, str]:
    builtin = {p.name for p in BUILTIN_PRESETS}
    inspire = {p.name.upper(): p for p in INSPIRE_PRESETS}
    presets: dict[str, str] = {}
    if len(raw) > MAX_USER_PRESETS:
        problems.append(f"the {where} holds {len(raw)} presets; LoRA Lab reads the first {MAX_USER_PRESETS}")
        raw = raw[:MAX_USER_PRESETS]
    for name, syntax in raw:
        shown = repr(name) if not isinstance(name, str) else f"'{name[:64]}'"
        if not isinstance(name, str) or not _PRESET_NAME_RX.match(name.strip()):
            problems.append(f"{shown} is not a valid preset name (start with a letter; use letters, digits, "
                            "'_', '.', '+', '-', 64 at most)")
            continue
        upper = name.strip().upper()
        if not isinstance(syntax, str) or not syntax.strip():
            problems.append(f"the preset {shown} has no syntax text (give it block weights, e.g. IN04-IN08=0.5)")
            continue
        if upper in inspire:
            if not _same_vector(syntax, inspire[upper].vector):
                problems.append(f"the preset {shown} has the name of Inspire Pack's preset {inspire[upper].name} "
                                "but other values (rename it)")
            continue  # Inspire's own preset, as its lbw-preset.txt holds it: the built-in one serves
        if upper in builtin:
            problems.append(f"the user preset {shown} has the name of a built-in preset (rename it; built-in "
                            "presets cannot be redefined, so ALL always means the plain load)")
            continue
        if _normalize_name(upper) is not None or _is_value(upper) or upper == "*":
            problems.append(f"the preset name {shown} reads as a block name or a value (choose a name that is "
                            "not a block (IN04, D03, BASE...) nor A, B, R, U)")
            continue
        if upper in presets:
            problems.append(f"the preset {shown} is defined twice (keep one definition)")
            continue
        if len(syntax) > MAX_TEXT_CHARS:
            problems.append(f"the preset {shown} is {len(syntax)} characters long (at most {MAX_TEXT_CHARS})")
            continue
        presets[upper] = syntax
    return presets


def _validated(presets: dict[str, str], problems: list[str]) -> dict[str, str]:
    """Keep the presets that parse for at least one model family (a vector always: ``inspire:`` reads any
    length); check again while leaving one out breaks another that names it. Bounded by
    :data:`MAX_PRESET_CHECK_ENTRIES`: presets not checked within it are left out."""
    budget = [MAX_PRESET_CHECK_ENTRIES]
    while True:
        bad: dict[str, str] = {}
        unchecked: list[str] = []
        for name, syntax in presets.items():
            if _is_vector(syntax):
                continue
            if budget[0] <= 0:
                unchecked.append(name)
                continue
            errors = []
            for fam in _FAMILY_TRIES:
                try:
                    _parse(syntax, fam, a=1.0, b=1.0, user_presets=presets, budget=budget)
                    break
                except _BudgetSpent:
                    unchecked.append(name)
                    break
                except BlockWeightsError as exc:
                    errors.append(f"{_family_label(fam)}: {exc.problem}")
            else:
                bad[name] = f"the preset '{name}' fits no model family ({'; '.join(errors[:3])})"
        problems += list(bad.values())
        if unchecked:
            problems.append(f"checking the presets took more than {MAX_PRESET_CHECK_ENTRIES} entries (presets "
                            f"nested in presets?), so {', '.join(unchecked[:8])}"
                            f"{' and more' if len(unchecked) > 8 else ''} were not loaded")
        kept = {n: s for n, s in presets.items() if n not in bad and n not in unchecked}
        if not bad or unchecked:
            return kept
        presets = kept


def _read_presets_file(path: Path) -> UserPresets:
    where = f"presets file '{path.name}'"
    problems: list[str] = []
    try:
        size = path.stat().st_size
        if size > MAX_PRESETS_FILE_BYTES:
            problems.append(f"the {where} is {size} bytes; LoRA Lab reads presets files of at most "
                            f"{MAX_PRESETS_FILE_BYTES} bytes")
            return UserPresets(path=path, problems=problems)
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return UserPresets(path=path)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"cannot read the {where} ({exc}); check it is readable UTF-8 text")
        return UserPresets(path=path, problems=problems)
    presets = _checked_presets(_raw_presets(text, where, problems), where, problems)
    return UserPresets(_validated(presets, problems), path=path, problems=problems)


_FILE_CACHE: dict[str, tuple[tuple[int, int, int], UserPresets]] = {}
_FILE_CACHE_SIZE = 8
_FILE_LOCK = threading.Lock()  # routes read presets in worker threads: one read (and warning) per state


def read_user_presets(path: str | os.PathLike[str]) -> UserPresets:
    """User presets from ``path``, never failing: presets that do not parse are left out, named in ONE
    log warning per state of the file (and in the error of a text that uses one); built-in presets are
    never affected. The result is cached per (file, size, mtime)."""
    path = Path(path)
    try:
        st = path.stat()
        state = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        state = (-1, -1, -1)
    key = str(path)
    with _FILE_LOCK:
        hit = _FILE_CACHE.get(key)
        if hit is not None and hit[0] == state:
            return hit[1]
        presets = _read_presets_file(path)
        if presets.problems:
            log.warning("LoRA Lab: the block-weight presets file %s has %d problem(s); its other %d preset(s) and "
                        "every built-in preset still work: %s", path, len(presets.problems), len(presets),
                        "; ".join(presets.problems))
        _FILE_CACHE[key] = (state, presets)
        while len(_FILE_CACHE) > _FILE_CACHE_SIZE:
            _FILE_CACHE.pop(next(iter(_FILE_CACHE)))
        return presets


def load_user_presets(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read user presets, refusing a file with any problem: a JSON object ``{"NAME": "syntax"}`` or text
    lines ``NAME: syntax`` (the sd-webui-lora-block-weight / Inspire Pack preset-file form, decided by the
    content, not the file name; ``#`` comments; Inspire's ``@`` lines skipped).

    A missing file gives ``{}``. Every preset must parse for at least one model family, or be a vector. A
    user preset may not reuse a built-in name (Inspire Pack's own presets with their own values excepted):
    that is an error, never a silent shadow. For loading without failing use :func:`read_user_presets`.
    """
    presets = read_user_presets(path)
    if presets.problems:
        more = f" (and {len(presets.problems) - 1} more)" if len(presets.problems) > 1 else ""
        raise BlockWeightsError(f"In the presets file '{Path(path).name}': {presets.problems[0]}{more}.",
                                "fix or remove that preset; the other presets and the built-in ones load "
                                "meanwhile.")
    return dict(presets)


def list_presets(family: str | None, user_presets: Mapping[str, str] | None = None) -> list[PresetInfo]:
    """Built-in presets for ``family``, Inspire Pack's names for it, then the user presets that parse for
    it (a vector preset is listed for every family: ``inspire: NAME`` reads any length)."""
    norm = normalize_family(family)
    out = [PresetInfo(p.name, p.syntax, "built-in", p.doc) for p in BUILTIN_PRESETS if norm in p.families]
    out += [PresetInfo(p.name, p.vector, "Inspire Pack",
                       "Inspire Pack's preset, read by the model's blocks; 'inspire: NAME' reads it as Inspire does")
            for p in INSPIRE_PRESETS if norm in p.families]
    for name, syntax in (user_presets or {}).items():
        if not _is_vector(syntax):
            try:
                parse_block_weights(syntax, family, a=1.0, b=1.0, user_presets=user_presets)
            except BlockWeightsError:
                continue
        out.append(PresetInfo(name, syntax, "user"))
    return out


def builtin_preset(name: str) -> BuiltinPreset | None:
    return next((p for p in BUILTIN_PRESETS if p.name == name.upper()), None)
