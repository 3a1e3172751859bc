"""The ComfyUI side of training, kept in one small module: model loading, text and image encoding,
previews with ComfyUI's own sampler, progress, cancel.

Two host facts shape it (field-notes §1): ComfyUI runs nodes under ``torch.inference_mode()``, and
tensors created in inference mode (the model's weights, once loaded by a loader node) cannot be saved
for backward. :func:`training_patcher` therefore replaces each such weight of the diffusion model by a
normal-tensor Parameter with the same values (one tensor at a time, so the extra memory is one layer), which
ComfyUI's own inference is indifferent to.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

PREVIEW_SAMPLER = "euler"
PREVIEW_SCHEDULER = "normal"
PREVIEW_CFG = 7.0


def _mm():
    import comfy.model_management  # noqa: PLC0415

    return comfy.model_management


def ensure_trainable(patcher) -> None:
    """Load ``patcher`` fully on its device (its patches applied) and make its weights autograd-usable."""
    _mm().load_models_gpu([patcher], force_full_load=True)
    module = patcher.model.diffusion_model
    with torch.inference_mode(False):
        for sub in module.modules():
            # A new Parameter object: swapping ``.data`` keeps the inference tensor's missing version counter.
            for name, p in sub._parameters.items():
                if p is not None and p.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
            for name, b in sub._buffers.items():
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()
        module.requires_grad_(False)


def training_patcher(model):
    """A clone of ``model`` loaded for training (see :func:`ensure_trainable`)."""
    patcher = model.clone()
    ensure_trainable(patcher)
    return patcher


def denoiser(patcher):
    """``denoise(x_t, sigma, cond)``: the model's denoised estimate through ``BaseModel.apply_model``."""
    def denoise(x_t: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ensure_trainable(patcher)  # a no-op unless ComfyUI unloaded the model to encode text
        return patcher.model.apply_model(x_t, sigma, c_crossattn=cond)
    return denoise


class CaptionEncoder:
    """Caption -> cross-attention conditioning ``(1, tokens, dim)``, each distinct text encoded once."""

    def __init__(self, clip):
        self.clip = clip
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, text: str) -> torch.Tensor:
        hit = self.cache.get(text)
        if hit is None:
            with torch.inference_mode():
                cond = self.clip.encode_from_tokens(self.clip.tokenize(text))
            with torch.inference_mode(False):
                hit = cond.float().clone()
            self.cache[text] = hit
        return hit


def encode_latents(patcher, vae, pixels: torch.Tensor) -> torch.Tensor:
    """``(H, W, 3)`` image -> ``(C, h, w)`` latent in the model's internal space (``process_latent_in``)."""
    with torch.inference_mode():
        latent = vae.encode(pixels.unsqueeze(0)[..., :3])
        latent = patcher.model.process_latent_in(latent.float())
    with torch.inference_mode(False):
        return latent[0].float().clone()


def conditioning(clip, text: str):
    """CLIPTextEncode's output for ``text``."""
    with torch.inference_mode():
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample_image(patcher, vae, positive, negative, *, seed: int, steps: int, width: int, height: int) -> torch.Tensor:
    """One image with ComfyUI's sampler (euler, normal, cfg 7) and the VAE: ``(1, H, W, 3)``.

    The noise is KSampler's for ``seed`` (``comfy.sample.prepare_noise``'s draw), from a private generator
    instead of the global one.
    """
    import comfy.sample  # noqa: PLC0415

    channels = patcher.model.latent_format.latent_channels
    latent = torch.zeros((1, channels, height // 8, width // 8))
    noise = torch.randn(latent.size(), generator=torch.Generator().manual_seed(seed), dtype=latent.dtype)
    with torch.inference_mode():
        samples = comfy.sample.sample(patcher, noise, steps, PREVIEW_CFG, PREVIEW_SAMPLER, PREVIEW_SCHEDULER,
                                      positive, negative, latent, denoise=1.0, disable_pbar=True, seed=seed)
        image = vae.decode(samples)
    with torch.inference_mode(False):
        return image.reshape(-1, *image.shape[-3:])[:1].float().clone()


class Progress:
    """ComfyUI's progress bar (the node's bar in the UI), with a preview image riding along when given."""

    def __init__(self, total: int):
        import comfy.utils  # noqa: PLC0415

        self.bar = comfy.utils.ProgressBar(total)
        self.total = total

    def update(self, step: int, image: torch.Tensor | None = None) -> None:
        preview = None
        if image is not None:
            from comfy.cli_args import args  # noqa: PLC0415
            from PIL import Image  # noqa: PLC0415

            array = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            preview = ("JPEG", Image.fromarray(array), args.preview_size)
        self.bar.update_absolute(step, self.total, preview)


def interrupted() -> bool:
    return _mm().processing_interrupted()


def raise_interrupt() -> None:
    """Raise ComfyUI's own interrupt exception (and clear the flag), as its nodes do."""
    _mm().throw_exception_if_processing_interrupted()
    raise _mm().InterruptProcessingException()


def interrupt_exception() -> type[BaseException]:
    return _mm().InterruptProcessingException
