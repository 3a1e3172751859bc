"""What core ComfyUI 0.3.75 makes of a LoRA: the reference LoRA Lab's kernel is compared against.

:func:`core_patched_weights` runs core's own path, ``comfy.sd.load_lora_for_models(patcher, None, sd,
strength, 0)`` (which runs ``comfy.lora_convert.convert_lora`` and ``comfy.lora.load_lora`` with
``model_lora_keys_unet``), patches the clone's weights on the CPU (``ModelPatcher.patch_model``: core's
``patch_weight_to_device`` per key: fp32 math, then ``stochastic_rounding`` to the storage dtype or the
op's ``set_weight``), copies out every parameter that changed, decoded to fp32 (scaled-fp8 weights through
the op's ``convert_weight``, i.e. ``W_fp8 * scale_weight``), unpatches and checks that every weight is back
bit for bit. It also counts core's ``lora key not loaded`` log lines.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from testkit.models import import_comfy

_NOT_LOADED = re.compile(r"lora key not loaded: (.*)")
_NOT_PATCHED = re.compile(r"NOT LOADED (.*)")


@dataclass
class CoreResult:
    """Core's result for one LoRA at one strength.

    ``weights``: ComfyUI key -> patched value (fp32) of every parameter that changed;
    ``deltas``: key -> patched - original (fp32, both decoded); ``patch_keys``: keys core queued a patch for
    (``add_patches``); ``not_loaded``: file keys core logged as ``lora key not loaded``; ``not_patched``:
    patch targets ``load_lora_for_models`` logged as ``NOT LOADED`` (mapped but missing in the model).
    """

    weights: dict[str, torch.Tensor]
    deltas: dict[str, torch.Tensor]
    patch_keys: set[str]
    not_loaded: list[str] = field(default_factory=list)
    not_patched: list[str] = field(default_factory=list)

    @property
    def changed_keys(self) -> set[str]:
        return set(self.weights)

    @property
    def not_loaded_count(self) -> int:
        return len(self.not_loaded)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def capture_root_log() -> Iterator[_Capture]:
    """Collect what core logs on the root logger (core uses ``logging.warning`` directly)."""
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.WARNING) if old_level else logging.WARNING)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def core_key_mapping(patcher: Any, lora: str | Path | dict[str, torch.Tensor]) -> tuple[set[str], list[str]]:
    """Core's mapping only, no weight math: the ComfyUI keys ``model_lora_keys_unet`` + ``convert_lora`` +
    ``load_lora`` assign patches to, and the file keys core logs as ``lora key not loaded``."""
    comfy = import_comfy()
    sd = load_file(str(lora)) if isinstance(lora, (str, Path)) else dict(lora)
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    with capture_root_log() as log:
        patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(sd), key_map)
    keys = {k if isinstance(k, str) else k[0] for k in patches}
    return keys, [m.group(1) for m in map(_NOT_LOADED.match, log.messages) if m]


def decoded_weight(model: torch.nn.Module, key: str) -> torch.Tensor:
    """The fp32 value of parameter ``key`` as the model computes with it: ``convert_<name>`` of the op
    where ComfyUI's op has one (scaled fp8: ``W * scale_weight``), else the tensor in fp32."""
    import comfy.model_patcher  # noqa: PLC0415 - imported by the caller's import_comfy()

    weight, _set_func, convert_func = comfy.model_patcher.get_key_weight(model, key)
    value = weight.detach().to(torch.float32, copy=True)
    if convert_func is not None:
        value = convert_func(value, inplace=False).to(torch.float32)
    return value


