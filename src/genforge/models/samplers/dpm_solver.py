"""DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2): a second-order multistep solver of the
diffusion ODE in its data-prediction form, good images in 10-25 model evaluations.

With α_t = sqrt(ᾱ_t), σ_t = sqrt(1 - ᾱ_t), λ_t = log(α_t / σ_t) and h_i = λ_{t_i} - λ_{t_{i-1}}:

    first step:   x_{t_i} = (σ_{t_i} / σ_{t_{i-1}}) x_{t_{i-1}} - α_{t_i} (e^{-h_i} - 1) x0_{i-1}            (eq. 5, k=1)
    later steps:  r_i = h_{i-1} / h_i,   D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}
                  x_{t_i} = (σ_{t_i} / σ_{t_{i-1}}) x_{t_{i-1}} - α_{t_i} (e^{-h_i} - 1) D_i                  (Alg. 2)

The model is evaluated once per visited timestep; the final update goes to σ = 0 (the clean image), where the
first-order formula gives the last predicted x0 exactly (the "lower order final step" that keeps few-step sampling
stable).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from genforge.models.samplers import alpha_bar_at


def sample(denoise: Callable[[Tensor, int], tuple[Tensor, Tensor]], alphas_cumprod: Tensor, timesteps: list[int],
           x: Tensor, generator: torch.Generator | None = None, **_: object) -> Tensor:
    def lam(a_bar: float) -> float:  # λ = log(α / σ)
        return 0.5 * math.log(a_bar) - 0.5 * math.log1p(-a_bar)

    previous_x0: Tensor | None = None
    previous_h: float | None = None
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        _, x0 = denoise(x, t)
        if s < 0:
            return x0  # σ_s = 0: x_s = x0 (first order, lower-order final step)
        a_t, a_s = alpha_bar_at(alphas_cumprod, t), alpha_bar_at(alphas_cumprod, s)
        sigma_t, sigma_s, alpha_s = math.sqrt(1 - a_t), math.sqrt(1 - a_s), math.sqrt(a_s)
        h = lam(a_s) - lam(a_t)
        if previous_x0 is None:
            d = x0
        else:
            assert previous_h is not None
            r = previous_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
        x = (sigma_s / sigma_t) * x - alpha_s * math.expm1(-h) * d
        previous_x0, previous_h = x0, h
    return x
