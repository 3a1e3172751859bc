"""``LoraLabMultiLoader``: several LoRAs in one node, one row each (on/off, LoRA, model and clip strength,
block weights), applied as one stack.

The rows travel as one JSON text input, ``loras``: a list of
``{"on": bool, "lora": name, "strength": float, "strength_clip": float, "block_weights": str}``. The page
(``web/multi_loader.js``) shows it as rows with "+ Add LoRA", reordering and the block-weight editor;
without the page's extension the text stays editable and the workflow runs the same. The node is the
stack nodes' path with the rows written in place: :func:`rows_from_json` gives
:class:`~lora_ops.stack.StackRow` s, and ``nodes.stack`` plans, combines and applies them exactly as
``LoraLabApplyStack`` does (one clone, one patch pass).
"""

from __future__ import annotations

import json
import logging
import math

from ..lora_ops.errors import LoraLabError
from ..lora_ops.stack import LoraStack, StackRow
from .changes import lora_fingerprint, presets_fingerprint
from .planning import clones_with
from .stack import plan_stack, stack_entries
from .stack_types import STACK_INPUT, STACK_TYPE, read_stack

log = logging.getLogger(__name__)

ROWS_INPUT = "loras"
MAX_ROWS = 64
_FIX = ('write the rows as a JSON list like [{"on": true, "lora": "name.safetensors", "strength": 1.0, '
        '"strength_clip": 1.0, "block_weights": ""}], or rebuild them with "+ Add LoRA" on the node.')


def _number(row: dict, key: str, default: float, where: str) -> float:
    value = row.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LoraLabError(f"{where}: {key} is {value!r}, not a finite number.", _FIX)
    return float(value)


def rows_from_json(text: str) -> list[StackRow]:
    """The rows of the ``loras`` input; rows without a LoRA are skipped, rows switched off are kept (off)."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoraLabError(f"The loras rows are not readable JSON ({exc.msg} at character {exc.pos}).", _FIX) from None
    if isinstance(data, dict):  # {"rows": [...]} is accepted too
        data = data.get("rows")
    if not isinstance(data, list):
        raise LoraLabError(f"The loras rows are a {type(data).__name__}, not a list.", _FIX)
    if len(data) > MAX_ROWS:
        raise LoraLabError(f"The node has {len(data)} LoRA rows; at most {MAX_ROWS} are applied.",
                           "remove rows, or merge some LoRAs first (LoRA Lab Merge Stack).")
    rows = []
    for i, row in enumerate(data):
        where = f"LoRA row {i + 1}"
        if not isinstance(row, dict):
            raise LoraLabError(f"{where} is {row!r}, not an object.", _FIX)
        name = row.get("lora")
        if name in (None, "", "None", "(none)"):
            continue
        if not isinstance(name, str):
            raise LoraLabError(f"{where}: lora is {name!r}, not a file name.", _FIX)
        block_weights = row.get("block_weights", "")
        if not isinstance(block_weights, str):
            raise LoraLabError(f"{where}: block_weights is {block_weights!r}, not text.", _FIX)
        on = row.get("on", True)
        if not isinstance(on, bool):
            raise LoraLabError(f"{where}: on is {on!r}, not true or false.", _FIX)
        strength = _number(row, "strength", 1.0, where)
        rows.append(StackRow(name, strength, _number(row, "strength_clip", strength, where), block_weights, on))
    return rows


class LoraLabMultiLoader:
    """Several LoRAs in one node: a row per LoRA, applied together in one patch pass."""

    DESCRIPTION = ("Loads several LoRAs in one node, a row each: on/off, LoRA, model and clip strength, block "
                   "weights (per-row editor). '+ Add LoRA' adds a row; rows can be reordered. Trigger words of "
                   "each LoRA are shown and can be inserted into the prompt. Applies the rows like LoRA Lab Apply "
                   "Stack (one patch pass, every format, a report per row) and outputs them as a stack for the "
                   "sweep, merge and conflict nodes.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", STACK_TYPE)
    RETURN_NAMES = ("MODEL", "CLIP", "report", "lora_stack")

    @classmethod
    def IS_CHANGED(cls, **inputs):
        """The content of every file the rows name (a replaced file re-runs the node) and the presets file."""
        try:
            rows = rows_from_json(inputs.get(ROWS_INPUT, ""))
        except LoraLabError:
            return float("nan")  # the run itself reports the problem
        parts = [f"{r.lora_name}={lora_fingerprint(r.lora_name)}" for r in rows if r.enabled]
        return ";".join(parts + [f"presets={presets_fingerprint()}"])

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                ROWS_INPUT: ("STRING", {"default": "[]", "multiline": True, "tooltip":
                                        "The LoRA rows as JSON (the node shows them as rows with '+ Add LoRA')."}),
            },
            "optional": {
                "clip": ("CLIP",),
                "lora_stack": (STACK_INPUT, {"tooltip": "Rows applied before this node's rows: a LoRA Lab stack or "
                                                        "another pack's LORA_STACK."}),
            },
        }

    def load(self, model, loras, clip=None, lora_stack=None):
        rows = read_stack(lora_stack).rows + tuple(rows_from_json(loras))
        stack = LoraStack(rows)
        if not stack.enabled:
            report = "no LoRA is switched on: model and CLIP pass through unchanged"
            return {"ui": {"text": [report]}, "result": (model, clip, report, stack)}
        planned = plan_stack(model, clip, stack)
        model_entries, clip_entries, _ = stack_entries(model, planned, "none", 1.0)
        new_model, new_clip = clones_with(model, clip, model_entries, clip_entries)
        report = "\n\n".join(f"[{i + 1}/{len(planned)}] {p.report}" for i, p in enumerate(planned))
        log.info("LoRA Lab: %d LoRAs applied (%s)", len(planned), ", ".join(p.row.lora_name for p in planned))
        return {"ui": {"text": [report]}, "result": (new_model, new_clip, report, stack)}


NODE_CLASS_MAPPINGS = {"LoraLabMultiLoader": LoraLabMultiLoader}
# Short on purpose: the page's search ranks names that start with the query by their length, so "lora" lists this
# node right after core's LoRA loaders (the pack's badge says whose it is).
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabMultiLoader": "LoRAs"}
