"""The one place that hands LoRA Lab's patches to ComfyUI's ``ModelPatcher``.

How it fits the host's life cycle, using only its extension points:

* A loader returns ``patcher.clone()`` carrying a ``PatcherInjection`` under the key ``lora_lab``;
  the input model is never changed.
* ComfyUI calls ``inject`` when it has loaded the model (after its own weight patches, such as core
  ``LoraLoader``'s, are in place) and ``eject`` before it unpatches, unloads, detaches, or hands the
  module to another clone. ``inject`` merges our deltas (``lora_ops.patching``: in place on the GPU,
  by swapping in merged tensors on the CPU) and keeps what undoes them; ``eject`` restores the
  original weights bit-exactly. Nothing moves between devices: a strength change rewrites only the
  weights the LoRAs touch, from their original values.
* The backup belongs to the torch module, not to a patcher (several clones share one module), so
  whichever clone ejects restores the module, and an application left by a clone that was
  garbage-collected is undone before the next one goes on.
* A clone made while its parent is injected must inject again when it is loaded itself: ComfyUI
  copies ``is_injected`` into clones, so an ``ON_CLONE`` callback clears it on the new clone.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import MutableMapping

import torch
from comfy.patcher_extension import CallbacksMP, PatcherInjection, WrappersMP

from ..lora_ops.batched import BatchedDelta, LayerCall, add_row_deltas
from ..lora_ops.errors import LoraLabError
from ..lora_ops.families import family_key, model_label
from ..lora_ops.keymap import KeyIndex
from ..lora_ops.patching import Backup, PatchEntry, WeightCodec, apply_patches, restore_weights

log = logging.getLogger(__name__)

INJECTION_KEY = "lora_lab"
ROW_STRENGTH_KEY = "lora_lab_row_strengths"

# torch module -> what undoes the deltas merged into it (see module docstring)
_ACTIVE: "weakref.WeakKeyDictionary[torch.nn.Module, Backup]" = weakref.WeakKeyDictionary()


def _parameter(root: torch.nn.Module, key: str) -> torch.nn.Parameter:
    """``root.get_parameter(key)`` by a direct walk of the modules' own tables (a strength change looks
    up every patched weight twice; ``get_parameter`` costs ~40 us per key on an SDXL UNet)."""
    *path, name = key.split(".")
    m = root
    try:
        for part in path:
            m = m._modules[part]
        param = m._parameters[name]
    except (KeyError, AttributeError):
        param = None
    return param if param is not None else root.get_parameter(key)


def _is_subclass(t: torch.Tensor) -> bool:
    """A tensor subclass such as ComfyUI 0.8.0's ``QuantizedTensor`` (its ``.data`` cannot be swapped)."""
    return type(t) not in (torch.Tensor, torch.nn.Parameter)


