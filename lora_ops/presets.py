"""Built-in block-weight presets, written in LoRA Lab's block syntax (see :mod:`lora_ops.blocks`).

The SD1.x/SD2.x and SDXL presets are the common ones users know from sd-webui-lora-block-weight and
Inspire Pack (field-notes §3). Those tools write them as vectors over the *attention* blocks only
(17 values for SD, 12 for SDXL); ``vector`` below keeps that documented form. The syntax form sets
every block of the model: a block without attention (IN00 conv_in, IN03 downsample, IN06, IN09-IN11,
OUT00-OUT02 on SD) takes the value of its nearest attention block in the same section (the one before
it, or the one after it when none comes before), so ``ALL`` touches every layer of a LoCon file too
and equals the plain load, and ``NONE`` drops all of them.

Like the SD presets, which keep BASE (the text encoder and the UNet layers outside the numbered
blocks) at 1, the Flux block presets keep BASE, IN and OUT at 1.

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
    # SD1.x/SD2.x, 17-value order BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03..OUT11 (field-notes §3)
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
