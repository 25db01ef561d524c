"""`genforge eval` and evaluation during training: run named metrics over one shared set of samples.

The metric functions live in one file per group (`fid.py`, `fast.py`, `text.py`) and are found through
`registry.METRICS`; what they share is in `context.py`. The defaults per output kind come from `genforge.kinds`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from genforge import kinds, registry
from genforge.errors import UserError
from genforge.evaluation.context import EvalContext, ref_form

log = logging.getLogger(__name__)


def resolve_metrics(names: list[str], kind: kinds.OutputKind, source: str) -> list[Any]:
    """The metric functions `names` refer to, each checked to apply to `kind`; `source` names the flag or key."""
    unknown = [m for m in names if m not in registry.METRICS]
    if unknown:
        raise UserError(f"{source}: " + registry.unknown_name_message("metric", unknown[0], list(registry.METRICS)))
    functions = []
    for name in names:
        fn = registry.lookup("metrics", name)
        kinds_of_fn = getattr(fn, "output_kinds", None)
        if kinds_of_fn is not None and kind.name not in kinds_of_fn:
            raise UserError(f"{source} {name} applies to {'/'.join(kinds_of_fn)} models; this one makes {kind.name}")
        functions.append(fn)
    return functions


def evaluate(ctx: EvalContext, metrics: list[str], source: str = "--metrics") -> dict[str, float]:
    functions = resolve_metrics(metrics, ctx.kind, source)
    ref = ctx.options.get("ref")
    if ref is not None and any(getattr(fn, "needs", None) for fn in functions):  # metrics with a feature network
        ref_form(ref, where=f"--ref {ref!r}")  # compare with --ref: a bad one fails now, not after generating samples
    results: dict[str, float] = {}
    for name, fn in zip(metrics, functions):
        log.info("computing %s", name)
        results.update(fn(ctx))
    return results


# --------------------------------------------------------------------------------------------------------------
# Evaluation during training (train.eval_every)


@dataclass
class TrainingEvaluator:
    """`evaluator(model, cfg) -> {result key: value}` for the trainer: the run's `eval` section (metrics, n, seed,
    ref, classifier, inception), the same samples (same seed) every time. The networks the metrics need are loaded
    once, before training starts; reference features come from the cache."""

    metrics: list[str]
    n: int
    seed: int
    options: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)
    shards = True  # the trainer may call it on every rank of a data-parallel run with `shard=`

    def __call__(self, model: nn.Module, cfg: Any, shard: Any = None) -> dict[str, float]:
        """The metrics' results. With `shard` (rank, size, gather; see `genforge.train.distributed.EvalShard`)
        every rank generates its share of the n samples, rank r with seed eval.seed + r (rank 0's are the first
        samples a one-process evaluation draws), rank 0 gathers them and computes the metrics; the other ranks
        return {}."""
        from genforge.sampling import Pipeline

        pipeline = Pipeline(module=model, config=cfg, tokenizer=getattr(model, "tokenizer", None))
        ctx = EvalContext(pipeline=pipeline, n=self.n, seed=self.seed, options=self.options)
        ctx.cache.update(self.shared)
        if shard is not None and shard.size > 1 and self.n >= shard.size:
            mine = self.n // shard.size + (shard.rank < self.n % shard.size)
            parts = shard.gather(pipeline.generate(mine, seed=self.seed + shard.rank))
            if shard.rank != 0:
                return {}
            ctx.preset_samples(pipeline.kind.concat(parts))
        return evaluate(ctx, self.metrics, source="eval.metrics:")


def training_evaluator(cfg: Any) -> TrainingEvaluator:
    """The evaluator `genforge train` passes to the trainer when train.eval_every > 0. What would fail at the first
    evaluation fails here, before training starts: unknown metric names, metrics of another output kind,
    class-acc on an unconditional model, a malformed eval.ref (or a missing .npz), a train.best_metric no metric
    returns, and a missing classifier or Inception file (both are loaded here, once)."""
    kind = kinds.get(registry.model_class(cfg.model.family).output_kind)
    metrics = list(cfg.eval.metrics) or list(kind.train_metrics)
    functions = resolve_metrics(metrics, kind, "eval.metrics:")
    prefixes = [p for fn in functions for p in fn.result_keys]
    if "class-acc" in metrics and not getattr(cfg.model, "num_classes", 0):
        raise UserError("eval.metrics: class-acc applies to class-conditional models (model.num_classes > 0)")
    if cfg.eval.ref is not None:
        ref_form(cfg.eval.ref, where=f"eval.ref = {cfg.eval.ref!r}")
    best = cfg.train.best_metric.removeprefix("eval/")
    if cfg.train.keep_best and best != "val/loss" and not any(best.startswith(p) or p.startswith(best)
                                                              for p in prefixes):
        raise UserError(f"train.best_metric = {cfg.train.best_metric!r} is not a result of eval.metrics "
                        f"({', '.join(metrics)}), whose results start with {', '.join(prefixes)}; name one of those "
                        f"(a full key such as fd-fast2k-mnist-test also works)")
    options = {"ref": cfg.eval.ref, "inception": cfg.eval.inception, "classifier": cfg.eval.classifier}
    evaluator = TrainingEvaluator(metrics=metrics, n=cfg.eval.n or kind.eval_n, seed=cfg.eval.seed, options=options)
    probe = EvalContext(pipeline=None, n=evaluator.n, options=options)
    for need in {fn.needs for fn in functions if fn.needs}:
        evaluator.shared[need] = probe.need(need)
    return evaluator
