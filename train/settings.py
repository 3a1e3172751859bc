"""What a training run is: every setting in one dataclass, checked before anything runs.

:class:`TrainSettings` is what ``LoraLabTrain`` fills from its inputs, what a resumable checkpoint
stores in its metadata (``lora_lab.train.settings``, JSON) and what a resume reads back. Settings that
decide what is trained and how (rank, alpha, algorithm, targets, optimizer, schedule, data handling,
seed) come from the checkpoint on resume; settings about where the run goes next (``steps``, previews,
saves, precision, name) come from the node.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields

from ..lora_ops.errors import LoraLabError

ALGORITHMS = ("lora", "locon", "loha", "lokr")
TARGETS = ("attention", "attention+mlp", "all linear and conv", "block selection")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("AdamW", "Adam", "SGD", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam", "Adadelta")
TRAINING_DTYPES = ("fp32", "bf16", "fp16")
SAVE_PRECISIONS = ("fp32", "bf16", "fp16")

MAX_RANK = 1024
MAX_STEPS = 1_000_000

# Settings a resume takes from the checkpoint (the run's identity); the rest come from the node.
RUN_IDENTITY = ("rank", "alpha", "algorithm", "targets", "target_blocks", "learning_rate", "lr_schedule",
                "warmup_steps", "optimizer", "batch_size", "gradient_accumulation", "resolution", "buckets",
                "caption_dropout", "shuffle_captions", "flip", "noise_offset", "min_snr_gamma", "seed",
                "training_dtype", "schedule_steps", "dora", "dropout", "rank_dropout", "module_dropout",
                "text_encoders", "text_encoder_lr", "max_grad_norm")


class TrainSettingsError(LoraLabError):
    """A training setting is out of range or does not fit the model or the data."""


@dataclass
class TrainSettings:
    """One training run. ``schedule_steps`` is the horizon of the LR schedule (the first run's ``steps``)."""

    output_name: str = "my_lora"
    rank: int = 8
    alpha: float = 8.0
    algorithm: str = "lora"
    targets: str = "attention+mlp"
    target_blocks: str = ""
    steps: int = 500
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    optimizer: str = "AdamW"
    batch_size: int = 1
    gradient_accumulation: int = 1
    resolution: int = 512
    buckets: bool = False
    caption_dropout: float = 0.0
    shuffle_captions: bool = False
    flip: bool = False
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0
    seed: int = 0
    training_dtype: str = "fp32"
    gradient_checkpointing: bool = False
    preview_every: int = 0
    preview_prompt: str = ""
    preview_seed: int = 0
    preview_steps: int = 20
    save_every: int = 0
    save_precision: str = "fp32"
    schedule_steps: int = 0
    dora: bool = False
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    text_encoders: str = ""
    text_encoder_lr: float = 0.0
    max_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        if not self.schedule_steps:
            self.schedule_steps = self.steps

    @property
    def text_encoder_names(self) -> list[str]:
        """``text_encoders`` as a list (comma- or space-separated names: ``clip_l, clip_g``; empty: none)."""
        return [n for n in re.split(r"[,\s]+", self.text_encoders.strip()) if n]

    @property
    def dropouts(self) -> tuple[float, float, float]:
        """``(dropout, rank_dropout, module_dropout)``."""
        return self.dropout, self.rank_dropout, self.module_dropout

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainSettings:
        """Settings saved by :meth:`to_json`; unknown keys are ignored, a value of the wrong type is a
        :class:`TrainSettingsError` (the text comes from a file's metadata)."""
        try:
            data = json.loads(text, parse_constant=lambda name: float(name))
        except (ValueError, RecursionError) as exc:
            raise TrainSettingsError(f"The saved training settings are not valid JSON ({str(exc)[:100]}).",
                                     "resume from a file LoraLabTrain saved, or set resume_from to none.") from None
        if not isinstance(data, dict):
            raise TrainSettingsError("The saved training settings are not a JSON object.",
                                     "resume from a file LoraLabTrain saved, or set resume_from to none.")
        values = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value, kind = data[f.name], type(f.default)
            if kind is float and type(value) is int:
                value = float(value)
            if type(value) is not kind:
                raise TrainSettingsError(f"The saved training setting {f.name} is {json.dumps(value)[:40]}, not a "
                                         f"{kind.__name__}.", "resume from a file LoraLabTrain saved, or set "
                                         "resume_from to none.")
            values[f.name] = value
        return cls(**values)

    def resumed(self, saved: TrainSettings) -> TrainSettings:
        """These settings with the run's identity taken from ``saved`` (a checkpoint's settings)."""
        data = asdict(self)
        data.update({k: getattr(saved, k) for k in RUN_IDENTITY})
        return TrainSettings(**data)

    def validate(self) -> None:
        """Raise :class:`TrainSettingsError` for the first setting out of range (model-independent checks)."""
        def bad(problem: str, fix: str) -> None:
            raise TrainSettingsError(problem, fix)

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                bad(f"{f.name} is {value}, not a finite number.", f"set {f.name} to a number (see its tooltip).")
        choices = (("algorithm", ALGORITHMS), ("targets", TARGETS), ("lr_schedule", SCHEDULES),
                   ("optimizer", OPTIMIZERS), ("training_dtype", TRAINING_DTYPES),
                   ("save_precision", SAVE_PRECISIONS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                bad(f"{name} '{getattr(self, name)}' is not one of {', '.join(allowed)}.", f"pick one of {', '.join(allowed)}.")
        if not 1 <= self.rank <= MAX_RANK:
            bad(f"rank {self.rank} is out of range (1 to {MAX_RANK}).", "use a rank such as 4, 8, 16 or 32.")
        if not self.alpha > 0:
            bad(f"alpha {self.alpha} must be positive (the LoRA's scale is alpha / rank).",
                "use alpha = rank for scale 1, or alpha = rank / 2.")
        if not 1 <= self.steps <= MAX_STEPS:
            bad(f"steps {self.steps} is out of range (1 to {MAX_STEPS}).", "train for at least one step.")
        if not self.learning_rate > 0:
            bad(f"learning_rate {self.learning_rate} must be positive.", "try 1e-4 for AdamW.")
        if self.warmup_steps < 0 or 0 < self.schedule_steps <= self.warmup_steps:
            bad(f"warmup_steps {self.warmup_steps} must be at least 0 and below the schedule's {self.schedule_steps} steps.",
                "use fewer warm-up steps (often 5-10% of steps).")
        if self.batch_size < 1 or self.gradient_accumulation < 1:
            bad(f"batch_size ({self.batch_size}) and gradient_accumulation ({self.gradient_accumulation}) must be at least 1.",
                "use 1 for both on a small machine.")
        if self.resolution < 64 or self.resolution % 8:
            bad(f"resolution {self.resolution} must be a multiple of 8 and at least 64.", "use 512 for SD1.x.")
        if not 0.0 <= self.caption_dropout < 1.0:
            bad(f"caption_dropout {self.caption_dropout} must be in [0, 1).", "use 0 to 0.1.")
        if self.noise_offset < 0 or self.min_snr_gamma < 0:
            bad("noise_offset and min_snr_gamma must not be negative.", "use 0 to turn them off.")
        for name in ("preview_every", "save_every"):
            if getattr(self, name) < 0:
                bad(f"{name} {getattr(self, name)} must not be negative.", "use 0 to turn it off.")
        if self.preview_every and self.preview_steps < 1:
            bad(f"preview_steps {self.preview_steps} must be at least 1.", "use 20 sampling steps.")
        for name in ("dropout", "rank_dropout", "module_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(f"{name} {getattr(self, name)} must be in [0, 1).", "use 0 (off) to 0.5; 0.1 is usual.")
        if self.text_encoder_lr < 0 or self.max_grad_norm < 0:
            bad("text_encoder_lr and max_grad_norm must not be negative.",
                "use 0 (the diffusion model's rate; no clipping).")
        if self.targets == "block selection" and not self.target_blocks.strip():
            bad("targets is 'block selection' but target_blocks is empty.",
                "name the blocks to train in target_blocks, e.g. 'OUT*=1, *=0', or pick another targets option.")
