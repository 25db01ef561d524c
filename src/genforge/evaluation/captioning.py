"""The captioning protocol of `genforge eval`: caption the held-out images of the run's data set with the checkpoint's
sampling options (greedy, or beam search with `--set sample.num_beams=3`) and score them against all their reference
captions with the COCO toolkit's metrics (`evaluation.captions`), plus what exposes a decoder that memorizes:

    bleu1..bleu4, rouge_l, cider_d   corpus-level, PTB-tokenized, identical to pycocoevalcap
    exact                            share of captions equal to one of the image's references (after tokenization);
                                     the synthetic scenes' grammar makes this the accuracy of a captioner there
    novel                            share of captions that are no training caption (after tokenization)
    vocab                            distinct words the captions use, and vocab_share: their share of the words
                                     of the training captions

Result keys name the protocol: `cider_d-flickr8k_subset-test100` is CIDEr-D over the first 100 test images.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from genforge.errors import UserError
from genforge.evaluation.captions import caption_scores, ptb_tokenize
from genforge.evaluation.context import EvalContext, count_tag, held_out, metric

log = logging.getLogger(__name__)

CHUNK = 50  # images captioned per call: bounded memory for beam search over grid features


def captions_of(ctx: EvalContext) -> tuple[str, list[str], list[list[str]], Any]:
    """(tag, generated captions, references, the data set) of the first n held-out images, made once per context."""
    key = "captions-of-held-out"
    if key not in ctx.cache:
        pipeline = ctx.require_pipeline("captioning metrics")
        module = pipeline.module
        if not hasattr(module, "caption"):
            raise UserError(f"the captions metric applies to captioners; this is a {pipeline.family} model")
        data = pipeline.config.data.model_copy(update={"limit": None})
        dataset, split = held_out(data, "test", "val", "captioning those", tokenizer=pipeline.tokenizer)
        n = min(ctx.n, len(dataset))
        options = pipeline.options()
        generator = torch.Generator(pipeline.device).manual_seed(ctx.seed)
        encoder = pipeline.config.model.encoder_input()
        captions: list[str] = []
        for start in range(0, n, CHUNK):
            rows = list(range(start, min(n, start + CHUNK)))
            ids = module.caption(dataset.inputs(rows, encoder), generator=generator, **options)
            captions += [pipeline.tokenizer.decode(t) for t in ids]
        log.info("captioned %d %s images", n, split)
        ctx.cache[key] = (f"{dataset.name}-{split}{count_tag(n)}", captions, dataset.references[:n], dataset)
    return ctx.cache[key]


def _normal(text: str) -> str:
    return " ".join(ptb_tokenize(text))


@metric("caption", keys=("bleu", "rouge_l", "cider_d", "exact", "novel", "vocab"))
def metric_captions(ctx: EvalContext) -> dict[str, float]:
    tag, captions, references, dataset = captions_of(ctx)
    ids = [str(i) for i in range(len(captions))]
    scores = caption_scores(dict(zip(ids, captions)), dict(zip(ids, references)))
    normal = [_normal(c) for c in captions]
    exact = sum(c in {_normal(r) for r in refs} for c, refs in zip(normal, references)) / len(normal)
    pipeline = ctx.require_pipeline("captioning metrics")
    train = held_out(pipeline.config.data.model_copy(update={"limit": None}), "train", None, "",
                     tokenizer=pipeline.tokenizer)[0]
    train_captions = {_normal(r) for refs in train.references for r in refs}
    train_words = {w for c in train_captions for w in c.split()}
    used = {w for c in normal for w in c.split()}
    results = {f"{name}-{tag}": value for name, value in scores.items()}
    results[f"exact-{tag}"] = exact
    results[f"novel-{tag}"] = sum(c not in train_captions for c in normal) / len(normal)
    results[f"vocab-{tag}"] = float(len(used))
    results[f"vocab_share-{tag}"] = len(used & train_words) / max(1, len(train_words))
    return results
