"""Load a checkpoint from its path alone into a `Pipeline`, and sample from it. No training code is imported.

A `Pipeline` is what the CLI, the evaluation, the Python API (`genforge.load`) and the server hold: the plain model,
its run config, its tokenizer (text families) and the checkpoint it came from. Sampling options come from the
checkpoint's `sample:` section, validated by the family's own options class, and can be overridden per call.

    >>> pipe = genforge.load("runs/quickstart")
    >>> images = pipe.sample(16, seed=0)                      # (16, 1, 28, 28) in [-1, 1]
    >>> pipe.save(images, "grid.png")
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from genforge import checkpoint, config, kinds, registry
from genforge.errors import UserError

log = logging.getLogger(__name__)

# The command-line flag that gives each kind of conditioning, for messages.
CONDITIONING_FLAGS = {"class": "--class", "prompt": "--prompt", "image": "an image", "text": "--text"}


@dataclass
class Pipeline:
    module: nn.Module  # the family's plain nn.Module, in eval mode
    config: config.RunConfig  # the checkpoint's run config (plus any --set sample.* overrides)
    checkpoint_dir: Path | None = None  # the step dir it was loaded from; None for a model still in training
    tokenizer: Any = None  # text families: encodes prompts and decodes samples
    used_ema: bool = False  # whether the weights are the EMA's
    links: dict[str, Pipeline] = field(default_factory=dict, repr=False)  # checkpoints options name (`linked`)

    @property
    def kind(self) -> kinds.OutputKind:
        return kinds.of(self.module)

    @property
    def output_kind(self) -> str:
        return self.module.output_kind

    @property
    def family(self) -> str:
        return self.config.model.family

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def sample_options(self, **overrides: Any) -> config.SampleOptions:
        """The family's sampling options: the checkpoint's, with `overrides`, checked by the family's class."""
        options_cls = getattr(type(self.module), "SampleOptions", config.NoSampleOptions)
        return options_cls.parse({**self.config.sample.kwargs(), **overrides})

    def server_fixed_options(self) -> tuple[str, ...]:
        """The family's sample options that a server request may not set (they name files or data here)."""
        options_cls = getattr(type(self.module), "SampleOptions", config.NoSampleOptions)
        return tuple(options_cls.SERVER_FIXED)

    def options(self, **overrides: Any) -> dict[str, Any]:
        """`sample_options` as keyword arguments for the family's `sample`."""
        return self.sample_options(**overrides).model_dump()

    def cond(self, *, class_label: int | str | None = None, prompt: str | None = None, text: str | None = None) -> Any:
        """`cond` for sample() from command-line style inputs; without any, the config's sample.class_label or
        sample.prompt. A class is an id or, for models whose data named its classes, a name (`--class pos`). An
        input this family is not conditioned on is a clear error naming the flag."""
        conditioning = getattr(self.module, "conditioning", None)
        if isinstance(class_label, str):
            class_label = self.class_id(class_label)
        for name, value in (("class", class_label), ("prompt", prompt), ("text", text)):
            if value is not None and conditioning != name:
                takes = f"; it takes {CONDITIONING_FLAGS[conditioning]}" if conditioning in CONDITIONING_FLAGS else ""
                raise UserError(f"{CONDITIONING_FLAGS[name]} applies to models conditioned on a {name}; this "
                                f"{self.family} model is not{takes}")
        given = {"class": class_label, "prompt": prompt, "text": text}.get(conditioning)
        return given if given is not None else self.config.sample.cond_for(self.module)

    def class_id(self, name: str) -> int:
        """The id of a class given by name or by its id written as text."""
        names = list(getattr(self.config.model, "class_names", None) or [])
        if name in names:
            return names.index(name)
        if name.strip().lstrip("-").isdigit():
            return int(name)
        known = (f"its classes are {', '.join(f'{n} ({i})' for i, n in enumerate(names))}" if names else
                 "its classes have no names; give a class id (e.g. --class 3)")
        raise UserError(f"--class {name!r}: this {self.family} model has no class of that name; {known}")

    def sample(self, n: int, *, seed: int = 0, generator: torch.Generator | None = None, cond: Any = None,
               **options: Any) -> Any:
        """n samples with the checkpoint's options (plus `options`); `generator` or else `seed` fixes them. cond=None
        takes the config's sample.class_label / sample.prompt."""
        generator = generator or torch.Generator(self.device).manual_seed(seed)
        cond = cond if cond is not None else self.config.sample.cond_for(self.module)
        parsed = self.sample_options(**options)
        given = cond is not None and getattr(self.module, "conditioning", None) in ("image", "text")
        inputs = self._inputs(parsed, data=not given)  # images or a text given: no data set to read them from
        return self.module.sample(n, cond=cond, generator=generator, **{**parsed.model_dump(), **inputs})

    def _inputs(self, parsed: config.SampleOptions, data: bool = True) -> dict[str, Any]:
        """`data=` the run's data set at the split the options work on, for options that start from real examples
        (unless `data` is False), and the loaded checkpoint of each option that names one (`CHECKPOINT_KEYS`)."""
        from genforge.data.build import examples_for_sampling

        examples = examples_for_sampling(self.config.data, parsed, self.tokenizer) if data else None
        inputs: dict[str, Any] = {} if examples is None else {"data": examples}
        for key, builtins in type(parsed).CHECKPOINT_KEYS.items():
            value = getattr(parsed, key)
            if value not in builtins:
                inputs[key] = self.linked(value, f"sample.{key}")
        return inputs

    def linked(self, path: str, where: str) -> Pipeline:
        """Another checkpoint an option names (a speech model's vocoder), loaded once and kept on this device."""
        if path not in self.links:
            try:
                self.links[path] = load(path, device=self.device)
            except UserError as exc:
                raise UserError(f"{where} = {path!r}: {exc}") from None
        return self.links[path]

    def generate(self, n: int, *, seed: int = 0, cond: Any = None, chunk: int = 500) -> Any:
        """n samples for evaluation, made in chunks of bounded memory (as the family's options allow) and joined
        as the output kind joins them; one generator, so the result does not depend on the chunk size."""
        generator = torch.Generator(self.device).manual_seed(seed)
        cond = cond if cond is not None else self.config.sample.cond_for(self.module)
        parsed = self.sample_options()
        options, step = {**parsed.model_dump(), **self._inputs(parsed)}, parsed.chunk_size(chunk)
        chunks, done = [], 0
        while done < n:
            k = min(step, n - done)
            chunks.append(self.module.sample(k, cond=cond, generator=generator, **options))
            done += k
        return self.kind.concat(chunks)

    def save(self, samples: Any, out: str | Path) -> Path:
        """Write samples as the output kind does (by the suffix of `out`; its default suffix when there is none)."""
        nrow = self.sample_options().grid_columns(len(samples), self.config.sample.nrow)
        return self.kind.save(samples, self.kind.out_path(out), nrow)

    def caption_files(self, files: list[Path], *, seed: int = 0, names: list[str] | None = None,
                      attention: bool = False, **options: Any) -> list[dict[str, Any]]:
        """Captions of image files as COCO results [{"image_id": its name (or `names`), "caption"}], with the
        checkpoint's sampling options (plus `options`). With attention=True each record also has "attention": the
        decoder's attention over the image tokens for each word, (words, M), and "grid": the tokens' grid side."""
        if getattr(self.module, "conditioning", None) != "image" or not hasattr(self.module, "caption"):
            raise UserError(f"--image applies to captioners; this {self.family} model makes {self.output_kind}")
        from genforge.data.captions import encoder_inputs_of_files

        model_cfg = self.config.model
        inputs = encoder_inputs_of_files(list(files), model_cfg.encoder_input(), model_cfg.image_size or 64,
                                         self.config.data.root)
        generator = torch.Generator(self.device).manual_seed(seed)
        parsed = self.sample_options(**options).model_dump()
        if attention:
            tokens = self.module.caption(inputs, generator=generator, attention=True, **parsed)
            texts = [self.tokenizer.decode(t) for t in tokens]
            samples = [{"image_id": i, "caption": t} for i, t in enumerate(texts)]
            weights = self.module.last_attention  # (N, steps, M)
            for row, (record, ids) in enumerate(zip(samples, tokens)):
                record["words"] = [self.tokenizer.decode([t]) for t in ids]
                record["attention"] = weights[row, : len(ids)] if weights is not None else None
        else:
            samples = self.module.sample(len(files), cond=inputs, generator=generator, **parsed)
        for record, name in zip(samples, names or [Path(f).name for f in files]):
            record["image_id"] = name
        return samples

    def can_stream(self, **options: Any) -> bool:
        """Whether `stream` works: the family decodes token by token (`module.running_rows`) and the options allow
        it (no beams)."""
        return hasattr(self.module, "running_rows") and self.tokenizer is not None and \
            self.options(**options).get("num_beams", 1) == 1

    def prompt_or_default(self, prompt: str | None) -> str:
        """The prompt a stream starts from: the given one, else the config's sample.prompt, else a newline."""
        return prompt if prompt is not None else (self.config.sample.prompt or "\n")

    def stream(self, *, seed: int = 0, prompt: str | None = None, **options: Any) -> Iterator[str]:
        """One text sample as it is generated: the prompt first, then each new piece of text (a multi-byte
        character is held back until it is complete)."""
        prompt = self.prompt_or_default(prompt)
        tokenizer = self.tokenizer
        rows = self.module.running_rows(generator=torch.Generator(self.device).manual_seed(seed),
                                        decode=tokenizer.decode, **self.options(**options))
        ids = rows.validate([tokenizer.encode(prompt)])  # a bad prompt raises before anything is yielded
        yield prompt
        text = IncrementalText(tokenizer.decode)
        for token in _tokens(rows, ids):
            piece = text.add(token)
            if piece:
                yield piece
        yield text.rest()


