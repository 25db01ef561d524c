"""Pieces used identically by several families (STYLE.md: "a block used identically by two families moves here")."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from genforge.errors import UserError


def class_ids(n: int, cond: Any, num_classes: int, device: torch.device, family: str) -> Tensor | None:
    """`cond` of a class-conditional `sample` as n class ids (int64 (n,)): a class id, a sequence/tensor of n ids,
    or None. None on a conditional model cycles through the classes 0, 1, ..., so a grid with num_classes columns
    shows one class per column; on an unconditional model (num_classes 0) None stays None."""
    if cond is None:
        return torch.arange(n, device=device) % num_classes if num_classes else None
    if not num_classes:
        raise UserError(f"this {family} model is unconditional (model.num_classes = 0); drop --class")
    labels = torch.as_tensor(cond, device=device, dtype=torch.long)
    labels = labels.expand(n) if labels.ndim == 0 else labels
    if labels.shape != (n,):
        raise UserError(f"--class: expected one class id or {n} ids, got shape {tuple(labels.shape)}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise UserError(f"--class {bad[0].item()} is out of range; this model has classes 0..{num_classes - 1}")
    return labels


def check_image_data(dataset: Any, channels: int, image_size: int, num_classes: int) -> None:
    """The data set the trainer loaded must have the image shape and the classes an image model is built for."""
    c, h, w = dataset.image_shape
    if (c, h, w) != (channels, image_size, image_size):
        raise UserError(
            f"data set {dataset.name} has images of shape {(c, h, w)} but the model makes "
            f"{(channels, image_size, image_size)}; set `data.image_size: {image_size}` and "
            f"`data.channels: {channels}` to convert the data, or change `model.image_size`/`model.channels`"
        )
    if num_classes:
        if dataset.labels is None:
            raise UserError(f"`model.num_classes` is {num_classes} but {dataset.name} has no labels; "
                            "set model.num_classes: 0 or use labelled data (imagefolder with class subfolders)")
        if dataset.num_classes != num_classes:
            raise UserError(f"`model.num_classes` ({num_classes}) differs from the {dataset.num_classes} "
                            f"classes of {dataset.name}; set model.num_classes: {dataset.num_classes}")


def image_size_problems(run: Any, image_size: int, channels: int) -> list[str]:
    """Cross-section checks of an image model's `model:` against `data:`, reported with the config's others."""
    problems = []
    if run.data.image_size is not None and run.data.image_size != image_size:
        problems.append(f"`data.image_size` ({run.data.image_size}) differs from `model.image_size` ({image_size}); "
                        f"set both to the same value")
    if run.data.channels is not None and run.data.channels != channels:
        problems.append(f"`data.channels` ({run.data.channels}) differs from `model.channels` ({channels})")
    return problems


# Gaussian posteriors of the VAE families (models/vae.py, models/text_vae.py)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) || N(0, 1)) per latent dimension (K&W 2014, appendix B), (B, D) -> (B, D)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; μ, diag σ²) summed over the last dimension."""
    return (-0.5 * ((z - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))).sum(-1)


def importance_weighted(mu: Tensor, logvar: Tensor, k: int, chunk: int, generator: torch.Generator | None,
                        log_px_given_z: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """The importance-weighted bound log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x) (Burda et al. 2016, eq. 8) with
    z_i ~ q(z|x) = N(μ, diag σ²) drawn `chunk` at a time, and log p(x|z_1) of the first draw (the ELBO's
    reconstruction term). log_px_given_z: z (kc, B, D) -> (kc, B). Returns both (B,) in float64."""
    std = torch.exp(0.5 * logvar)
    log_weights: list[Tensor] = []
    first: Tensor | None = None
    for start in range(0, k, chunk):
        kc = min(chunk, k - start)
        eps = torch.randn((kc, *mu.shape), generator=generator, device=mu.device)  # (kc, B, D)
        z = mu + std * eps
        log_px = log_px_given_z(z)  # (kc, B)
        if first is None:
            first = log_px[0]
        log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        log_weights.append(log_px + log_pz - log_normal(z, mu, logvar))
    assert first is not None
    weights = torch.cat(log_weights).double()  # (k, B)
    return torch.logsumexp(weights, 0) - math.log(k), first.double()
