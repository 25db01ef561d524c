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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from genforge import kinds, registry
from genforge.config import DataSection
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


def reference_images(ctx: EvalContext, size: int, channels: int) -> tuple[str, Tensor]:
    """The real images named by --ref (`dataset:split`, default: the checkpoint's data set and its test split),
    converted to the generated images' size and channels with the data pipeline's own resize, so real and
    generated images take the identical path into the feature extractor."""
    spec = ctx.options.get("ref")
    if spec is None:
        if ctx.pipeline is None:
            raise UserError("--samples without a checkpoint needs --ref DATASET:SPLIT (e.g. --ref mnist:test)")
        spec = f"{ctx.pipeline.config.data.name}:test"
    name, _, split = spec.partition(":")
    if not split:
        raise UserError(f"--ref {spec!r}: expected DATASET:SPLIT, e.g. mnist:test")
    base = ctx.pipeline.config.data if ctx.pipeline is not None else DataSection(name=name)
    data_cfg = base.model_copy(update={"name": name, "image_size": size, "channels": channels, "limit": None})
    dataset = registry.dataset_builder(name)(data_cfg, split)
    return f"{name}-{split}", dataset.images


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
