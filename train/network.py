"""Trainable adapters beside a frozen model, attached through forward hooks.

Each target layer ``W`` (a ``Linear`` or ``Conv1d/2d/3d`` of the diffusion model or of a text encoder) gets an
:class:`AdapterLayer` holding fp32 parameters of one of the kinds the loaders read, in the layout their
files use (:mod:`lora_ops.adapters`):

* ``lora`` (Linear and 1x1 convs) / ``locon`` (every conv): ``down: (r, in[, k...])``,
  ``up: (out, r[, 1...])``;
  kohya's initialisation (sd-scripts ``networks/lora.py``): ``down`` uniform in ``+-1/sqrt(fan_in)``
  (``kaiming_uniform_(a=sqrt(5))``), ``up`` zero;
* ``loha``: ``w1a, w2a: (out, r)``, ``w1b, w2b: (r, in*k)``; LyCORIS' initialisation: ``w1a ~ N(0, 0.1^2)``,
  ``w1b, w2b ~ N(0, 1)``, ``w2a = 0``;
* ``lokr``: ``out = a*b``, ``in = c*d`` split as LyCORIS' ``factorization(dim, -1)`` does (the divisor
  nearest ``sqrt(dim)``, smaller part first); ``w1: (a, c)`` full, uniform in ``+-1/sqrt(c)``;
  ``w2: (b, d*k)``
  as ``w2a (b, r) @ w2b (r, d*k)`` (``w2a`` uniform, ``w2b = 0``), or full and zero when
  ``r >= max(b, d) / 2`` (LyCORIS' rule; both factors full then means scale 1);
* with ``dora``, a magnitude ``m: (out, 1[, 1...])`` initialised to the row norms of ``W`` (the output axis,
  LyCORIS' ``wd_on_out`` and PEFT's), so the layer starts as the model.

Draws come from a generator seeded by ``(seed, layer name)``, so training starts from the model and the same
seed gives the same adapter. :meth:`AdapterLayer.adapter` is the adapter dataclass over the live parameters
(the training forward runs the kinds' own math, :func:`lora_ops.adapters.output_delta`);
:meth:`AdapterLayer.weights` is the same adapter with fp32 copies: what is saved and what the loaders read.

:meth:`AdapterNetwork.attached` registers the hooks for a ``with`` block and always removes them, so the
shared torch modules are left as they were. :func:`checkpointed` does the same for gradient checkpointing.
Everything here is host-free: the caller hands in the torch modules and names.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from ..lora_ops.adapters import DropDraw, DropoutRates, LohaWeights, LokrWeights, LoraWeights, output_delta
from ..lora_ops.adapters.base import AdapterBase
from ..lora_ops.layers import LayerCall
from .data import generator
from .settings import TrainSettingsError

# --- which layers -----------------------------------------------------------------------------------------

# A path component of an attention module (SD attn1/attn2, Flux img_attn/txt_attn, Wan self_attn/cross_attn,
# Lumina/Z-Image attention, CLIP self_attn, T5 SelfAttention/EncDecAttention, Qwen self_attn).
_ATTENTION_PART = re.compile(r"attn|attention", re.IGNORECASE)
# A path component of a feed-forward module (SD ff, Flux img_mlp/txt_mlp, Wan ffn, Z-Image feed_forward,
# CLIP mlp, T5 DenseReluDense, Qwen mlp).
_MLP_PART = re.compile(r"^(ff|ffn|ff_context|feed_forward|densereludense|\w*mlp\w*)$", re.IGNORECASE)
# Flux/Chroma single-stream blocks fuse the attention and feed-forward projections into linear1/linear2.
_FUSED = re.compile(r"(^|\.)single_blocks\.\d+\.(linear1|linear2)$")
_TRANSFORMER_PROJ = re.compile(r"(^|\.)(proj_in|proj_out)$")
# An LDM UNet's blocks without its input conv (input_blocks.0); the output conv and timestep embedding lie
# outside them. kohya's sd-scripts trains the same set (its ResBlock/Transformer/Down/Upsample modules).
_UNET_BLOCK = re.compile(r"^(input_blocks\.([1-9]|\d\d+)|middle_block|output_blocks\.\d+)\.")
_LIST_BLOCK = re.compile(r"^([A-Za-z_]\w*)\.(\d+)\.")

KINDS = ("lora", "locon", "loha", "lokr")
NO_DROPOUT = DropoutRates()


@dataclass(frozen=True)
class TargetLayer:
    """A layer to train: its name, the module, and the host's key of its weight.

    ``name`` is the module's path inside the diffusion model (``input_blocks.1.1...``, ``double_blocks.0...``)
    or ``text_encoders.<path inside the text-encoder model>``; ``key`` the weight's key in the host's key
    maps (``diffusion_model.<path>.weight`` / ``<path>.weight``).
    """

    name: str
    module: torch.nn.Module
    key: str = ""

    @property
    def kind(self) -> str:
        if isinstance(self.module, torch.nn.Linear):
            return "linear"
        return "conv1x1" if math.prod(self.module.kernel_size) == 1 else "conv"

    @property
    def shape(self) -> torch.Size:
        return self.module.weight.shape


def _is_trainable_kind(module: torch.nn.Module, algorithm: str) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        if module.groups != 1 or module.padding_mode != "zeros":
            return False
        return algorithm != "lora" or math.prod(module.kernel_size) == 1
    return False


def is_attention(path: str) -> bool:
    return any(_ATTENTION_PART.search(part) for part in path.split(".")[:-1])


def is_mlp(path: str) -> bool:
    return any(_MLP_PART.match(part) for part in path.split(".")[:-1]) or bool(_FUSED.search(path))


def in_blocks(model: torch.nn.Module, path: str) -> bool:
    """Whether ``path`` lies in one of the model's repeated blocks: for an LDM UNet its input/middle/output
    blocks (not the input conv), for a DiT an element of a block list directly under the model
    (``double_blocks.3``, ``layers.0``, ``noise_refiner.1``); embedders and final layers lie outside."""
    if hasattr(model, "input_blocks"):
        return bool(_UNET_BLOCK.match(path))
    m = _LIST_BLOCK.match(path)
    return m is not None and isinstance(getattr(model, m.group(1), None), torch.nn.ModuleList)


def select_targets(model: torch.nn.Module, *, algorithm: str, targets: str,
                   block_factor: Callable[[str], float] | None = None, key_prefix: str = "diffusion_model.",
                   name_prefix: str = "", only: Callable[[str], bool] | None = None) -> list[TargetLayer]:
    """The layers a run trains in ``model``, sorted by name.

    ``attention``: every Linear/conv inside an attention module (q/k/v/out projections, fused qkv);
    ``attention+mlp``: also the feed-forward layers, Flux's fused single-block projections and an SD UNet's
    ``proj_in``/``proj_out`` (kohya's default LoRA targets); ``all linear and conv``: every Linear and conv
    in the model's blocks (:func:`in_blocks`: not embedders, input/output convs or final layers, as kohya);
    ``block selection``: like ``all`` but only where ``block_factor(key)`` is not 0.
    ``lora`` trains Linear and 1x1 convs; ``locon``, ``loha`` and ``lokr`` every conv as well.
    ``only``: an extra filter on the path (a text encoder's chosen sub-models).
    """
    out = []
    for path, module in model.named_modules():
        if not path or not _is_trainable_kind(module, algorithm) or (only is not None and not only(path)):
            continue
        key = f"{key_prefix}{path}.weight"
        if targets == "attention":
            keep = is_attention(path)
        elif targets == "attention+mlp":
            keep = is_attention(path) or is_mlp(path) or bool(_TRANSFORMER_PROJ.search(path))
        elif targets == "all linear and conv":
            keep = in_blocks(model, path)
        elif targets == "block selection":
            keep = in_blocks(model, path) and block_factor is not None and block_factor(key) != 0.0
        else:
            raise TrainSettingsError(f"unknown targets '{targets}'.", "pick one of the listed options.")
        if keep:
            out.append(TargetLayer(name_prefix + path, module, key))
    return sorted(out, key=lambda t: t.name)


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks to checkpoint: every element of a block list directly under the model (an LDM UNet's
    ``input_blocks``/``output_blocks``, a DiT's ``double_blocks``/``single_blocks``/``layers``...) and an
    LDM UNet's ``middle_block``."""
    blocks: list[torch.nn.Module] = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList):
            blocks += list(child)
        elif name == "middle_block":
            blocks.append(child)
    return blocks


def _dims(module: torch.nn.Module) -> tuple[int, int, tuple[int, ...]]:
    w = module.weight
    return int(w.shape[0]), int(w.shape[1]), tuple(int(k) for k in w.shape[2:])


def factorization(dim: int) -> tuple[int, int]:
    """``(m, n)``: ``m * n = dim``, ``m <= n``, ``m`` the divisor nearest ``sqrt(dim)`` (LoKr's split)."""
    m = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0)
    return m, dim // m


