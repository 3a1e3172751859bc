"""Text encoding, sampling and the progress bar the way ComfyUI's own nodes do them, for the nodes that render
images themselves (the sweep's cells; training's previews and their parity check).

Each function runs what a ComfyUI graph would: ``encode_prompt`` is CLIPTextEncode, ``sample_image``
KSampler followed by VAEDecode (with KSampler's noise for the seed, from a private generator), and
:class:`Progress` the node's progress bar with a preview image riding along.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class SamplerSettings:
    """What KSampler is given besides the model, noise and conditioning."""

    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    seed: int


def sample_latent(model, noise: torch.Tensor, latent: torch.Tensor, positive, negative, s: SamplerSettings,
                  callback=None) -> torch.Tensor:
    """KSampler's sampling (``comfy.sample.sample``) of a whole batch; the cancel button is honoured."""
    import comfy.model_management  # noqa: PLC0415
    import comfy.sample  # noqa: PLC0415
    import comfy.utils  # noqa: PLC0415

    comfy.model_management.throw_exception_if_processing_interrupted()
    return comfy.sample.sample(model, noise, s.steps, s.cfg, s.sampler_name, s.scheduler, positive, negative,
                               latent, denoise=1.0, callback=callback,
                               disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=s.seed)


def decode(vae, latent: torch.Tensor) -> list[tuple[bool, torch.Tensor]]:
    """VAEDecode of a batch: ``(finite, image (H, W, 3))`` per latent, with whether the latent was finite
    (video VAEs give the first frame)."""
    finite = [bool(torch.isfinite(x).all()) for x in latent]
    images = vae.decode(latent)
    if images.dim() == 5:  # (B, T, H, W, C)
        images = images[:, 0]
    return [(f, img.float().cpu()) for f, img in zip(finite, images)]


class SamplerProgress:
    """One progress bar over every sampler call of the sweep, with latent previews; cancel is checked
    by ComfyUI's progress hook at every step."""

    def __init__(self, model, total: int):
        import comfy.utils  # noqa: PLC0415
        import latent_preview  # noqa: PLC0415 - ComfyUI's own module

        self.total = max(total, 1)
        self.done = 0
        self.bar = comfy.utils.ProgressBar(self.total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def callback(self, steps: int):
        offset = self.done
        self.done += steps

        def cb(step, x0, x, total_steps):
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0) if self.previewer else None
            self.bar.update_absolute(offset + step + 1, self.total, preview)
        return cb
