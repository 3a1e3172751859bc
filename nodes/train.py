"""``LoraLabTrain``: train a LoRA/LoCon/LoHa/LoKr (optionally DoRA) on the model in the graph, save it where
loaders look, prove the file reproduces the previews.

The node checks every input first (:func:`prepare`: nothing is written before training starts), runs
``train.session.run_training`` with ComfyUI as its host (``nodes.train_host``), then loads the saved file
back through ``LoraLabLoader``'s path and through core ``LoraLoader`` and renders the last preview's prompt
and seed with both, to report how far each is from the live-adapter preview (:func:`parity`). Its MODEL
(and, when a text encoder was trained, CLIP) output is the saved file applied through ``LoraLabLoader``'s
path.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import folder_paths
import torch

from ..lora_ops.chart import line_chart, stack, text_panel
from ..lora_ops.errors import LoraLabError
from ..lora_ops.families import family_label
from ..lora_ops.plan import load_lora
from ..train.checkpoint import STATE_SUFFIX, read_checkpoint
from ..train.data import TrainDataError, assign_sizes, images_from_batch, images_from_folder
from ..train.parity import image_difference
from ..train.session import TrainPlan, TrainResult, run_training
from ..train.settings import (ALGORITHMS, MAX_RANK, MAX_STEPS, OPTIMIZERS, SAVE_PRECISIONS, SCHEDULES, TARGETS,
                              TRAINING_DTYPES, TrainSettings, TrainSettingsError)
from . import bridge, notices, sampling, train_host
from .changes import inputs_fingerprint
from .lora_files import lora_output_path, output_stem
from .images import image_tensor
from .lora_files import resolve_lora_path
from .planning import apply_lora, model_family_of, resolve_block_weights

log = logging.getLogger(__name__)

TRAINABLE_MODELS = {"SD15": "SD1.x", "SDXL": "SDXL", "Flux": "Flux", "FluxSchnell": "Flux schnell",
                    "Chroma": "Chroma", "ZImage": "Z-Image", "WAN21_T2V": "Wan T2V"}
"""ComfyUI config classes LoraLabTrain trains (each tested on a small model of its kind) -> their names."""
NO_RESUME = "none"


IMAGE_FOLDERS_ENV = "LORA_LAB_TRAIN_FOLDERS"
"""Environment variable: extra folders (``os.pathsep``-separated absolute paths) that ``image_folder`` may
name, for an admin who keeps datasets outside ComfyUI's input folder. Unset: the input folder only."""


def image_folder_roots() -> list[Path]:
    """The folders ``image_folder`` may lie in: ComfyUI's input folder and :data:`IMAGE_FOLDERS_ENV`'s."""
    roots = [Path(os.path.realpath(folder_paths.get_input_directory()))]
    for entry in os.environ.get(IMAGE_FOLDERS_ENV, "").split(os.pathsep):
        if entry.strip() and os.path.isabs(entry.strip()):
            roots.append(Path(os.path.realpath(entry.strip())))
    return roots


def resolve_image_folder(text: str) -> tuple[Path, list[Path]]:
    """``image_folder`` as a real path inside an allowed root (:func:`image_folder_roots`), and the roots.

    Relative names are taken inside ComfyUI's input folder. Refused, before anything is looked up on disk
    (so a prompt cannot probe which paths exist): ``~``, any ``..`` part, control characters, and a path
    whose real location (links followed) is outside every allowed root.
    """
    text = text.strip()
    roots = image_folder_roots()
    input_dir = roots[0]
    fix = (f"put the images (each with a .txt caption) in a folder inside ComfyUI's input folder ({input_dir}) and "
           f"give its name, e.g. 'my_dataset'; an admin can allow more folders with {IMAGE_FOLDERS_ENV}.")
    if any(ord(c) < 32 for c in text) or text.startswith("~") or ".." in re.split(r"[\\/]", text):
        raise TrainDataError(f"image_folder {text[:200]!r} is not a plain folder path (no '~', no '..').", fix)
    path = Path(text)
    if not path.is_absolute():
        path = input_dir / path
    real = Path(os.path.realpath(path))
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise TrainDataError(f"image_folder {text[:200]!r} is outside ComfyUI's input folder.", fix)
    return real, roots