class _LiveWeights(MutableMapping):
    """The module's parameters by state-dict key: their tensors, and ``param.data = t`` to swap one.

    A quantized weight (a tensor subclass) is handed out and swapped as the parameter object itself, as the
    host's own ``set_weight`` replaces it; restoring puts the original object back.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __getitem__(self, key: str) -> torch.Tensor:
        param = _parameter(self.module, key)
        return param if _is_subclass(param) else param.data

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        """Swap ``value`` in as the parameter's data (same dtype and device; the shape may change only
        where a LoRA widens a weight, and back)."""
        param = _parameter(self.module, key)
        if value.dtype != param.dtype or value.device != param.device:
            raise TypeError(f"{key}: a replacement must match the weight's dtype and device")
        if _is_subclass(param) or _is_subclass(value):
            owner_path, _, name = key.rpartition(".")
            owner = self.module.get_submodule(owner_path)
            if not isinstance(value, torch.nn.Parameter):
                value = torch.nn.Parameter(value, requires_grad=False)
            setattr(owner, name, value)
            return
        param.data = value

    def __delitem__(self, key):
        raise TypeError("weights are written in place, never removed")

    def __iter__(self):
        return (k for k, _ in self.module.named_parameters())

    def __len__(self):
        return sum(1 for _ in self.module.named_parameters())


_PLAIN_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def weight_codecs(module: torch.nn.Module, keys) -> dict[str, WeightCodec]:
    """The host's codec for every weight of ``keys`` that is not a plain float tensor: fp8 weights, ComfyUI's
    scaled-fp8 layers (``scale_weight``) and quantized layers (``QuantizedTensor``), i.e. every weight
    whose op has ``convert_weight``/``set_weight`` or whose dtype is not a float type.

    Decoding and encoding are the host's own, as ``ModelPatcher.patch_weight_to_device`` does it: the
    weight to fp32, then the op's ``convert_weight``; back through the op's ``set_weight`` (with
    ``return_weight=True``: nothing is written until LoRA Lab swaps it in) or, without one, ComfyUI's
    ``stochastic_rounding`` to the weight's dtype; both seeded by the key as core seeds them.
    """
    import comfy.float
    import comfy.model_patcher

    codecs: dict[str, WeightCodec] = {}
    for key in keys:
        try:
            weight, set_func, convert_func = comfy.model_patcher.get_key_weight(module, key)
        except AttributeError:
            continue
        plain = type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dtype in _PLAIN_DTYPES
        if plain and set_func is None and convert_func is None:
            continue
        codecs[key] = _codec(weight, set_func, convert_func, comfy.float.stochastic_rounding,
                             comfy.model_patcher.string_to_seed)
    return codecs


def _codec(weight, set_func, convert_func, stochastic_rounding, string_to_seed) -> WeightCodec:
    dtype = weight.dtype

    def decode(stored: torch.Tensor) -> torch.Tensor:
        values = stored.to(torch.float32, copy=True)
        if convert_func is not None:
            values = convert_func(values, inplace=True)
        return values

    def encode(values: torch.Tensor, key: str) -> torch.Tensor:
        seed = string_to_seed(key)
        if set_func is not None:
            return set_func(values, inplace_update=False, seed=seed, return_weight=True)
        return stochastic_rounding(values, dtype, seed=seed)

    stored = getattr(weight, "_qdata", weight).dtype  # a QuantizedTensor reports its compute dtype as dtype
    kind = (f"quantized {str(stored).replace('torch.', '')}" if hasattr(weight, "_qdata") else
            f"{str(stored).replace('torch.', '')}" + (" with a per-layer scale" if convert_func is not None else ""))
    return WeightCodec(decode, encode, kind)


class LoraLabApplication:
    """The patches one clone carries; ``inject``/``eject`` are handed to ComfyUI."""

    def __init__(self, entries: list[PatchEntry]):
        self.entries = entries

    def inject(self, patcher) -> None:
        module = patcher.model
        _undo(module)
        if not self.entries:
            return
        codecs = weight_codecs(module, {e.weight_key for e in self.entries})
        # Over core's own weight patches (a core LoraLoader earlier in the chain) the GPU's fused path
        # is not used yet: that combination is only verified on the backup path.
        backup = apply_patches(_LiveWeights(module), self.entries, backup_device=patcher.offload_device,
                               in_place=False, fused_path=not patcher.patches, codecs=codecs)
        _ACTIVE[module] = backup
        log.debug("LoRA Lab: merged %d patches into %d weights", len(self.entries), len(backup))

    def eject(self, patcher) -> None:
        _undo(patcher.model)


def _undo(module: torch.nn.Module) -> None:
    backup = _ACTIVE.pop(module, None)
    if backup:
        restore_weights(_LiveWeights(module), backup)


def _clear_injected_on_clone(parent, clone) -> None:
    if clone.get_injections(INJECTION_KEY) is not None:
        clone.is_injected = False


def entries_of(patcher) -> list[PatchEntry]:
    """The LoRA Lab patches a patcher already carries (from an earlier LoRA Lab node in the chain)."""
    injections = patcher.get_injections(INJECTION_KEY) or []
    for inj in injections:
        app = getattr(inj.inject, "__self__", None)
        if isinstance(app, LoraLabApplication):
            return list(app.entries)
    return []


def with_patches(patcher, entries: list[PatchEntry]):
    """A clone of ``patcher`` that merges ``entries`` (after any LoRA Lab patches it already has)."""
    clone = patcher.clone()
    combined = entries_of(patcher) + list(entries)
    app = LoraLabApplication(combined)
    clone.set_injections(INJECTION_KEY, [PatcherInjection(inject=app.inject, eject=app.eject)])
    if not clone.get_callbacks(CallbacksMP.ON_CLONE, INJECTION_KEY):
        clone.add_callback_with_key(CallbacksMP.ON_CLONE, INJECTION_KEY, _clear_injected_on_clone)
    # The clone was made from a patcher that may be injected right now; this one is not yet.
    clone.is_injected = False
    return clone


def model_lineage(model) -> list[str]:
    """``MODEL``'s config class and its ancestors, most specific first (``['FluxSchnell', 'Flux']``)."""
    cls = type(model.model.model_config)
    return [c.__name__ for c in cls.__mro__ if c.__name__ not in ("BASE", "object")]


