"""A reduced-width SD-layout VAE for fast in-process tests: ComfyUI's own ``AutoencoderKL`` (4 latent
channels, 8x down/upscaling like SD1.x's VAE) at channel width 32 with one ResBlock per level, seeded
random weights (``testkit.models.seeded_tensor``), wrapped in ComfyUI's ``comfy.sd.VAE`` through its
``config`` argument. The images it makes are textures, as with every model in the testkit.
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
