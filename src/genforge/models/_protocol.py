"""The one contract every model family implements (see DESIGN.md, "The model contract").

No base class is required: the trainer, the checkpoint code, the CLI and the contract tests only rely on the
attributes below, so a family is a plain ``nn.Module`` that happens to have them.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class GenerativeModel(Protocol):
    # What `sample` returns: images in [-1, 1] as (N, C, H, W), a list of strings, waveforms, or class labels
    # (the classifier behind the fast image metrics, a model of p(y | x) that needs images as `cond`).
    output_kind: ClassVar[Literal["image", "text", "audio", "label"]]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimizer group, e.g. {"model": ...} or {"discriminator": ..., "generator": ...}."""
        ...

    def loss(self, batch: dict[str, Tensor], group: str) -> dict[str, Tensor]:
        """Loss for one optimizer group; must contain "loss", other entries are logged."""
        ...

    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **options: Any) -> Any:
        ...


# Optional attributes a family may define; the trainer reads them with getattr and these defaults.
#
#   train_schedule: list[tuple[str, int, bool]]
#       (group, repeats, fresh_batch) in the order they run within one training step. Default: every group once,
#       each with a fresh batch. A GAN uses [("discriminator", n_critic, True), ("generator", 1, False)]: the
#       generator step reuses the last real batch (for its size and labels) instead of consuming new data.
#   ema_modules: tuple[str, ...]
#       Names of sub-modules whose weights the trainer averages (EMA) and sampling uses, e.g. ("generator",).
DEFAULT_EMA_MODULES: tuple[str, ...] = ()


def train_schedule(model: nn.Module) -> list[tuple[str, int, bool]]:
    schedule = getattr(model, "train_schedule", None)
    if schedule is None:
        return [(group, 1, True) for group in model.param_groups()]
    return list(schedule)


def ema_modules(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "ema_modules", DEFAULT_EMA_MODULES))