def model_family(model) -> str:
    """The family key of a ``MODEL`` (:func:`lora_ops.families.family_key` of its config lineage)."""
    return family_key(model_lineage(model))


def model_name(model) -> str:
    """How reports name a ``MODEL``: ``SDXL``, ``Flux (FluxSchnell)``, ``Chroma``..."""
    return model_label(model_lineage(model))


def convert_lora(tensors: dict) -> dict:
    """The host's own rewrite of known LoRA file layouts (``comfy.lora_convert.convert_lora``: Wan Fun
    files, BFL's Flux control LoRAs, ...), run before matching as core runs it."""
    import comfy.lora_convert

    return comfy.lora_convert.convert_lora(tensors)


def model_key_map(model) -> dict:
    """ComfyUI's own LoRA key map for a diffusion model (``MODEL.model``)."""
    import comfy.lora

    return comfy.lora.model_lora_keys_unet(model, {})


def clip_key_map(clip) -> dict:
    import comfy.lora

    return comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})


def weight_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: p.shape for k, p in module.named_parameters()}


# module -> (its parameter keys when indexed, the KeyIndex of ComfyUI's key map for it)
_INDEXES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[str, ...], KeyIndex]]" = weakref.WeakKeyDictionary()


def _key_index(module: torch.nn.Module, shapes: dict[str, torch.Size], build) -> KeyIndex:
    stamp = tuple(shapes)
    hit = _INDEXES.get(module)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    index = KeyIndex(build())
    _INDEXES[module] = (stamp, index)
    return index


def model_key_index(model, shapes: dict[str, torch.Size] | None = None) -> KeyIndex:
    """The :class:`KeyIndex` of ComfyUI's key map for ``MODEL.model``, built once per model (and again
    only if its parameter keys change), so that planning a strength change does not rebuild it."""
    shapes = weight_shapes(model) if shapes is None else shapes
    return _key_index(model, shapes, lambda: model_key_map(model))


def clip_key_index(clip, shapes: dict[str, torch.Size] | None = None) -> KeyIndex:
    """:func:`model_key_index` for a CLIP's text encoders."""
    module = clip.cond_stage_model
    shapes = weight_shapes(module) if shapes is None else shapes
    return _key_index(module, shapes, lambda: clip_key_map(clip))


def kohya_names(model_key_map: dict, clip_key_map: dict | None, family: str | None) -> dict[str, str]:
    """Model weight key -> the module name a saved file uses for it, one the host's key map reads back.

    Taken from ComfyUI's own key maps: for the diffusion model the diffusers-style
    ``lora_unet_down_blocks_...`` spelling kohya's scripts write for SD-type UNets (the LDM-style
    ``lora_unet_input_blocks_...`` where none exists; for DiTs ``lora_unet_<module>``); for text encoders
    ``lora_te_`` on SD1.x/2.x and ``lora_te1_``/``lora_te2_`` on SDXL and others; a weight with no such
    name keeps the host's generic name for it (``text_encoders.<key>``, ``diffusion_model.<key>``).
    """
    names: dict[str, str] = {}
    for k, v in model_key_map.items():
        if isinstance(v, str) and k.startswith("lora_unet_"):
            current = names.get(v)
            if current is None or _is_ldm_name(current, v):
                names[v] = k
    te_prefixes = ("lora_te_",) if family in ("sd1", "sd2") else ("lora_te1_", "lora_te2_")
    for k, v in (clip_key_map or {}).items():
        if isinstance(v, str) and k.startswith(te_prefixes):
            names.setdefault(v, k)
    for key_map in (model_key_map, clip_key_map or {}):
        for v in {v for v in key_map.values() if isinstance(v, str) and v.endswith(".weight")}:
            if v not in names and (generic := _generic_name(v, key_map)) is not None:
                names[v] = generic
    return names


