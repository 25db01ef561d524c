"""Optimizers per parameter group and the learning-rate schedule (a pure function of the step, so resuming needs
no scheduler state).

`train.optim.name: muon` is the NanoGPT speedrun's optimizer split (Jordan et al. 2024, "Muon: An optimizer for
hidden layers in neural networks"): Muon (momentum, then the update orthogonalized by 5 Newton-Schulz iterations) for
the model's hidden weight matrices, and AdamW for everything else (embeddings, the output layer, gains and biases).
Muon here is `Muon` below, which computes what `torch.optim.Muon` computes except for the orthogonalization's
precision: PyTorch always casts it to bf16, which on a CPU without native bf16 (AVX2) is emulated, so a baby-GPT
step took 1.57 s with torch.optim.Muon against 0.13 s with AdamW on this machine; genforge orthogonalizes in
bf16 on CUDA and in fp32 on CPUs (tests/test_speedrun.py checks it equals torch.optim.Muon at bf16). A family
names its hidden matrices with `matrix_parameters()`; without it, every 2-D weight of an `nn.Linear` counts.
Both halves follow the one LR schedule: Muon's groups keep the ratio muon_lr / lr (`lr_scale`)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from genforge.config import OptimOverride, OptimSection
from genforge.errors import UserError
from genforge.registry import unknown_name_message


def group_settings(base: OptimSection, overrides: dict[str, OptimOverride],
                   groups: list[str]) -> dict[str, OptimSection]:
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


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic iteration of Jordan et al. (and of torch.optim.Muon)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Newton-Schulz approximation of U V^T for G = U S V^T (Jordan et al. 2024): X <- aX + (bA + cA^2)X with
    A = X X^T, after scaling G to spectral norm <= 1 (by its Frobenius norm); on the wide orientation, so A is the
    smaller Gram matrix. The quintic's coefficients push small singular values up fast; the result's singular values
    land in about [0.7, 1.2], which trains as well as the exact U V^T. g: one matrix (r, c) or a stack (n, r, c) of
    same-shape matrices, each orthogonalized on its own; computed in `dtype` (default: g's)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype or g.dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights: B <- μB + G; the update U = G + μB (Nesterov) or B, orthogonalized (`orthogonalize`);
    decoupled weight decay W <- W(1 - lr·λ); then W <- W - lr·sqrt(max(1, rows/cols))·orth(U) (Keller Jordan's
    shape scaling, torch.optim.Muon's adjust_lr_fn="original"). `ns_dtype`: the orthogonalization's precision
    (None: bf16 on CUDA, fp32 elsewhere; see the module docstring)."""

    def __init__(self, params: Any, lr: float = 0.02, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, eps: float = 1e-7, ns_dtype: torch.dtype | None = None):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                                  "ns_steps": ns_steps, "eps": eps})
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            # 1. momentum, per matrix; then the updates of same-shape matrices are orthogonalized as one stack (a
            #    Transformer has a few shapes: one batched iteration per shape instead of one per matrix)
            by_shape: dict[tuple[Any, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2:
                    raise ValueError(f"Muon updates 2-D weight matrices; got a parameter of shape {tuple(p.shape)}")
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                update = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                by_shape.setdefault((*p.shape, str(p.device), p.dtype), []).append((p, update))
            # 2. decoupled weight decay, then the shape-scaled orthogonal step
            for pairs in by_shape.values():
                params = [p for p, _ in pairs]
                dtype = self.ns_dtype or (torch.bfloat16 if params[0].is_cuda else torch.float32)
                ortho = orthogonalize(torch.stack([u for _, u in pairs]), group["ns_steps"], group["eps"], dtype)
                scale = max(1.0, params[0].size(0) / params[0].size(1)) ** 0.5
                for p, o in zip(params, ortho):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(o, alpha=-group["lr"] * scale)


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
    muon = Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum, nesterov=True)
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
