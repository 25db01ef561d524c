"""Optimizers per parameter group and the learning-rate schedule (a pure function of the step, so resuming needs
no scheduler state)."""
from __future__ import annotations

import math

import torch
from torch import nn

from genforge.config import OptimOverride, OptimSection
from genforge.errors import UserError
from genforge.registry import unknown_name_message


def group_settings(base: OptimSection, overrides: dict[str, OptimOverride], groups: list[str]) -> dict[str, OptimSection]:
    """`train.optim` merged with `train.groups.<name>` for each of the model's parameter groups."""
    for name in overrides:
        if name not in groups:
            raise UserError("`train.groups`: " + unknown_name_message("parameter group", name, groups))
    settings = {}
    for group in groups:
        changes = overrides[group].model_dump(exclude_none=True) if group in overrides else {}
        settings[group] = base.model_copy(update=changes)
    return settings


def build_optimizer(model: nn.Module, group: str, params: list[nn.Parameter], cfg: OptimSection) -> torch.optim.Optimizer:
    # A family may split its parameters into decay / no-decay sets (GPT: no weight decay on biases and norms).
    split = getattr(model, "optimizer_param_groups", None)
    param_groups = split(params, cfg.weight_decay) if split is not None else [{"params": params}]
    # The fused kernels update all parameters in one pass (CPU and CUDA); the default on CPU is a Python loop over
    # parameters, which dominates the step time of small models.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    if cfg.name == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 fused=fused)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.betas[0], weight_decay=cfg.weight_decay, fused=fused)


def learning_rate(cfg: OptimSection, step: int, total_steps: int) -> float:
    """LR for optimizer step `step` (0-based): linear warmup to cfg.lr, then constant / cosine / linear decay to
    cfg.min_lr over `decay_steps` (default: the whole run), as in nanoGPT's get_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = cfg.decay_steps or total_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        coeff = 1.0 - progress
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
