"""How a host layer maps its input to its output, for code that runs a delta in the forward pass.

The weight sweep adds ``s_b * dW x_b`` to each batch row inside the layers a LoRA targets, and each
adapter kind can compute ``dW x`` without merging (``bypass``). Both need the layer's call geometry:
a linear layer, or a convolution with its stride, padding, dilation and groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import LoraLabError


@dataclass(frozen=True)
class LayerCall:
    """How the host layer maps its input to its output: ``linear`` or ``conv`` with its geometry."""

    kind: str  # "linear" | "conv"
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] | str = (0,)
    dilation: tuple[int, ...] = (1,)
    groups: int = 1

    @staticmethod
    def of(module: torch.nn.Module) -> LayerCall:
        """The call geometry of a torch ``Linear`` or ``Conv1d/2d/3d`` (or a subclass of one)."""
        if isinstance(module, torch.nn.Linear):
            return LayerCall("linear")
        if isinstance(module, torch.nn.modules.conv._ConvNd) and not module.transposed:
            if module.padding_mode != "zeros":
                raise LoraLabError(f"a convolution with padding_mode '{module.padding_mode}' cannot take a LoRA's "
                                   "delta in the forward pass.", "set the sweep's batch_mode to repatch.")
            return LayerCall("conv", tuple(module.stride), module.padding, tuple(module.dilation), module.groups)
        raise LoraLabError(f"the layer is a {type(module).__name__}, neither a Linear nor a Conv layer, so a LoRA's "
                           "delta cannot run in its forward pass.", "set the sweep's batch_mode to repatch.")

    @property
    def feature_dim(self) -> int:
        return -1 if self.kind == "linear" else 1

    def apply(self, x: torch.Tensor, weight: torch.Tensor, *, geometry: bool = True) -> torch.Tensor:
        """The layer's operation with ``weight`` and no bias: ``F.linear`` or ``conv{1,2,3}d`` with the
        layer's stride/padding/dilation/groups (``geometry=False``: a plain 1x1 convolution)."""
        if self.kind == "linear":
            return F.linear(x, weight.reshape(weight.shape[0], -1))
        fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[weight.dim()]
        if not geometry:
            return fn(x, weight)
        return fn(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
