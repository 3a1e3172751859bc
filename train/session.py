"""One training run on a host's model, from checked inputs to a saved, resumable adapter.

:func:`run_training` ties the host-free parts (data, network, loop, checkpoint) to the host it is handed
(:class:`train.host_api.TrainHost`): it has the host load the model (and the text encoders to train),
encodes the images, attaches the adapters to the model for the run only, trains, makes previews with the
host's sampler while the adapters are attached, saves at ``save_every`` and at the end, and on cancel saves
a resumable checkpoint before raising the host's interrupt. Inputs are checked before this runs
(``prepare`` on the node side): nothing here is a bad-input error except what only the model can tell (a
rank larger than a layer, targets that match nothing).

Before a half-precision save, the rounding is measured where it shows: the last preview is rendered again
with the adapters' values rounded to the save precision, and a change of more than
``PRECISION_WARN_LEVELS`` 8-bit levels is warned about (in the log and the report) before the file is
written, naming the layers whose delta changes most.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..lora_ops.adapters import AdapterBase, DropoutRates
from .checkpoint import (SAVE_DTYPES, PrecisionReport, ResumeState, SavedCheckpoint, precision_check,
                         save_checkpoint, tensor_sha256, training_metadata)
from .data import cover_crop, fit_image, tag_frequency
from .host_api import ImageSize, TrainHost, TrainModel
from .loop import Dataset, Trainer, TrainingCancelled, load_optimizer_state, optimizer_state
from .network import AdapterNetwork, TargetLayer, block_modules, check_rank, checkpointed, select_targets
from .objective import prediction_type
from .parity import image_difference
from .settings import TrainSettings, TrainSettingsError

log = logging.getLogger(__name__)

PRECISION_WARN_LEVELS = 1
"""A save precision that moves the last preview by more than this many 8-bit levels is warned about."""
PRECISION_WARN_DELTA = 2.0**-8
"""Without previews: a layer whose merged delta changes by more than this (relative) is warned about."""


@dataclass
class TrainPlan:
    """Everything checked before training starts."""

    settings: TrainSettings
    images: list
    sizes: list[tuple[int, int]]
    family: str
    kohya_names: dict[str, str]            # host weight key -> module name in the saved file
    output_path: Path
    checkpoint_path: Callable[[int], Path]  # step -> path of a save_every / cancel checkpoint
    base_model: str = ""
    block_factor: Callable[[str], float] | None = None
    resume: ResumeState | None = None
    notes: list[str] = field(default_factory=list)
    size_conditioning: bool = True         # pass each image's size and crop (SDXL reads them, others not)


@dataclass
class TrainResult:
    saved: SavedCheckpoint
    weights: dict[str, AdapterBase]
    losses: list[float]
    start_step: int
    previews: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    final_preview: torch.Tensor | None = None
    checkpoints: list[SavedCheckpoint] = field(default_factory=list)
    prediction: str = ""
    targets: list[TargetLayer] = field(default_factory=list)
    seconds: float = 0.0
    parity: dict = field(default_factory=dict)
    precision_levels: int | None = None     # the rounded save's preview against the last preview
    warnings: list[str] = field(default_factory=list)
    clipped_steps: int = 0
    skipped_steps: int = 0

    @property
    def precision(self) -> PrecisionReport:
        return self.saved.precision


def targets_for(hm: TrainModel, plan: TrainPlan) -> list[TargetLayer]:
    """The diffusion model's targets, then the text encoders' (attention and MLP layers, as kohya)."""
    s = plan.settings
    targets = select_targets(hm.diffusion_model, algorithm=s.algorithm, targets=s.targets,
                             block_factor=plan.block_factor)
    if not targets:
        raise TrainSettingsError(f"targets '{s.targets}' {('(' + s.target_blocks + ') ') if s.target_blocks else ''}"
                                 "select no layer of this model.", "select other targets or blocks.")
    encoders = s.text_encoder_names
    if encoders:
        known = hm.text_encoders()
        unknown = [n for n in encoders if n not in known]
        if unknown or hm.text_model is None:
            raise TrainSettingsError(f"text_encoders names {', '.join(unknown or encoders)}, which this CLIP "
                                     "does not have.",
                                     f"name some of: {', '.join(known) or '(none)'}, or leave it empty.")
        targets += select_targets(hm.text_model, algorithm=s.algorithm, targets="attention+mlp",
                                  key_prefix="", name_prefix="text_encoders.",
                                  only=lambda path: path.split(".")[0] in encoders)
    missing = [t.name for t in targets if t.key not in plan.kohya_names]
    if missing:
        raise TrainSettingsError(f"{len(missing)} target layer(s) have no LoRA name in the host's key map, "
                                 f"e.g. {missing[0]}.", "use targets 'attention+mlp'.")
    check_rank(targets, s.rank, s.algorithm)
    if s.dora:
        quantized = [t.name for t in targets if t.module.weight.element_size() == 1]
        if quantized:
            raise TrainSettingsError(
                f"dora needs the weights' row norms, and {len(quantized)} target layer(s) hold 8-bit weights "
                f"(e.g. {quantized[0]}).", "train DoRA on an fp32/fp16/bf16 checkpoint, or turn dora off.")
    return targets


def encode_dataset(hm: TrainModel, plan: TrainPlan) -> Dataset:
    """The plan's images fitted to their sizes and encoded (and mirrored, with ``flip``), with their captions
    and size conditioning."""
    latents, flipped, sizes = [], [], []
    for im, (w, h) in zip(plan.images, plan.sizes):
        pixels = fit_image(im.pixels, w, h)
        latents.append(hm.encode_image(pixels))
        flipped.append(hm.encode_image(pixels.flip(1)) if plan.settings.flip else None)
        if plan.size_conditioning:
            ow, oh = im.size
            _, _, top, left = cover_crop(ow, oh, w, h)
            sizes.append(ImageSize(original=(ow, oh), crop=(top, left), target=(w, h)))
    return Dataset(latents, flipped, [im.caption for im in plan.images], list(plan.sizes), sizes)


@contextlib.contextmanager
def rounded(network: AdapterNetwork, precision: str) -> Iterator[None]:
    """The network's parameters rounded to ``precision`` for the block (what a save at it holds)."""
    dtype = SAVE_DTYPES[precision]
    backup = [(p, p.detach().clone()) for p in network.parameters()]
    try:
        with torch.no_grad():
            for p, _ in backup:
                p.copy_(p.to(dtype).float())
        yield
    finally:
        with torch.no_grad():
            for p, value in backup:
                p.copy_(value)