def earlier_run_files(stem: str) -> list[Path]:
    """Files a run named ``stem`` writes besides ``<stem>.safetensors`` (``<stem>-stepNNNNNN.safetensors``,
    state files), found in any loras folder."""
    found = []
    for folder in folder_paths.get_folder_paths("loras"):
        pattern = os.path.join(glob.escape(folder), glob.escape(stem))
        names = glob.glob(pattern + "-step*.safetensors") + glob.glob(pattern + "-step*" + STATE_SUFFIX)
        state = os.path.join(folder, stem + STATE_SUFFIX)
        names += [state] if os.path.lexists(state) else []
        found += sorted(Path(n) for n in names)
    return found


def checkpoint_path_fn(output_path: Path):
    stem = output_path.name[: -len(".safetensors")]
    return lambda step: output_path.with_name(f"{stem}-step{step:06d}.safetensors")


@dataclass(frozen=True)
class OwnRun:
    """Whether ``resume_from`` is a file of the run named ``output_name`` in the first loras folder:
    its final file (``final``) or any of its files (``checkpoint``)."""

    final: bool = False
    checkpoint: bool = False


def own_run_files(output_name: str, resume_path: Path | None) -> OwnRun:
    if resume_path is None:
        return OwnRun()
    try:
        stem = output_stem(output_name)
    except LoraLabError:
        return OwnRun()  # the name is refused with its own message below
    folders = folder_paths.get_folder_paths("loras")
    if not folders or os.path.realpath(resume_path.parent) != os.path.realpath(folders[0]):
        return OwnRun()
    name = resume_path.name
    final = name == f"{stem}.safetensors"
    step_file = re.fullmatch(re.escape(stem) + r"-step\d+\.safetensors", name)
    return OwnRun(final=final, checkpoint=final or step_file is not None)


def text_encoder_names(clip) -> list[str]:
    """The text encoders of ``clip`` that can be trained (``clip_l``, ``clip_g``, ``t5xxl``, ``qwen3_4b``...)."""
    if clip is None:
        return []
    return [name for name, child in clip.cond_stage_model.named_children() if any(True for _ in child.parameters())]


def check_text_encoders(clip, settings: TrainSettings) -> None:
    wanted = settings.text_encoder_names
    if not wanted:
        return
    known = text_encoder_names(clip)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise TrainSettingsError(f"text_encoders names {', '.join(unknown)}, which the connected CLIP does not have.",
                                 f"name some of: {', '.join(known) or '(none: connect the CLIP)'}, or leave it empty "
                                 "to train the diffusion model only.")


