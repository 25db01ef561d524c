"""FID, KID and precision/recall in the feature space of the 2015-12-05 Inception-v3 FID network, as metric
protocols of `genforge eval` (registry.METRICS). Names carry the protocol: `fid2k-mnist-test` is the FID of 2,000
generated images against the full MNIST test split, both measured at the model's resolution; `fid2k-cats` is
against the images of a folder `cats/` or a file `cats.npz` (`--ref`, see `context.reference`). The math is in
`stats.py`, the detector in `inception.py`, the reference-feature cache in `cache.py`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from genforge.evaluation.cache import cached_features, reference_key_parts
from genforge.evaluation.context import EvalContext, count_tag, log_progress, metric, reference
from genforge.data import inception
from genforge.evaluation.stats import fid_from_features, kid, precision_recall


def load_extractor(ctx: EvalContext) -> Any:
    """The Inception feature extractor (`ctx.need("inception")` calls this once per context, and a training run
    once before its first step)."""
    return inception.load_inception(ctx.options.get("inception"))


def _generated_uint8(ctx: EvalContext) -> Tensor:
    return inception.to_uint8_nchw(ctx.samples())


def inception_features(ctx: EvalContext) -> tuple[str, np.ndarray, np.ndarray]:
    """(reference tag, real features, generated features) in Inception space, real ones from the cache."""
    if "inception_features" in ctx.cache:
        return ctx.cache["inception_features"]
    extractor = ctx.need("inception")
    fake = _generated_uint8(ctx)
    real = reference(ctx, fake.shape[-1], fake.shape[1])
    parts = reference_key_parts(real.images, dataset=real.dataset, split=real.split, extractor=extractor.key_parts())
    progress = log_progress(f"Inception features of {real.tag}", len(real.images))
    ref = cached_features(parts, lambda: extractor(real.images, progress=progress))
    result = (real.tag, ref.features.astype(np.float64),
              extractor(fake, progress=log_progress("Inception features of the samples", len(fake))))
    ctx.cache["inception_features"] = result
    return result


@metric("image", keys=("fid",), needs="inception")
def metric_fid(ctx: EvalContext) -> dict[str, float]:
    tag, real, fake = inception_features(ctx)
    return {f"fid{count_tag(len(fake))}-{tag}": fid_from_features(real, fake)}


@metric("image", keys=("kid",), needs="inception")
def metric_kid(ctx: EvalContext) -> dict[str, float]:
    tag, real, fake = inception_features(ctx)
    mean, std = kid(real, fake, seed=ctx.seed)
    return {f"kid{count_tag(len(fake))}-{tag}": mean, f"kid{count_tag(len(fake))}-{tag}-std": std}


@metric("image", keys=("precision", "recall"), needs="inception")
def metric_pr(ctx: EvalContext) -> dict[str, float]:
    tag, real, fake = inception_features(ctx)
    precision, recall = precision_recall(real, fake, k=3)
    return {f"precision{count_tag(len(fake))}-{tag}": precision, f"recall{count_tag(len(fake))}-{tag}": recall}