def run_training(model, clip, vae, plan: TrainPlan, *, host: TrainHost,
                 after_step: Callable[[int, float], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> TrainResult:
    """Train as ``plan`` says on ``host``; see the module docstring (``after_step``, ``cancelled``: tests)."""
    s = plan.settings
    started = time.time()
    hm = host.load(model, clip, vae, text_encoders=s.text_encoder_names)
    targets = targets_for(hm, plan)
    start_step = plan.resume.step if plan.resume is not None else 0
    base_sha = tensor_sha256(sorted(hm.diffusion_model.state_dict().items()))
    data = encode_dataset(hm, plan)
    size_note = ", ".join(f"{w}x{h}: {plan.sizes.count((w, h))}" for w, h in sorted(set(plan.sizes)))
    tags = tag_frequency([im.caption for im in plan.images])
    names = {t.name: plan.kohya_names[t.key] for t in targets}
    shapes = {names[t.name]: t.shape for t in targets}
    modules = {names[t.name]: t.module for t in targets}

    def base(name: str) -> torch.Tensor:
        return modules[name].weight.detach().float().cpu()

    with torch.inference_mode(False):
        network = AdapterNetwork(targets, s.rank, s.alpha, s.seed, algorithm=s.algorithm, dora=s.dora,
                                 rates=DropoutRates(*s.dropouts), device=hm.device)
        trainer = Trainer(s, network, data, hm.model_sampling, hm.denoise, hm.encode_caption,
                          device=hm.device)
        if plan.resume is not None:
            network.load_master_state(plan.resume.master_state)
            load_optimizer_state(trainer.optimizer, plan.resume.optimizer_tensors, plan.resume.optimizer_json,
                                 trainer.scaler)
        result = TrainResult(saved=None, weights={}, losses=trainer.losses, start_step=start_step,
                             prediction=prediction_type(hm.model_sampling), targets=targets)
        progress = host.progress(s.steps)
        progress.update(start_step)

        def weights_now() -> dict[str, AdapterBase]:
            return {names[layer.name]: layer.weights() for layer in network.layers}

        def save(path: Path, step: int, report: PrecisionReport | None = None) -> SavedCheckpoint:
            opt_tensors, opt_json = optimizer_state(trainer.optimizer, trainer.scaler)
            meta = training_metadata(s, step=step, family=plan.family, num_images=len(plan.images),
                                     tag_frequency=tags, base_model=plan.base_model, base_sha256=base_sha,
                                     started_at=started, resolution_info=size_note,
                                     extra={"lora_lab.train.prediction": result.prediction,
                                            "lora_lab.train.targets": str(len(targets))})
            weights = weights_now()
            if report is None:
                report = precision_check(weights, s.save_precision, shapes=shapes, base=base)
            saved = save_checkpoint(path, weights=weights, master_state=network.master_state(),
                                    optimizer_tensors=opt_tensors, optimizer_json=opt_json, metadata=meta,
                                    step=step, precision=s.save_precision, report=report)
            log.info("LoRA Lab: saved %s at step %d", path.name, step)
            return saved

        def preview() -> torch.Tensor:
            return hm.preview(s.preview_prompt, seed=s.preview_seed, steps=s.preview_steps,
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
        stop = cancelled if cancelled is not None else host.interrupted
        by_module = {id(t.module): list(layer.params.values()) for t, layer in zip(targets, network.layers)}

        def params_in(block: torch.nn.Module) -> list[torch.nn.Parameter]:
            return [p for m in block.modules() for p in by_module.get(id(m), [])]

        blocks = block_modules(hm.diffusion_model)
        with hm.training(), network.attached(), checkpointed(blocks, s.gradient_checkpointing, params_in):
            try:
                def track(step: int, loss: float) -> None:
                    nonlocal done
                    done = step
                    on_step(step, loss)

                trainer.run(start_step, s.steps, should_stop=stop, after_step=track)
                if s.preview_every and result.final_preview is None:
                    result.final_preview = preview()
                    result.previews.append((s.steps, result.final_preview))
            except (TrainingCancelled, interrupt):
                if done > start_step or plan.resume is None:
                    result.checkpoints.append(save(plan.checkpoint_path(done), done))
                log.info("LoRA Lab: training cancelled after step %d; resumable checkpoint %s", done,
                         plan.checkpoint_path(done).name)
                host.raise_interrupt()
            report = precision_check(weights_now(), s.save_precision, shapes=shapes, base=base)
            if s.save_precision != "fp32" and not report.overflow:
                if result.final_preview is not None:
                    with rounded(network, s.save_precision):
                        result.precision_levels = image_difference(preview(), result.final_preview).max_levels
                warning = precision_warning(report, result.precision_levels)
                if warning:
                    log.warning("LoRA Lab: %s", warning)
                    result.warnings.append(warning)
        result.saved = save(plan.output_path, s.steps, report)
        result.weights = weights_now()
        result.clipped_steps, result.skipped_steps = trainer.clipped_steps, trainer.skipped_steps
    result.seconds = time.time() - started
    return result


def precision_warning(report: PrecisionReport, levels: int | None) -> str | None:
    """The warning for a save precision that changes the result, naming the layers it changes most."""
    if levels is not None:
        if levels <= PRECISION_WARN_LEVELS:
            return None
        return (f"saving in {report.precision} changes the last preview by up to {levels} levels of 255 "
                f"(more than {PRECISION_WARN_LEVELS}); the layers whose delta changes most: "
                f"{report.worst(5)}. Save in fp32 to keep what the previews showed.")
    bad = [(n, e) for n, e in report.layers if e > PRECISION_WARN_DELTA]
    if not bad:
        return None
    worst = ", ".join(f"{n} ({e:.2g})" for n, e in bad[:5])
    return (f"saving in {report.precision} changes the delta of {len(bad)} layer(s) by more than 1/256 "
            f"(relative), e.g. {worst}; with previews on, the change is measured in the image. Save in fp32 "
            "to keep the trained values exactly.")
