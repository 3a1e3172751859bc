"""Reduced-width VAEs for fast in-process tests, from ComfyUI's own classes with seeded random weights
(``testkit.models.seeded_tensor``), wrapped in ComfyUI's ``comfy.sd.VAE``:

- :func:`small_vae`: the SD-layout ``AutoencoderKL`` (4 latent channels, 8x down/upscaling like SD1.x's
  VAE) at channel width 32 with one ResBlock per level, through ``comfy.sd.VAE``'s ``config`` argument;
- :func:`small_taesd`: ComfyUI's tiny autoencoder with 4 or 16 latent channels (image latents);
- :func:`small_wan_vae`: Wan 2.1's video VAE (16 channels, 8x spatial and 4x temporal, 5-D latents) at
  width 8, which ComfyUI detects from its keys as it detects the real file.

The images they make are textures, as with every model in the testkit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .models import import_comfy, meta_shapes, seeded_state_dict

SEED_SMALL_VAE = 1503

SMALL_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


def small_vae_config() -> dict[str, Any]:
    return {"params": {"ddconfig": copy.deepcopy(SMALL_VAE_DDCONFIG), "embed_dim": 4}}


def small_vae(dtype: torch.dtype = torch.float32) -> Any:
    """A fresh ``comfy.sd.VAE`` on the CPU with the small seeded autoencoder."""
    comfy = import_comfy()
    from comfy.ldm.models.autoencoder import AutoencoderKL  # noqa: PLC0415

    shapes = meta_shapes(lambda: AutoencoderKL(**small_vae_config()["params"]))
    sd = seeded_state_dict(shapes, SEED_SMALL_VAE)
    return comfy.sd.VAE(sd=sd, config=small_vae_config(), device=torch.device("cpu"), dtype=dtype)


def small_taesd(latent_channels: int = 16, dtype: torch.dtype = torch.float32) -> Any:
    """A fresh ``comfy.sd.VAE`` wrapping ComfyUI's own tiny autoencoder (``comfy.taesd.taesd.TAESD``, 8x,
    ``latent_channels`` wide: 16 for Flux/SD3/Chroma-type image latents) with seeded weights: ComfyUI
    detects it from its ``taesd_decoder.*`` keys as it detects a downloaded TAESD file."""
    import_comfy()
    import comfy.taesd.taesd  # noqa: PLC0415

    shapes = meta_shapes(lambda: comfy.taesd.taesd.TAESD(latent_channels=latent_channels))
    sd = seeded_state_dict(shapes, SEED_SMALL_VAE + latent_channels)
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
    # The decoder's last convolution (to RGB): small weights around a mid-grey bias, so that random weights
    # give textures within [0, 1] instead of images clipped everywhere (which the sweep flags "saturated").
    rgb = max(k for k, v in shapes.items() if k.startswith("taesd_decoder.") and k.endswith(".weight")
              and v[0] == 3)
    sd[rgb] = sd[rgb] * 0.05
    sd[rgb[: -len("weight")] + "bias"] = torch.full((3,), 0.5)
    return comfy.sd.VAE(sd=sd, device=torch.device("cpu"), dtype=dtype)


SEED_SMALL_WAN_VAE = 1521
WAN_VAE_WIDTH = 8  # the real Wan 2.1 VAE is 96 wide; ComfyUI reads the width from ``decoder.head.0.gamma``


def small_wan_vae(dtype: torch.dtype = torch.float32) -> Any:
    """A fresh ``comfy.sd.VAE`` wrapping ComfyUI's Wan 2.1 video autoencoder (``comfy.ldm.wan.vae.WanVAE``,
    the architecture Wan 2.1 and Wan 2.2 14B models use) at width :data:`WAN_VAE_WIDTH`: an image encodes to
    a one-frame latent ``(1, 16, 1, H/8, W/8)`` and decodes to ``(1, 1, H, W, 3)``."""
    comfy = import_comfy()
    from comfy.ldm.wan.vae import WanVAE  # noqa: PLC0415

    # ComfyUI's own Wan 2.1 configuration (comfy.sd.VAE builds the same one from the state dict's keys).
    shapes = meta_shapes(lambda: WanVAE(
        dim=WAN_VAE_WIDTH, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0))
    sd = seeded_state_dict(shapes, SEED_SMALL_WAN_VAE)
    return comfy.sd.VAE(sd=sd, device=torch.device("cpu"), dtype=dtype)