def prepare(model, settings: TrainSettings, *, images=None, captions: str = "", image_folder: str = "",
            resume_from: str = NO_RESUME, overwrite: bool = False, clip=None) -> TrainPlan:
    """Check every input and return the plan; raises a :class:`LoraLabError` and writes nothing otherwise.
    ``clip``: needed when ``settings.text_encoders`` names encoders to train."""
    resume, notes, resume_path = None, [], None
    if resume_from and resume_from != NO_RESUME:
        resume_path = Path(resolve_lora_path(resume_from))
        resume = read_checkpoint(resume_path)
        settings = settings.resumed(resume.settings)
        if settings.steps <= resume.step:
            raise TrainSettingsError(f"'{resume_from}' has already been trained for {resume.step} steps; steps is "
                                     f"{settings.steps}.", f"set steps above {resume.step} to train on.")
        if settings.steps > settings.schedule_steps:
            # Training on past the end of a finished run: stretch the schedule instead of training at LR 0.
            notes.append(f"the LR schedule now ends at step {settings.steps} (it ended at {settings.schedule_steps})")
            settings.schedule_steps = settings.steps
    settings.validate()
    family = model_family_of(model)
    own_class = bridge.model_lineage(model)[0]
    if own_class not in TRAINABLE_MODELS:
        names = ", ".join(dict.fromkeys(TRAINABLE_MODELS.values()))
        raise LoraLabError(f"LoraLabTrain trains {names} models; this model is {bridge.model_name(model)}.",
                           f"connect a checkpoint of one of those ({names}) or train this model with another "
                           "trainer.")
    check_text_encoders(clip, settings)
    if images is not None and image_folder.strip():
        raise TrainDataError("Both an IMAGE batch and image_folder are given.",
                             "connect images (with captions) or set image_folder, not both.")
    if images is not None or not image_folder.strip():
        train_images = images_from_batch(images, captions)
    else:
        folder, roots = resolve_image_folder(image_folder)
        train_images = images_from_folder(folder, allowed_roots=roots)
    sizes = assign_sizes(train_images, settings.resolution, settings.buckets)
    if resume is not None and resume.metadata.get("ss_num_train_images") not in (None, str(len(train_images))):
        notes.append(f"the checkpoint was trained on {resume.metadata['ss_num_train_images']} images, this run has "
                     f"{len(train_images)}")

    own = own_run_files(settings.output_name, resume_path)
    # Resuming a run under its own name (what the cancel message suggests) replaces that run's files.
    output_path = lora_output_path(settings.output_name, overwrite=overwrite or own.final)
    settings.output_name = output_path.name[: -len(".safetensors")]
    checkpoint_path = checkpoint_path_fn(output_path)
    stale = earlier_run_files(settings.output_name)
    if stale and not overwrite and not own.checkpoint:
        raise LoraLabError(f"Files of an earlier run named '{settings.output_name}' are in the loras folder "
                           f"(e.g. {stale[0].name} in {stale[0].parent}).",
                           "pick another output name, or enable overwrite.")
    foreign = [p for p in stale if os.path.realpath(p.parent) != os.path.realpath(output_path.parent)]
    if foreign:
        raise LoraLabError(f"Files of an earlier run named '{settings.output_name}' are in the loras folder "
                           f"{foreign[0].parent} (e.g. {foreign[0].name}); this run's checkpoints would hide them.",
                           "pick another output name (overwrite replaces only files in the first loras folder).")
    block_factor = None
    if settings.targets == "block selection":
        block_factor = resolve_block_weights(settings.target_blocks, model).factor
    te_clip = clip if settings.text_encoder_names else None
    return TrainPlan(settings=settings, images=train_images, sizes=sizes, family=family,
                     kohya_names=bridge.kohya_names_for(model, te_clip, family), output_path=output_path,
                     checkpoint_path=checkpoint_path, base_model=type(model.model.model_config).__name__,
                     block_factor=block_factor, resume=resume, notes=notes)


def parity(model, clip, vae, saved_path: Path, lora, settings: TrainSettings, live: torch.Tensor):
    """Images from the saved file through LoraLabLoader's path and core LoraLoader, each against ``live``
    (the text encoders patched too when the run trained them)."""
    import comfy.sd  # noqa: PLC0415
    import comfy.utils  # noqa: PLC0415

    strength_clip = 1.0 if settings.text_encoder_names else 0.0
    te_clip = clip if settings.text_encoder_names else None
    kwargs = dict(seed=settings.preview_seed, steps=settings.preview_steps)

    def render(patcher, text_clip):
        latent_shape = train_host.latent_shape(patcher, vae, settings.resolution, settings.resolution)
        return train_host.render(patcher, vae, sampling.encode_prompt(text_clip, settings.preview_prompt),
                                 sampling.encode_prompt(text_clip, ""), latent_shape=latent_shape, **kwargs)

    applied = apply_lora(model, te_clip, lora, 1.0, strength_clip)
    lab_image = render(applied.model, applied.clip if te_clip is not None else clip)
    core_sd = comfy.utils.load_torch_file(str(saved_path), safe_load=True)
    core_model, core_clip = comfy.sd.load_lora_for_models(model, te_clip, core_sd, 1.0, strength_clip)
    core_keys = len(set(core_model.patches) - set(model.patches))
    if te_clip is not None:
        core_keys += len(set(core_clip.patcher.patches) - set(te_clip.patcher.patches))
    core_image = render(core_model, core_clip if te_clip is not None else clip)
    lines = [f"parity (prompt '{settings.preview_prompt}', seed {settings.preview_seed}, "
             f"{train_host.PREVIEW_SAMPLER}, {settings.preview_steps} steps, cfg {train_host.preview_cfg(model):g}) "
             "against the last live-adapter preview:",
             f"  saved file through LoraLabLoader: {image_difference(lab_image, live).text()}",
             f"  saved file through core LoraLoader ({core_keys} weights patched): "
             f"{image_difference(core_image, live).text()}"]
    if settings.dora:
        lines.append("  (core ComfyUI normalises a DoRA layer by the norm of the weight before the LoRA, LyCORIS, "
                     "PEFT and LoRA Lab by that of the weight with it, so core's image may differ)")
    return applied, {"lora_lab": lab_image, "core": core_image, "core_keys": core_keys}, lines


