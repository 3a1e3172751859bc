"""User presets: reading ``block_presets.json`` (JSON or ``NAME:vector`` lines) and listing presets."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..presets import BUILTIN_PRESETS, INSPIRE_PRESETS
from ._base import BlockWeightsError, _BudgetSpent, _family_label, normalize_family
from .inspire import _inspire_body
from .layout import _normalize_name
from .lexicon import _NUMBER_RX, _PRESET_NAME_RX, MAX_TEXT_CHARS, _is_value, _split_items
from .syntax import _parse, parse_block_weights

log = logging.getLogger(__name__)


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
