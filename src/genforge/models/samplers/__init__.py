"""Samplers of the diffusion family, one algorithm per file (diffusers' layout): each is a function

    sample(denoise, alphas_cumprod, timesteps, x, generator=None, **options) -> x_0

`denoise(x_t, t) -> (eps, x0)` is the only thing a sampler knows about the model: the predicted noise and clean image
at integer training timestep t (the family converts its ε- or v-prediction and applies classifier-free guidance
inside it). `alphas_cumprod` is ᾱ_t (float64, (T,)) of the training schedule, `timesteps` the decreasing timesteps to
visit (the first is where x ~ N(0, I) starts), and each sampler's last update goes to the clean image (ᾱ = 1).
"""
from __future__ import annotations

from typing import Any

import torch

# sampler name -> "module:function"; the names are the values of `sample.sampler`
SAMPLERS: dict[str, str] = {
    "ddpm": "genforge.models.samplers.ddpm:sample",
    "ddim": "genforge.models.samplers.ddim:sample",
    "dpm++2m": "genforge.models.samplers.dpm_solver:sample",
}


def get(name: str) -> Any:
    from genforge.registry import import_target

    return import_target(SAMPLERS[name])


def timestep_schedule(alphas_cumprod: torch.Tensor, steps: int, spacing: str = "uniform") -> list[int]:
    """The decreasing timesteps a sampler visits, the first at the pure-noise end T-1 and the last at 0.

    "uniform": `steps` timesteps evenly spaced in t (rounded), the "trailing" spacing Lin et al. 2024 (table 2)
    recommend so that few-step sampling starts from noise the model was trained on. "logsnr": evenly spaced in
    λ = log(α/σ), which Lu et al. 2022 (DPM-Solver, sec. 3.4) recommend for low-resolution images; the nearest
    training timestep is taken and repeats are dropped, so near T a large `steps` may visit fewer timesteps."""
    t_max = len(alphas_cumprod) - 1
    if steps == 1:
        return [t_max]
    if spacing == "uniform":
        grid = torch.linspace(t_max, 0, steps, dtype=torch.float64).round().long()
        return [int(t) for t in grid]
    a = alphas_cumprod.double()
    lam = 0.5 * (torch.log(a) - torch.log1p(-a))  # increasing as t decreases
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    chosen = [int((lam - v).abs().argmin()) for v in targets]
    return list(dict.fromkeys(chosen))  # in order, without repeats


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: int) -> float:
    """ᾱ_t, with ᾱ_{-1} = 1 (the clean image) for the step after the last timestep."""
    return 1.0 if t < 0 else float(alphas_cumprod[t])
