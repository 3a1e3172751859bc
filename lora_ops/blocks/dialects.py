"""Block-weight vectors as other tools write them: the position orders, per family."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._base import _numbered


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
