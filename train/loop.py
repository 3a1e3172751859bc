"""The training loop: seeded batches, the native loss, accumulation, the LR schedule, the optimizer,
gradient clipping and fp16 loss scaling.

Host-free: the model is reached through two callables the caller builds from its host,
``denoise(x_t, sigma, conds, sizes) -> denoised`` and ``encode_text(caption) -> cond`` (see
:class:`train.host_api.TrainModel`), plus the host's ``model_sampling`` (see :mod:`.objective`).
Everything random in step ``s`` (batch, flips, caption variants, noise, noise levels, the adapters'
dropout masks) is drawn from generators seeded by ``(seed, micro-batch index)``, so the same seed gives
the same adapter, and a run resumed at step ``s`` continues exactly as the uninterrupted run would have.

Mixed precision: ``training_dtype`` bf16 or fp16 runs the model under ``torch.autocast`` with the adapters'
master weights in fp32; fp16 also scales the loss (``torch.amp.GradScaler``: gradients are computed for
``scale * loss``, unscaled before clipping and the step, a step whose gradients overflowed is skipped and
the scale halved, and the scale doubles after ``GROWTH_INTERVAL`` clean steps), as kohya's scripts do through
accelerate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .data import BatchOrder, caption_variant, generator
from .host_api import ImageSize
from .network import AdapterNetwork, saved_activation_copies
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


INITIAL_LOSS_SCALE = 2.0**10
GROWTH_INTERVAL = 2000
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """A torch optimizer by class name, with torch's defaults besides the learning rate. ``params``: a list
    of parameters or of parameter groups (dicts, each with its own ``lr_ratio`` to the schedule's rate)."""
    cls = getattr(torch.optim, name)
    return cls(params, lr=lr)


def optimizer_state(optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The optimizer's state as tensors (``optimizer.<param>.<name>``) and JSON for everything else (the
    fp16 loss scaler's state included)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, object]] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    extra = {"grad_scaler": scaler.state_dict()} if scaler is not None else {}
    return tensors, json.dumps({"param_groups": sd["param_groups"], "scalars": scalars, **extra})


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], text: str,
                         scaler: torch.amp.GradScaler | None = None) -> None:
    meta = json.loads(text)
    if scaler is not None and "grad_scaler" in meta:
        scaler.load_state_dict(meta["grad_scaler"])
    state: dict[int, dict[str, object]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value.clone()  # a normal tensor, even if read in inference mode
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class Dataset:
    """Latents ready for training: ``latents[i]`` ``(C, h, w)`` (or ``(C, t, h, w)``) in the model's internal
    latent space, ``flipped[i]`` the latent of the mirrored image (or None), ``captions[i]``, ``sizes[i]``
    (bucket), ``conditioning[i]`` the image's size conditioning."""

    latents: list[torch.Tensor]
    flipped: list[torch.Tensor | None]
    captions: list[str]
    sizes: list[tuple[int, int]]
    conditioning: list[ImageSize | None] = field(default_factory=list)

    def size_of(self, i: int) -> ImageSize | None:
        return self.conditioning[i] if self.conditioning else None


@dataclass
class Trainer:
    settings: TrainSettings
    network: AdapterNetwork
    data: Dataset
    model_sampling: object
    denoise: Callable[..., torch.Tensor]
    encode_text: Callable[[str], object]
    device: torch.device = torch.device("cpu")
    losses: list[float] = field(default_factory=list)
    clipped_steps: int = 0
    skipped_steps: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        self.order = BatchOrder(self.data.sizes, s.batch_size, s.seed)
        groups = [{"params": self.network.parameters_of(None), "lr_ratio": 1.0}]
        te_params = self.network.parameters_of("text_encoders.")
        if te_params:
            ratio = (s.text_encoder_lr or s.learning_rate) / s.learning_rate
            groups.append({"params": te_params, "lr_ratio": ratio})
        groups = [g for g in groups if g["params"]]
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = make_optimizer(s.optimizer, groups, lr_at(s, 0))
        self.autocast_dtype = AUTOCAST_DTYPES[s.training_dtype]
        self.scaler = (torch.amp.GradScaler(self.device.type, init_scale=INITIAL_LOSS_SCALE,
                                            growth_interval=GROWTH_INTERVAL)
                       if s.training_dtype == "fp16" else None)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def micro_batch(self, index: int
                    ) -> tuple[torch.Tensor, list[str], list[ImageSize | None], torch.Generator]:
        """Latents, captions and size conditioning of micro-batch ``index``; the generator of its noise."""
        s = self.settings
        items = self.order.batch(index)
        gen = generator(s.seed, "micro-batch", index)
        latents, captions, sizes = [], [], []
        for i in items:
            flip = s.flip and float(torch.rand((), generator=gen)) < 0.5
            lat = self.data.flipped[i] if flip and self.data.flipped[i] is not None else self.data.latents[i]
            latents.append(lat)
            captions.append(caption_variant(self.data.captions[i], gen, dropout=s.caption_dropout,
                                            shuffle=s.shuffle_captions))
            sizes.append(self.data.size_of(i))
        return torch.stack(latents).to(self.device), captions, sizes, gen

    def micro_loss(self, index: int) -> torch.Tensor:
        s = self.settings
        x0, captions, sizes, gen = self.micro_batch(index)
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32)
        if s.noise_offset > 0:
            # Guttenberg's noise offset: a per-channel constant shift, so the model learns to move the mean.
            shift = (b, x0.shape[1], *[1] * (x0.dim() - 2))
            noise = noise + s.noise_offset * torch.randn(shift, generator=gen, dtype=torch.float32)
        noise = noise.to(self.device)
        sigma = sample_sigmas(self.model_sampling, gen, b).to(self.device)
        coef = coefficients(self.model_sampling, sigma)
        x_t = noisy_input(self.model_sampling, sigma, noise, x0)
        with self._autocast():
            conds = [self.encode_text(c) for c in captions]
            denoised = self.denoise(x_t, sigma, conds, sizes)
        return loss_per_sample(denoised, x0, coef, s.min_snr_gamma).mean()

    def step(self, step: int) -> float:
        """One optimizer step (``gradient_accumulation`` micro-batches); returns its mean loss."""
        s = self.settings
        lr = lr_at(s, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_ratio", 1.0)
        total = 0.0
        for k in range(s.gradient_accumulation):
            index = step * s.gradient_accumulation + k
            # the backward pass recomputes checkpointed blocks with the same masks
            with self.network.drop_context(index), saved_activation_copies():
                loss = self.micro_loss(index)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the loss became {float(loss)} at step {step + 1}")
                scaled = loss / s.gradient_accumulation
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += float(loss.detach())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if s.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm)
            self.clipped_steps += int(bool(torch.isfinite(norm)) and float(norm) > s.max_grad_norm)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped_steps += int(self.scaler.get_scale() < scale)
        else:
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
        gen = generator(seed, "evaluate")
        losses = []
        for i in range(count):
            index = i % len(self.data.latents)
            x0 = self.data.latents[index].unsqueeze(0).to(self.device)
            noise = torch.randn(x0.shape, generator=gen).to(self.device)
            sigma = sample_sigmas(self.model_sampling, gen, 1).to(self.device)
            coef = coefficients(self.model_sampling, sigma)
            x_t = noisy_input(self.model_sampling, sigma, noise, x0)
            with self._autocast():
                conds = [self.encode_text(self.data.captions[index])]
                denoised = self.denoise(x_t, sigma, conds, [self.data.size_of(index)])
            losses.append(float(loss_per_sample(denoised, x0, coef).mean()))
        return sum(losses) / len(losses)
