"""One training run on a ComfyUI model, from checked inputs to a saved, resumable LoRA.

:func:`run_training` ties the host-free parts (data, network, loop, checkpoint) to the host glue in
:mod:`.host`: it encodes the images and captions, attaches the LoRA layers to a training clone of the
model for the run only, trains, makes previews with ComfyUI's sampler while the layers are attached,
saves at ``save_every`` and at the end, and on cancel saves a resumable checkpoint before raising
ComfyUI's interrupt. Inputs are checked before this runs (``prepare``): nothing here is a bad-input
error except what only the model can tell (a rank larger than a layer, targets that match nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..lora_ops.adapters import LoraWeights
from . import host
from .checkpoint import (PrecisionReport, ResumeState, SavedCheckpoint, save_checkpoint, tensor_sha256,
                         training_metadata)
from .data import TrainImage, fit_image, tag_frequency
from .loop import Dataset, Trainer, TrainingCancelled, load_optimizer_state, optimizer_state
from .network import LoraNetwork, TargetLayer, check_rank, checkpointed, select_targets, unet_blocks
from .objective import prediction_type
from .settings import TrainSettingsError, TrainSettings

log = logging.getLogger(__name__)


@dataclass
class TrainPlan:
    """Everything checked before training starts."""

    settings: TrainSettings
    images: list[TrainImage]
    sizes: list[tuple[int, int]]
    family: str
    kohya_names: dict[str, str]            # model weight key -> kohya module name
    output_path: Path
    checkpoint_path: Callable[[int], Path]  # step -> path of a save_every / cancel checkpoint
    base_model: str = ""
    block_factor: Callable[[str], float] | None = None
    resume: ResumeState | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    saved: SavedCheckpoint
    weights: dict[str, LoraWeights]
    losses: list[float]
    start_step: int
    previews: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    final_preview: torch.Tensor | None = None
    checkpoints: list[SavedCheckpoint] = field(default_factory=list)
    prediction: str = ""
    targets: list[TargetLayer] = field(default_factory=list)
    seconds: float = 0.0
    parity: dict = field(default_factory=dict)

    @property
    def precision(self) -> PrecisionReport:
        return self.saved.precision


def targets_for(diffusion_model: torch.nn.Module, plan: TrainPlan) -> list[TargetLayer]:
    s = plan.settings
    targets = select_targets(diffusion_model, algorithm=s.algorithm, targets=s.targets, block_factor=plan.block_factor)
    if not targets:
        raise TrainSettingsError(f"targets '{s.targets}' {('(' + s.target_blocks + ') ') if s.target_blocks else ''}"
                                 "select no layer of this model.", "select other targets or blocks.")
    missing = [t.name for t in targets if f"diffusion_model.{t.name}.weight" not in plan.kohya_names]
    if missing:
        raise TrainSettingsError(f"{len(missing)} target layer(s) have no LoRA name in ComfyUI's key map, e.g. "
                                 f"{missing[0]}.", "use targets 'attention+mlp'.")
    check_rank(targets, s.rank)
    return targets


def _dataset(patcher, vae, plan: TrainPlan) -> Dataset:
    latents, flipped = [], []
    for im, (w, h) in zip(plan.images, plan.sizes):
        pixels = fit_image(im.pixels, w, h)
        latents.append(host.encode_latents(patcher, vae, pixels))
        flipped.append(host.encode_latents(patcher, vae, pixels.flip(1)) if plan.settings.flip else None)
    return Dataset(latents, flipped, [im.caption for im in plan.images], list(plan.sizes))


def run_training(model, clip, vae, plan: TrainPlan, *, after_step: Callable[[int, float], None] | None = None,
                 cancelled: Callable[[], bool] = host.interrupted) -> TrainResult:
    """Train as ``plan`` says; see the module docstring. ``after_step``/``cancelled`` are for tests."""
    s = plan.settings
    started = time.time()
    patcher = host.training_patcher(model)
    diffusion = patcher.model.diffusion_model
    device = patcher.load_device
    targets = targets_for(diffusion, plan)
    start_step = plan.resume.step if plan.resume is not None else 0
    base_sha = tensor_sha256(sorted(diffusion.state_dict().items()))
    encode_text = host.CaptionEncoder(clip)
    data = _dataset(patcher, vae, plan)
    positive = host.conditioning(clip, s.preview_prompt) if s.preview_every else None
    negative = host.conditioning(clip, "") if s.preview_every else None
    size_note = ", ".join(f"{w}x{h}: {plan.sizes.count((w, h))}" for w, h in sorted(set(plan.sizes)))
    tags = tag_frequency([im.caption for im in plan.images])

    with torch.inference_mode(False):
        network = LoraNetwork(targets, s.rank, s.alpha, s.seed, device=device)
        trainer = Trainer(s, network, data, patcher.model.model_sampling, host.denoiser(patcher), encode_text,
                          device=torch.device(device) if not isinstance(device, torch.device) else device)
        if plan.resume is not None:
            network.load_master_state(plan.resume.master_state)
            load_optimizer_state(trainer.optimizer, plan.resume.optimizer_tensors, plan.resume.optimizer_json)
        result = TrainResult(saved=None, weights={}, losses=trainer.losses, start_step=start_step,
                             prediction=prediction_type(patcher.model.model_sampling), targets=targets)
        progress = host.Progress(s.steps)
        progress.update(start_step)

        def weights_now() -> dict[str, LoraWeights]:
            return {plan.kohya_names[f"diffusion_model.{layer.name}.weight"]: layer.weights()
                    for layer in network.layers}

        def save(path: Path, step: int) -> SavedCheckpoint:
            opt_tensors, opt_json = optimizer_state(trainer.optimizer)
            meta = training_metadata(s, step=step, family=plan.family, num_images=len(plan.images),
                                     tag_frequency=tags, base_model=plan.base_model, base_sha256=base_sha,
                                     started_at=started, resolution_info=size_note,
                                     extra={"lora_lab.train.prediction": result.prediction,
                                            "lora_lab.train.targets": str(len(targets))})
            saved = save_checkpoint(path, weights=weights_now(), master_state=network.master_state(),
                                    optimizer_tensors=opt_tensors, optimizer_json=opt_json, metadata=meta,
                                    step=step, precision=s.save_precision)
            log.info("LoRA Lab: saved %s at step %d", path.name, step)
            return saved

        def preview() -> torch.Tensor:
            return host.sample_image(patcher, vae, positive, negative, seed=s.preview_seed, steps=s.preview_steps,
                                     width=s.resolution, height=s.resolution)

        def on_step(step: int, loss: float) -> None:
            image = None
            if s.preview_every and (step % s.preview_every == 0 or step == s.steps):
                image = preview()
                result.previews.append((step, image))
                if step == s.steps:
                    result.final_preview = image
            progress.update(step, image)
            if s.save_every and step % s.save_every == 0 and step != s.steps:
                result.checkpoints.append(save(plan.checkpoint_path(step), step))
            if after_step is not None:
                after_step(step, loss)

        done = start_step
        interrupt = host.interrupt_exception()
        with network.attached(), checkpointed(unet_blocks(diffusion), s.gradient_checkpointing):
            try:
                def track(step: int, loss: float) -> None:
                    nonlocal done
                    done = step
                    on_step(step, loss)

                trainer.run(start_step, s.steps, should_stop=cancelled, after_step=track)
                if s.preview_every and result.final_preview is None:
                    result.final_preview = preview()
                    result.previews.append((s.steps, result.final_preview))
            except (TrainingCancelled, interrupt):
                if done > start_step or plan.resume is None:
                    result.checkpoints.append(save(plan.checkpoint_path(done), done))
                log.info("LoRA Lab: training cancelled after step %d; resumable checkpoint %s", done,
                         plan.checkpoint_path(done).name)
                host.raise_interrupt()
        result.saved = save(plan.output_path, s.steps)
        result.weights = weights_now()
    result.seconds = time.time() - started
    return result
