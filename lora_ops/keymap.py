"""Mapping a file's module names onto the model's weights.

The host (ComfyUI) already knows how its models are named in many LoRA dialects: its key maps
(``comfy.lora.model_lora_keys_unet/_clip``) map a LoRA module name to a model weight key, or to
``(key, (dim, offset, length))`` for a slice of a packed weight (Flux's ``linear1`` qkv), or to
``(key, offset, function)`` where the delta must be transformed first. LoRA Lab takes such a map as
data and adds one thing: a canonical form in which the naming variants that the host spells out one by
one compare equal, so that files which the host skips silently (PEFT and
diffusers attention names such as ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``)
still find their weight. Every module ends up matched or listed as unmatched; nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

# Prefix rewrites on the underscore form; order matters (longest first).
_PREFIXES = (
    ("base_model_model_", ""),
    ("unet_base_model_model_", "lora_unet_"),
    ("unet_", "lora_unet_"),
    ("lycoris_", "lora_unet_"),
    ("text_encoder_2_", "lora_te2_"),
    ("text_encoder_", "lora_te1_"),
    ("lora_te_", "lora_te1_"),
    ("transformer_", "lora_transformer_"),
)


@dataclass(frozen=True)
class Target:
    """A model weight that a LoRA module patches.

    ``offset = (dim, start, length)`` for a slice of a packed weight (Flux's ``linear1`` holds q, k, v and
    the MLP input); ``transform``: a function of the delta that the host's key map carries for this name
    (ComfyUI's ``swap_scale_shift`` for diffusers' ``norm_out.linear``, whose rows are stored (shift,
    scale) where ComfyUI's modulation has (scale, shift)); the delta is ``transform(dW)``.
    """

    key: str
    offset: tuple[int, int, int] | None = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=True)

    @property
    def bias_key(self) -> str:
        stem = self.key[: -len(".weight")] if self.key.endswith(".weight") else self.key
        return f"{stem}.bias"


def canonical_name(name: str) -> str:
    """One spelling per module: dots as underscores, no attention-processor level, one prefix per part.

    ``unet.mid_block.attentions.0.processor.to_out.0`` and ``lora_unet_mid_block_attentions_0_to_out_0``
    both become ``lora_unet_mid_block_attentions_0_to_out_0``.
    """
    n = name.replace(".processor.", ".").replace(".", "_")
    if n.startswith("base_model_model_"):
        n = n[len("base_model_model_"):]
    for old, new in _PREFIXES[1:]:
        if n.startswith(old):
            return new + n[len(old):]
    return n


def _as_target(value) -> Target:
    """A host key-map value as a :class:`Target`: a key, ``(key, offset)`` or ``(key, offset, function)``."""
    if isinstance(value, str):
        return Target(value)
    key, offset = value[0], value[1]
    transform = value[2] if len(value) > 2 and callable(value[2]) else None
    return Target(key, tuple(int(v) for v in offset) if offset is not None else None, transform)


class KeyIndex:
    """Looks module names up in a host key map, exactly first, then by canonical name.

    Building one canonicalises every name of the map (tens of ms for an SDXL UNet); hosts that plan
    many times for one model (a strength change) build it once and pass it wherever a key map goes.
    """

    @classmethod
    def of(cls, key_map: "Mapping[str, object] | KeyIndex | None") -> "KeyIndex":
        """``key_map`` itself if it already is an index, else an index of it (``None``: empty)."""
        return key_map if isinstance(key_map, KeyIndex) else cls(key_map or {})

    def __init__(self, key_map: Mapping[str, object]):
        self.exact: dict[str, Target] = {k: _as_target(v) for k, v in key_map.items()}
        self.canonical: dict[str, Target | None] = {}
        for k, target in self.exact.items():
            c = canonical_name(k)
            prev = self.canonical.get(c, target)
            # Two different weights behind one canonical spelling: only exact names may reach them.
            self.canonical[c] = target if prev == target else None

    def __len__(self) -> int:
        return len(self.exact)

    def lookup(self, name: str) -> Target | None:
        if name in self.exact:
            return self.exact[name]
        c = canonical_name(name)
        hit = self.canonical.get(c)
        if hit is not None:
            return hit
        # Names saved without any model prefix (PEFT on a bare module): accept one unambiguous owner.
        hits = {t for p in ("lora_unet_", "lora_te1_", "lora_transformer_")
                if (t := self.canonical.get(p + c)) is not None}
        return hits.pop() if len(hits) == 1 else None


def match_modules(names: Iterable[str], key_map: Mapping[str, object]) -> tuple[dict[str, Target], list[str]]:
    """Map each module name to a :class:`Target`; return ``(matched, unmatched_names)``."""
    index = KeyIndex(key_map)
    matched: dict[str, Target] = {}
    unmatched: list[str] = []
    for name in names:
        target = index.lookup(name)
        if target is None:
            unmatched.append(name)
        else:
            matched[name] = target
    return matched, unmatched
