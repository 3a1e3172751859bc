"""Trainable LoRA / LoCon layers beside a frozen model, attached through forward hooks.

Each target layer ``W`` (a ``Linear`` or ``Conv2d`` of the diffusion model) gets a :class:`LoraLayer`
with fp32 master weights, kohya's layout and initialisation (sd-scripts ``networks/lora.py``):

* ``down: (r, in)`` for a Linear, ``(r, in, kh, kw)`` for a conv (LoCon: the conv's own kernel, stride,
  padding and dilation); ``up: (out, r)`` / ``(out, r, 1, 1)``;
* ``down`` is drawn like ``kaiming_uniform_(a=sqrt(5))`` (uniform in ``+-1/sqrt(fan_in)``) from a
  generator seeded by ``(seed, layer name)``, ``up`` starts at zero, so training starts from the model;
* the layer's output becomes ``W(x) + (alpha / r) * up(down(x))`` (bypass form: no full-size delta is
  formed), which equals the merged weight ``W + (alpha / r) * up @ down`` that every loader applies.

:meth:`LoraNetwork.attached` registers the hooks for a ``with`` block and always removes them, so the
shared torch module is left as it was. :func:`checkpointed` does the same for gradient checkpointing.
Everything here is host-free: the caller hands in the torch module and names.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from ..lora_ops.adapters import LoraWeights, lora_scale
from .data import generator
from .settings import TrainSettingsError

_ATTENTION = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_MLP = re.compile(r"\.ff\.net\.(0\.proj|2)$")
_TRANSFORMER_PROJ = re.compile(r"(^|\.)(proj_in|proj_out)$")
# The UNet's blocks, without its input conv (input_blocks.0); the output conv and timestep embedding lie
# outside them. kohya's sd-scripts trains the same set (its ResBlock/Transformer/Down/Upsample modules).
_UNET_BLOCK = re.compile(r"^(input_blocks\.([1-9]|\d\d+)|middle_block|output_blocks\.\d+)\.")


@dataclass(frozen=True)
class TargetLayer:
    """A layer to train: its path inside the diffusion model and the module itself."""

    name: str
    module: torch.nn.Module

    @property
    def kind(self) -> str:
        if isinstance(self.module, torch.nn.Linear):
            return "linear"
        k = self.module.kernel_size
        return "conv1x1" if tuple(k) == (1, 1) else "conv"


def _is_trainable_kind(module: torch.nn.Module, algorithm: str) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    if isinstance(module, torch.nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            return False
        return algorithm == "locon" or tuple(module.kernel_size) == (1, 1)
    return False


def select_targets(model: torch.nn.Module, *, algorithm: str, targets: str,
                   block_factor: Callable[[str], float] | None = None) -> list[TargetLayer]:
    """The layers a run trains, sorted by name.

    ``attention``: the q/k/v/out projections of self- and cross-attention; ``attention+mlp``: every
    Linear and 1x1 conv of the transformer blocks (attention, feed-forward, ``proj_in``/``proj_out``;
    kohya's default LoRA targets); ``all linear and conv``: every Linear and Conv2d in the UNet's blocks
    (not the input and output convs or the timestep embedding, as kohya); ``block selection``: like
    ``all`` but only in blocks where ``block_factor(name + '.weight')`` is not 0.
    ``lora`` trains Linear and 1x1 convs; ``locon`` adds convs with larger kernels.
    """
    out = []
    for name, module in model.named_modules():
        if not name or not _is_trainable_kind(module, algorithm):
            continue
        if targets == "attention":
            keep = bool(_ATTENTION.search(name))
        elif targets == "attention+mlp":
            keep = bool(_ATTENTION.search(name) or _MLP.search(name) or _TRANSFORMER_PROJ.search(name))
        elif targets == "all linear and conv":
            keep = bool(_UNET_BLOCK.match(name))
        elif targets == "block selection":
            keep = (bool(_UNET_BLOCK.match(name)) and block_factor is not None
                    and block_factor(f"diffusion_model.{name}.weight") != 0.0)
        else:
            raise TrainSettingsError(f"unknown targets '{targets}'.", "pick one of the listed options.")
        if keep:
            out.append(TargetLayer(name, module))
    return sorted(out, key=lambda t: t.name)


def _dims(module: torch.nn.Module) -> tuple[int, int, tuple[int, ...]]:
    w = module.weight
    return int(w.shape[0]), int(w.shape[1]), tuple(int(k) for k in w.shape[2:])


class LoraLayer(torch.nn.Module):
    """``delta(x) = (alpha / r) * up(down(x))`` beside one frozen Linear or Conv2d (fp32 master weights)."""

    def __init__(self, target: TargetLayer, rank: int, alpha: float, seed: int, device=None):
        super().__init__()
        out_f, in_f, kernel = _dims(target.module)
        self.name = target.name
        self.is_conv = isinstance(target.module, torch.nn.Conv2d)
        self.alpha = float(alpha)
        self.scale = lora_scale(alpha, rank)
        if self.is_conv:
            m = target.module
            self.conv_args = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation}
            down_shape, up_shape = (rank, in_f, *kernel), (out_f, rank, 1, 1)
        else:
            self.conv_args = {}
            down_shape, up_shape = (rank, in_f), (out_f, rank)
        fan_in = in_f * math.prod(kernel)
        bound = 1.0 / math.sqrt(fan_in)
        gen = generator(seed, "init", target.name)
        down = (torch.rand(down_shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
        self.down = torch.nn.Parameter(down.to(device))
        self.up = torch.nn.Parameter(torch.zeros(up_shape, dtype=torch.float32, device=device))

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down, up = self.down.to(x.dtype), self.up.to(x.dtype)
        if self.is_conv:
            return F.conv2d(F.conv2d(x, down, **self.conv_args), up) * self.scale
        return F.linear(F.linear(x, down), up) * self.scale

    def weights(self) -> LoraWeights:
        """The trained factors as the pack's adapter type (fp32 copies)."""
        return LoraWeights(up=self.up.detach().float().cpu().clone(), down=self.down.detach().float().cpu().clone(),
                           alpha=self.alpha)


class LoraNetwork(torch.nn.Module):
    """Every :class:`LoraLayer` of a run, in name order (the optimizer's parameter order)."""

    def __init__(self, targets: Iterable[TargetLayer], rank: int, alpha: float, seed: int, device=None):
        super().__init__()
        self.targets = list(targets)
        self.layers = torch.nn.ModuleList(LoraLayer(t, rank, alpha, seed, device) for t in self.targets)

    def master_state(self) -> dict[str, torch.Tensor]:
        """fp32 factors keyed ``<layer name>.down`` / ``.up`` (what the training state file stores)."""
        out = {}
        for layer in self.layers:
            out[f"{layer.name}.down"] = layer.down.detach().cpu().clone()
            out[f"{layer.name}.up"] = layer.up.detach().cpu().clone()
        return out

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
                for part in ("down", "up"):
                    src = state[f"{layer.name}.{part}"]
                    dst = getattr(layer, part)
                    if src.shape != dst.shape:
                        raise TrainSettingsError(
                            f"Layer {layer.name}.{part} has shape {tuple(src.shape)} in the checkpoint, "
                            f"{tuple(dst.shape)} here.", "resume on the base model the checkpoint was trained on.")
                    dst.copy_(src.to(dst.device, torch.float32))

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Add every layer's delta to its target's output for the duration of the block."""
        handles = []

        def hook_for(layer: LoraLayer):
            def hook(module, args, output):
                return output + layer.delta(args[0]).to(output.dtype)
            return hook

        try:
            for target, layer in zip(self.targets, self.layers):
                handles.append(target.module.register_forward_hook(hook_for(layer)))
            yield
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def checkpointed(blocks: Iterable[torch.nn.Module], enabled: bool = True) -> Iterator[None]:
    """Gradient checkpointing of ``blocks`` (recompute their activations in the backward pass)."""
    patched = []
    try:
        if enabled:
            for block in blocks:
                original = block.forward

                def forward(*args, _original=original, **kwargs):
                    if not torch.is_grad_enabled():
                        return _original(*args, **kwargs)
                    return torch.utils.checkpoint.checkpoint(_original, *args, use_reentrant=False, **kwargs)

                block.forward = forward
                patched.append(block)
        yield
    finally:
        for block in patched:
            del block.forward


def unet_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of an LDM UNet to checkpoint: every ``input_blocks``/``output_blocks`` entry and the middle block."""
    blocks = []
    for name in ("input_blocks", "output_blocks"):
        blocks += list(getattr(model, name, []))
    middle = getattr(model, "middle_block", None)
    if middle is not None:
        blocks.append(middle)
    return blocks


def check_rank(targets: list[TargetLayer], rank: int) -> None:
    """A rank above a layer's smaller side trains nothing more and wastes memory: refuse it."""
    too_small = []
    for t in targets:
        out_f, in_f, kernel = _dims(t.module)
        limit = min(out_f, in_f * math.prod(kernel))
        if rank > limit:
            too_small.append((t.name, limit))
    if too_small:
        name, limit = min(too_small, key=lambda x: x[1])
        raise TrainSettingsError(
            f"rank {rank} is larger than {len(too_small)} target layer(s) allow (e.g. {name}: at most {limit}).",
            f"use a rank of at most {limit}, or other targets.")