def report_lines(plan: TrainPlan, result: TrainResult) -> list[str]:
    s = plan.settings
    kinds: dict[str, int] = {}
    for t in result.targets:
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
    losses = result.losses
    te = sum(t.name.startswith("text_encoders.") for t in result.targets)
    label = TRAINABLE_MODELS.get(plan.base_model, family_label(plan.family))
    lines = [f"trained {s.algorithm}{' + DoRA' if s.dora else ''} rank {s.rank} alpha {s.alpha:g} on "
             f"{len(result.targets)} layers ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}"
             f"{f'; {te} in the text encoders {s.text_encoders}' if te else ''}) of a {label} model, "
             f"loss on its {result.prediction} prediction",
             f"steps {result.start_step + 1}-{s.steps} in {result.seconds:.1f} s, {len(plan.images)} images"
             + (f"; resumed from step {result.start_step}" if result.start_step else "")]
    if any(s.dropouts):
        lines.append(f"dropout {s.dropout:g}, rank dropout {s.rank_dropout:g}, module dropout {s.module_dropout:g} "
                     "(while training only; previews and the file have none)")
    if s.max_grad_norm:
        lines.append(f"gradient norm clipped to {s.max_grad_norm:g} in {result.clipped_steps} step(s)")
    if s.training_dtype == "fp16":
        lines.append(f"fp16 with loss scaling: {result.skipped_steps} step(s) skipped for overflowing gradients")
    if losses:
        lines.append(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}, mean of the last "
                     f"{min(10, len(losses))} {sum(losses[-10:]) / min(10, len(losses)):.4f}")
    lines += [f"note: {n}" for n in plan.notes]
    lines += [f"warning: {w}" for w in result.warnings]
    lines.append(f"saved {result.saved.path.name} (state: {result.saved.state_path.name})")
    lines.append(result.precision.text())
    if result.precision_levels is not None:
        lines.append(f"  the last preview with the {s.save_precision}-rounded values: {result.precision_levels} "
                     "level(s) of 255 from the fp32 one")
    for c in result.checkpoints:
        lines.append(f"checkpoint at step {c.step}: {c.path.name}")
    return lines


def preview_batch(result: TrainResult, settings: TrainSettings) -> torch.Tensor:
    if result.previews:
        return torch.cat([image for _, image in result.previews])
    return image_tensor(text_panel(["previews are off (preview_every = 0)"], width=max(settings.resolution, 256)))


ADVANCED_INPUTS = frozenset({
    "target_blocks", "lr_schedule", "warmup_steps", "optimizer", "gradient_accumulation", "buckets", "caption_dropout",
    "shuffle_captions", "flip", "noise_offset", "min_snr_gamma", "seed", "training_dtype", "gradient_checkpointing",
    "preview_seed", "preview_steps", "save_every", "save_precision", "overwrite", "dropout", "rank_dropout",
    "module_dropout", "text_encoders", "text_encoder_lr", "max_grad_norm"})
"""Inputs the page groups under "advanced" (hidden until shown; their defaults suit a first run)."""


