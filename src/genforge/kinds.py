"""Output kinds: one table that says, for each kind of thing a model makes, everything the spine needs to know.

A family declares `output_kind` ("image", "text", "label", ...); the trainer, `genforge sample`, `genforge eval`
and the periodic samples look the kind up here instead of branching on its name:

    how samples are saved      `save(samples, path, nrow)`, by the file suffix (`suffixes`, the first is the default)
    how they reach TensorBoard `log(writer, tag, samples, step, nrow)`
    how they are printed       `to_text(samples)` for kinds that can go to stdout, else None
    what a batch counts        `unit` and `count(batch)` (throughput: images/s, tokens/s, ...)
    how they are scored        `eval_metrics` (`genforge eval`), `train_metrics` (train.eval_every), `eval_n`
    which split validates      `val_split`
    how `eval --samples` reads a file of another tool's samples: `load(path)` for the suffixes in `load_suffixes`

A new kind is one `register_kind(OutputKind(...))` call, from a family file or a user's own module; the rest of
the spine needs no edit. `generate_and_save` is the one function that makes samples and writes them, for the
trainer's periodic samples and for `genforge sample` alike.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genforge import media
from genforge.errors import UserError
from genforge.fileio import write_text


def _first_dim(batch: dict[str, Tensor]) -> int:
    """Examples in a batch: the leading size of its first tensor."""
    return int(next(iter(batch.values())).shape[0])


@dataclass(frozen=True)
class OutputKind:
    name: str
    description: str  # one line, for messages and `genforge list kinds`
    suffixes: tuple[str, ...]  # file types `save` writes; the first is the default (periodic samples use it)
    save: Callable[[Any, Path, int | None], Path]  # (samples, path, nrow) -> the written file
    log: Callable[[Any, str, Any, int, int | None], None] | None = None  # (writer, tag, samples, step, nrow)
    to_text: Callable[[Any], str] | None = None  # samples -> what `genforge sample` prints without --out
    unit: str = "examples"  # what a batch counts, for throughput (`<unit>/s`) and `<unit>_seen` in metrics.jsonl
    count: Callable[[dict[str, Tensor]], int] = _first_dim  # examples (of `unit`) in one training batch
    eval_metrics: tuple[str, ...] = ()  # `genforge eval` without --metrics (and without eval.metrics)
    train_metrics: tuple[str, ...] = ()  # train.eval_every without eval.metrics: seconds-fast ones only
    eval_n: int = 64  # samples per evaluation without --n / eval.n
    sample_n: int | None = None  # `genforge sample` without --n: this many, or None for the config's sample.n
    val_split: str = "test"  # the data split train.val_every measures
    shows_samples: bool = True  # periodic samples during training (a classifier has nothing to show)
    load: Callable[[Path], Any] | None = None  # read a file of samples for `eval --samples`
    load_suffixes: tuple[str, ...] = ()  # the suffixes `load` reads
    concat: Callable[[list[Any]], Any] = lambda chunks: [s for chunk in chunks for s in chunk]  # join sample chunks

    def out_path(self, out: str | Path) -> Path:
        """`out` with the default suffix when it has none; a suffix this kind cannot write is a clear error."""
        out = Path(out)
        if not out.suffix:
            return out.with_name(out.name + self.suffixes[0])
        if out.suffix.lower() not in self.suffixes:
            raise UserError(f"--out {str(out)!r}: {self.name} samples must end in {' or '.join(self.suffixes)}; "
                            f"change the file name's suffix")
        return out


# --------------------------------------------------------------------------------------------------------------
# The kinds genforge ships


def _log_images(writer: Any, tag: str, images: Tensor, step: int, nrow: int | None) -> None:
    writer.add_image(tag, media.make_grid(media.to_uint8(images), nrow), step, dataformats="HWC")


def _log_texts(writer: Any, tag: str, texts: list[str], step: int, nrow: int | None) -> None:
    writer.add_text(tag, "\n\n---\n\n".join(f"    {t}" for t in texts), step)


def _count_tokens(batch: dict[str, Tensor]) -> int:
    """Text batches hold token ids (B, T) under "x" (the inputs; "y" are the same positions shifted)."""
    return int(batch["x"].numel())


def _save_labels(labels: Tensor, path: Path, nrow: int | None) -> Path:
    return write_text(path, "".join(f"{int(y)}\n" for y in labels.tolist()))


def _save_captions(captions: list[dict[str, Any]], path: Path, nrow: int | None) -> Path:
    """.json: COCO caption results, [{"image_id", "caption"}] (what the COCO evaluation server takes); .txt: one
    "image_id<TAB>caption" line per image."""
    if path.suffix.lower() == ".json":
        return write_text(path, json.dumps(list(captions), indent=1, ensure_ascii=False) + "\n")
    return write_text(path, "".join(f"{c['image_id']}\t{c['caption']}\n" for c in captions))


def _captions_text(captions: list[dict[str, Any]]) -> str:
    return "".join(f"{c['image_id']}: {c['caption']}\n" for c in captions)


def _log_captions(writer: Any, tag: str, captions: list[dict[str, Any]], step: int, nrow: int | None) -> None:
    writer.add_text(tag, "\n\n".join(f"    {c['image_id']}: {c['caption']}" for c in captions), step)


def _cat(chunks: list[Tensor]) -> Tensor:
    return torch.cat([c.cpu() for c in chunks])


KINDS: dict[str, OutputKind] = {}


def register_kind(kind: OutputKind) -> OutputKind:
    """Add (or replace) an output kind. Returns it, so a module can write `AUDIO = register_kind(OutputKind(...))`."""
    if not kind.suffixes:
        raise ValueError(f"output kind {kind.name!r} needs at least one file suffix to save samples")
    KINDS[kind.name] = kind
    return kind


register_kind(OutputKind(
    name="image", description="images in [-1, 1], (N, C, H, W)", suffixes=(".png", ".npz"),
    save=lambda images, path, nrow: media.save_images(images, path, nrow=nrow), log=_log_images, unit="images",
    eval_metrics=("fid", "kid", "pr"), train_metrics=("fd-fast", "pr-fast", "coverage"), eval_n=2000,
    val_split="test", load=media.load_images_npz, load_suffixes=(".npz",), concat=_cat,
))
register_kind(OutputKind(
    name="text", description="strings", suffixes=(".txt", ".jsonl"),
    save=lambda texts, path, nrow: media.save_texts(list(texts), path), log=_log_texts,
    to_text=lambda texts: "".join(t + "\n\n" for t in texts), unit="tokens", count=_count_tokens,
    eval_metrics=("ppl", "distinct", "self-bleu", "repetition"), train_metrics=("distinct", "repetition"), eval_n=64,
    sample_n=1, val_split="val", load=media.load_texts, load_suffixes=(".jsonl", ".txt"),
))
register_kind(OutputKind(
    name="label", description="class ids of given images, (N,)", suffixes=(".txt",), save=_save_labels,
    unit="images", eval_metrics=("accuracy",), train_metrics=("accuracy",), val_split="test", shows_samples=False,
    concat=_cat,
))


register_kind(OutputKind(
    name="caption", description="a caption per given image, COCO results [{image_id, caption}]",
    suffixes=(".txt", ".json"), save=_save_captions, log=_log_captions, to_text=_captions_text, unit="tokens",
    count=_count_tokens, eval_metrics=("captions",), train_metrics=("captions",), eval_n=5000, sample_n=8,
    val_split="val",
))


def get(name: str) -> OutputKind:
    """The kind called `name`; an unregistered one is a clear error, never a KeyError."""
    if name not in KINDS:
        from genforge.registry import unknown_name_message

        raise UserError(unknown_name_message("output kind", name, list(KINDS)) + "; a family with a new kind must "
                        "register it with genforge.kinds.register_kind(OutputKind(...)) before it is used")
    return KINDS[name]


def of(model: Any) -> OutputKind:
    """The output kind of a model (its class attribute `output_kind`)."""
    return get(model.output_kind)


def for_samples_file(path: str | Path) -> OutputKind:
    """The kind whose `load` reads this file, by its suffix (`genforge eval --samples FILE`)."""
    suffix = Path(path).suffix.lower()
    for kind in KINDS.values():
        if kind.load is not None and suffix in kind.load_suffixes:
            return kind
    readable = sorted({s for k in KINDS.values() if k.load is not None for s in k.load_suffixes})
    raise UserError(f"--samples {str(path)!r}: cannot tell what kind of samples a {suffix or 'suffix-less'} file "
                    f"holds; give one of {', '.join(readable)}")


def generate_and_save(model: Any, n: int, out: str | Path, *, cond: Any = None, generator: Any = None,
                      options: dict[str, Any] | None = None, nrow: int | None = None) -> tuple[Any, Path]:
    """Make n samples with `model.sample` and write them to `out` (the kind's default suffix when it has none).
    Returns (samples, the written file)."""
    kind = of(model)
    path = kind.out_path(out)  # a bad suffix fails before minutes of sampling
    samples = model.sample(n, cond=cond, generator=generator, **(options or {}))
    return samples, kind.save(samples, path, nrow)


def _save_audio(clips: Any, path: Path, nrow: int | None) -> Path:
    from genforge import audio

    return audio.save_clips(clips, path, nrow)


def _log_audio(writer: Any, tag: str, clips: Any, step: int, nrow: int | None) -> None:
    from genforge import audio

    audio.log_clips(writer, tag, clips, step, nrow)


def _concat_audio(chunks: list[Any]) -> Any:
    from genforge import audio

    return audio.AudioClips.concat(chunks)


register_kind(OutputKind(
    name="audio", description="mono waveforms at one sample rate (genforge.audio.AudioClips)",
    suffixes=(".wav", ".zip"), save=_save_audio, log=_log_audio, unit="seconds",
    eval_metrics=("speech",), train_metrics=(), eval_n=20, sample_n=1, val_split="test", concat=_concat_audio,
))
