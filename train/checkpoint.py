"""Saving a trained LoRA (kohya format, metadata, precision checks) and the state to resume it from.

Every save writes two files, each atomically (temporary name, then rename), the state first:

* ``<name>.lora_lab_state`` (safetensors under a suffix loaders do not list): the fp32 master factors,
  the optimizer's tensors, and in its metadata the optimizer's other state (JSON);
* ``<name>.safetensors``: the LoRA in kohya's layout at the chosen save precision, with ``ss_*`` and
  ``modelspec.*`` keys and LoRA Lab's ``lora_lab.train.*`` keys: the step count, the settings (JSON),
  the state file's name and SHA-256.

A resume reads everything from the LoRA file's metadata and the state file it names, never from a file
name. A LoRA file is only ever written after its state file, so a LoRA that says it is resumable always
has its state beside it (unless someone moved it, which the SHA-256 check reports).

Every adapter kind is written with its own ``file_tensors`` (kohya/LyCORIS keys: ``lora_up``/``lora_down``,
``hada_w*``, ``lokr_w*``, ``alpha``, DoRA's ``dora_scale``) under the module names the host's key maps read.

Precision: fp32 keeps the trained values bit for bit (what the previews used). fp16/bf16 are checked
first: overflow (beyond fp16's 65504: refused), underflow (non-zero values that become 0), values in
fp16's subnormal range (kept with reduced precision), how many values change at all, and the relative
error that rounding causes in each layer's merged delta (DoRA's included), worst layers first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..lora_ops.adapters import AdapterBase, effective_delta
from ..lora_ops.bake import kohya_metadata
from ..lora_ops.errors import LoraFileError, LoraLabError, OverflowRiskError
from ..lora_ops.safeio import read_lora_file, read_safetensors_header, write_safetensors_atomic
from ..lora_ops.plan import file_sha256
from .settings import TrainSettings

STATE_SUFFIX = ".lora_lab_state"
# A state file a LoRA's metadata may name: a plain file name beside the LoRA, never a path.
_STATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,200}" + re.escape(STATE_SUFFIX))
FORMAT_VERSION = "1"
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ResumeError(LoraLabError):
    """The file to resume from is not a usable LoRA Lab training checkpoint."""


def state_path_for(lora_path: str | os.PathLike) -> Path:
    p = Path(lora_path)
    return p.with_name(p.name[: -len(".safetensors")] + STATE_SUFFIX if p.name.endswith(".safetensors")
                       else p.name + STATE_SUFFIX)


def tensor_sha256(tensors) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of tensors, in order (a base model's fingerprint)."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        t = t.contiguous().cpu()
        h.update(t.view(torch.uint8).reshape(-1).numpy().data if t.numel() else b"")
    return h.hexdigest()


@dataclass
class PrecisionReport:
    """What saving at ``precision`` does to the trained values; ``layers``: ``(name, relative change of the
    layer's merged delta)``, largest first."""

    precision: str
    values: int = 0
    overflow: int = 0
    underflow: int = 0
    subnormal: int = 0
    changed: int = 0
    max_delta_error: float = 0.0
    layers: list[tuple[str, float]] = field(default_factory=list)

    def worst(self, count: int = 3) -> str:
        return ", ".join(f"{name} ({err:.2g})" for name, err in self.layers[:count])

    def text(self) -> str:
        if self.precision == "fp32":
            return "save precision fp32: the trained values are saved exactly"
        text = (f"save precision {self.precision}: {self.changed} of {self.values} values change "
                f"({self.overflow} overflow, {self.underflow} become 0, {self.subnormal} lose precision as "
                f"subnormals); largest relative change of a layer's delta: {self.max_delta_error:.3g}")
        return text + (f" ({self.worst(1)})" if self.layers else "")


def _float_fields(adapter: AdapterBase) -> list[str]:
    values = [(f.name, getattr(adapter, f.name)) for f in dataclasses.fields(adapter)]
    return [name for name, v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]


def cast_adapter(adapter: AdapterBase, dtype: torch.dtype) -> AdapterBase:
    """The adapter with every floating-point tensor (factors, DoRA magnitude) cast to ``dtype``."""
    cast = {name: getattr(adapter, name).to(dtype) for name in _float_fields(adapter)}
    return dataclasses.replace(adapter, **cast)


def precision_check(weights: Mapping[str, AdapterBase], precision: str, *,
                    shapes: Mapping[str, torch.Size] | None = None,
                    base: Callable[[str], torch.Tensor] | None = None) -> PrecisionReport:
    """Count what casting every trained tensor to ``precision`` changes (see the module docstring).

    ``shapes[name]``: the weight shape of each layer (default: what the factors imply); ``base(name)``: its
    unpatched weight, needed for the merged delta of DoRA layers (without it they count values only).
    """
    report = PrecisionReport(precision)
    dtype = SAVE_DTYPES[precision]
    errors = []
    for name, w in weights.items():
        tensors = [getattr(w, f) for f in _float_fields(w)]
        report.values += sum(t.numel() for t in tensors)
        if dtype == torch.float32:
            continue
        info = torch.finfo(dtype)
        overflow = 0
        for t in tensors:
            t = t.float()
            cast = t.to(dtype)
            overflow += int((~torch.isfinite(cast) & torch.isfinite(t)).sum())
            report.underflow += int(((cast == 0) & (t != 0)).sum())
            report.subnormal += int(((cast != 0) & (cast.float().abs() < info.tiny)).sum())
            report.changed += int((cast.float() != t).sum())
        report.overflow += overflow
        if overflow:
            continue
        shape = shapes[name] if shapes is not None and name in shapes else w.implied_shape()
        if shape is None or (w.needs_base and base is None):
            continue
        b = base(name).float() if w.needs_base else None
        exact = effective_delta(w, shape, base=b)
        rounded = effective_delta(cast_adapter(w, dtype), shape, base=b)
        norm = float(exact.norm())
        if norm > 0:
            errors.append((name, float((rounded - exact).norm()) / norm))
    report.layers = sorted(errors, key=lambda e: -e[1])
    report.max_delta_error = report.layers[0][1] if report.layers else 0.0
    return report


def kohya_tensors(weights: Mapping[str, AdapterBase], precision: str,
                  report: PrecisionReport | None = None) -> dict[str, torch.Tensor]:
    """The file's state dict: each adapter's ``file_tensors`` under its module name, at ``precision``;
    ``alpha`` stays fp32 (loaders read it as a number). Refuses an fp16 save that overflows."""
    if report is None and precision == "fp16":
        report = precision_check(weights, precision)
    if report is not None and report.overflow:
        raise OverflowRiskError(
            f"Saving in fp16 would turn {report.overflow} trained value(s) into infinity (fp16 stops at 65504); "
            "the LoRA would render black.", "save in fp32 (the default) or bf16.")
    dtype = SAVE_DTYPES[precision]
    tensors: dict[str, torch.Tensor] = {}
    for name, adapter in weights.items():
        for k, v in adapter.file_tensors(name).items():
            if k in tensors:
                raise LoraLabError(f"two trained layers map to the same file key '{k}'.",
                                   "train fewer targets (block selection) or report this model to LoRA Lab.")
            v = v.detach().cpu()
            keep = k.endswith(".alpha") or not v.is_floating_point()
            tensors[k] = (v if keep else v.to(dtype)).contiguous()
    return tensors


def network_description(settings: TrainSettings) -> tuple[str, dict[str, str]]:
    """``ss_network_module`` and ``ss_network_args`` as kohya's scripts write them: ``networks.lora`` for
    LoRA/LoCon, ``lycoris.kohya`` with ``algo`` for LoHa/LoKr and any DoRA (``dora_wd``)."""
    s = settings
    args: dict[str, str] = {}
    conv = s.algorithm != "lora"
    if s.algorithm in ("lora", "locon") and not s.dora:
        module = "networks.lora"
        if conv:
            args.update(conv_dim=str(s.rank), conv_alpha=f"{s.alpha:g}")
        if s.rank_dropout:
            args["rank_dropout"] = f"{s.rank_dropout:g}"
        if s.module_dropout:
            args["module_dropout"] = f"{s.module_dropout:g}"
        return module, args
    args["algo"] = s.algorithm
    if conv:
        args.update(conv_dim=str(s.rank), conv_alpha=f"{s.alpha:g}")
    if s.algorithm == "lokr":
        args["factor"] = "-1"
    if s.dora:
        args.update(dora_wd="True", wd_on_output="True")
    for name in ("dropout", "rank_dropout", "module_dropout"):
        if getattr(s, name):
            args[name] = f"{getattr(s, name):g}"
    if s.rank_dropout:
        args["rank_dropout_scale"] = "True"
    return "lycoris.kohya", args


def training_metadata(settings: TrainSettings, *, step: int, family: str, num_images: int,
                      tag_frequency: dict[str, int], base_model: str, base_sha256: str,
                      started_at: float, resolution_info: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """``ss_*``/``modelspec.*`` keys other tools read, and the settings a resume needs."""
    s = settings
    network_module, network_args = network_description(s)
    meta = kohya_metadata(family=family, rank_values=[s.rank], network_module=network_module, extra={
        "ss_network_alpha": f"{s.alpha:g}",
        "ss_network_args": json.dumps(network_args) if network_args else "",
        "ss_network_dropout": f"{s.dropout:g}",
        "ss_network_train_unet_only": str(not s.text_encoder_names),
        "ss_output_name": s.output_name,
        "ss_steps": str(step),
        "ss_max_train_steps": str(s.steps),
        "ss_learning_rate": f"{s.learning_rate:g}",
        "ss_unet_lr": f"{s.learning_rate:g}",
        "ss_text_encoder_lr": f"{(s.text_encoder_lr or s.learning_rate) if s.text_encoder_names else 0:g}",
        "ss_max_grad_norm": f"{s.max_grad_norm:g}",
        "ss_lr_scheduler": s.lr_schedule + (f" (warmup {s.warmup_steps})" if s.warmup_steps else ""),
        "ss_lr_warmup_steps": str(s.warmup_steps),
        "ss_optimizer": f"torch.optim.{s.optimizer}",
        "ss_batch_size_per_device": str(s.batch_size),
        "ss_gradient_accumulation_steps": str(s.gradient_accumulation),
        "ss_gradient_checkpointing": str(s.gradient_checkpointing),
        "ss_num_train_images": str(num_images),
        "ss_resolution": f"({s.resolution}, {s.resolution})",
        "ss_enable_bucket": str(s.buckets),
        "ss_bucket_info": resolution_info,
        "ss_caption_dropout_rate": f"{s.caption_dropout:g}",
        "ss_shuffle_caption": str(s.shuffle_captions),
        "ss_flip_aug": str(s.flip),
        "ss_noise_offset": f"{s.noise_offset:g}",
        "ss_min_snr_gamma": f"{s.min_snr_gamma:g}",
        "ss_seed": str(s.seed),
        "ss_mixed_precision": s.training_dtype,
        "ss_save_precision": s.save_precision,
        "ss_sd_model_name": base_model,
        "ss_tag_frequency": json.dumps({"lora_lab": tag_frequency}),
        "ss_training_started_at": f"{started_at:.3f}",
        "ss_training_finished_at": f"{time.time():.3f}",
        "ss_training_comment": "trained in ComfyUI with LoRA Lab (LoraLabTrain)",
        "modelspec.title": s.output_name,
        "modelspec.implementation": "diffusers",
        "modelspec.resolution": f"{s.resolution}x{s.resolution}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        "lora_lab.base_model_sha256": base_sha256,
        "lora_lab.train.format": FORMAT_VERSION,
        "lora_lab.train.step": str(step),
        "lora_lab.train.settings": settings.to_json(),
    })
    meta.update(extra or {})
    return meta


@dataclass
class SavedCheckpoint:
    path: Path
    state_path: Path
    step: int
    precision: PrecisionReport


def save_checkpoint(path: str | os.PathLike, *, weights: Mapping[str, AdapterBase],
                    master_state: dict[str, torch.Tensor], optimizer_tensors: dict[str, torch.Tensor],
                    optimizer_json: str, metadata: dict[str, str], step: int, precision: str,
                    report: PrecisionReport | None = None) -> SavedCheckpoint:
    """Write the state file, then the LoRA file that names it (both atomic). ``report``: the precision
    check already made for ``weights`` (made here when not given)."""
    path = Path(path)
    state_path = state_path_for(path)
    report = report if report is not None else precision_check(weights, precision)
    tensors = kohya_tensors(weights, precision, report)  # refuses an overflowing fp16 save before anything is written
    state = {f"master.{k}": v.float().contiguous() for k, v in master_state.items()}
    state.update(optimizer_tensors)
    write_safetensors_atomic(state, state_path, {"lora_lab.train.format": FORMAT_VERSION,
                                                 "lora_lab.train.step": str(step),
                                                 "lora_lab.train.optimizer": optimizer_json})
    meta = dict(metadata)
    meta.update({"lora_lab.train.step": str(step), "lora_lab.train.state_file": state_path.name,
                 "lora_lab.train.state_sha256": file_sha256(state_path)})
    write_safetensors_atomic(tensors, path, meta)
    return SavedCheckpoint(path, state_path, step, report)


@dataclass
class ResumeState:
    settings: TrainSettings
    step: int
    master_state: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_json: str
    metadata: dict[str, str]


def read_checkpoint(path: str | os.PathLike) -> ResumeState:
    """Everything a resume needs, from the LoRA file's metadata and the state file it names."""
    path = Path(path)
    lora = read_lora_file(path)
    meta = lora.metadata
    if "lora_lab.train.settings" not in meta or "lora_lab.train.state_file" not in meta:
        raise ResumeError(f"'{path.name}' is not a LoRA Lab training checkpoint (its metadata has no training state).",
                          "resume from a file LoraLabTrain saved (the final file, a save_every file or the one a "
                          "cancel left), or set resume_from to none.")
    state_name = meta["lora_lab.train.state_file"]
    if not _STATE_NAME.fullmatch(state_name) or ".." in state_name:
        raise ResumeError(f"'{path.name}' names its training state {state_name[:200]!r}, which is not a plain "
                          f"'*{STATE_SUFFIX}' file name beside it.",
                          "resume from a file LoraLabTrain saved (its state file lies beside it), or set "
                          "resume_from to none.")
    state_path = path.with_name(state_name)
    if not state_path.is_file():
        raise ResumeError(f"The training state '{state_path.name}' that '{path.name}' names is missing.",
                          f"put '{state_path.name}' back beside '{path.name}' (LoraLabTrain writes it there).")
    if file_sha256(state_path) != meta.get("lora_lab.train.state_sha256"):
        raise ResumeError(f"'{state_path.name}' is not the state '{path.name}' was saved with (SHA-256 differs).",
                          "resume from the LoRA file that was saved together with this state.")
    read_safetensors_header(state_path)  # a damaged state file gets the reader's clear error
    try:
        with safe_open(str(state_path), framework="pt") as f:
            state_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise LoraFileError(f"'{state_path.name}' could not be read ({exc}).",
                            "resume from another checkpoint.") from None
    step_text = meta.get("lora_lab.train.step", "")
    if not re.fullmatch(r"[0-9]{1,9}", step_text):
        raise ResumeError(f"'{path.name}' gives its training step as {step_text[:40]!r}, not a whole number.",
                          "resume from a file LoraLabTrain saved, or set resume_from to none.")
    step = int(step_text)
    if state_meta.get("lora_lab.train.step") != step_text:
        raise ResumeError(f"'{path.name}' says step {step}, its state says {state_meta.get('lora_lab.train.step')}.",
                          "resume from a LoRA file and state saved together.")
    return ResumeState(
        settings=TrainSettings.from_json(meta["lora_lab.train.settings"]), step=step,
        master_state={k[len("master."):]: v for k, v in tensors.items() if k.startswith("master.")},
        optimizer_tensors={k: v for k, v in tensors.items() if k.startswith("optimizer.")},
        optimizer_json=state_meta.get("lora_lab.train.optimizer", ""), metadata=meta)