def with_advanced(inputs: dict) -> dict:
    """``INPUT_TYPES`` with ``advanced: True`` in the options of :data:`ADVANCED_INPUTS` (the page's own flag)."""
    for name, spec in inputs["required"].items():
        if name in ADVANCED_INPUTS:
            inputs["required"][name] = (spec[0], {**(spec[1] if len(spec) > 1 else {}), "advanced": True})
    return inputs


class LoraLabTrain:
    """Train a LoRA / LoCon / LoHa / LoKr (optionally DoRA) on the connected model from images and captions."""

    DESCRIPTION = ("Trains a LoRA, LoCon, LoHa or LoKr (optionally DoRA) on the connected SD1.x, SDXL, Flux, Chroma, "
                   "Z-Image or Wan T2V model (and optionally its text encoders) from images and captions: loss on "
                   "the model's own prediction, LR schedule with warm-up, seeded, fp32 master weights, previews "
                   "with ComfyUI's sampler, kohya-format file with metadata in the loras folder, resumable after "
                   "cancel, and a parity check of the saved file against the previews.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "train"
    RETURN_TYPES = ("MODEL", "LORA", "IMAGE", "STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("MODEL", "lora", "loss_curve", "path", "previews", "report")
    OUTPUT_NODE = True

    @classmethod
    def IS_CHANGED(cls, **inputs):
        """The content of the files this node reads (``nodes.changes``): a changed file re-runs the node."""
        return inputs_fingerprint(inputs)

    @classmethod
    def INPUT_TYPES(cls):
        loras = [NO_RESUME] + folder_paths.get_filename_list("loras")
        return with_advanced({
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP", {"tooltip": "Encodes the captions and the preview prompt (not trained)."}),
                "vae": ("VAE", {"tooltip": "Encodes the training images and decodes the previews."}),
                "captions": ("STRING", {"default": "", "multiline": True,
                                        "tooltip": "One caption per line, one line per image of 'images'."}),
                "image_folder": ("STRING", {"default": "", "tooltip": "Instead of 'images': a folder inside ComfyUI's "
                                            "input folder (its name, e.g. 'my_dataset') of images, each with a .txt "
                                            "caption. Folders elsewhere only if the server's admin lists them in "
                                            "LORA_LAB_TRAIN_FOLDERS."}),
                "output_name": ("STRING", {"default": "my_lora", "tooltip": "File name in the loras folder."}),
                "rank": ("INT", {"default": 8, "min": 1, "max": MAX_RANK}),
                "alpha": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 4096.0, "step": 0.5,
                                    "tooltip": "The LoRA's scale is alpha / rank."}),
                "algorithm": (list(ALGORITHMS), {"default": "lora", "tooltip": "lora: Linear and 1x1 conv layers; "
                                                 "locon: also convs with larger kernels; loha (Hadamard product) and "
                                                 "lokr (Kronecker product): LyCORIS' kinds, on Linear and conv layers."}),
                "targets": (list(TARGETS), {"default": "attention+mlp"}),
                "target_blocks": ("STRING", {"default": "", "tooltip":
                                             "With targets 'block selection': block-weights syntax; blocks with a "
                                             "weight other than 0 are trained, e.g. 'OUT*=1, *=0'."}),
                "steps": ("INT", {"default": 500, "min": 1, "max": MAX_STEPS}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 0.0, "max": 1.0, "step": 1e-6}),
                "lr_schedule": (list(SCHEDULES), {"default": "constant"}),
                "warmup_steps": ("INT", {"default": 0, "min": 0, "max": MAX_STEPS}),
                "optimizer": (list(OPTIMIZERS), {"default": "AdamW"}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 256}),
                "gradient_accumulation": ("INT", {"default": 1, "min": 1, "max": 1024}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
                "buckets": ("BOOLEAN", {"default": False, "tooltip": "Aspect-ratio buckets for images of mixed shapes."}),
                "caption_dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01}),
                "shuffle_captions": ("BOOLEAN", {"default": False, "tooltip": "Shuffle comma-separated tags after the "
                                                 "first (the trigger word stays first)."}),
                "flip": ("BOOLEAN", {"default": False, "tooltip": "Random horizontal flips."}),
                "noise_offset": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "min_snr_gamma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.5,
                                            "tooltip": "Min-SNR weighting; 0 is off, 5 is usual."}),
                # No "control after generate" (the page adds one to inputs named seed): a new seed per Run
                # would train again on every Run and then refuse the existing output name.
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                                 "tooltip": "Seeds the LoRA's init, the data order, flips, caption dropout and noise."}),
                "training_dtype": (list(TRAINING_DTYPES), {"default": "fp32", "tooltip": "Compute dtype of the model; "
                                                          "the LoRA's master weights are always fp32. fp16 scales the "
                                                          "loss (steps whose gradients overflow are skipped)."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False}),
                "preview_every": ("INT", {"default": 0, "min": 0, "max": MAX_STEPS,
                                          "tooltip": "Make a preview every N steps and at the end (0: none, and no "
                                                     "parity check)."}),
                "preview_prompt": ("STRING", {"default": "", "multiline": False}),
                "preview_seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "preview_steps": ("INT", {"default": 20, "min": 1, "max": 200}),
                "save_every": ("INT", {"default": 0, "min": 0, "max": MAX_STEPS,
                                       "tooltip": "Save a resumable checkpoint every N steps (0: only at the end)."}),
                "save_precision": (list(SAVE_PRECISIONS), {"default": "fp32", "tooltip": "fp32 saves exactly what the "
                                                          "previews used; fp16/bf16 are checked and reported."}),
                "resume_from": (loras, {"default": NO_RESUME, "tooltip": "A checkpoint LoraLabTrain saved; its step, "
                                        "optimizer state and settings are read from its metadata."}),
                "overwrite": ("BOOLEAN", {"default": False}),
                "dora": ("BOOLEAN", {"default": False, "tooltip": "DoRA: a trained magnitude per output channel "
                                     "beside the adapter (LyCORIS' dora_wd, PEFT's DoRA), saved as dora_scale."}),
                "dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip":
                                      "kohya's network_dropout: drops values of the adapter's inner activations "
                                      "while training (never in previews or the file)."}),
                "rank_dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip":
                                           "Drops whole rank channels (LoRA) or rows of the delta (LoHa/LoKr) per "
                                           "sample while training; kept ones are scaled by 1/(1-p)."}),
                "module_dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip":
                                             "Skips a layer's adapter for a whole step with this probability."}),
                "text_encoders": ("STRING", {"default": "", "tooltip": "Text encoders to train as well, by name "
                                             "(clip_l, clip_g, t5xxl, qwen3_4b, umt5xxl...); empty: the diffusion "
                                             "model only."}),
                "text_encoder_lr": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-6, "tooltip":
                                              "Learning rate of the text encoders' adapters (0: learning_rate)."}),
                "max_grad_norm": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1000.0, "step": 0.1, "tooltip":
                                            "Clip the gradient's norm to this (0: off; kohya's default is 1)."}),
            },
            "optional": {"images": ("IMAGE", {"tooltip": "Training images (captions one per line in 'captions')."})},
        })

    def train(self, model, clip, vae, captions, image_folder, output_name, rank, alpha, algorithm, targets,
              target_blocks, steps, learning_rate, lr_schedule, warmup_steps, optimizer, batch_size,
              gradient_accumulation, resolution, buckets, caption_dropout, shuffle_captions, flip, noise_offset,
              min_snr_gamma, seed, training_dtype, gradient_checkpointing, preview_every, preview_prompt,
              preview_seed, preview_steps, save_every, save_precision, resume_from, overwrite, dora=False, dropout=0.0,
              rank_dropout=0.0, module_dropout=0.0, text_encoders="", text_encoder_lr=0.0, max_grad_norm=0.0,
              images=None):
        settings = TrainSettings(
            output_name=output_name, rank=rank, alpha=alpha, algorithm=algorithm, targets=targets,
            target_blocks=target_blocks, steps=steps, learning_rate=learning_rate, lr_schedule=lr_schedule,
            warmup_steps=warmup_steps, optimizer=optimizer, batch_size=batch_size,
            gradient_accumulation=gradient_accumulation, resolution=resolution, buckets=buckets,
            caption_dropout=caption_dropout, shuffle_captions=shuffle_captions, flip=flip, noise_offset=noise_offset,
            min_snr_gamma=min_snr_gamma, seed=seed, training_dtype=training_dtype,
            gradient_checkpointing=gradient_checkpointing, preview_every=preview_every, preview_prompt=preview_prompt,
            preview_seed=preview_seed, preview_steps=preview_steps, save_every=save_every,
            save_precision=save_precision, dora=dora, dropout=dropout, rank_dropout=rank_dropout,
            module_dropout=module_dropout, text_encoders=text_encoders, text_encoder_lr=text_encoder_lr,
            max_grad_norm=max_grad_norm)
        plan = prepare(model, settings, images=images, captions=captions, image_folder=image_folder,
                       resume_from=resume_from, overwrite=overwrite, clip=clip)
        last_step = [plan.resume.step if plan.resume is not None else 0]
        try:
            return train_and_report(model, clip, vae, plan,
                                    after_step=lambda step, loss: last_step.__setitem__(0, step))[0]
        except train_host.ComfyTrainHost().interrupt_exception():
            notify_cancelled(plan, last_step[0])
            raise


