"""Inspire Pack's reading of a vector (``inspire:``): positions follow the blocks the LoRA file patches."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from ..presets import INSPIRE_PRESETS
from ._base import BlockWeightsError
from .layout import _FamilySpec, _locate, _split_numbered, compact_names, family_spec
from .lexicon import (
    _NUMBER_RX,
    _PRESET_NAME_RX,
    _TOKEN_RX,
    MAX_ENTRIES,
    _builtin_table,
    _is_value,
    _PresetDef,
    _split_items,
    number_value,
)
from .syntax import _Parser
from .weights import BlockWeights, _fmt, _InspireSource, _short

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
        value = number_value(token, where)
        if value is not None:
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
