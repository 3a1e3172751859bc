"""Built-in block-weight presets, written in LoRA Lab's block syntax (see :mod:`lora_ops.blocks`).

The SD1.x/SD2.x and SDXL presets are the common ones users know from sd-webui-lora-block-weight and
Inspire Pack. Those tools write them as vectors over the *attention* blocks only
(17 values for SD, 12 for SDXL); ``vector`` below keeps that documented form. The syntax form sets
every block of the model: a block without attention (IN00 conv_in, IN03 downsample, IN06, IN09-IN11,
OUT00-OUT02 on SD) takes the value of its nearest attention block in the same section (the one before
it, or the one after it when none comes before), so ``ALL`` touches every layer of a LoCon file too
and equals the plain load, and ``NONE`` drops all of them.

Like the SD presets, which keep BASE (the text encoder and the UNet layers outside the numbered
blocks) at 1, the Flux block presets keep BASE, IN and OUT at 1.

:data:`INSPIRE_PRESETS` are Inspire Pack's preset names and vectors as its ``resources/lbw-preset.txt``
writes them; :mod:`lora_ops.blocks` reads each name by the model's blocks the same way (nearest attention
block for the blocks without a position), and ``inspire: NAME`` as Inspire reads it.

Pure data: no imports from the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinPreset:
    name: str
    syntax: str
    families: tuple[str, ...]
    doc: str = ""


_SD = ("sd1", "sd2")
_SDXL = ("sdxl",)
_FLUX = ("flux",)
_EVERY = ("sd1", "sd2", "sdxl", "flux", "sd3", "general")


def _v(*runs: tuple[float, int]) -> tuple[float, ...]:
    out: list[float] = []
    for value, count in runs:
        out += [float(value)] * count
    return tuple(out)


BUILTIN_PRESETS: tuple[BuiltinPreset, ...] = (
    BuiltinPreset("NONE", "*=0", _EVERY, "every block 0: the LoRA is off"),
    BuiltinPreset("ALL", "*=1", _EVERY, "every block 1: the plain load"),
    BuiltinPreset("ALL0.5", "*=0.5", _EVERY, "every block 0.5"),
    BuiltinPreset("INS", "*=0, BASE=1, IN00-IN04=1", _SD, "shallow input blocks"),
    BuiltinPreset("IND", "*=0, BASE=1, IN05-IN11=1", _SD, "deep input blocks"),
    BuiltinPreset("INALL", "*=0, BASE=1, IN*=1", _SD + _SDXL, "all input blocks"),
    BuiltinPreset("MIDD", "*=0, BASE=1, IN05-OUT06=1", _SD, "deep input, middle and deep output blocks"),
    BuiltinPreset("OUTD", "*=0, BASE=1, OUT00-OUT06=1", _SD, "deep output blocks"),
    BuiltinPreset("OUTS", "*=0, BASE=1, OUT07-OUT11=1", _SD, "shallow output blocks"),
    BuiltinPreset("OUTALL", "*=0, BASE=1, OUT*=1", _SD + _SDXL, "all output blocks"),
    BuiltinPreset("MIDALL", "*=0, BASE=1, M00=1", _SDXL, "the middle block only"),
    BuiltinPreset("DOUBLE", "*=0, BASE=1, IN=1, OUT=1, D*=1", _FLUX,
                  "double-stream blocks only (BASE, IN, OUT kept)"),
    BuiltinPreset("SINGLE", "*=0, BASE=1, IN=1, OUT=1, S*=1", _FLUX,
                  "single-stream blocks only (BASE, IN, OUT kept)"),
)

DOCUMENTED_VECTORS: dict[tuple[str, int], tuple[float, ...]] = {
    # SD1.x/SD2.x, 17-value order BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03..OUT11
    ("NONE", 17): _v((0, 17)),
    ("ALL", 17): _v((1, 17)),
    ("ALL0.5", 17): _v((0.5, 17)),
    ("INS", 17): _v((1, 4), (0, 13)),
    ("IND", 17): _v((1, 1), (0, 3), (1, 3), (0, 10)),
    ("INALL", 17): _v((1, 7), (0, 10)),
    ("MIDD", 17): _v((1, 1), (0, 3), (1, 8), (0, 5)),
    ("OUTD", 17): _v((1, 1), (0, 7), (1, 4), (0, 5)),
    ("OUTS", 17): _v((1, 1), (0, 11), (1, 5)),
    ("OUTALL", 17): _v((1, 1), (0, 7), (1, 9)),
    # SDXL, 12-value order BASE,IN04,IN05,IN07,IN08,M00,OUT00..OUT05
    ("NONE", 12): _v((0, 12)),
    ("ALL", 12): _v((1, 12)),
    ("ALL0.5", 12): _v((0.5, 12)),
    ("INALL", 12): _v((1, 5), (0, 7)),
    ("MIDALL", 12): _v((1, 1), (0, 4), (1, 1), (0, 6)),
    ("OUTALL", 12): _v((1, 1), (0, 5), (1, 6)),
}
"""Each preset as the attention-only vector the other tools document it with."""


@dataclass(frozen=True)
class InspirePreset:
    """A preset of ComfyUI Inspire Pack's ``resources/lbw-preset.txt``: its name and its vector as that
    file writes it (``NAME:v0,v1,...``; v0 is BASE)."""

    name: str
    vector: str
    families: tuple[str, ...]


_INSPIRE_LINES = """\
SD-NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
SD-ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
SD-INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0
SD-IND:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0
SD-INALL:1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0
SD-MIDD:1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0
SD-MIDD0.2:1,0,0,0,0,0,0.2,0.4,0.4,0.2,0,0,0,0,0,0,0
SD-MIDD0.8:1,0,0,0,0,0.5,0.8,0.8,0.4,0,0,0,0,0,0,0,0
SD-MOUT:1,0,0,0,0,0,1,1,1,1,1,1,1,1,0.5,0,0
SD-OUTD:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0
SD-OUTS:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1
SD-OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
SD-ROUT:1,1,1,1,1,1,1,1,R,R,R,R,R,R,R,R,R
SD-AOUT:A,1,1,1,1,1,1,1,1,1,1,1,A,A,A,A,A
SD-AB:A,B,B,B,B,B,B,B,B,B,B,B,A,A,A,A,A
SD-ALL0.5:0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5
SD-LyC-NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
SD-LyC-ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
SD-LyC-INALL:1,1,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
SD-LyC-MIDALL:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0
SD-LyC-OUTALL:1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1,1,1,1
SDXL-NONE:0,0,0,0,0,0,0,0,0,0,0,0
SDXL-ALL:1,1,1,1,1,1,1,1,1,1,1,1
SDXL-INALL:1,1,1,1,1,0,0,0,0,0,0,0
SDXL-MIDALL:1,0,0,0,0,1,0,0,0,0,0,0
SDXL-OUTALL:1,0,0,0,0,0,1,1,1,1,1,1
SDXL-LyC-NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
SDXL-LyC-ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
SDXL-LyC-INALL:1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0
SDXL-LyC-MIDALL:1,0,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0
SDXL-LyC-OUTALL:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
FLUX-DBL-FRONT:1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0
FLUX-DBL-MID:0,0,0,0,0,0,1,1,1,1,1,1,0,0,0,0,0,0
FLUX-DBL-TAIL:0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1
"""


def _inspire_families(name: str) -> tuple[str, ...]:
    if name.startswith("SDXL-"):
        return _SDXL
    if name.startswith("FLUX-"):
        return _FLUX
    return _SD


INSPIRE_PRESETS: tuple[InspirePreset, ...] = tuple(
    InspirePreset(name, vector, _inspire_families(name))
    for name, _, vector in (line.partition(":") for line in _INSPIRE_LINES.splitlines()))
"""Inspire Pack's presets (its ``lbw-preset.txt``, without the ``@`` XY-plot test lines). Inspire reads
every vector by the blocks present in the LoRA file; LoRA Lab reads a preset name by the model's blocks
as the file the preset was written for (see :mod:`lora_ops.blocks`), and ``inspire: NAME`` as Inspire."""