@torch.inference_mode()
def _tokens(rows: Any, prompts: list[list[int]]) -> Iterator[int]:
    """The tokens of one row of `rows` (a family's `running_rows`), as they are chosen."""
    rows.add(prompts)
    while rows:
        yield rows.choose()[0][1]
        rows.advance()


class IncrementalText:
    """Token ids -> the new text each one adds, holding back an incomplete multi-byte character (a byte-level
    tokenizer decodes half a character as U+FFFD) until the rest of it arrives."""

    def __init__(self, decode: Any):
        self.decode = decode
        self.tokens: list[int] = []
        self.shown = ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.decode(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[len(self.shown):], text
        return piece

    def rest(self) -> str:
        """What is still held back (at the end of the text)."""
        return self.decode(self.tokens)[len(self.shown):]


def checkpoint_config(path: str | Path, overrides: list[str] | None = None) -> tuple[Path, config.RunConfig]:
    """The step dir a path points to, and its config (plus `--set sample.*` overrides). A problem of the file is
    reported against the file, a problem of an override against --set."""
    step_dir = checkpoint.resolve(path)
    source = str(step_dir / checkpoint.CONFIG_FILE)
    raw = yaml.safe_load(checkpoint.read_config_text(step_dir))
    for text in overrides or []:
        if not text.split("=", 1)[0].strip().startswith("sample."):
            raise UserError(f"--set {text!r}: only sample.* keys can be changed when sampling a checkpoint")
    cfg = config.from_dict(raw, source=source)
    if overrides:
        cfg = config.from_dict(raw, overrides, source=f"--set {' --set '.join(overrides)} (applied to {source})")
    return step_dir, cfg


def load(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu",
         overrides: list[str] | None = None) -> Pipeline:
    """A ready-to-sample Pipeline (model in eval mode) from a run dir or a step dir. EMA weights are used when
    present and sample.use_ema is on."""
    step_dir, cfg = checkpoint_config(path, overrides)
    module = registry.model_class(cfg.model.family)(cfg.model)
    tokenizer = checkpoint.load_tokenizer(step_dir)
    if tokenizer is not None:
        module.tokenizer = tokenizer  # text families encode prompts and decode samples with it
    used_ema = checkpoint.load_model_state(module, step_dir, use_ema=use_ema and cfg.sample.use_ema)
    module.to(device).eval()
    if cfg.train.channels_last:
        module.to(memory_format=torch.channels_last)  # the layout it trained in, as the trainer places it: NHWC
        #                                               convolutions sample faster (BENCHMARKS.md, "Channels-last")
    log.debug("loaded %s (%s weights)", step_dir, "EMA" if used_ema else "raw")
    return Pipeline(module=module, config=cfg, checkpoint_dir=step_dir, tokenizer=tokenizer, used_ema=used_ema)
