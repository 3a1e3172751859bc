"""Inspire Pack's per-key block ratios (its ``LoraLoaderBlockWeight``), written out as a reference for the
tests: LoRA Lab's ``inspire:`` reading is checked against this independent restatement of the rule, never
against its own code.

The rule: keys of five groups (input, middle, output, double, single blocks) sorted by group and block
number; a new vector position whenever the number changes, the last value repeating; every other key at
the first value (BASE). ``R``/``U`` come from NumPy's global generator seeded with ``seed % 2**31``
(``R`` in [0, 3), ``U`` in [-1.5, 1.5), rounded to 0.01), ``A``/``a``/``B``/``b`` are ``a``, ``a / 2``,
``b``, ``b / 2``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

GROUPS = ("input_blocks.", "middle_block.", "output_blocks.", "double_blocks.", "single_blocks.")


def inspire_ratios(keys: Iterable, tokens: Sequence[str], *, a: float = 4.0, b: float = 1.0,
                   seed: int = 0) -> tuple[dict, int]:
    """``({key: ratio}, number of vector positions)`` for ``keys`` (model weight keys, or core's patch
    keys: a key or a ``(key, offset, ...)`` tuple), in Inspire's reading of ``tokens``."""
    listed, others = [], []
    for key in keys:
        k = key[0] if isinstance(key, tuple) else key
        rest = k[len("diffusion_model."):]
        for g, prefix in enumerate(GROUPS):
            if rest.startswith(prefix):
                two = rest[len(prefix):len(prefix) + 2]
                listed.append((g, int(two[0]) if two[1] == "." else int(two), key))
                break
        else:
            others.append(key)
    listed.sort(key=lambda t: (t[0], t[1]))
    np.random.seed(seed % 2**31)

    def convert(x: str) -> float:
        x = x.strip()
        if x in ("R", "r"):
            return round(np.random.uniform(0, 3.0), 2)
        if x in ("U", "u"):
            return round(np.random.uniform(-1.5, 1.5), 2)
        return {"A": a, "a": a / 2, "B": b, "b": b / 2}[x] if x in "AaBb" else float(x)

    ratios, ratio, i, last, positions = {}, 1.0, 1, None, 0
    for _, number, key in listed:
        if last != number:
            positions += 1
            if len(tokens) > i:
                ratio = convert(tokens[i])
                i += 1
        last = number
        ratios[key] = ratio
    base = convert(tokens[0])
    ratios.update({key: base for key in others})
    return ratios, positions
