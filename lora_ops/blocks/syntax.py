"""The block-weight syntax parser: text -> :class:`~lora_ops.blocks.weights.BlockWeights`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch

from ._base import ENCODER_NAMES, FAMILY_LABELS, BlockWeightsError, _BudgetSpent
from .layout import _SPECIAL_NAMES, _FamilySpec, _normalize_name, _split_numbered, compact_names, family_spec
from .lexicon import (
    _ALL_BLOCKS_RX,
    _KIND_WORDS,
    _MAX_PRESET_DEPTH,
    _SELECTORS,
    _TOKEN_RX,
    MAX_BLOCK_NAMES,
    MAX_ENTRIES,
    MAX_RANGE_BLOCKS,
    _builtin_table,
    _check_length,
    _foreign_family,
    _is_value,
    _PresetDef,
    _split_items,
    number_value,
)
from .weights import BlockWeights, _Rule, _short, _sorted_atoms


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
        value = number_value(token, where)
        if value is not None:
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
        from .inspire import _inspire_body  # noqa: PLC0415 (the Inspire reading is built on this module)
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
    from .inspire import _inspire_body, _inspire_source, _inspire_unbound  # noqa: PLC0415 (built on this module)
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
