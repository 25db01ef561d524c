"""Optimizers per parameter group and the learning-rate schedule (a pure function of the step, so resuming needs
no scheduler state).

`train.optim.name: muon` is the NanoGPT speedrun's optimizer split (Jordan et al. 2024, "Muon: An optimizer for
hidden layers in neural networks"): PyTorch's `torch.optim.Muon` (momentum, then the update orthogonalized by 5
Newton-Schulz iterations) for the model's hidden weight matrices, and AdamW for everything else (embeddings, the
output layer, gains and biases). A family names its hidden matrices with `matrix_parameters()`; without it, every
2-D weight of an `nn.Linear` counts. Both halves follow the one LR schedule: Muon's groups keep the ratio
muon_lr / lr (`lr_scale`)."""
from __future__ import annotations

import math
from typing import Any

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


def build_optimizer(model: nn.Module, group: str, params: list[nn.Parameter], cfg: OptimSection) -> Any:
    # A family may split its parameters into decay / no-decay sets (GPT: no weight decay on biases and norms).
    split = getattr(model, "optimizer_param_groups", None)
    param_groups = split(params, cfg.weight_decay) if split is not None else [{"params": params}]
    # The fused kernels update all parameters in one pass (CPU and CUDA); the default on CPU is a Python loop over
    # parameters, which dominates the step time of small models.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    if cfg.name == "muon":
        return _muon_with_adamw(model, params, cfg, fused)
    if cfg.name == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 fused=fused)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.betas[0], weight_decay=cfg.weight_decay, fused=fused)


def matrix_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The hidden weight matrices Muon trains: the family's `matrix_parameters()`, else every Linear's 2-D weight."""
    declared = getattr(model, "matrix_parameters", None)
    if declared is not None:
        return list(declared())
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


class MuonWithAdamW:
    """One optimizer to the trainer: Muon for the matrices, AdamW for the rest, stepped, zeroed, saved and restored
    together. `param_groups` lists AdamW's groups first (the logged lr is AdamW's)."""

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Optimizer):
        self.adamw, self.muon = adamw, muon

    @property
    def param_groups(self) -> list[dict]:
        return [*self.adamw.param_groups, *self.muon.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.adamw.step()
        self.muon.step()

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"adamw", "muon"}:
            raise UserError("the checkpoint's optimizer state is not Muon + AdamW (train.optim.name was changed since "
                            "it was written); resume with the optimizer it was trained with")
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])


def _muon_with_adamw(model: nn.Module, params: list[nn.Parameter], cfg: OptimSection, fused: bool | None) -> Any:
    in_group = {id(p) for p in params}
    matrices = [p for p in matrix_parameters(model) if id(p) in in_group]
    bad = [tuple(p.shape) for p in matrices if p.dim() != 2]
    if bad:
        raise UserError(f"train.optim.name = muon orthogonalizes 2-D weight matrices, but this model declares "
                        f"parameters of shape {bad[0]} among its matrices; use adamw for this model")
    if not matrices:
        raise UserError("train.optim.name = muon: this model has no hidden weight matrices for Muon; use adamw")
    chosen = {id(p) for p in matrices}
    rest = [p for p in params if id(p) not in chosen]
    split = getattr(model, "optimizer_param_groups", None)
    groups = split(rest, cfg.weight_decay) if split is not None else [{"params": rest}]
    groups = [g for g in groups if g["params"]]
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                              fused=fused)
    muon = torch.optim.Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                            nesterov=True, adjust_lr_fn="original")
    for group in muon.param_groups:
        group["lr_scale"] = cfg.muon_lr / cfg.lr  # set_lr keeps Muon's ratio to the scheduled lr
    return MuonWithAdamW(adamw, muon)


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


def set_lr(optimizer: Any, lr: float) -> None:
    """The scheduled lr on every group (times the group's `lr_scale`: Muon's groups under name muon)."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr * param_group.get("lr_scale", 1.0)
