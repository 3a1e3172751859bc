"""The training loop: seeded batches, the native loss, accumulation, the LR schedule, the optimizer.

Host-free: the model is reached through two callables the caller builds from its host,
``denoise(x_t, sigma, cond) -> denoised`` and ``encode_text(caption) -> cond``, plus the host's
``model_sampling`` (see :mod:`.objective`). Everything random in step ``s`` (batch, flips, caption
variants, noise, noise levels) is drawn from generators seeded by ``(seed, micro-batch index)``, so
the same seed gives the same LoRA, and a run resumed at step ``s`` continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .data import BatchOrder, caption_variant, generator
from .network import LoraNetwork
from .objective import coefficients, loss_per_sample, noisy_input, sample_sigmas
from .settings import TrainSettings

log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """The host asked to stop; ``step`` optimizer steps are complete."""

    def __init__(self, step: int):
        super().__init__(f"training cancelled after step {step}")
        self.step = step


def lr_at(settings: TrainSettings, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up from ``lr / warmup`` to ``lr`` over
    ``warmup_steps``, then constant or cosine decay to 0 at ``schedule_steps``."""
    lr = settings.learning_rate
    warm = settings.warmup_steps
    if warm and step < warm:
        return lr * (step + 1) / warm
    if settings.lr_schedule == "cosine":
        span = max(settings.schedule_steps - warm, 1)
        progress = min(max(step - warm, 0) / span, 1.0)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """A torch optimizer by class name, with torch's defaults besides the learning rate."""
    cls = getattr(torch.optim, name)
    return cls(params, lr=lr)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """The optimizer's state as tensors (``optimizer.<param>.<name>``) and JSON for everything else."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, object]] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, json.dumps({"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], text: str) -> None:
    meta = json.loads(text)
    state: dict[int, dict[str, object]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value.clone()  # a normal tensor, even if read in inference mode
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class Dataset:
    """Latents ready for training: ``latents[i]`` ``(C, h, w)`` in the model's internal latent space,
    ``flipped[i]`` the latent of the mirrored image (or None), ``captions[i]``, ``sizes[i]`` (bucket)."""

    latents: list[torch.Tensor]
    flipped: list[torch.Tensor | None]
    captions: list[str]
    sizes: list[tuple[int, int]]


@dataclass
class Trainer:
    settings: TrainSettings
    network: LoraNetwork
    data: Dataset
    model_sampling: object
    denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    encode_text: Callable[[str], torch.Tensor]
    device: torch.device = torch.device("cpu")
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        s = self.settings
        self.order = BatchOrder(self.data.sizes, s.batch_size, s.seed)
        self.params = [p for layer in self.network.layers for p in (layer.down, layer.up)]
        self.optimizer = make_optimizer(s.optimizer, self.params, lr_at(s, 0))
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[s.training_dtype]

    def micro_batch(self, index: int) -> tuple[torch.Tensor, list[str], torch.Generator]:
        """Latents and captions of micro-batch ``index`` and the generator for its noise."""
        s = self.settings
        items = self.order.batch(index)
        gen = generator(s.seed, "micro-batch", index)
        latents, captions = [], []
        for i in items:
            flip = s.flip and float(torch.rand((), generator=gen)) < 0.5
            lat = self.data.flipped[i] if flip and self.data.flipped[i] is not None else self.data.latents[i]
            latents.append(lat)
            captions.append(caption_variant(self.data.captions[i], gen, dropout=s.caption_dropout,
                                            shuffle=s.shuffle_captions))
        return torch.stack(latents).to(self.device), captions, gen

    def micro_loss(self, index: int) -> torch.Tensor:
        s = self.settings
        x0, captions, gen = self.micro_batch(index)
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32)
        if s.noise_offset > 0:
            # Guttenberg's noise offset: a per-channel constant shift, so the model learns to move the mean.
            noise = noise + s.noise_offset * torch.randn((b, x0.shape[1], 1, 1), generator=gen, dtype=torch.float32)
        noise = noise.to(self.device)
        sigma = sample_sigmas(self.model_sampling, gen, b).to(self.device)
        coef = coefficients(self.model_sampling, sigma)
        x_t = noisy_input(self.model_sampling, sigma, noise, x0)
        cond = torch.cat([self.encode_text(c) for c in captions]).to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            denoised = self.denoise(x_t, sigma, cond)
        return loss_per_sample(denoised, x0, coef, s.min_snr_gamma).mean()

    def step(self, step: int) -> float:
        """One optimizer step (``gradient_accumulation`` micro-batches); returns its mean loss."""
        s = self.settings
        lr = lr_at(s, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for k in range(s.gradient_accumulation):
            loss = self.micro_loss(step * s.gradient_accumulation + k)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {float(loss)} at step {step + 1}")
            (loss / s.gradient_accumulation).backward()
            total += float(loss.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean = total / s.gradient_accumulation
        self.losses.append(mean)
        return mean

    def run(self, start: int, end: int, *, should_stop: Callable[[], bool] = lambda: False,
            after_step: Callable[[int, float], None] = lambda step, loss: None) -> None:
        """Steps ``start`` to ``end - 1``; ``after_step(done, loss)`` gets the count of completed steps.
        ``should_stop`` is asked before each step; True raises :class:`TrainingCancelled`."""
        for step in range(start, end):
            if should_stop():
                raise TrainingCancelled(step)
            loss = self.step(step)
            log.debug("step %d/%d loss %.5f", step + 1, end, loss)
            after_step(step + 1, loss)

    @torch.no_grad()
    def evaluate(self, count: int = 8, seed: int = 12345) -> float:
        """Mean loss over a fixed set of (image, noise level, noise) draws: comparable across runs."""
        s = self.settings
        gen = generator(seed, "evaluate")
        losses = []
        for i in range(count):
            index = i % len(self.data.latents)
            x0 = self.data.latents[index].unsqueeze(0).to(self.device)
            noise = torch.randn(x0.shape, generator=gen).to(self.device)
            sigma = sample_sigmas(self.model_sampling, gen, 1).to(self.device)
            coef = coefficients(self.model_sampling, sigma)
            x_t = noisy_input(self.model_sampling, sigma, noise, x0)
            cond = self.encode_text(self.data.captions[index]).to(self.device)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                denoised = self.denoise(x_t, sigma, cond)
            losses.append(float(loss_per_sample(denoised, x0, coef).mean()))
        return sum(losses) / len(losses)
