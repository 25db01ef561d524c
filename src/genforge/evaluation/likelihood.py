"""Likelihood metrics of models that have one (the VAE's `log_likelihood_bounds`), on the held-out images of the
run's data set: the test ELBO and its two terms, the KL per latent dimension, the active units, and the
importance-weighted estimate of the negative log-likelihood (Burda et al. 2016, eq. 8) with k samples.

Results are nats per image (-ELBO and NLL are positive, lower is better), named with the protocol:
`neg-elbo-mnist-test`, `nll-iw5000-mnist-test` (k = 5000, as Burda et al. 2016 report; pythae's reproduction of
the vanilla VAE of Rezende & Mohamed 2015 reports k = 200, `--iw-samples 200`). `--test-limit N` scores the first N
held-out images, `--test-sample N` a seeded random N (tag `mnist-test-rand1000s0`), an unbiased estimate of the
full set's mean whose standard error `nll` reports next to it. The images of a dynamically binarized Bernoulli model
are binarized once with the evaluation seed, so every checkpoint is scored on the same binary test set.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from genforge.errors import UserError
from genforge.evaluation.context import EvalContext, held_out, held_out_subset, metric

log = logging.getLogger(__name__)

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016, sec. 5.3: a unit is active when Cov_x(E_q[z_u]) > 0.01
DEFAULT_IW_SAMPLES = 5000


def _bounds(ctx: EvalContext, k: int) -> tuple[str, dict[str, Any]]:
    """(data tag, the model's bounds on the held-out images) with k importance samples, computed once per k."""
    key = f"likelihood-bounds-{k}"
    if key in ctx.cache:
        return ctx.cache[key]
    pipeline = ctx.require_pipeline("a likelihood metric")
    module = pipeline.module
    if not hasattr(module, "log_likelihood_bounds"):
        raise UserError(f"the likelihood metrics (elbo, nll) apply to models with a likelihood bound (vae); this is "
                        f"a {pipeline.family} model")
    data = pipeline.config.data.model_copy(update={"limit": None})
    dataset, split = held_out(data, pipeline.kind.val_split, data.split, "the training images")
    chosen, suffix = held_out_subset(ctx, len(dataset.images))
    images = dataset.images if chosen is None else dataset.images[chosen]
    labels = dataset.labels if dataset.labels is None or chosen is None else dataset.labels[chosen]
    log.info("likelihood bounds of %d %s images with %d importance samples", len(images), split, k)
    generator = torch.Generator(pipeline.device).manual_seed(ctx.seed)
    bounds = module.log_likelihood_bounds(images, labels if getattr(module.config, "num_classes", 0) else None,
                                          k=k, generator=generator)
    tag = f"{data.name}-{split}{suffix}"
    ctx.cache[key] = (tag, bounds)
    return ctx.cache[key]


@metric("image", keys=("neg-elbo", "recon-nll", "kl", "active-units"))
def metric_elbo(ctx: EvalContext) -> dict[str, float]:
    """-ELBO, its reconstruction and KL terms (nats per image), the active units and the KL of each latent dimension.
    One posterior sample per image, as training uses."""
    tag, b = _bounds(ctx, 1)
    means = b["posterior_means"]  # (N, D)
    activity = means.var(0, unbiased=True) if len(means) > 1 else torch.zeros(means.shape[1])
    results = {f"neg-elbo-{tag}": -float(b["elbo"].mean()), f"recon-nll-{tag}": -float(b["recon_log_px"].mean()),
               f"kl-{tag}": float(b["kl"].mean()),
               f"active-units-{tag}": float((activity > ACTIVE_UNIT_THRESHOLD).sum())}
    width = len(str(len(b["kl_per_dim"]) - 1))
    results.update({f"kl-dim{j:0{width}d}-{tag}": float(v) for j, v in enumerate(b["kl_per_dim"])})
    return results


@metric("image", keys=("nll-iw",))
def metric_nll(ctx: EvalContext) -> dict[str, float]:
    """The importance-weighted negative log-likelihood, nats per image, with k = --iw-samples (default 5000)."""
    k = int(ctx.options.get("iw_samples") or DEFAULT_IW_SAMPLES)
    tag, b = _bounds(ctx, k)
    nll = -b["log_px_iw"].double()
    # the standard error of the mean over the scored images: how far a --test-sample estimate may sit from the mean
    # over the whole held-out set (the bound's own bias, which shrinks as k grows, is not in it)
    stderr = float(nll.std(unbiased=True) / len(nll) ** 0.5) if len(nll) > 1 else float("nan")
    return {f"nll-iw{k}-{tag}": float(nll.mean()), f"nll-iw{k}-stderr-{tag}": stderr}