def _padded(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` zero-padded to ``shape`` (core widens a weight, e.g. Flux ``img_in`` for a BFL control LoRA)."""
    if t.shape == shape:
        return t
    out = torch.zeros(shape, dtype=t.dtype)
    out[tuple(slice(0, d) for d in t.shape)] = t
    return out


def model_bits(model: torch.nn.Module) -> dict[str, Any]:
    """The stored bits of every parameter: a plain copy, or for a quantized weight (ComfyUI 0.8.0's
    ``QuantizedTensor``) its stored data and scale."""
    return {k: snapshot(v) for k, v in model.named_parameters()}


def snapshot(t: torch.Tensor) -> Any:
    """What a parameter stores, for bit-for-bit comparison (see :func:`same_bits`)."""
    qdata = getattr(t, "_qdata", None)
    if qdata is not None:
        scale = getattr(getattr(t, "_params", None), "scale", None)
        return ("quantized", _bits(qdata), None if scale is None else _bits(scale))
    return _bits(t)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t``; one-byte floats (fp8) as their bytes, which ``torch.equal`` can compare on the CPU."""
    t = t.detach().clone()
    return t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t


def same_bits(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        if not (isinstance(a, tuple) and isinstance(b, tuple)):
            return False
        return all((x is None and y is None) or (x is not None and y is not None and x.shape == y.shape
                                                 and torch.equal(x, y)) for x, y in zip(a[1:], b[1:]))
    return a.shape == b.shape and torch.equal(a, b)


def loaded_weights(patcher: Any, clone: Any, before: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Every weight of ``patcher``'s model that changes once ComfyUI loads ``clone`` (decoded to fp32),
    the way a graph uses it (``load_models_gpu``); then everything is unloaded and the shared model is
    checked to be restored bit for bit (``AssertionError`` otherwise). ``before``: the model's
    :func:`model_bits` taken earlier (before a node made ``clone``), so changes made by then count too."""
    import_comfy()
    import comfy.model_management as mm  # noqa: PLC0415

    before = model_bits(patcher.model) if before is None else before
    with torch.inference_mode():
        mm.load_models_gpu([clone])
        try:
            after = model_bits(patcher.model)
            changed = [k for k in after if not same_bits(after[k], before[k])]
            weights = {k: decoded_weight(patcher.model, k) for k in changed}
        finally:
            mm.unload_all_models()
    restored = model_bits(patcher.model)
    bad = [k for k in before if not same_bits(restored[k], before[k])]
    assert not bad, f"weights not restored bit for bit after unloading, e.g. {bad[:3]}"
    return weights


def core_patched_weights(
    patcher: Any, lora: str | Path | dict[str, torch.Tensor], strength: float = 1.0
) -> CoreResult:
    """Core ComfyUI's patched weights for ``lora`` (a path or a state dict) at ``strength`` on ``patcher``.

    ``patcher`` is left as it was: core patches a clone, which is unpatched at the end; raises
    ``AssertionError`` if any parameter is not restored bit for bit.
    """
    import_comfy()

    sd = load_file(str(lora)) if isinstance(lora, (str, Path)) else dict(lora)
    model = patcher.model
    before_raw = model_bits(model)
    # ComfyUI executes nodes under inference mode (its fp8 stochastic rounding writes with out=, which
    # autograd refuses on parameters that require grad)
    with torch.inference_mode():
        return _core_patched(patcher, model, sd, strength, before_raw)


def _core_patched(
    patcher: Any,
    model: torch.nn.Module,
    sd: dict[str, torch.Tensor],
    strength: float,
    before_raw: dict[str, torch.Tensor],
) -> CoreResult:
    import_comfy()
    import comfy.sd  # noqa: PLC0415

    with capture_root_log() as log:
        clone, _ = comfy.sd.load_lora_for_models(patcher, None, sd, strength, 0)
    not_loaded = [m.group(1) for m in map(_NOT_LOADED.match, log.messages) if m]
    not_patched = [m.group(1) for m in map(_NOT_PATCHED.match, log.messages) if m]
    patch_keys = set(clone.patches)
    before = {k: decoded_weight(model, k) for k in patch_keys}
    try:
        clone.patch_model(device_to=None)
        after_raw = model_bits(model)
        changed = [k for k in after_raw if not same_bits(after_raw[k], before_raw[k])]
        weights = {k: decoded_weight(model, k) for k in changed}
        deltas = {k: weights[k] - _padded(before[k] if k in before else decoded_weight(model, k), weights[k].shape)
                  for k in changed}
    finally:
        clone.unpatch_model(device_to=None)
    restored = model_bits(model)
    bad = [k for k in before_raw if not same_bits(restored[k], before_raw[k])]
    assert not bad, f"core's unpatch did not restore {len(bad)} weights bit for bit, e.g. {bad[:3]}"
    return CoreResult(weights, deltas, patch_keys, not_loaded, not_patched)