def check_rank(targets: list[TargetLayer], rank: int, algorithm: str = "lora") -> None:
    """A rank above a layer's smaller side trains nothing more and wastes memory: refuse it (LoKr sizes its
    factors by itself)."""
    if algorithm == "lokr":
        return
    too_small = []
    for t in targets:
        out_f, in_f, kernel = _dims(t.module)
        limit = min(out_f, in_f * math.prod(kernel))
        if rank > limit:
            too_small.append((t.name, limit))
    if too_small:
        name, limit = min(too_small, key=lambda x: x[1])
        raise TrainSettingsError(
            f"rank {rank} is larger than {len(too_small)} target layer(s) allow (e.g. {name}: at most "
            f"{limit}).",
            f"use a rank of at most {limit}, or other targets.")


# --- the adapters -----------------------------------------------------------------------------------------

def _uniform(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> torch.Tensor:
    """``kaiming_uniform_(a=sqrt(5))``'s law: uniform in ``+-1/sqrt(fan_in)``."""
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) / math.sqrt(fan_in)


def initial_factors(algorithm: str, shape: torch.Size, rank: int,
                    gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The fp32 factors of a new ``algorithm`` adapter for a weight of ``shape`` (see the module)."""
    out_f, in_f, kernel = int(shape[0]), int(shape[1]), tuple(int(k) for k in shape[2:])
    ksize = math.prod(kernel)
    if algorithm in ("lora", "locon"):
        return {"down": _uniform((rank, in_f, *kernel), in_f * ksize, gen),
                "up": torch.zeros((out_f, rank, *[1] * len(kernel)))}
    if algorithm == "loha":
        return {"w1a": torch.randn((out_f, rank), generator=gen) * 0.1,
                "w1b": torch.randn((rank, in_f * ksize), generator=gen),
                "w2a": torch.zeros((out_f, rank)),
                "w2b": torch.randn((rank, in_f * ksize), generator=gen)}
    if algorithm == "lokr":
        a, b = factorization(out_f)
        c, d = factorization(in_f)
        factors = {"w1": _uniform((a, c), c, gen)}
        if rank >= max(b, d) / 2:
            factors["w2"] = torch.zeros((b, d, *kernel))
        else:
            factors["w2a"] = _uniform((b, rank), rank, gen)
            factors["w2b"] = torch.zeros((rank, d * ksize))
        return factors
    raise TrainSettingsError(f"unknown algorithm '{algorithm}'.", f"pick one of {', '.join(KINDS)}.")


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """``||W_i||`` of every output row, shaped ``(out, 1[, 1...])`` as a DoRA magnitude on the output axis."""
    w = weight.detach().float()
    return w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1))


def build_adapter(algorithm: str, factors: dict[str, torch.Tensor], alpha: float,
                  magnitude: torch.Tensor | None) -> AdapterBase:
    """The loaders' adapter dataclass over ``factors`` (the tensors themselves, not copies)."""
    if algorithm in ("lora", "locon"):
        return LoraWeights(up=factors["up"], down=factors["down"], alpha=alpha, magnitude=magnitude)
    if algorithm == "loha":
        return LohaWeights(factors["w1a"], factors["w1b"], factors["w2a"], factors["w2b"], alpha=alpha,
                           magnitude=magnitude)
    if algorithm == "lokr":
        return LokrWeights(w1=factors["w1"], w2=factors.get("w2"), w2a=factors.get("w2a"),
                           w2b=factors.get("w2b"), alpha=alpha, magnitude=magnitude)
    raise TrainSettingsError(f"unknown algorithm '{algorithm}'.", f"pick one of {', '.join(KINDS)}.")


class AdapterLayer(torch.nn.Module):
    """One trainable adapter beside one frozen layer: fp32 parameters named as in the master state
    (``down``/``up``, ``w1a``..., ``w1``/``w2a``/``w2b``, ``magnitude``)."""

    def __init__(self, target: TargetLayer, algorithm: str, rank: int, alpha: float, seed: int, *,
                 dora: bool = False, device=None):
        super().__init__()
        self.name = target.name
        self.algorithm = algorithm
        self.alpha = float(alpha)
        self.shape = torch.Size(target.shape)
        self.call = LayerCall.of(target.module)
        gen = generator(seed, "init", target.name)
        factors = initial_factors(algorithm, self.shape, rank, gen)
        if dora:
            factors["magnitude"] = row_norms(target.module.weight).cpu()
        self.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(device))
                                              for k, v in factors.items()})

    @property
    def dora(self) -> bool:
        return "magnitude" in self.params

    def _adapter(self, tensors: dict[str, torch.Tensor]) -> AdapterBase:
        factors = {k: v for k, v in tensors.items() if k != "magnitude"}
        return build_adapter(self.algorithm, factors, self.alpha, tensors.get("magnitude"))

    def adapter(self) -> AdapterBase:
        """The adapter over the live parameters (gradients flow through it)."""
        return self._adapter(dict(self.params.items()))

    def weights(self) -> AdapterBase:
        """The trained adapter as the pack's adapter type (fp32 CPU copies): what is saved."""
        return self._adapter({k: v.detach().float().cpu().clone() for k, v in self.params.items()})

    def output_delta(self, module: torch.nn.Module, x: torch.Tensor, output: torch.Tensor,
                     draw: DropDraw | None) -> torch.Tensor | None:
        adapter = self.adapter()
        base_weight = base_out = None
        if self.dora:
            base_weight = module.weight.detach().float()
            bias = getattr(module, "bias", None)
            base_out = output
            if bias is not None:
                shape = [1] * output.dim()
                shape[self.call.feature_dim % output.dim()] = bias.numel()
                base_out = output - bias.detach().reshape(shape).to(output)
        return output_delta(adapter, x, self.call, self.shape, draw=draw, base_weight=base_weight,
                            base_out=base_out)


