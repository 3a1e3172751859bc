"""Block names from a file's own module names, for a LoRA inspected without a model."""

from __future__ import annotations

import re

from ..blocks import block_of, normalize_family
from ..keymap import canonical_name

_FILE_UNET_DIFF_RX = re.compile(r"^(down_blocks|up_blocks)_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_(.+)$")
_FILE_UNET_MID_RX = re.compile(r"^mid_block_(resnets|attentions)_(\d+)_(.+)$")
_FILE_UNET_LDM_RX = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$")
_FILE_UNET_LDM_MID_RX = re.compile(r"^middle_block_(\d+)_(.+)$")
_FILE_DIT_KNOWN_RX = re.compile(r"(?:^|_)(double_blocks|single_blocks|joint_blocks)_(\d+)_(.+)$")
_FILE_FLUX_DIFFUSERS_RX = re.compile(r"(?:^|_)(single_transformer_blocks|transformer_blocks)_(\d+)_(.+)$")
_FILE_GENERIC_RX = re.compile(r"^(?:.*?_)??((?:[a-z0-9]+_)*?(?:blocks|layers))_(\d+)(?:_(.+))?$")
_TE_PREFIX_RX = re.compile(r"^lora_te([123])_(.+)$")


def file_module_key(name: str, family: str | None) -> str | None:
    """A model weight key standing for the file's module ``name`` (for ``block_of``), or ``None``.

    See the module docstring for the rule. Text-encoder names give ``clip_l.``/``clip_g.``/``clip_h.``/
    ``t5xxl.`` keys as the family's encoders go.
    """
    fam = normalize_family(family)
    c = canonical_name(name)
    m = _TE_PREFIX_RX.match(c)
    if m:
        encoders = {"sd2": ("clip_h",), "flux": ("clip_l", "t5xxl"), "sd3": ("clip_l", "clip_g", "t5xxl")}
        order = encoders.get(fam, ("clip_l", "clip_g", "t5xxl"))
        index = int(m.group(1)) - 1
        return f"{order[index]}.transformer.{m.group(2)}.weight" if index < len(order) else None
    for prefix in ("lora_unet_", "lora_transformer_"):
        if c.startswith(prefix):
            rest = c[len(prefix):]
            break
    else:
        rest = c
    m = _FILE_UNET_DIFF_RX.match(rest)
    if m:
        return f"diffusion_model.{m.group(1)}.{m.group(2)}.{m.group(3)}.{m.group(4)}.{m.group(5)}.weight"
    m = _FILE_UNET_MID_RX.match(rest)
    if m:
        return f"diffusion_model.mid_block.{m.group(1)}.{m.group(2)}.{m.group(3)}.weight"
    if rest.startswith("conv_in"):
        return "diffusion_model.conv_in.weight"
    m = _FILE_UNET_LDM_RX.match(rest)
    if m:
        return f"diffusion_model.{m.group(1)}.{m.group(2)}.{m.group(3)}.{m.group(4)}.weight"
    m = _FILE_UNET_LDM_MID_RX.match(rest)
    if m:
        return f"diffusion_model.middle_block.{m.group(1)}.{m.group(2)}.weight"
    m = _FILE_DIT_KNOWN_RX.search(rest)
    if m:
        return f"diffusion_model.{m.group(1)}.{m.group(2)}.{m.group(3)}.weight"
    if fam == "flux":
        m = _FILE_FLUX_DIFFUSERS_RX.search(rest)
        if m:
            container = "single_blocks" if m.group(1).startswith("single") else "double_blocks"
            return f"diffusion_model.{container}.{m.group(2)}.{m.group(3)}.weight"
    m = _FILE_GENERIC_RX.match(rest)
    if m:
        return f"diffusion_model.{m.group(1)}.{m.group(2)}.{m.group(3) or 'weight'}.weight"
    return f"diffusion_model.{rest}.weight"


def file_block(name: str, family: str | None) -> str:
    """The block of a file module name under ``family`` (``BASE`` when no block can be told)."""
    key = file_module_key(name, family)
    return "BASE" if key is None else block_of(family, key)
