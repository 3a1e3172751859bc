"""Text encoding, sampling and the progress bar the way ComfyUI's own nodes do them, for nodes that render
images themselves (training previews and their parity check; meant for the sweep as well).

Each function runs what a ComfyUI graph would: ``encode_prompt`` is CLIPTextEncode, ``sample_image``
KSampler followed by VAEDecode (with KSampler's noise for the seed, from a private generator), and
:class:`Progress` the node's progress bar with a preview image riding along.
"""

from __future__ import annotations

import torch

from ..lora_ops.numerics import to_uint8


def encode_prompt(clip, text: str):
    """CLIPTextEncode's output for ``text`` (``[[cond, {"pooled_output": ...}]]``)."""
    with torch.inference_mode():
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def seeded_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """KSampler's noise for ``seed`` (``comfy.sample.prepare_noise``'s draw for one latent), from a private
    generator instead of the global one."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def sample_image(patcher, vae, positive, negative, *, latent: torch.Tensor, seed: int, steps: int, cfg: float,
                 sampler: str, scheduler: str) -> torch.Tensor:
    """One image from the empty ``latent`` ``(1, C, ...)``: ``comfy.sample.sample`` then the VAE,
    ``(1, H, W, 3)`` (the first frame of a video latent)."""
    import comfy.sample  # noqa: PLC0415

    noise = seeded_noise(tuple(latent.shape), seed)
    with torch.inference_mode():
        samples = comfy.sample.sample(patcher, noise, steps, cfg, sampler, scheduler, positive, negative,
                                      latent, denoise=1.0, disable_pbar=True, seed=seed)
        image = vae.decode(samples)
    with torch.inference_mode(False):
        return image.reshape(-1, *image.shape[-3:])[:1].float().clone()


class Progress:
    """ComfyUI's progress bar (the node's bar in the page), with a preview image riding along when given."""

    def __init__(self, total: int):
        import comfy.utils  # noqa: PLC0415

        self.bar = comfy.utils.ProgressBar(total)
        self.total = total

    def update(self, step: int, image: torch.Tensor | None = None) -> None:
        preview = None
        if image is not None:
            from comfy.cli_args import args  # noqa: PLC0415
            from PIL import Image  # noqa: PLC0415

            preview = ("JPEG", Image.fromarray(to_uint8(image[0])), args.preview_size)
        self.bar.update_absolute(step, self.total, preview)