class AdapterNetwork(torch.nn.Module):
    """Every :class:`AdapterLayer` of a run, in name order (the optimizer's parameter order).

    ``drop_context(micro_batch)`` turns dropout on for a ``with`` block (``rates``): each layer call then
    draws its masks from ``generator(seed, "dropout", micro_batch, layer name)``, so the same micro-batch
    draws the same masks, in gradient checkpointing's recomputation too.
    """

    def __init__(self, targets: Iterable[TargetLayer], rank: int, alpha: float, seed: int, *,
                 algorithm: str = "lora", dora: bool = False, rates: DropoutRates = NO_DROPOUT, device=None):
        super().__init__()
        self.targets = list(targets)
        self.algorithm = algorithm
        self.seed = seed
        self.rates = rates
        self.layers = torch.nn.ModuleList(
            AdapterLayer(t, algorithm, rank, alpha, seed, dora=dora, device=device) for t in self.targets)
        self._micro_batch: int | None = None

    @contextlib.contextmanager
    def drop_context(self, micro_batch: int) -> Iterator[None]:
        previous = self._micro_batch
        self._micro_batch = micro_batch if self.rates.active else None
        try:
            yield
        finally:
            self._micro_batch = previous

    def master_state(self) -> dict[str, torch.Tensor]:
        """fp32 parameters keyed ``<layer name>.<part>`` (what the training state file stores)."""
        return {f"{layer.name}.{part}": p.detach().cpu().clone()
                for layer in self.layers for part, p in layer.params.items()}

    def load_master_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.master_state())
        if set(state) != expected:
            missing = sorted(expected - set(state))[:3]
            extra = sorted(set(state) - expected)[:3]
            raise TrainSettingsError(
                f"The checkpoint's layers do not match this model's targets (missing {missing}, extra {extra}).",
                "resume on the same base model with the checkpoint's targets and algorithm.")
        with torch.no_grad():
            for layer in self.layers:
                for part, dst in layer.params.items():
                    src = state[f"{layer.name}.{part}"]
                    if src.shape != dst.shape:
                        raise TrainSettingsError(
                            f"Layer {layer.name}.{part} has shape {tuple(src.shape)} in the checkpoint, "
                            f"{tuple(dst.shape)} here.", "resume on the base model the checkpoint was trained on.")
                    dst.copy_(src.to(dst.device, torch.float32))

    def parameters_of(self, prefix: str | None) -> list[torch.nn.Parameter]:
        """The parameters of layers whose name starts with ``prefix`` (``None``: the diffusion model's)."""
        out = []
        for layer in self.layers:
            te = layer.name.startswith("text_encoders.")
            if (prefix is None and not te) or (prefix is not None and layer.name.startswith(prefix)):
                out += list(layer.params.values())
        return out

    def _draw(self, layer: AdapterLayer) -> DropDraw | None:
        if self._micro_batch is None:
            return None
        return DropDraw(self.rates, generator(self.seed, "dropout", self._micro_batch, layer.name))

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Add every layer's output delta to its target's output for the duration of the block."""
        handles = []

        def hook_for(layer: AdapterLayer):
            def hook(module, args, output):
                delta = layer.output_delta(module, args[0], output, self._draw(layer))
                return output if delta is None else output + delta.to(output.dtype)
            return hook

        try:
            for target, layer in zip(self.targets, self.layers):
                handles.append(target.module.register_forward_hook(hook_for(layer)))
            yield
        finally:
            for h in handles:
                h.remove()


def _pack_activation(t: torch.Tensor):
    # A computed activation may be changed in place after autograd saved it; weights and inputs are not.
    return t.clone() if t.grad_fn is not None else t


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


@contextlib.contextmanager
def saved_activation_copies(enabled: bool = True) -> Iterator[None]:
    """Autograd saves copies of the activations it needs for the backward pass, for the block.

    Model code written for inference updates activations in place (ComfyUI's Flux/Chroma blocks do
    ``img += gate * attn(...)`` on the tensor their LayerNorm saved), which autograd refuses in the backward
    pass ("modified by an inplace operation"). With a copy saved instead, the model runs unchanged; the cost
    is one copy of each saved activation (the frozen weights and the inputs are saved as they are).
    """
    if not enabled:
        yield
        return
    with torch.autograd.graph.saved_tensors_hooks(_pack_activation, _unpack):
        yield


Rebuild = Callable[[list[torch.Tensor]], tuple[tuple, dict]]


def _split(args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], Rebuild]:
    """The tensors among ``args``/``kwargs`` and a function that puts others in their places."""
    names = [("a", i) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    names += [("k", k) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    tensors = [args[i] if kind == "a" else kwargs[i] for kind, i in names]

    def rebuild(values: list[torch.Tensor]) -> tuple[tuple, dict]:
        new_args, new_kwargs = list(args), dict(kwargs)
        for (kind, i), v in zip(names, values):
            if kind == "a":
                new_args[i] = v
            else:
                new_kwargs[i] = v
        return tuple(new_args), new_kwargs

    return tensors, rebuild


class _BlockCheckpoint(torch.autograd.Function):
    """Run a block without keeping its activations; in the backward pass run it again with autograd (and
    :func:`saved_activation_copies`, which the caller keeps active) and back-propagate through it.

    The block's tensor arguments and the adapter parameters inside it are the Function's inputs, so their
    gradients come back through it; the block is called with copies of its tensor arguments, so a block
    that updates its input in place leaves the saved input as it was.
    """

    @staticmethod
    def forward(ctx, run, rebuild, n_inputs, *tensors):
        ctx.run, ctx.rebuild, ctx.n_inputs = run, rebuild, n_inputs
        device = tensors[0].device.type if tensors else "cpu"
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            args, kwargs = rebuild([t.clone() for t in tensors[:n_inputs]])
            out = run(*args, **kwargs)
        ctx.single = isinstance(out, torch.Tensor)
        outs = (out,) if ctx.single else tuple(out)
        if not all(isinstance(o, torch.Tensor) for o in outs):
            raise TypeError("gradient checkpointing needs a block that returns tensors")
        return outs[0] if ctx.single else outs

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in saved[:ctx.n_inputs]]
        params = list(saved[ctx.n_inputs:])
        device, enabled, dtype = ctx.autocast
        autocast = torch.autocast(device, dtype=dtype) if enabled else contextlib.nullcontext()
        with torch.enable_grad(), autocast:
            args, kwargs = ctx.rebuild([t.clone() for t in inputs])
            out = ctx.run(*args, **kwargs)
        outs = (out,) if ctx.single else tuple(out)
        pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad and g is not None]
        wanted = [t for t in inputs + params if t.requires_grad]
        if pairs and wanted:
            outputs, out_grads = [o for o, _ in pairs], [g for _, g in pairs]
            got = iter(torch.autograd.grad(outputs, wanted, out_grads, allow_unused=True))
        else:
            got = iter([None] * len(wanted))
        result = [next(got) if t.requires_grad else None for t in inputs + params]
        return (None, None, None, *result)


@contextlib.contextmanager
def checkpointed(blocks: Iterable[torch.nn.Module], enabled: bool = True,
                 params_in: Callable[[torch.nn.Module], list[torch.nn.Parameter]] | None = None
                 ) -> Iterator[None]:
    """Gradient checkpointing of ``blocks``: their activations are recomputed in the backward pass.

    ``params_in(block)``: the trainable parameters used inside ``block`` (the adapters on its layers), whose
    gradients come back through the recomputation. torch's own checkpoint is not used: its recomputation
    keeps references to the tensors it saves, which a block that updates activations in place (ComfyUI's
    Flux blocks) changes before the backward pass reads them; see :class:`_BlockCheckpoint`.
    """
    patched = []
    try:
        if enabled:
            for block in blocks:
                original = block.forward
                params = list(params_in(block)) if params_in is not None else []

                def forward(*args, _original=original, _params=params, **kwargs):
                    if not torch.is_grad_enabled():
                        return _original(*args, **kwargs)
                    tensors, rebuild = _split(args, kwargs)
                    return _BlockCheckpoint.apply(_original, rebuild, len(tensors), *tensors, *_params)

                block.forward = forward
                patched.append(block)
        yield
    finally:
        for block in patched:
            del block.forward
