"""Load a checkpoint from its path alone and turn samples into media files. No training code is imported."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from genforge import checkpoint, config, media, registry
from genforge.errors import UserError

log = logging.getLogger(__name__)


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[Path, config.RunConfig]:
    """The step dir a path points to, and its config (plus `--set sample.*` style overrides)."""
    step_dir = checkpoint.resolve(path)
    raw = yaml.safe_load(checkpoint.read_config_text(step_dir))
    for text in overrides or []:
        if not text.split("=", 1)[0].startswith("sample."):
            raise UserError(f"--set {text!r}: only sample.* keys can be changed when sampling a checkpoint")
    return step_dir, config.from_dict(raw, overrides, source=str(step_dir / checkpoint.CONFIG_FILE))


def load(
    path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu", overrides: list[str] | None = None
) -> nn.Module:
    """A ready-to-sample model (eval mode) from a run dir or a step dir. EMA weights are used when present.

    >>> model = genforge.load("runs/quickstart")
    >>> images = model.sample(16, generator=torch.Generator().manual_seed(0))
    """
    step_dir, cfg = load_config(path, overrides)
    model = registry.model_class(cfg.model.family)(cfg.model)
    tokenizer_path = step_dir / checkpoint.TOKENIZER_FILE
    if tokenizer_path.exists():
        from genforge.data.tokenizers import load_tokenizer

        model.tokenizer = load_tokenizer(tokenizer_path)
    used_ema = checkpoint.load_model_state(model, step_dir, use_ema=use_ema and cfg.sample.use_ema)
    model.to(device).eval()
    model.run_config = cfg  # the checkpoint's config, for the CLI and the server
    model.checkpoint_dir = step_dir
    log.debug("loaded %s (%s weights)", step_dir, "EMA" if used_ema else "raw")
    return model


def sample(model: nn.Module, n: int, *, seed: int = 0, cond: Any = None, **options: Any) -> Any:
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    return model.sample(n, cond=cond, generator=generator, **options)


def save_samples(model: nn.Module, samples: Any, out: str | Path, nrow: int | None = None) -> Path:
    kind = model.output_kind
    if kind == "image":
        return media.save_images(samples, out, nrow=nrow)
    if kind == "text":
        return media.save_texts(list(samples), out)
    raise UserError(f"saving {kind} samples is not supported by this version")
