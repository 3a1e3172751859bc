"""Format detection and parsing: a file's tensors -> one adapter per module name.

The naming conventions, by tool (facts from the tools' documentation and saved files):

* kohya sd-scripts / LyCORIS: ``<module>.lora_up.weight``, ``.lora_down.weight``, ``.lora_mid.weight``,
  ``.alpha``, ``.dora_scale``; LoHa ``.hada_w1_a`` ...; LoKr ``.lokr_w1`` ...; module names with
  underscores (``lora_unet_down_blocks_0_...``, ``lora_te1_...``, ``lycoris_...``).
* PEFT: ``<module>.lora_A.weight`` (down), ``.lora_B.weight`` (up), ``.lora_magnitude_vector`` (DoRA);
  alpha lives in the adapter config, not the file, so scale 1 unless an ``.alpha`` key is present.
* diffusers: ``<module>.lora.down.weight`` / ``.lora.up.weight``; older files
  ``<module>_lora.down.weight`` (attention processors) and ``.lora_linear_layer.down.weight``.
* full deltas: ``<module>.diff`` (weight) and ``<module>.diff_b`` (bias).

:func:`parse_lora` returns a :class:`ParsedLora` whose ``modules`` map each module name (as written in
the file, suffix removed) to an adapter, and lists every key it could not place.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import torch

from .adapters import Adapter, FullDiff, LohaWeights, LokrWeights, LoraWeights, algorithm_name
from .errors import LoraFileError

# (up suffix, down suffix, mid suffix or None, format name)
_LORA_PAIRS = (
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", "kohya"),
    (".lora_B.weight", ".lora_A.weight", None, "peft"),
    (".lora_B.default.weight", ".lora_A.default.weight", None, "peft"),
    (".lora.up.weight", ".lora.down.weight", None, "diffusers"),
    ("_lora.up.weight", "_lora.down.weight", None, "diffusers-old"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None, "diffusers-old"),
    (".lora_B", ".lora_A", None, "peft"),
)
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_SIDE = (".alpha", ".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight")
# Known suffixes of adapter kinds LoRA Lab does not apply; reported by name instead of "unknown key".
_UNSUPPORTED = {".oft_blocks": "OFT", ".oft_diag": "OFT", ".boft_blocks": "BOFT", ".w_norm": "norm (w_norm)",
                ".b_norm": "norm (b_norm)", ".set_weight": "set_weight", ".a1.weight": "GLoRA"}


@dataclass
class ParsedLora:
    """A LoRA file normalised: ``modules[name] = adapter`` plus bias deltas and the leftovers."""

    modules: dict[str, Adapter]
    bias_diffs: dict[str, FullDiff] = field(default_factory=dict)
    formats: set[str] = field(default_factory=set)
    unsupported: dict[str, str] = field(default_factory=dict)  # key -> adapter kind we do not apply
    unknown_keys: list[str] = field(default_factory=list)

    @property
    def format(self) -> str:
        """One word for the report: the file's naming convention(s)."""
        fmts = set(self.formats)
        if any(isinstance(a, (LohaWeights, LokrWeights)) for a in self.modules.values()):
            fmts.discard("kohya")
            fmts.add("lycoris")
        elif any(name.startswith("lycoris_") for name in self.modules):
            fmts.discard("kohya")
            fmts.add("lycoris")
        return "+".join(sorted(fmts)) if fmts else "unknown"

    @property
    def algorithms(self) -> list[str]:
        return sorted({algorithm_name(a) for a in self.modules.values()})


def _float_item(t: torch.Tensor) -> float:
    return float(t.reshape(-1)[0].item())