def cancel_text(plan: TrainPlan, step: int) -> str | None:
    """What the page says after a cancel: the checkpoint it saved and how to continue (None: none saved)."""
    path = plan.checkpoint_path(step)
    if not path.is_file():
        return None
    return (f"Training '{plan.settings.output_name}' was cancelled after step {step} of {plan.settings.steps}. Saved "
            f"{path.name} in the loras folder: pick it in resume_from and run again to continue (same output name "
            "is fine).")


def notify_cancelled(plan: TrainPlan, step: int) -> None:
    text = cancel_text(plan, step)
    if text is not None:
        log.info("LoRA Lab: %s", text)
        notices.send("cancelled", text, saved=[plan.checkpoint_path(step).name])


def train_and_report(model, clip, vae, plan: TrainPlan, **session_kwargs) -> tuple[dict, TrainResult]:
    """Run the plan, check parity; the node's return value and the run's result (``session_kwargs``: tests)."""
    session_kwargs.setdefault("host", train_host.ComfyTrainHost())
    result = run_training(model, clip, vae, plan, **session_kwargs)
    s = plan.settings
    lora = load_lora(result.saved.path)
    lora.display_name = result.saved.path.name
    lines = report_lines(plan, result)
    if result.final_preview is not None:
        applied, images, parity_lines = parity(model, clip, vae, result.saved.path, lora, s, result.final_preview)
        lines += parity_lines
        result.parity = images
    else:
        te_clip = clip if s.text_encoder_names else None
        applied = apply_lora(model, te_clip, lora, 1.0, 1.0 if te_clip is not None else 0.0)
        lines.append("parity not checked: previews are off (preview_every = 0)")
    patched = len(applied.plan.model_entries) + (len(applied.plan.clip_entries) if s.text_encoder_names else 0)
    if patched != len(result.targets):
        raise LoraLabError(f"The saved file applies to {patched} of {len(result.targets)} trained layers.",
                           "report this as a bug in LoRA Lab.")
    report = "\n".join(lines)
    log.info("LoRA Lab: %s", report.replace("\n", " | "))
    chart = stack([line_chart(result.losses, title=f"training loss ({result.prediction} prediction)",
                              smooth=max(2, len(result.losses) // 20), x_start=result.start_step + 1)])
    outputs = (applied.model, lora, image_tensor(chart), str(result.saved.path), preview_batch(result, s), report)
    return {"ui": {"text": [report]}, "result": outputs}, result


NODE_CLASS_MAPPINGS = {"LoraLabTrain": LoraLabTrain}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabTrain": "LoRA Lab Train LoRA"}
