"""A user's own model families, written outside the package, as a reader of the README's "Adding a family" would:
one file that defines the families, registers them, a data set, a metric and one new output kind, and needs no
edit anywhere in `src/genforge`. `tests/test_family_plugin.py` loads it through env GENFORGE_PLUGINS.

- `toy-image`: a learned mean image plus Gaussian noise, an existing output kind ("image"), trained on mnist-mini.
- `toy-signal`: 1-D signals (a learned mean waveform plus noise), a new output kind "signal" saved as `.npy`,
  trained on a generated data set of sine waves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from genforge import kinds, registry
from genforge.config import DataSection, ModelSection, SampleOptions
from genforge.evaluation.context import EvalContext, metric


# --------------------------------------------------------------------------------------------------------------
# A new output kind: 1-D signals


def _save_signals(signals: Tensor, path: Path, nrow: int | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, signals.detach().cpu().numpy())
    return path


def _load_signals(path: Path) -> Tensor:
    return torch.from_numpy(np.load(path))


kinds.register_kind(kinds.OutputKind(
    name="signal", description="1-D signals (N, L)", suffixes=(".npy",), save=_save_signals, unit="signals",
    eval_metrics=("signal-energy",), train_metrics=("signal-energy",), eval_n=32, val_split="test",
    load=_load_signals, load_suffixes=(".npy",), concat=lambda chunks: torch.cat(chunks),
))


# --------------------------------------------------------------------------------------------------------------
# Families


class ToyOptions(SampleOptions):
    noise: float = Field(default=0.1, ge=0)  # std of the noise added to the learned mean


class ToyImageConfig(ModelSection):
    family: Literal["toy-image"] = "toy-image"
    image_size: int = Field(default=28, ge=8)  # output height = width
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"debug": {}}


class ToyImage(nn.Module):
    Config = ToyImageConfig
    SampleOptions = ToyOptions
    output_kind: ClassVar[str] = "image"

    def __init__(self, config: ToyImageConfig):
        super().__init__()
        self.config = config
        self.mean = nn.Parameter(torch.zeros(1, 1, config.image_size, config.image_size))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": [self.mean]}

    def loss(self, batch: dict[str, Tensor], group: str = "model") -> dict[str, Tensor]:
        return {"loss": ((batch["image"] - self.mean) ** 2).mean()}

    @torch.no_grad()
    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **options: Any) -> Tensor:
        opts = ToyOptions.parse(options)
        noise = torch.randn(n, *self.mean.shape[1:], generator=generator)
        return (self.mean + opts.noise * noise).clamp(-1, 1)


class ToySignalConfig(ModelSection):
    family: Literal["toy-signal"] = "toy-signal"
    length: int = Field(default=16, ge=2)  # samples per signal
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"debug": {"length": 8}}


class ToySignal(nn.Module):
    Config = ToySignalConfig
    SampleOptions = ToyOptions
    output_kind: ClassVar[str] = "signal"

    def __init__(self, config: ToySignalConfig):
        super().__init__()
        self.config = config
        self.mean = nn.Parameter(torch.zeros(config.length))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": [self.mean]}

    def loss(self, batch: dict[str, Tensor], group: str = "model") -> dict[str, Tensor]:
        return {"loss": ((batch["signal"] - self.mean) ** 2).mean()}

    @torch.no_grad()
    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **options: Any) -> Tensor:
        opts = ToyOptions.parse(options)
        return self.mean + opts.noise * torch.randn(n, self.config.length, generator=generator)


# --------------------------------------------------------------------------------------------------------------
# A data set of sine waves with random amplitude: endless, resumable batches


class SineBatches:
    def __init__(self, length: int, batch_size: int, seed: int):
        self.length, self.batch_size = length, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> dict[str, Tensor]:
        amplitude = 0.5 + torch.rand(self.batch_size, 1, generator=self.generator)
        t = torch.linspace(0, 2 * torch.pi, self.length)
        return {"signal": amplitude * torch.sin(t)}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class Sines:
    name = "toy-sines"

    def __init__(self, length: int):
        self.length = length

    def batches(self, batch_size: int, seed: int) -> SineBatches:
        return SineBatches(self.length, batch_size, seed)


def build_sines(cfg: DataSection, split: str) -> Sines:
    return Sines(length=cfg.limit or 8)  # data.limit: the signal length


@metric("signal", keys=("signal_energy",))
def metric_signal_energy(ctx: EvalContext) -> dict[str, float]:
    signals = ctx.samples()
    return {f"signal_energy@{len(signals)}": float((signals**2).mean())}


@metric("image", keys=("pixel_mean",))
def metric_pixel_mean(ctx: EvalContext) -> dict[str, float]:
    images = ctx.samples().float()
    return {f"pixel_mean@{len(images)}": float(images.mean())}


registry.register("models", "toy-image", ToyImage)
registry.register("models", "toy-signal", "toy_family:ToySignal")  # by name, imported when first used
registry.register("datasets", "toy-sines", build_sines)
registry.register("metrics", "signal-energy", metric_signal_energy)
registry.register("metrics", "pixel-mean", metric_pixel_mean)
