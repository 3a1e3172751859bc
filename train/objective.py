"""The training loss, on the model's own prediction target, from the host's ``model_sampling``.

ComfyUI's ``model_sampling`` object (duck-typed here; no ComfyUI import) says how a model is noised
and what it predicts. Both are affine, which is all this module uses:

* ``noise_scaling(sigma, noise, x0) = c_x0 * x0 + c_n * noise``: ``x_t``; SNR = ``(c_x0 / c_n)**2``
  (eps/v: ``1 / sigma**2``; flow: ``((1 - sigma) / sigma)**2``);
* ``calculate_denoised(sigma, out, x_t) = a * x_t + b * out``: the model's output ``out`` is its native
  prediction (eps for EPS models, v for V_PREDICTION, the velocity ``noise - x0`` for flow/CONST).

``apply_model`` returns the denoised estimate, so the native prediction error is
``out - out_target = (denoised - x0) / b``, and the loss is its mean square: the usual eps/v/flow loss.
(Core's ``TrainLoraNode`` takes the mean square of ``denoised - x0`` instead: the same loss weighted by
``b**2``, i.e. ``sigma**2`` for eps models, which all but ignores low noise levels.)

Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
Strategy") weights the x0-space error by ``min(SNR, gamma)``; on the native loss that is the factor
``min(SNR, gamma) * b**2``: ``min(SNR, gamma) / SNR`` for eps, ``min(SNR, gamma) / (SNR + 1)`` for v,
as in the paper and kohya's sd-scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_KINDS = (("X0", "x0"), ("IMG_TO_IMG", "x0"), ("CONST", "flow"), ("EDM", "v (EDM)"), ("V_PREDICTION", "v"),
          ("EPS", "eps"))


def prediction_type(model_sampling) -> str:
    """``eps``, ``v``, ``flow`` or ``x0``: what the model predicts, from its sampling classes."""
    names = [c.__name__ for c in type(model_sampling).__mro__]
    for cls_name, kind in _KINDS:
        if cls_name in names:
            return kind
    return "unknown"


@dataclass
class Coefficients:
    """Per-sample ``(B, 1, 1, 1)`` factors: ``x_t = c_x0 x0 + c_n n``, ``denoised = a x_t + b out``."""

    c_x0: torch.Tensor
    c_n: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    @property
    def snr(self) -> torch.Tensor:
        return (self.c_x0 / self.c_n) ** 2


def coefficients(model_sampling, sigma: torch.Tensor) -> Coefficients:
    """Read the affine factors off the host's functions by evaluating them at 0 and 1."""
    shape = (sigma.shape[0], 1, 1, 1)
    one = torch.ones(shape, dtype=torch.float32, device=sigma.device)
    zero = torch.zeros(shape, dtype=torch.float32, device=sigma.device)
    with torch.no_grad():
        c_x0 = model_sampling.noise_scaling(sigma, zero.clone(), one.clone(), False)
        c_n = model_sampling.noise_scaling(sigma, one.clone(), zero.clone(), False)
        a = model_sampling.calculate_denoised(sigma, zero.clone(), one.clone())
        b = model_sampling.calculate_denoised(sigma, one.clone(), zero.clone())
    return Coefficients(*(t.reshape(shape).float() for t in (c_x0, c_n, a, b)))


def sample_sigmas(model_sampling, gen: torch.Generator, count: int) -> torch.Tensor:
    """Noise levels for ``count`` samples, uniform over the model's timesteps (``percent_to_sigma``)."""
    u = torch.rand(count, generator=gen, dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    return torch.tensor([float(model_sampling.percent_to_sigma(float(p))) for p in u], dtype=torch.float32)


def noisy_input(model_sampling, sigma: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return model_sampling.noise_scaling(sigma, noise.clone(), x0, False)


def native_target(coef: Coefficients, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The output the model should give: ``(x0 - a x_t) / b`` (the noise, for an eps model)."""
    return (x0 - coef.a * x_t) / coef.b


def loss_per_sample(denoised: torch.Tensor, x0: torch.Tensor, coef: Coefficients,
                    min_snr_gamma: float = 0.0) -> torch.Tensor:
    """Mean square error of the native prediction, ``(B,)``, min-SNR weighted when ``min_snr_gamma > 0``."""
    err = (denoised.float() - x0.float()) / coef.b
    loss = err.pow(2).mean(dim=tuple(range(1, err.ndim)))
    if min_snr_gamma > 0:
        snr = coef.snr.reshape(-1)
        weight = torch.clamp(snr, max=min_snr_gamma) * coef.b.reshape(-1) ** 2
        loss = loss * weight
    return loss
