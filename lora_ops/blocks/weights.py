"""The result of parsing: :class:`BlockWeights`, the factor of every model weight key."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._base import ENCODER_NAMES, BlockWeightsError
from .layout import _FamilySpec, _locate, _split_numbered
from .lexicon import _ALL_BLOCKS_RX


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
        from .inspire import _inspire_bind  # noqa: PLC0415 (the Inspire reading is built on this module)
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
