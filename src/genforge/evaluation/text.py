"""Text metrics: held-out likelihood (loss, perplexity, bits per character / byte) and sample statistics
(distinct-n, self-BLEU, repetition rate).

Likelihood is measured over the whole val split in non-overlapping windows of `block_size` tokens, every token
predicted once (nanoGPT's estimate_loss instead averages random windows). Bits per byte divide the total bits by
the UTF-8 bytes of the predicted text, so a character model and a BPE model of the same corpus compare directly;
for a character tokenizer over ASCII text bits per byte equals bits per character.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genforge.data.build import build_dataset
from genforge.errors import UserError
from genforge.evaluation.context import EvalContext, metric


@torch.no_grad()
def likelihood(model: nn.Module, tokens: torch.Tensor, tokenizer: Any, *, batch_size: int = 16,
               max_tokens: int | None = None) -> dict[str, float]:
    """{"loss" (nats/token), "perplexity", "bits_per_token", "bits_per_byte", "tokens"} over `tokens` (1-D ids).

    Windows: x = tokens[i : i + T], y = tokens[i + 1 : i + T + 1] for i = 0, T, 2T, ...; the last partial window is
    evaluated too, so every token after the first is predicted exactly once."""
    block = model.config.block_size
    ids = tokens.long()
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    n = ids.numel() - 1
    if n < 1:
        raise ValueError("need at least two tokens to measure likelihood")
    starts = range(0, n, block)
    full = [s for s in starts if s + block <= n]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[s] for s in starts if s + block > n]  # the last, shorter window runs alone
    device = next(model.parameters()).device
    total_nats, total_bytes = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for group in groups:
            length = min(block, n - group[0])
            x = torch.stack([ids[s : s + length] for s in group]).to(device)  # (B, T)
            y = torch.stack([ids[s + 1 : s + length + 1] for s in group])  # (B, T)
            logits = model(x).float()  # (B, T, V)
            total_nats += F.cross_entropy(logits.flatten(0, 1), y.flatten().to(device), reduction="sum").item()
            total_bytes += sum(len(tokenizer.decode(row.tolist()).encode("utf-8")) for row in y)
    finally:
        model.train(was_training)
    loss = total_nats / n
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "bits_per_byte": total_nats / math.log(2) / total_bytes, "tokens": float(n)}


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams, over all samples together."""
    grams = [g for t in texts for g in _ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same sample (seq-rep-n, Welleck et al. 2019),
    averaged over samples: 0 = no repeats, near 1 = degenerate loops."""
    rates = []
    for text in texts:
        grams = _ngrams(text.split(), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def self_bleu(texts: Sequence[str], max_samples: int = 200) -> float:
    """Self-BLEU (Zhu et al. 2018, Texygen): each sample scored by sacrebleu's sentence BLEU against all other
    samples as references, averaged (0-100; lower = more diverse)."""
    import sacrebleu

    texts = list(texts)[:max_samples]
    if len(texts) < 2:
        raise ValueError("self-BLEU needs at least two samples")
    scores = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]
    return sum(scores) / len(scores)


def sample_stats(texts: Sequence[str]) -> dict[str, float]:
    stats = {f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)}
    return {**stats, "self_bleu": self_bleu(texts), "repetition_4": repetition_rate(texts, 4)}


# --------------------------------------------------------------------------------------------------------------
# Metric protocols for `genforge eval` (registry.METRICS)


@metric("text", keys=("val_loss", "perplexity", "bits_per"))
def metric_likelihood(ctx: EvalContext) -> dict[str, float]:
    """Loss, perplexity and bits per byte on the val split of the checkpoint's own data, with its tokenizer."""
    pipeline = ctx.require_pipeline("likelihood")
    if not hasattr(pipeline.config.model, "block_size"):
        raise UserError(f"ppl scores language models (gpt) on windows of the val text; this {pipeline.family} model "
                        "has no context window: use sentence-nll, which scores each sentence alone")
    tokenizer = pipeline.tokenizer
    data = build_dataset(pipeline.config.data, "val", tokenizer=tokenizer)
    stats = likelihood(pipeline.module, data.tokens, tokenizer, max_tokens=ctx.options.get("max_tokens"))
    unit = "char" if tokenizer.kind == "char" else "byte"
    return {"val_loss": stats["loss"], "perplexity": stats["perplexity"], f"bits_per_{unit}": stats["bits_per_byte"],
            "val_tokens": stats["tokens"]}


@metric("text", keys=("distinct",))
def metric_distinct(ctx: EvalContext) -> dict[str, float]:
    texts = ctx.samples()
    return {f"distinct_{n}@{len(texts)}": distinct_n(texts, n) for n in (1, 2, 3)}


@metric("text", keys=("self_bleu",))
def metric_self_bleu(ctx: EvalContext) -> dict[str, float]:
    texts = ctx.samples()
    return {f"self_bleu@{len(texts)}": self_bleu(texts)}


@metric("text", keys=("repetition",))
def metric_repetition(ctx: EvalContext) -> dict[str, float]:
    texts = ctx.samples()
    return {f"repetition_4@{len(texts)}": repetition_rate(texts, 4)}