def parse_lora(tensors: dict[str, torch.Tensor], *, source: str = "the LoRA") -> ParsedLora:
    """Group a LoRA state dict into adapters by module name.

    Raises :class:`LoraFileError` when nothing in it is a LoRA weight (a checkpoint, say).
    """
    claimed: set[str] = set()
    modules: dict[str, Adapter] = {}
    formats: set[str] = set()

    def side(name: str):
        alpha = tensors.get(f"{name}.alpha")
        mag = None
        for suffix in (".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight"):
            if f"{name}{suffix}" in tensors:
                mag = tensors[f"{name}{suffix}"]
                claimed.add(f"{name}{suffix}")
        if alpha is not None:
            claimed.add(f"{name}.alpha")
        return (None if alpha is None else _float_item(alpha)), mag

    keys = sorted(tensors)
    for key in keys:
        for up_sfx, down_sfx, mid_sfx, fmt in _LORA_PAIRS:
            if not key.endswith(up_sfx):
                continue
            name = key[: -len(up_sfx)]
            down_key = name + down_sfx
            if down_key not in tensors or name in modules:
                continue
            mid = tensors.get(name + mid_sfx) if mid_sfx else None
            alpha, mag = side(name)
            up, down = tensors[key], tensors[down_key]
            if up.dim() < 2 or down.dim() < 2:
                continue
            modules[name] = LoraWeights(up=up, down=down, alpha=alpha, mid=mid, magnitude=mag)
            claimed.update({key, down_key} | ({name + mid_sfx} if mid is not None else set()))
            formats.add("kohya" if fmt == "kohya" and not name.startswith("lycoris_") else fmt)
            break

    for key in keys:
        if key in claimed:
            continue
        for part in _LOHA:
            if key.endswith("." + part) and part == "hada_w1_a":
                name = key[: -len(".hada_w1_a")]
                need = [f"{name}.{p}" for p in _LOHA[:4]]
                if all(k in tensors for k in need):
                    alpha, mag = side(name)
                    t1, t2 = tensors.get(f"{name}.hada_t1"), tensors.get(f"{name}.hada_t2")
                    modules[name] = LohaWeights(*(tensors[k] for k in need), alpha=alpha, t1=t1, t2=t2, magnitude=mag)
                    claimed.update(need)
                    claimed.update(k for k in (f"{name}.hada_t1", f"{name}.hada_t2") if k in tensors)
                    formats.add("lycoris")
        if key.endswith((".lokr_w1", ".lokr_w1_a")):
            name = key.rsplit(".", 1)[0]
            if name in modules:
                continue
            parts = {p: tensors.get(f"{name}.{p}") for p in _LOKR}
            has_w1 = parts["lokr_w1"] is not None or (parts["lokr_w1_a"] is not None and parts["lokr_w1_b"] is not None)
            has_w2 = parts["lokr_w2"] is not None or (parts["lokr_w2_a"] is not None and parts["lokr_w2_b"] is not None)
            if has_w1 and has_w2:
                alpha, mag = side(name)
                modules[name] = LokrWeights(
                    w1=parts["lokr_w1"], w2=parts["lokr_w2"], w1a=parts["lokr_w1_a"], w1b=parts["lokr_w1_b"],
                    w2a=parts["lokr_w2_a"], w2b=parts["lokr_w2_b"], t2=parts["lokr_t2"], alpha=alpha, magnitude=mag)
                claimed.update(f"{name}.{p}" for p, t in parts.items() if t is not None)
                formats.add("lycoris")

    bias_diffs: dict[str, FullDiff] = {}
    for key in keys:
        if key in claimed:
            continue
        if key.endswith(".diff"):
            name = key[: -len(".diff")]
            alpha, mag = side(name)
            modules[name] = FullDiff(diff=tensors[key], magnitude=mag)
            claimed.add(key)
            formats.add("full-diff")
        elif key.endswith(".diff_b"):
            bias_diffs[key[: -len(".diff_b")]] = FullDiff(diff=tensors[key])
            claimed.add(key)
            formats.add("full-diff")

    unsupported: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        if key in claimed:
            continue
        kind = next((v for s, v in _UNSUPPORTED.items() if key.endswith(s)), None)
        if kind:
            unsupported[key] = kind
        elif key.endswith(_SIDE) and key.rsplit(".", 1)[0] in modules:
            continue
        else:
            unknown.append(key)

    if not modules and not bias_diffs:
        kinds = sorted(set(unsupported.values()))
        if kinds:
            raise LoraFileError(
                f"{source} holds only {', '.join(kinds)} weights, which LoRA Lab does not apply yet.",
                "use core ComfyUI's LoraLoader for this file.")
        raise LoraFileError(
            f"{source} holds no LoRA weights that LoRA Lab recognises ({len(tensors)} tensors, e.g. "
            f"'{keys[0]}').",
            "check that this is a LoRA file (not a checkpoint or an embedding).")
    return ParsedLora(modules=modules, bias_diffs=bias_diffs, formats=formats, unsupported=unsupported,
                      unknown_keys=unknown)


def apply_peft_alphas(parsed: ParsedLora, metadata: dict[str, str]) -> int:
    """Fill in alpha for PEFT-saved modules from the file's ``lora_adapter_metadata`` header.

    diffusers' ``save_lora_weights`` stores each component's ``LoraConfig`` there as
    ``"<component>.<field>"`` (``unet.lora_alpha``, ``text_encoder.alpha_pattern``, ...); the tensors
    themselves carry no alpha, so a reader that skips the header applies scale 1 instead of
    ``lora_alpha / r``. rsLoRA (``use_rslora``: scale ``alpha / sqrt(r)``) is folded into an
    equivalent alpha so the one scale rule (``adapters.lora_scale``) still holds.
    Returns the number of modules whose alpha was set.
    """
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return 0
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        return 0
    components = {k.rsplit(".", 1)[0] for k in config if k.endswith(".lora_alpha")}
    count = 0
    for name, adapter in parsed.modules.items():
        if adapter.alpha is not None or not isinstance(adapter, LoraWeights):
            continue
        component = next((c for c in sorted(components, key=len, reverse=True) if name.startswith(c + ".")), None)
        if component is None:
            continue
        alpha = config.get(f"{component}.lora_alpha")
        local = name[len(component) + 1:]
        for pattern, value in (config.get(f"{component}.alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", local):
                alpha = value
                break
        if alpha is None:
            continue
        alpha = float(alpha)
        if config.get(f"{component}.use_rslora"):
            alpha = alpha * math.sqrt(adapter.rank)
        adapter.alpha = alpha
        count += 1
    return count
