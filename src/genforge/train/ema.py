"""Exponential moving average of chosen sub-modules (e.g. a GAN's generator), used for sampling.

theta_ema <- decay * theta_ema + (1 - decay) * theta after every step (Karras et al. 2018; Yazici et al. 2019).
Buffers (BatchNorm running statistics, spectral-norm vectors) are copied, not averaged, as StudioGAN does.
Until `start` steps the EMA simply copies the weights, so early noise does not linger.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class EMA:
    def __init__(self, model: nn.Module, module_names: tuple[str, ...], decay: float, start: int = 0):
        self.module_names = module_names
        self.decay = decay
        self.start = start
        # The live parameters and buffers, looked up once: the trainer moves the model to its device before making
        # the EMA, and training and loading update these tensors in place, so the references stay valid.
        self.live: dict[str, Tensor] = {}
        for name in module_names:
            for key, value in model.get_submodule(name).state_dict(keep_vars=True).items():
                self.live[f"{name}.{key}"] = value
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in self.live.items()}
        self._param_names = {
            f"{name}.{p}" for name in module_names for p, _ in model.get_submodule(name).named_parameters()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        for key, shadow in self.shadow.items():
            value = self.live[key].detach()
            if key in self._param_names and step >= self.start and shadow.is_floating_point():
                shadow.lerp_(value, 1.0 - self.decay)  # shadow = decay * shadow + (1 - decay) * value
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        unexpected = set(state) - set(self.shadow)
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        for key, value in state.items():
            self.shadow[key].copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into `model` (restored exactly afterwards)."""
        live = self.live
        backup = {k: v.detach().clone() for k, v in live.items()}
        with torch.no_grad():
            for key, value in self.shadow.items():
                live[key].data.copy_(value)
        try:
            yield model
        finally:
            with torch.no_grad():
                for key, value in backup.items():
                    live[key].data.copy_(value)
