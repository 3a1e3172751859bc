"""The stack type LoRA Lab's nodes pass, and the stacks of other packs they accept.

Efficiency Nodes, Comfyroll, Easy-Use and LoRA Manager pass a ``LORA_STACK``: a plain list of
``(lora_name, model_strength, clip_strength)`` tuples. LoRA Lab's stack rows carry more (block weights,
on/off, A/B/seed), so LoRA Lab outputs its own type, :data:`STACK_TYPE`, which the page never connects
to their inputs (they would fail on our value). Where LoRA Lab reads a stack it accepts both
(:data:`STACK_INPUT`, a union the page and the server both understand), so their stackers plug into our
Apply Stack, Merge, Conflicts, Sweep and the multi-LoRA loader. :func:`read_stack` turns either into a
:class:`~lora_ops.stack.LoraStack` and refuses anything else with an error that says what was received.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import folder_paths

from ..lora_ops.errors import LoraLabError
from ..lora_ops.stack import LoraStack, StackRow

STACK_TYPE = "LORA_LAB_STACK"
"""What LoRA Lab's stack outputs are: a :class:`LoraStack`."""

FOREIGN_STACK_TYPE = "LORA_STACK"
"""The list-of-tuples stack of Efficiency, Comfyroll, Easy-Use and LoRA Manager (and LoRA Lab before 0.2)."""

STACK_INPUT = f"{STACK_TYPE},{FOREIGN_STACK_TYPE}"
"""Type of every LoRA Lab input that reads a stack: ours or theirs."""

NO_LORA_NAMES = ("", "none", "None", "(none)")
_FIX = ("connect a LoRA Lab stack (LoRA Lab Stack, LoRA Lab Loader rows) or a LORA_STACK list of "
        "(lora name, model strength, clip strength) from Efficiency, Comfyroll, Easy-Use or LoRA Manager.")


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _lora_name(value, where: str) -> str:
    """A name as ComfyUI's loras list spells it; absolute paths inside a loras folder are made relative
    (LoRA Manager passes paths), anything else is left for the loader to report as missing."""
    if not isinstance(value, str):
        raise LoraLabError(f"{where}: the LoRA name is {_describe(value)}, not text.", _FIX)
    if os.path.isabs(value):
        real = os.path.realpath(value)
        for folder in folder_paths.get_folder_paths("loras"):
            root = os.path.realpath(folder)
            if real.startswith(root + os.sep):
                return os.path.relpath(real, root).replace(os.sep, "/")
    return value


def _strength(value, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LoraLabError(f"{where}: the {what} strength is {_describe(value)}, not a finite number.", _FIX)
    return float(value)


def rows_from_tuples(value: Sequence, source: str = "the connected LORA_STACK") -> list[StackRow]:
    """Rows from a list of ``(lora_name, model_strength, clip_strength)``; entries named None are skipped."""
    rows = []
    for i, entry in enumerate(value):
        where = f"{source}, entry {i + 1}"
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) < 3:
            raise LoraLabError(f"{where} is {_describe(entry)}; a LORA_STACK entry is (lora name, model strength, "
                               "clip strength).", _FIX)
        name = entry[0]
        if name is None or (isinstance(name, str) and name.strip() in NO_LORA_NAMES):
            continue
        rows.append(StackRow(_lora_name(name, where), _strength(entry[1], where, "model"),
                             _strength(entry[2], where, "clip")))
    return rows


def read_stack(value, what: str = "lora_stack") -> LoraStack:
    """``value`` as a :class:`LoraStack`: ours as it is, another pack's list of tuples converted; None is
    an empty stack. Anything else raises a :class:`LoraLabError` naming what was received."""
    if value is None:
        return LoraStack()
    if isinstance(value, LoraStack):
        return value
    if isinstance(value, (list, tuple)):
        return LoraStack(tuple(rows_from_tuples(value, f"the connected {what}")))
    raise LoraLabError(f"{what} received {type(value).__name__} {_describe(value)}, which is not a LoRA stack.", _FIX)
