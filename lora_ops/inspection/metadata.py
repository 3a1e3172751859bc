"""Training metadata (kohya ``ss_*``, ``modelspec.*``, LyCORIS, PEFT) in readable form."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timezone

from .result import TOP_TAGS, TrainingInfo

_TRAINING_FIELDS = (
    ("ss_network_module", "network"),
    ("lycoris_algo", "LyCORIS algorithm"),
    ("ss_network_dim", "dim (rank)"),
    ("ss_network_alpha", "alpha"),
    ("ss_network_args", "network args"),
    ("ss_base_model_version", "base model version"),
    ("modelspec.architecture", "architecture"),
    ("ss_sd_model_name", "base model"),
    ("modelspec.title", "title"),
    ("ss_output_name", "output name"),
    ("ss_resolution", "resolution"),
    ("modelspec.resolution", "resolution (modelspec)"),
    ("ss_num_train_images", "training images"),
    ("ss_num_epochs", "epochs"),
    ("ss_epoch", "epoch saved"),
    ("ss_steps", "steps"),
    ("ss_max_train_steps", "max steps"),
    ("ss_learning_rate", "learning rate"),
    ("ss_unet_lr", "UNet learning rate"),
    ("ss_text_encoder_lr", "text encoder learning rate"),
    ("ss_optimizer", "optimizer"),
    ("ss_lr_scheduler", "LR scheduler"),
    ("ss_mixed_precision", "precision"),
    ("ss_seed", "seed"),
    ("ss_training_started_at", "training started"),
    ("ss_training_finished_at", "training finished"),
    ("ss_training_comment", "comment"),
    ("modelspec.trigger_phrase", "trigger phrase"),
)
_EMPTY_VALUES = {"", "None", "none", "null"}


def _readable(key: str, value: str) -> str:
    if key in ("ss_training_started_at", "ss_training_finished_at"):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        except (ValueError, OverflowError, OSError):
            return value
    if key.endswith("_lr") or key == "ss_learning_rate":
        try:
            return f"{float(value):g}"
        except ValueError:
            return value
    if key == "ss_network_args":
        try:
            args = json.loads(value)
            if isinstance(args, dict):
                return ", ".join(f"{k}={v}" for k, v in args.items())
        except json.JSONDecodeError:
            pass
    return value if len(value) <= 120 else value[:117] + "..."


def training_info(metadata: Mapping[str, str], *, top: int = TOP_TAGS) -> TrainingInfo:
    """Readable training metadata: kohya ``ss_*``, ``modelspec.*``, LyCORIS, PEFT adapter config, tags."""
    info = TrainingInfo()
    for key, label in _TRAINING_FIELDS:
        value = metadata.get(key)
        if value is not None and value.strip() not in _EMPTY_VALUES:
            info.fields.append((label, _readable(key, value.strip())))
    raw_peft = metadata.get("lora_adapter_metadata")
    if raw_peft:
        try:
            config = json.loads(raw_peft)
            parts = sorted({k.rsplit(".", 1)[0] for k in config if k.endswith(".lora_alpha")})
            for part in parts:
                info.fields.append((f"PEFT {part}", f"r={config.get(f'{part}.r')}, "
                                    f"lora_alpha={config.get(f'{part}.lora_alpha')}"
                                    + (", rsLoRA" if config.get(f"{part}.use_rslora") else "")
                                    + (", DoRA" if config.get(f"{part}.use_dora") else "")))
        except (json.JSONDecodeError, AttributeError):
            info.notes.append("lora_adapter_metadata is not valid JSON")
    raw_tags = metadata.get("ss_tag_frequency")
    if raw_tags and raw_tags.strip() not in _EMPTY_VALUES:
        try:
            per_dir = json.loads(raw_tags)
            counts: Counter[str] = Counter()
            for tags in per_dir.values():
                for tag, n in tags.items():
                    if tag.strip():
                        counts[tag.strip()] += int(n)
            info.top_tags = counts.most_common(top)
            info.tag_images = len(counts)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            info.notes.append("ss_tag_frequency is not readable JSON")
    return info
