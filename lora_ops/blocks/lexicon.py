"""What the syntax is made of: tokens, names, limits, and the preset table."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..presets import BUILTIN_PRESETS, INSPIRE_PRESETS
from ._base import _SD_BLOCKS, _SDXL_BLOCKS, ENCODER_NAMES, BlockWeightsError
from .layout import _FamilySpec

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



def _builtin_table() -> dict[str, _PresetDef]:
    table = {p.name: _PresetDef(p.syntax, p.families) for p in BUILTIN_PRESETS}
    table.update({p.name.upper(): _PresetDef(p.vector, p.families, inspire=True, display=p.name)
                  for p in INSPIRE_PRESETS})
    return table


def number_value(token: str, where: str) -> float | None:
    """``token`` as a finite weight if it is written as a number, ``None`` if it is not a number at all; a
    number too large for a float is refused (``where`` names the entry for the message)."""
    if not _NUMBER_RX.match(token):
        return None
    value = float(token)
    if not math.isfinite(value):
        raise BlockWeightsError(f"The weight '{token}' in '{where}' is too large to be a number.",
                                "use a weight between about -10 and 10.")
    return value
