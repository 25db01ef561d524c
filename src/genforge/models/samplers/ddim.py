"""DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502): the non-Markovian sampler of a DDPM-trained model, eq. 12

    x_s = sqrt(ᾱ_s) · x0  +  sqrt(1 - ᾱ_s - σ²) · ε  +  σ · z,     z ~ N(0, I)

with σ = η · sqrt((1 - ᾱ_s) / (1 - ᾱ_t)) · sqrt(1 - ᾱ_t / ᾱ_s)   (eq. 16). η = 0 is the deterministic DDIM (an ODE
solver, so a seed's image is the same at any number of steps, up to discretization); η = 1 is DDPM's ancestral
variance. The last step (ᾱ_s = 1) returns the predicted x0.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from genforge.models.samplers import alpha_bar_at


def sample(denoise: Callable[[Tensor, int], tuple[Tensor, Tensor]], alphas_cumprod: Tensor, timesteps: list[int],
           x: Tensor, generator: torch.Generator | None = None, eta: float = 0.0, **_: object) -> Tensor:
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t, a_s = alpha_bar_at(alphas_cumprod, t), alpha_bar_at(alphas_cumprod, s)
        eps, x0 = denoise(x, t)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)  # eq. 16
        direction = math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps  # "direction pointing to x_t"
        x = math.sqrt(a_s) * x0 + direction
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x