def _generic_name(key: str, key_map: dict) -> str | None:
    """The host's generic file name for ``key`` (``diffusion_model.x`` / ``text_encoders.x``), if mapped."""
    stem = key[: -len(".weight")]
    for name in (stem, f"text_encoders.{stem}"):
        if key_map.get(name) == key:
            return name
    return None


def _is_ldm_name(name: str, key: str) -> bool:
    return name == "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")


def kohya_names_for(model, clip, family: str | None) -> dict[str, str]:
    """:func:`kohya_names` from the key maps of ``model`` and (optionally) ``clip``."""
    return kohya_names(model_key_map(model.model), clip_key_map(clip) if clip is not None else None, family)


def base_weight_lookup(model, clip):
    """``key -> fp32 weight without LoRA Lab's deltas``, for model and text-encoder keys alike (DoRA bases)."""
    model_keys = set(weight_shapes(model.model))

    def lookup(key: str) -> torch.Tensor:
        module = model.model if key in model_keys or clip is None else clip.cond_stage_model
        return unpatched_weight(module, key).to(torch.float32)

    return lookup


def unpatched_weight(module: torch.nn.Module, key: str) -> torch.Tensor:
    """The weight as it is without LoRA Lab's deltas (from the backup while a clone is applied), as the
    values it stands for: fp8 and quantized weights decoded by the host's codec (fp32)."""
    backup = _ACTIVE.get(module)
    stored = backup[key] if backup is not None and key in backup else _parameter(module, key).detach()
    codec = weight_codecs(module, [key]).get(key)
    return codec.decode(stored) if codec is not None else stored


def with_row_strengths(patcher, deltas: dict[str, BatchedDelta], strengths: list[float]):
    """A clone whose forward adds ``strengths[b] * dW x`` to every layer in ``deltas``, per latent ``b``.

    The sweep's batched mode (``lora_ops.batched``). Weights are not touched: an ``APPLY_MODEL``
    wrapper hooks the layers for the duration of each model call and unhooks them after, so nothing
    stays on the shared module. ComfyUI's sampler calls the model with cond and uncond (and any
    other conds) concatenated, each a whole copy of the latent batch, so model-batch row ``i``
    belongs to latent ``i % len(strengths)``.
    """
    clone = patcher.clone()
    strengths_t = torch.tensor([float(s) for s in strengths], dtype=torch.float32)
    root = patcher.model
    layers = {}
    for key in deltas:
        module = root.get_submodule(key.rsplit(".", 1)[0])
        layers[key] = (module, LayerCall.of(module))

    def wrapper(executor, x, *args, **kwargs):
        n = strengths_t.numel()
        if x.shape[0] % n:
            raise LoraLabError(f"the sampler called the model with a batch of {x.shape[0]}, not a multiple of the "
                               f"{n} sweep cells.", "set batch_mode to repatch for this sampler or model.")
        coef_cpu = strengths_t.repeat(x.shape[0] // n)
        rows = torch.nonzero(coef_cpu).flatten().to(x.device)  # once per model call, not per layer
        coef = coef_cpu.to(x.device)
        handles = []
        try:
            for key, (module, call) in layers.items():
                delta = deltas[key]
                handles.append(module.register_forward_hook(
                    lambda mod, inputs, output, d=delta, c=call: add_row_deltas(output, inputs[0], d, c, coef, rows)))
            return executor(x, *args, **kwargs)
        finally:
            for h in handles:
                h.remove()

    clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, ROW_STRENGTH_KEY, wrapper)
    return clone
