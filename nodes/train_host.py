"""ComfyUI as training's host (:class:`train.host_api.TrainHost`): model loading, text and image encoding,
the model's own forward with core's conditioning path, previews with ComfyUI's sampler, progress, cancel.

Two host facts shape it: ComfyUI runs nodes under ``torch.inference_mode()``, and tensors created in
inference mode (the model's weights, once loaded by a loader node) cannot be saved for backward.
:func:`ensure_trainable` therefore replaces each such weight by a normal-tensor Parameter with the same
values (one tensor at a time, so the extra memory is one layer), which ComfyUI's own inference is
indifferent to.

The forward pass is the sampler's: each sample's conditioning goes through ``convert_cond`` ->
``encode_model_conds(model.extra_conds)`` -> ``process_cond``, the batch through ``cond_cat``, and the model
through ``BaseModel.apply_model``, so every family ComfyUI samples gets its own inputs (SDXL's pooled text
and size embedding, Flux's guidance, attention masks) exactly as when sampling.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

import torch

from ..train.host_api import ImageSize
from . import sampling

log = logging.getLogger(__name__)

PREVIEW_SAMPLER = "euler"
PREVIEW_SCHEDULER = "normal"
PREVIEW_CFG = 7.0
GUIDANCE_MODEL_CFG = 1.0  # guidance-distilled models (a guidance input instead of CFG)


def _mm():
    import comfy.model_management  # noqa: PLC0415

    return comfy.model_management


def make_autograd_usable(module: torch.nn.Module) -> None:
    """Replace inference-mode parameters and buffers of ``module`` by normal tensors (same values)."""
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


def ensure_trainable(patcher, module: torch.nn.Module | None = None) -> None:
    """Load ``patcher`` fully on its device (its patches applied) and make its weights autograd-usable."""
    _mm().load_models_gpu([patcher], force_full_load=True)
    make_autograd_usable(module if module is not None else patcher.model.diffusion_model)


def training_patcher(model):
    """A clone of ``model`` loaded for training (see :func:`ensure_trainable`)."""
    patcher = model.clone()
    ensure_trainable(patcher)
    return patcher


def size_conditioning(size: ImageSize | None) -> dict:
    """SDXL's size and crop conditioning as the conditioning keys ``SDXL.encode_adm`` reads."""
    if size is None:
        return {}
    return {"width": size.original[0], "height": size.original[1], "crop_h": size.crop[0],
            "crop_w": size.crop[1], "target_width": size.target[0], "target_height": size.target[1]}


def preview_cfg(patcher) -> float:
    """cfg 7 for models trained with classifier-free guidance, 1 for guidance-distilled ones (Flux dev)."""
    unet_config = getattr(patcher.model.model_config, "unet_config", {}) or {}
    return GUIDANCE_MODEL_CFG if unet_config.get("guidance_embed") else PREVIEW_CFG


class ComfyTrainModel:
    """A ComfyUI ``MODEL`` (and ``CLIP``, ``VAE``) loaded for one training run; see the module docstring."""

    def __init__(self, model, clip, vae, text_encoders: Sequence[str] = ()):
        self.patcher = training_patcher(model)
        self.clip = clip.clone() if clip is not None and text_encoders else clip
        self.vae = vae
        self.train_text = bool(text_encoders)
        if self.train_text:
            ensure_trainable(self.clip.patcher, self.clip.cond_stage_model)
        self.diffusion_model = self.patcher.model.diffusion_model
        device = self.patcher.load_device
        self.device = device if isinstance(device, torch.device) else torch.device(device)
        self.model_sampling = self.patcher.get_model_object("model_sampling")
        self.text_model = self.clip.cond_stage_model if self.train_text else None
        self._captions: dict[str, list] = {}
        self._prompts: dict[str, list] = {}
        self._latent_shapes: dict[tuple[int, int], tuple[int, ...]] = {}

    def text_encoders(self) -> list[str]:
        if self.clip is None:
            return []
        return [name for name, child in self.clip.cond_stage_model.named_children()
                if any(True for _ in child.parameters())]

    # --- inputs ----------------------------------------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            latent = self.vae.encode(pixels.unsqueeze(0)[..., :3])
            latent = self.patcher.model.process_latent_in(latent.float())
        with torch.inference_mode(False):
            return latent[0].float().clone()

    def _encode(self, text: str) -> list:
        """``encode_from_tokens_scheduled`` with autograd through the text encoders (their adapters)."""
        ensure_trainable(self.clip.patcher, self.clip.cond_stage_model)  # a no-op unless ComfyUI unloaded it
        with torch.inference_mode(False), torch.enable_grad():
            return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    def encode_caption(self, caption: str) -> list:
        """The caption's ``CONDITIONING``: encoded every time when a text encoder trains, else once."""
        if self.train_text:
            return self._encode(caption)
        hit = self._captions.get(caption)
        if hit is None:
            hit = _detached(sampling.encode_prompt(self.clip, caption))
            self._captions[caption] = hit
        return hit

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: Sequence[list],
                sizes: Sequence[ImageSize | None]) -> torch.Tensor:
        import comfy.sampler_helpers  # noqa: PLC0415
        import comfy.samplers  # noqa: PLC0415

        ensure_trainable(self.patcher)  # a no-op unless ComfyUI unloaded the model to encode text
        model = self.patcher.model
        batch = []
        for i, (cond, size) in enumerate(zip(conds, sizes)):
            entry = [[c[0], {**c[1], **size_conditioning(size)}] for c in cond[:1]]
            converted = comfy.sampler_helpers.convert_cond(entry)
            sample = x_t[i:i + 1]
            encoded = comfy.samplers.encode_model_conds(model.extra_conds, converted, sample, self.device,
                                                        "positive", latent_image=torch.zeros_like(sample),
                                                        denoise_mask=None, seed=0)
            batch.append({k: v.process_cond(batch_size=1, device=self.device, area=None)
                          for k, v in encoded[0]["model_conds"].items()})
        kwargs = comfy.samplers.cond_cat(batch)
        options = dict(self.patcher.model_options.get("transformer_options", {}))
        options["sigmas"] = sigma
        return model.apply_model(x_t, sigma, transformer_options=options, **kwargs)

    def training(self) -> contextlib.AbstractContextManager[None]:
        return differentiable_ops()

    # --- previews --------------------------------------------------------------------------------------
    def _prompt(self, text: str) -> list:
        if self.train_text:  # the text encoders change while training
            with torch.inference_mode():
                return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        hit = self._prompts.get(text)
        if hit is None:
            hit = self._prompts[text] = sampling.encode_prompt(self.clip, text)
        return hit

    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        if (width, height) not in self._latent_shapes:
            self._latent_shapes[(width, height)] = latent_shape(self.patcher, self.vae, width, height)
        return self._latent_shapes[(width, height)]

    def preview(self, prompt: str, *, seed: int, steps: int, width: int, height: int) -> torch.Tensor:
        return render(self.patcher, self.vae, self._prompt(prompt), self._prompt(""), seed=seed, steps=steps,
                      latent_shape=self.latent_shape(width, height))


