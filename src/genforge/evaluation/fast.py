"""Fast domain metrics in the feature space of a classifier genforge trains itself (`models/classifier.py`,
`configs/mnist/classifier.yaml`): seconds instead of the Inception network's minutes, so they suit evaluation
during training and quick comparisons. They are not comparable with published Inception FIDs.

- fd-fast:   Fréchet distance between classifier features (global-average-pooled last conv stage) of n generated
             images and the reference split, reference features cached under the classifier's weights hash
- pr-fast:   precision / recall (k=3) in the same space
- coverage:  classes the classifier finds among the samples, and KL(predicted label histogram || uniform)
- class-acc: for class-conditional generators, how often the classifier predicts the class a sample was asked for

Resolution. Real images are first brought to the generated images' resolution by the data pipeline (the path the
model's own training data took, `context.reference`). When that differs from the classifier's resolution (a
32x32 model, a 28x28 classifier), *both* sets then take the identical path `to_classifier_size`: antialiased
bilinear on float values in [-1, 1] (`F.interpolate(..., mode="bilinear", antialias=True)`), recorded in the
reference cache key.
"""
from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genforge import registry
from genforge.errors import UserError
from genforge.evaluation.cache import cached_features, reference_key_parts
from genforge.evaluation.context import EvalContext, count_tag, metric, reference
from genforge.evaluation.stats import fid_from_features, precision_recall

ENV_CLASSIFIER = "GENFORGE_CLASSIFIER"


def load_classifier(ctx: EvalContext) -> nn.Module:
    """The classifier of --classifier / eval.classifier / $GENFORGE_CLASSIFIER, its plain module (`ctx.need(
    "classifier")` calls this once per context, and a training run once before its first step)."""
    from genforge import sampling

    path = ctx.options.get("classifier") or os.environ.get(ENV_CLASSIFIER)
    if not path:
        raise UserError("fast metrics need a trained classifier: train one with `genforge train "
                        "configs/mnist/classifier.yaml`, then pass --classifier runs/mnist-classifier to `genforge "
                        "eval`, --set eval.classifier=runs/mnist-classifier to `genforge train`, or set env "
                        f"{ENV_CLASSIFIER}")
    pipeline = sampling.load(path)
    if pipeline.output_kind != "label":
        raise UserError(f"--classifier {path} is a {pipeline.family} checkpoint, not a classifier")
    return pipeline.module


def _weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _as_float(images: Tensor) -> Tensor:
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()


def to_classifier_size(images: Tensor, size: int) -> Tensor:
    """float (N, C, H, W) in [-1, 1] -> (N, C, size, size): the one resize both real and generated images take."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def fast_features(ctx: EvalContext) -> tuple[str, np.ndarray, np.ndarray, Tensor]:
    """(reference tag, real features, generated features, generated predictions), real ones from the cache."""
    if "fast_features" in ctx.cache:
        return ctx.cache["fast_features"]
    classifier = ctx.need("classifier")
    cfg = classifier.config
    fake = _as_float(ctx.samples())
    if fake.dim() != 4 or fake.shape[1] != cfg.channels or fake.shape[2] != fake.shape[3]:
        raise UserError(f"the classifier takes square images with {cfg.channels} channel(s); these samples are "
                        f"{tuple(fake.shape[1:])}: train a classifier for them (configs/mnist/classifier.yaml)")
    size = fake.shape[-1]
    real_set = reference(ctx, size, cfg.channels)  # real images at the generated images' resolution
    real = real_set.images
    preprocess = "uint8/127.5-1" + (f";bilinear-antialias-{size}-to-{cfg.image_size}" if size != cfg.image_size else "")
    extractor = {"extractor": f"genforge-classifier-{cfg.width}", "weights_sha256": _weights_hash(classifier),
                 "preprocess": preprocess}
    parts = reference_key_parts(real, dataset=real_set.dataset, split=real_set.split, extractor=extractor)
    ref = cached_features(
        parts, lambda: classifier.predict(to_classifier_size(_as_float(real), cfg.image_size))[0].double().numpy())
    fake_features, fake_pred = classifier.predict(to_classifier_size(fake, cfg.image_size))
    result = (real_set.tag, ref.features.astype(np.float64), fake_features.double().numpy(), fake_pred)
    ctx.cache["fast_features"] = result
    return result


@metric("image", keys=("fd-fast",), needs="classifier")
def metric_fd_fast(ctx: EvalContext) -> dict[str, float]:
    tag, real, fake, _ = fast_features(ctx)
    return {f"fd-fast{count_tag(len(fake))}-{tag}": fid_from_features(real, fake)}


@metric("image", keys=("precision-fast", "recall-fast"), needs="classifier")
def metric_pr_fast(ctx: EvalContext) -> dict[str, float]:
    tag, real, fake, _ = fast_features(ctx)
    precision, recall = precision_recall(real, fake, k=3)
    n = count_tag(len(fake))
    return {f"precision-fast{n}-{tag}": precision, f"recall-fast{n}-{tag}": recall}


def label_coverage(predictions: Tensor, num_classes: int) -> tuple[int, float]:
    """(classes predicted at least once, KL(predicted histogram || uniform) in nats; 0 = perfectly balanced)."""
    counts = torch.bincount(predictions.cpu(), minlength=num_classes).double()
    p = counts / counts.sum()
    kl = float(sum(pi * math.log(pi * num_classes) for pi in p.tolist() if pi > 0))
    return int((counts > 0).sum()), kl


@metric("image", keys=("classes_covered", "label_kl_uniform"), needs="classifier")
def metric_coverage(ctx: EvalContext) -> dict[str, float]:
    _, _, fake, predictions = fast_features(ctx)
    covered, kl = label_coverage(predictions, ctx.need("classifier").config.num_classes)
    n = count_tag(len(fake))
    return {f"classes_covered{n}": float(covered), f"label_kl_uniform{n}": kl}


@metric("image", keys=("class_acc",), needs="classifier")
def metric_class_acc(ctx: EvalContext) -> dict[str, float]:
    """Accuracy of the requested class: samples are generated for classes 0, 1, ..., K-1, 0, 1, ... in turn."""
    pipeline = ctx.require_pipeline("class-acc")
    k = getattr(pipeline.config.model, "num_classes", 0)
    if not k:
        raise UserError("--metrics class-acc applies to class-conditional models (model.num_classes > 0)")
    _, _, fake, predictions = fast_features(ctx)  # EvalContext generates with cond=None: labels i % K
    asked = torch.arange(len(fake)) % k
    return {f"class_acc{count_tag(len(fake))}": float((predictions.cpu() == asked).float().mean())}


@metric("label", keys=("accuracy",))
def metric_accuracy(ctx: EvalContext) -> dict[str, float]:
    """A classifier checkpoint's accuracy on the test split of the data it was trained on."""
    pipeline = ctx.require_pipeline("accuracy")
    cfg = pipeline.config
    data = registry.dataset_builder(cfg.data.name)(cfg.data.model_copy(update={"limit": None}), "test")
    _, predictions = pipeline.module.predict(_as_float(data.images))
    return {f"accuracy-{cfg.data.name}-test": float((predictions.cpu() == data.labels).float().mean())}
