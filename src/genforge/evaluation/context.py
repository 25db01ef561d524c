"""What every metric works with: the evaluation context, the `metric` marker, and the networks metrics need.

A metric is a function `fn(ctx: EvalContext) -> dict[str, float]` listed in `registry.METRICS`. The context
generates samples once (seeded) and shares them between metrics, so `--metrics distinct,self-bleu` scores the
same texts. Result keys carry the protocol: the sample count and the reference, e.g. `fid2k-mnist-test`.

This module is the leaf of `genforge.evaluation`: metric files import it, it imports no metric file. A metric that
needs a network (the Inception detector, genforge's classifier) declares it with `needs=`; `ctx.need(name)` loads
it once per context through the string table `NEEDS`, and a training run preloads it before its first step.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from genforge import kinds, media, registry
from genforge.config import DataSection
from genforge.data.build import build_dataset
from genforge.data.images import build_imagefolder, to_size_and_channels
from genforge.errors import UserError

log = logging.getLogger(__name__)

# network name -> "module:function(ctx) -> the loaded network"
NEEDS: dict[str, str] = {
    "inception": "genforge.evaluation.fid:load_extractor",
    "classifier": "genforge.evaluation.fast:load_classifier",
}


@dataclass
class EvalContext:
    pipeline: Any  # the loaded checkpoint (a `sampling.Pipeline`), or None when scoring a samples file
    n: int  # samples to generate / use
    seed: int = 0  # seed of sample generation
    samples_file: str | None = None  # a file of samples given with --samples (its suffix tells the kind)
    options: dict[str, Any] = field(default_factory=dict)  # metric options from the CLI (ref, inception, ...)
    cache: dict[str, Any] = field(default_factory=dict)  # values metrics share (networks, features of both sets)
    _samples: Any = None

    @property
    def kind(self) -> kinds.OutputKind:
        if self.pipeline is not None:
            return self.pipeline.kind
        assert self.samples_file is not None
        return kinds.for_samples_file(self.samples_file)

    @property
    def output_kind(self) -> str:
        return self.kind.name

    def samples(self) -> Any:
        """The n samples every metric of this run shares: generated once with `seed`, or read from --samples."""
        if self._samples is None:
            if self.samples_file:
                kind = self.kind
                assert kind.load is not None
                self._samples = kind.load(self.samples_file)[: self.n]
            else:
                self._samples = self.require_pipeline("generating samples").generate(self.n, seed=self.seed)
        return self._samples

    def preset_samples(self, samples: Any) -> None:
        """Use these samples (generated elsewhere: the ranks of a data-parallel run) instead of generating them."""
        self._samples = samples[: self.n]

    def require_pipeline(self, what: str) -> Any:
        if self.pipeline is None:
            raise UserError(f"{what} needs a checkpoint; pass PATH (a run dir or step dir) instead of only --samples")
        return self.pipeline

    def need(self, name: str) -> Any:
        """The network `name` (a key of NEEDS), loaded once per context."""
        if name not in self.cache:
            self.cache[name] = registry.import_target(NEEDS[name])(self)
        return self.cache[name]


def metric(*output_kinds: str, keys: tuple[str, ...] = (), needs: str | None = None) -> Any:
    """Mark a metric function with the output kinds it applies to, the prefixes of the result keys it returns
    (`pr` returns precision2k-... and recall2k-...), which train.best_metric may name, and the network it needs
    (a key of NEEDS), which a training run loads once, before its first step."""
    if needs is not None and needs not in NEEDS:
        raise ValueError(f"needs={needs!r}: known networks are {', '.join(NEEDS)}")

    def mark(fn: Any) -> Any:
        fn.output_kinds = output_kinds
        fn.result_keys = keys
        fn.needs = needs
        return fn

    return mark


def count_tag(n: int) -> str:
    """2000 -> '2k', 50000 -> '50k', 500 -> '500'."""
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


RefForm = Literal["dataset", "folder", "npz"]


def ref_form(spec: str, where: str) -> RefForm:
    """Which of its three forms a reference spec (--ref, eval.ref) takes: an existing folder is an image folder, a
    name ending in .npz a file of uint8 images, anything else DATASET:SPLIT. A spec that fits none, or an .npz that
    does not exist, is a UserError starting with `where` (e.g. "--ref 'x'")."""
    forms = ("DATASET:SPLIT (e.g. mnist:test), a folder of PNG/JPEG images, or an .npz file of uint8 images "
             "(as `genforge sample RUN --out FILE.npz` writes)")
    if not spec.strip():
        raise UserError(f"{where}: is empty; expected {forms}")  # Path("") would be the current folder
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder"
    if spec.lower().endswith(".npz"):
        if not path.is_file():
            raise UserError(f"{where}: the file {str(path)!r} does not exist; check the path (an .npz of uint8 "
                            "images, as `genforge sample RUN --out FILE.npz` writes)")
        return "npz"
    name, _, split = spec.partition(":")
    if not name or not split:
        if path.is_file():
            problem = f"{str(path)!r} is a file but not an .npz"
        else:
            problem = f"no folder {str(path)!r} exists"
        raise UserError(f"{where}: expected {forms}; {problem}")
    return "dataset"


@dataclass
class Reference:
    """The real images metrics compare with, and how result keys and the feature cache name them."""

    tag: str  # in result keys: fid2k-<tag>, e.g. mnist-test, or the file's or folder's name
    dataset: str  # cache key part: the data set, or the file's or folder's name
    split: str  # cache key part: the split; "" for a file or folder, which has none
    images: Tensor  # uint8 (N, C, H, W) at the generated images' size and channels


def _file_label(path: Path) -> str:
    """A file's or folder's name as it appears in result keys and cache file names: [A-Za-z0-9_.-] only."""
    stem = path.resolve().name if path.is_dir() else path.name[: -len(".npz")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") or "ref"


def held_out(data: DataSection, split: str, fallback: str | None, what: str,
             tokenizer: Any = None) -> tuple[Any, str]:
    """(data set, split) of `data` at `split` (encoded with `tokenizer`, a text model's, when given); when that split
    does not exist and `fallback` is given (an image folder has only "train", a lines file no "test"), the data set at
    `fallback`, with a warning that ends with `what`."""
    try:
        return build_dataset(data, split, tokenizer=tokenizer), split
    except UserError:
        if fallback is None or fallback == split:
            raise
        log.warning("%s has no %r split; using its %r split instead, %s", data.name, split, fallback, what)
        return build_dataset(data, fallback, tokenizer=tokenizer), fallback


def held_out_subset(ctx: EvalContext, count: int) -> tuple[Tensor | None, str]:
    """Which of `count` held-out examples the likelihood metrics score, and the suffix of their tag: all (None, ""),
    the first --test-limit N (arange, "N"), or --test-sample N drawn uniformly without replacement with the eval seed
    (sorted indices, "-randNsSEED"): an unbiased estimate of the whole set's mean when all of it would take too long."""
    limit, sample = ctx.options.get("test_limit"), ctx.options.get("test_sample")
    if limit and sample:
        raise UserError("--test-limit and --test-sample both choose the held-out examples; give one of them")
    if sample:
        if sample > count:
            raise UserError(f"--test-sample {sample} exceeds the {count} held-out examples; use --test-sample <= "
                            f"{count}, or drop it to score them all")
        generator = torch.Generator().manual_seed(ctx.seed)
        return torch.randperm(count, generator=generator)[:sample].sort().values, f"-rand{sample}s{ctx.seed}"
    if limit:
        return torch.arange(min(limit, count)), f"{min(limit, count)}"
    return None, ""


def reference(ctx: EvalContext, size: int, channels: int) -> Reference:
    """The real images named by --ref, converted to the generated images' size and channels by the data pipeline's
    own resize, so real and generated images take the identical path into the feature extractor. --ref is

    - DATASET:SPLIT (default: the checkpoint's data set, test split): the data set's builder, as in training;
    - an existing folder: the `imagefolder` builder (PNG/JPEG, with or without class subfolders);
    - a name ending in .npz: its uint8 `images`, as `genforge sample --out x.npz` writes and --samples reads, so two
      files of samples can be compared with each other.
    """
    spec = ctx.options.get("ref")
    if spec is None:
        if ctx.pipeline is None:
            raise UserError("--samples without a checkpoint needs --ref: DATASET:SPLIT (e.g. --ref mnist:test), a "
                            "folder of PNG/JPEG images, or an .npz file of uint8 images")
        spec = f"{ctx.pipeline.config.data.name}:test"
        default_split = ctx.pipeline.config.data.split  # the fallback for a data set without a test split
    else:
        default_split = None
    where = f"--ref {spec!r}"
    form = ref_form(spec, where)
    if form == "dataset":
        name, _, split = spec.partition(":")
        base = ctx.pipeline.config.data if ctx.pipeline is not None else DataSection(name=name)
        data_cfg = base.model_copy(update={"name": name, "image_size": size, "channels": channels, "limit": None})
        dataset, split = held_out(data_cfg, split, default_split, "comparing with it (pass --ref to choose)")
        return Reference(tag=f"{name}-{split}", dataset=name, split=split, images=dataset.images)
    path = Path(spec).expanduser()
    label = _file_label(path)
    if form == "folder":
        data_cfg = DataSection(name="imagefolder", path=str(path)).model_copy(
            update={"image_size": size, "channels": channels})
        try:
            images = build_imagefolder(data_cfg, "train").images  # a folder's one split: every image
        except UserError as exc:
            raise UserError(f"{where} (an image folder, read as `data.name: imagefolder`): {exc}") from exc
    else:
        images = to_size_and_channels(media.load_images_npz(path, where), size, channels)
    return Reference(tag=label, dataset=label, split="", images=images)


def reference_images(ctx: EvalContext, size: int, channels: int) -> tuple[str, Tensor]:
    """(tag, images) of `reference`: the real images named by --ref at the generated images' size and channels."""
    ref = reference(ctx, size, channels)
    return ref.tag, ref.images


def log_progress(what: str, total: int, every: float = 30.0) -> Callable[[int], None]:
    """A progress callback for long feature extractions: a log line at most every `every` seconds and at the end."""
    start = last = time.perf_counter()

    def report(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= every or done == total:
            last = now
            rate = done / max(now - start, 1e-9)
            log.info("%s: %d/%d images, %.1f images/s, %.0f s left", what, done, total, rate, (total - done) / rate)

    return report