def rope_pairs(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x`` (``(..., d)``) by the 2x2 rotations ``freqs_cis``
    (``(..., d/2, 2, 2)``): each pair ``(x_2i, x_2i+1)`` becomes ``R_i @ (x_2i, x_2i+1)`` (Su et al. 2021,
    "RoFormer"), in plain torch operations that autograd differentiates."""
    pairs = x.to(freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def _rope_both(xq: torch.Tensor, xk: torch.Tensor,
               freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_pairs(xq, freqs_cis), rope_pairs(xk, freqs_cis)


@contextlib.contextmanager
def differentiable_ops() -> Iterator[None]:
    """Swap operations the host runs through kernels without a backward pass for differentiable ones, for
    the block: ComfyUI 0.8.0 computes rotary embeddings (``comfy.ldm.flux.math.apply_rope``/``apply_rope1``,
    imported by the Flux, Chroma, Lumina/Z-Image, Wan, HiDream and Kandinsky models) with ``comfy_kitchen``
    custom ops that have no autograd formula ("Trying to backward through comfy_kitchen.apply_rope"). Every
    loaded ``comfy.ldm`` module's binding of them is swapped and restored; 0.3.75's own Python functions are
    left as they are."""
    import comfy.ldm.flux.math as flux_math  # noqa: PLC0415

    swaps = {}
    for name, replacement in (("apply_rope", _rope_both), ("apply_rope1", rope_pairs)):
        fn = getattr(flux_math, name, None)
        if fn is not None and getattr(fn, "__module__", "") != flux_math.__name__:
            swaps[name] = (fn, replacement)
    patched = []
    try:
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith("comfy.ldm") or module is None:
                continue
            for name, (kernel, replacement) in swaps.items():
                if getattr(module, name, None) is kernel:
                    setattr(module, name, replacement)
                    patched.append((module, name, kernel))
        yield
    finally:
        for module, name, kernel in patched:
            setattr(module, name, kernel)


def latent_shape(patcher, vae, width: int, height: int) -> tuple[int, ...]:
    """The shape ``(C, ...)`` of an empty latent for a ``width x height`` image: what the VAE makes of one."""
    with torch.inference_mode():
        latent = patcher.model.process_latent_in(vae.encode(torch.zeros(1, height, width, 3)).float())
    return tuple(latent.shape[1:])


def render(patcher, vae, positive, negative, *, seed: int, steps: int,
           latent_shape: tuple[int, ...]) -> torch.Tensor:
    """A preview: euler, normal schedule, cfg :func:`preview_cfg`, from an empty ``latent_shape`` latent."""
    return sampling.sample_image(patcher, vae, positive, negative, latent=torch.zeros((1, *latent_shape)),
                                 seed=seed, steps=steps, cfg=preview_cfg(patcher), sampler=PREVIEW_SAMPLER,
                                 scheduler=PREVIEW_SCHEDULER)


def _detached(conditioning: list) -> list:
    """A copy of a ``CONDITIONING`` whose tensors are normal tensors (usable outside inference mode)."""
    with torch.inference_mode(False):
        out = []
        for cond, extras in conditioning:
            out.append([cond.float().clone(), {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                               for k, v in extras.items()}])
        return out


class ComfyTrainHost:
    """:class:`train.host_api.TrainHost` for ComfyUI."""

    def load(self, model, clip, vae, *, text_encoders: Sequence[str] = ()) -> ComfyTrainModel:
        return ComfyTrainModel(model, clip, vae, text_encoders)

    def progress(self, total: int) -> sampling.Progress:
        return sampling.Progress(total)

    def interrupted(self) -> bool:
        return _mm().processing_interrupted()

    def raise_interrupt(self):
        """Raise ComfyUI's own interrupt exception (and clear the flag), as its nodes do."""
        _mm().throw_exception_if_processing_interrupted()
        raise _mm().InterruptProcessingException()

    def interrupt_exception(self) -> type[BaseException]:
        return _mm().InterruptProcessingException
