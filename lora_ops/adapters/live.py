"""An adapter running beside its layer while it trains: the change it makes to the layer's output.

Training holds an adapter of the same kind classes the loaders read (:class:`LoraWeights`,
:class:`LohaWeights`, :class:`LokrWeights`, each with an optional DoRA ``magnitude``) whose tensors are
parameters that require grad. :func:`output_delta` computes, for the layer's input ``x``, what the adapter
adds to the layer's output, with the same kind methods the loaders use (``bypass``, ``delta``):

* plain kinds: ``dW x`` (``bypass``, or ``bypass_dropped`` with a training call's dropout);
* DoRA (output axis, LyCORIS' and PEFT's): ``(W' - W0) x = (f - 1) W0 x + f dW x`` with
  ``f = m / ||W0 + dW||`` per output channel (:func:`lora_ops.adapters.dora.dora_factor`), the weight
  :func:`lora_ops.adapters.effective_delta` merges. Dropout acts on ``dW x`` only; the norm is taken of the
  whole ``W0 + dW``, never of a dropped one, so with masks of mean 1 the expected output is the merged
  layer's. The norm is detached from the graph by default, as the DoRA paper (section 4.3) and PEFT do:
  it is treated as a constant in the backward pass (the forward value is exact).

Without dropout (``draw=None``) ``x -> W x + output_delta(x)`` equals the layer with
``W0 + effective_delta(adapter, W0.shape, base=W0)`` merged, up to float rounding.
"""

from __future__ import annotations

import torch

from ..layers import LayerCall
from .base import AdapterBase
from .dora import dora_factor, dora_output
from .dropout import DropDraw


def output_delta(adapter: AdapterBase, x: torch.Tensor, layer: LayerCall, shape, *,
                 draw: DropDraw | None = None, base_weight: torch.Tensor | None = None,
                 base_out: torch.Tensor | None = None, detach_norm: bool = True) -> torch.Tensor | None:
    """What ``adapter`` adds to the output of a layer with input ``x`` (``None``: module dropout skipped it).

    ``shape``: the layer's weight shape; for DoRA ``base_weight`` (``W0``) and ``base_out`` (``W0 x``, the
    layer's output without its bias) are required.
    """
    if draw is not None and draw.skip:
        return None
    direction = adapter.without_magnitude() if adapter.magnitude is not None else adapter
    if draw is not None:
        d_out = direction.bypass_dropped(x, layer, shape, draw)
    else:
        d_out = direction.bypass(x, layer, shape)
    if adapter.magnitude is None:
        return d_out
    if base_weight is None or base_out is None:
        raise ValueError("a DoRA adapter's output needs base_weight (W0) and base_out (W0 x)")
    delta = direction.delta(shape, dtype=torch.float32, device=base_weight.device)
    if detach_norm:
        delta = delta.detach()
    factor = dora_factor(base_weight, delta, adapter.magnitude)
    return dora_output(base_out, d_out, factor, layer.feature_dim)
