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
    # (the classifier behind the fast image metrics, a model of p(y | x) that needs images as `cond`), or captions of
    # given images (COCO results, [{"image_id", "caption"}]).
    output_kind: ClassVar[Literal["image", "text", "audio", "label", "caption"]]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimizer group, e.g. {"model": ...} or {"discriminator": ..., "generator": ...}."""
        ...

    def loss(self, batch: dict[str, Tensor], group: str) -> dict[str, Tensor]:
        """Loss for one optimizer group; must contain "loss", other entries are logged."""
        ...

    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **options: Any) -> Any:
        ...


# The family class also has `Config` (its `model:` section, a `config.ModelSection` with a `debug` preset) and may
# have these; the spine reads them with getattr and these defaults.
#
#   SampleOptions: type[config.SampleOptions]
#       The family's own keys of the `sample:` section, passed to `sample` as keyword arguments. Default: none.
#   conditioning: "class" | "prompt" | "image" | None
#       What `cond` of `sample` is: class ids (`--class`, sample.class_label), prompt text (`--prompt`,
#       sample.prompt), or the images to label or caption (`--image`). Default: None, unconditional.
#   count_examples(batch) -> int
#       What a training batch counts for throughput. Default: the output kind's (`genforge.kinds`).
#   tokenizer
#       Text families sample strings through it; the trainer and the loader set it, every checkpoint stores it.
#   train_schedule: list[tuple[str, int, bool]]
#       (group, repeats, fresh_batch) in the order they run within one training step. Default: every group once,
#       each with a fresh batch. A GAN uses [("discriminator", n_critic, True), ("generator", 1, False)]: the
#       generator step reuses the last real batch (for its size and labels) instead of consuming new data.
#   eval_metrics: tuple[str, ...]
#       What `genforge eval` scores without --metrics or eval.metrics, when the output kind's defaults do not fit
#       the family (a sentence VAE's text is scored by its likelihood bounds, not by a language model's `ppl`).
#   validation_group: str
#       The group whose loss train.val_every measures on the val split. Default: the first group of the schedule
#       (a HiFi-GAN's would be its discriminator; it names its generator, whose loss includes the mel L1).
#   running_rows(*, generator, decode, **options) -> models.decoding.RunningRows
#       Text families that decode token by token: an empty batch that prompts join and leave between steps. The
#       CLI's streamed text and the server's batched texts (continuous batching) go through it.
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
