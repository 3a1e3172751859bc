"""What training needs from the program it runs in, as a protocol the caller hands in.

``train/`` never imports its host. :func:`train.session.run_training` gets a :class:`TrainHost` (LoRA Lab's
ComfyUI adapter is ``nodes.train_host.ComfyTrainHost``), asks it for a :class:`TrainModel` (the model
loaded for training: its torch modules, its noise schedule, and how to run it), and reports progress and
asks about cancelling through it. Conditioning is opaque here: whatever :meth:`TrainModel.encode_caption`
returns is handed back to :meth:`TrainModel.denoise`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import torch


@dataclass(frozen=True)
class ImageSize:
    """The size conditioning of one training image (SDXL's micro-conditioning; others ignore it): its
    original ``(width, height)``, the top-left ``(top, left)`` of the crop in the resized image, and the
    ``(width, height)`` it is trained at, in pixels."""

    original: tuple[int, int]
    crop: tuple[int, int]
    target: tuple[int, int]


class TrainModel(Protocol):
    """A model loaded for one training run (weights usable by autograd, frozen)."""

    diffusion_model: torch.nn.Module
    device: torch.device
    model_sampling: Any
    """The host's noise schedule: ``noise_scaling``, ``calculate_denoised``, ``percent_to_sigma`` (see
    :mod:`train.objective`)."""
    text_model: torch.nn.Module | None
    """The text encoders' torch module (``None`` when none is trained); encoder ``name`` is its child
    ``name`` and its weights' keys are their paths in it."""

    def text_encoders(self) -> list[str]:
        """The names of the text encoders that can be trained (``clip_l``, ``clip_g``, ``t5xxl``...)."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(H, W, 3)`` pixels in 0..1 -> the latent ``(C, ...)`` in the model's internal space."""

    def encode_caption(self, caption: str) -> Any:
        """A caption's conditioning (with autograd through trained text encoders)."""

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: Sequence[Any],
                sizes: Sequence[ImageSize | None]) -> torch.Tensor:
        """The model's denoised estimate of the batch ``x_t`` at noise levels ``sigma``, sample ``i``
        conditioned on ``conds[i]`` and ``sizes[i]``, through the model's own forward."""

    def preview(self, prompt: str, *, seed: int, steps: int, width: int, height: int) -> torch.Tensor:
        """An image ``(1, H, W, 3)`` sampled with the host's sampler from the model as it is now."""

    def training(self) -> AbstractContextManager[None]:
        """What the host must hold while training runs, forward and backward passes alike (e.g. operations
        swapped for differentiable ones); the run enters it once around the whole loop."""


class Progress(Protocol):
    def update(self, step: int, image: torch.Tensor | None = None) -> None:
        """Optimizer step ``step`` is done (``image``: a preview to show with it)."""


class TrainHost(Protocol):
    """The host: loads models for training, shows progress, says when the user cancelled."""

    def load(self, model: Any, clip: Any, vae: Any, *, text_encoders: Sequence[str] = ()) -> TrainModel:
        """``model`` loaded for training; ``text_encoders``: the encoders whose layers will be trained."""

    def progress(self, total: int) -> Progress:
        ...

    def interrupted(self) -> bool:
        ...

    def raise_interrupt(self) -> NoReturn:
        """Raise the host's own cancel exception (and clear its flag)."""

    def interrupt_exception(self) -> type[BaseException]:
        ...
