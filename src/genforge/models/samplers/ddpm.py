"""DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239, Algorithm 2), on any subsequence of the training
timesteps by respacing (Nichol & Dhariwal 2021, arXiv:2102.09672, sec. 4).

Between consecutive visited timesteps t > s the step's own noise level is β = 1 - ᾱ_t / ᾱ_s (= β_t when s = t - 1).
Each step draws x_s from the forward process posterior q(x_s | x_t, x0) with the predicted x0 (Ho et al. eq. 6-7):

    mean     = sqrt(ᾱ_s) β / (1 - ᾱ_t) · x0  +  sqrt(1 - β) (1 - ᾱ_s) / (1 - ᾱ_t) · x_t        (eq. 7)
    variance = β (1 - ᾱ_s) / (1 - ᾱ_t)                                                     (β̃ of eq. 7)

or, with variance="large", the step's own β: the upper of the two fixed variances Ho et al. (sec. 3.2) found to
give similar results at 1,000 steps; with few respaced steps the difference between them is large. The last
step (s = -1, ᾱ_s = 1) adds no noise and returns the predicted x0.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from genforge.models.samplers import alpha_bar_at


def sample(denoise: Callable[[Tensor, int], tuple[Tensor, Tensor]], alphas_cumprod: Tensor, timesteps: list[int],
           x: Tensor, generator: torch.Generator | None = None, variance: str = "small", **_: object) -> Tensor:
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t, a_s = alpha_bar_at(alphas_cumprod, t), alpha_bar_at(alphas_cumprod, s)
        _, x0 = denoise(x, t)
        beta = 1.0 - a_t / a_s
        mean = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        if s < 0:
            x = mean  # the clean image: no noise is added after the last step
        else:
            var = beta * (1 - a_s) / (1 - a_t) if variance == "small" else beta
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + math.sqrt(var) * noise
    return x
