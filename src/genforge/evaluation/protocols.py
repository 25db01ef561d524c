"""`genforge eval`: named metric protocols over a checkpoint (or a file of samples), one result table.

A metric is a function `fn(ctx: EvalContext) -> dict[str, float]` listed in `registry.METRICS`. The context
generates samples once (seeded) and shares them between metrics, so `--metrics distinct,self-bleu` scores the
same texts. Result keys carry the protocol: the sample count and the reference, e.g. `self_bleu@64`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from genforge import registry
from genforge.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    model: nn.Module | None  # the loaded checkpoint (eval mode), or None when scoring a samples file
    n: int  # samples to generate / use
    seed: int = 0  # seed of sample generation
    samples_file: str | None = None  # .npz (images) or .jsonl/.txt (texts) given with --samples
    options: dict[str, Any] = field(default_factory=dict)  # metric options from the CLI (ref, inception, ...)
    cache: dict[str, Any] = field(default_factory=dict)  # values metrics share (e.g. features of both sets)
    _samples: Any = None

    @property
    def output_kind(self) -> str:
        if self.model is not None:
            return self.model.output_kind
        assert self.samples_file is not None
        return "text" if self.samples_file.endswith((".jsonl", ".txt")) else "image"

    def samples(self) -> Any:
        """The n samples every metric of this run shares: generated once with `seed`, or read from --samples."""
        if self._samples is None:
            self._samples = self._load_samples() if self.samples_file else self._generate()
        return self._samples

    def _generate(self) -> Any:
        model = self.require_model("generating samples")
        cfg = model.run_config
        generator = torch.Generator(next(model.parameters()).device).manual_seed(self.seed)
        if model.output_kind == "text":
            return model.sample(self.n, cond=cfg.sample.prompt, generator=generator,
                                **cfg.sample.generation_options())
        chunks, done = [], 0
        step = 500 if cfg.sample.bn_stats == "running" else max(1, 500 // cfg.sample.bn_batch) * cfg.sample.bn_batch
        while done < self.n:  # bounded memory for large n; with batch statistics, whole bn_batch chunks
            k = min(step, self.n - done)
            chunks.append(model.sample(k, generator=generator, **cfg.sample.image_options()).cpu())
            done += k
        return torch.cat(chunks)

    def _load_samples(self) -> Any:
        from genforge import media

        assert self.samples_file is not None
        if self.output_kind == "text":
            texts = media.load_texts(self.samples_file)
            return texts[: self.n]
        return media.load_images_npz(self.samples_file)[: self.n]

    def require_model(self, what: str) -> nn.Module:
        if self.model is None:
            raise UserError(f"{what} needs a checkpoint; pass PATH (a run dir or step dir) instead of only --samples")
        return self.model


def evaluate(ctx: EvalContext, metrics: list[str]) -> dict[str, float]:
    unknown = [m for m in metrics if m not in registry.METRICS]
    if unknown:
        raise UserError("--metrics: " + registry.unknown_name_message("metric", unknown[0], list(registry.METRICS)))
    results: dict[str, float] = {}
    for name in metrics:
        fn = registry.import_target(registry.METRICS[name])
        kinds = getattr(fn, "output_kinds", None)
        if kinds is not None and ctx.output_kind not in kinds:
            raise UserError(f"--metrics {name} applies to {'/'.join(kinds)} models; this one makes {ctx.output_kind}")
        log.info("computing %s", name)
        results.update(fn(ctx))
    return results


def metric(*output_kinds: str, keys: tuple[str, ...] = (), needs: str | None = None) -> Any:
    """Mark a metric function with the output kinds it applies to, the prefixes of the result keys it returns
    (`pr` returns precision2k-... and recall2k-...), which train.best_metric may name, and the network it needs
    ("inception" or "classifier"), which a training run loads once, before its first step."""

    def mark(fn: Any) -> Any:
        fn.output_kinds = output_kinds
        fn.result_keys = keys
        fn.needs = needs
        return fn

    return mark


# --------------------------------------------------------------------------------------------------------------
# Evaluation during training (train.eval_every)

# What `train.eval_every` measures when eval.metrics is empty: seconds-fast metrics only (no Inception)
TRAINING_DEFAULTS: dict[str, list[str]] = {"image": ["fd-fast", "pr-fast", "coverage"],
                                           "text": ["distinct", "repetition"], "label": ["accuracy"]}


@dataclass
class TrainingEvaluator:
    """`evaluator(model) -> {result key: value}` for the trainer: the run's `eval` section (metrics, n, seed, ref,
    classifier, inception), the same samples (same seed) every time. What does not depend on the model being
    trained (the classifier, the Inception network) is loaded once, before training starts; reference features
    come from the cache."""

    metrics: list[str]
    n: int
    seed: int
    options: dict[str, Any]
    run_config: Any
    shared: dict[str, Any] = field(default_factory=dict)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        model.run_config = self.run_config  # what EvalContext reads (sample options, data set); the trainer's
        #                                     model has no checkpoint to carry it
        ctx = EvalContext(model=model, n=self.n, seed=self.seed, options=self.options)
        ctx.cache.update(self.shared)
        results = evaluate(ctx, self.metrics)
        return results


def training_evaluator(cfg: Any, output_kind: str) -> TrainingEvaluator:
    """The evaluator `genforge train` passes to the trainer when train.eval_every > 0. What would fail at the first
    evaluation fails here, before training starts: unknown metric names, metrics of another output kind,
    class-acc on an unconditional model, a malformed eval.ref, a train.best_metric no metric returns, and a missing
    classifier or Inception file (both are loaded here, once)."""
    metrics = list(cfg.eval.metrics) or TRAINING_DEFAULTS[output_kind]
    unknown = [m for m in metrics if m not in registry.METRICS]
    if unknown:
        raise UserError("eval.metrics: " + registry.unknown_name_message("metric", unknown[0], list(registry.METRICS)))
    prefixes: list[str] = []
    needs: set[str] = set()
    for name in metrics:
        fn = registry.import_target(registry.METRICS[name])
        if output_kind not in fn.output_kinds:
            raise UserError(f"eval.metrics: {name} applies to {'/'.join(fn.output_kinds)} models; this one makes "
                            f"{output_kind}")
        prefixes += fn.result_keys
        if fn.needs:
            needs.add(fn.needs)
    if "class-acc" in metrics and not getattr(cfg.model, "num_classes", 0):
        raise UserError("eval.metrics: class-acc applies to class-conditional models (model.num_classes > 0)")
    if cfg.eval.ref is not None and ":" not in cfg.eval.ref:
        raise UserError(f"eval.ref = {cfg.eval.ref!r}: expected DATASET:SPLIT, e.g. mnist:test")
    best = cfg.train.best_metric.removeprefix("eval/")
    if cfg.train.keep_best and best != "val/loss" and not any(best.startswith(p) or p.startswith(best)
                                                              for p in prefixes):
        raise UserError(f"train.best_metric = {cfg.train.best_metric!r} is not a result of eval.metrics "
                        f"({', '.join(metrics)}), whose results start with {', '.join(prefixes)}; name one of those "
                        f"(a full key such as fd-fast2k-mnist-test also works)")
    n = cfg.eval.n or (2000 if output_kind == "image" else 64)
    options = {"ref": cfg.eval.ref, "inception": cfg.eval.inception, "classifier": cfg.eval.classifier}
    evaluator = TrainingEvaluator(metrics=metrics, n=n, seed=cfg.eval.seed, options=options, run_config=cfg)
    probe = EvalContext(model=None, n=n, options=options)
    if "classifier" in needs:
        from genforge.evaluation.fast import load_classifier

        evaluator.shared["classifier"] = load_classifier(probe)
    if "inception" in needs:
        from genforge.evaluation.fid import load_extractor

        evaluator.shared["inception"] = load_extractor(probe)
    return evaluator
