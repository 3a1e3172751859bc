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

from .adapters import KINDS, Adapter, FullDiff, LoraWeights, algorithm_name, magnitude_fits
from .adapters import glora, loha, lokr, lora
from .errors import LoraFileError

# Suffixes that name a module's tensors; a key ending in one of them belongs to the module before it.
_MODULE_SUFFIXES = tuple(sorted(
    {s for up, down, mid, _ in lora.PAIRS for s in (up, down, mid) if s}
    | {f".{p}" for p in loha.PARTS + lokr.PARTS + glora.PARTS}
    | {".oft_blocks", ".rescale", ".diff", ".diff_b", ".w_norm", ".b_norm", ".set_weight", ".reshape_weight",
       ".alpha", ".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight", ".on_input"},
    key=len, reverse=True))
_MAGNITUDE_SUFFIXES = (".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight")
# Adapter kinds other tools write that neither core ComfyUI nor LoRA Lab applies: named, not "unknown".
_UNSUPPORTED = {".on_input": "IA3"}
# Format names by kind, for the report (LoRA/LoCon files keep the naming their suffixes show).
_KIND_FORMAT = {"loha": "lycoris", "lokr": "lycoris", "glora": "lycoris", "oft": "lycoris", "boft": "lycoris",
                "set": "set-weight"}


@dataclass
class ParsedLora:
    """A LoRA file normalised: ``modules[name] = adapter`` plus bias deltas and the leftovers."""

    modules: dict[str, Adapter]
    bias_diffs: dict[str, FullDiff] = field(default_factory=dict)
    formats: set[str] = field(default_factory=set)
    unsupported: dict[str, str] = field(default_factory=dict)  # key -> adapter kind we do not apply
    unknown_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the report should say about the file

    @property
    def format(self) -> str:
        """One word for the report: the file's naming convention(s)."""
        fmts = set(self.formats)
        if "lycoris" in fmts or any(name.startswith("lycoris_") for name in self.modules):
            fmts.discard("kohya")
            fmts.add("lycoris")
        return "+".join(sorted(fmts)) if fmts else "unknown"

    @property
    def algorithms(self) -> list[str]:
        return sorted({algorithm_name(a) for a in self.modules.values()})

    @property
    def target_count(self) -> int:
        """Weights the file patches: one per module adapter and one per bias delta."""
        return len(self.modules) + len(self.bias_diffs)


def module_name(key: str) -> str | None:
    """The module a file key belongs to (``x.lora_up.weight`` -> ``x``), or ``None``."""
    for suffix in _MODULE_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)]
    return None


def parse_lora(tensors: dict[str, torch.Tensor], *, source: str = "the LoRA") -> ParsedLora:
    """Group a LoRA state dict into one adapter per module (the first kind of ``KINDS`` that reads it),
    bias deltas, DoRA magnitudes, and the keys it could not place.

    Raises :class:`LoraFileError` when nothing in it is a LoRA weight (a checkpoint, say), and when a
    layer is malformed (ranks that disagree, rank 0, an alpha that is not one finite number).
    """
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise LoraFileError(f"{source}: entry '{key}' is not a tensor.", "check that this is a LoRA file.")
    names = sorted({n for k in tensors if (n := module_name(k)) is not None})
    claimed: set[str] = set()
    modules: dict[str, Adapter] = {}
    bias_diffs: dict[str, FullDiff] = {}
    formats: set[str] = set()
    for name in names:
        for kind in KINDS:
            found = kind.parse(name, tensors)
            if found is None:
                continue
            adapter, keys = found
            modules[name] = adapter
            claimed |= keys
            if isinstance(adapter, LoraWeights):
                formats.add(adapter.naming)
            elif isinstance(adapter, FullDiff):
                formats.add("lycoris" if adapter.source == "norm" else "full-diff")
            else:
                formats.add(_KIND_FORMAT.get(adapter.kind, adapter.kind))
            break
        bias = FullDiff.parse_bias(name, tensors)
        if bias is not None:
            bias_diffs[name], keys = bias
            claimed |= keys
            formats.add("lycoris" if bias_diffs[name].source == "norm" else "full-diff")
        adapter = modules.get(name)
        if adapter is None:
            continue
        if f"{name}.alpha" in tensors:
            claimed.add(f"{name}.alpha")
        for suffix in _MAGNITUDE_SUFFIXES:
            if (k := name + suffix) in tensors:
                shape = adapter.implied_shape()
                if shape is not None and len(shape) and not magnitude_fits(tensors[k], shape):
                    raise LoraFileError(
                        f"{source}: layer '{name}' has a DoRA magnitude of {tensors[k].numel()} values for a "
                        f"{tuple(shape)} delta.", "the file is damaged; export it again.")
                adapter.magnitude = tensors[k]
                claimed.add(k)

    unsupported: dict[str, str] = {}
    unknown: list[str] = []
    for key in sorted(tensors):
        if key in claimed:
            continue
        kind = next((v for s, v in _UNSUPPORTED.items() if key.endswith(s)), None)
        if kind:
            unsupported[key] = kind
        else:
            unknown.append(key)

    if not modules and not bias_diffs:
        kinds = sorted(set(unsupported.values()))
        if kinds:
            raise LoraFileError(
                f"{source} holds only {', '.join(kinds)} weights, which neither LoRA Lab nor core ComfyUI applies.",
                "use the tool that made the file to convert it to LoRA/LoCon, or train a LoRA instead.")
        first = f", e.g. '{min(tensors)}'" if tensors else ""
        raise LoraFileError(
            f"{source} holds no LoRA weights that LoRA Lab recognises ({len(tensors)} tensors{first}).",
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
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        parsed.notes.append(f"the file's lora_adapter_metadata is not valid JSON ({type(exc).__name__}), so PEFT's "
                            "lora_alpha could not be read: its layers are applied at scale 1 (alpha = rank).")
        return 0
    if not isinstance(config, dict):
        parsed.notes.append("the file's lora_adapter_metadata is not a JSON object, so PEFT's lora_alpha could not "
                            "be read: its layers are applied at scale 1 (alpha = rank).")
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
        patterns = config.get(f"{component}.alpha_pattern") or {}
        for pattern, value in (patterns.items() if isinstance(patterns, dict) else ()):
            try:
                hit = re.fullmatch(rf"(.*\.)?({pattern})", local)
            except (re.error, TypeError):
                hit = None
            if hit:
                alpha = value
                break
        if alpha is None:
            continue
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            alpha = math.nan
        if not math.isfinite(alpha):
            raise LoraFileError(f"the file's lora_adapter_metadata gives layer '{name}' lora_alpha = {alpha!r}, "
                                "not a finite number.", "the file is damaged; export it again.")
        if config.get(f"{component}.use_rslora"):
            alpha = alpha * math.sqrt(adapter.rank)
        adapter.alpha = alpha
        count += 1
    return count
