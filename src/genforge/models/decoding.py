"""Decoding strategies shared by every autoregressive text family (the GPT, the sentence VAE's decoder, ...): the
logits processors, one small function per strategy, the next-token choice, and the options they read.

A decoding loop calls `process_logits(logits, history, opts, sampling)` on each step's next-token logits (B, V)
and `choose_next` on the result; `History` keeps each row's tokens for the processors that look back. The options
object needs only the fields of `DecodingOptions`, which every text family's sample options extend.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor

from genforge.config import SampleOptions
from genforge.errors import UserError


class DecodingOptions(SampleOptions):
    """The keys of the `sample:` section that choose the next token, shared by the text families."""

    temperature: float = Field(default=1.0, ge=0)  # divide the logits by this before sampling; 0 = greedy (argmax)
    top_k: int | None = Field(default=None, ge=1)  # sample among the k most likely tokens only
    top_p: float | None = Field(default=None, gt=0, le=1)  # nucleus: the smallest set of tokens with mass >= top_p
    min_p: float | None = Field(default=None, ge=0, le=1)  # drop tokens less likely than min_p * the top token's p
    repetition_penalty: float = Field(default=1.0, gt=0)  # CTRL penalty on tokens already in the sequence; 1 = off
    no_repeat_ngram_size: int = Field(default=0, ge=0)  # never repeat an n-gram of this size; 0 = off


# Logits processors: each takes logits (B, V) and returns new logits. Order, as in HF transformers: the penalties,
# then temperature, then the truncation filters (top-k, top-p, min-p), which set dropped tokens to -inf.


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL (Keskar et al. 2019, eq. 1) as HF applies it: every token already in the sequence (seen: bool (B, V))
    gets its logit divided by `penalty` when positive, multiplied when negative: less likely either way."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def repeated_ngram_tokens(sequence: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already in `sequence`: those that followed its last n-1 tokens."""
    if len(sequence) < n:
        return []
    prefix = sequence[len(sequence) - n + 1:]
    return [sequence[i + n - 1] for i in range(len(sequence) - n + 1) if sequence[i:i + n - 1] == prefix]


def ban_repeated_ngrams(logits: Tensor, sequences: list[list[int]], n: int) -> Tensor:
    """No-repeat-ngram (Paulus et al. 2018; fairseq/HF `no_repeat_ngram_size`)."""
    logits = logits.clone()
    for row, sequence in enumerate(sequences):
        banned = repeated_ngram_tokens(sequence, n)
        if banned:
            logits[row, banned] = -math.inf
    return logits


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    return logits / temperature  # < 1 sharpens the distribution, > 1 flattens it


def keep_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row (Fan et al. 2018); ties with the k-th are kept too."""
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, -math.inf)


def keep_top_p(logits: Tensor, p: float) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens whose probability mass
    reaches p. A token is dropped when the tokens ranked above it already reach p, so the top token always stays."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # (B, V) mass of the tokens ranked strictly higher
    drop_sorted = mass_above >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)


def keep_min_p(logits: Tensor, min_p: float) -> Tensor:
    """Min-p sampling (Nguyen et al. 2024): drop tokens whose probability is below min_p times the top token's."""
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    return logits.masked_fill(probs < threshold, -math.inf)


def process_logits(logits: Tensor, history: History, opts: DecodingOptions, sampling: bool) -> Tensor:
    """The processing pipeline, one line per strategy. Greedy and beam search skip the sampling steps."""
    if opts.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history.seen, opts.repetition_penalty)
    if opts.no_repeat_ngram_size > 0:
        logits = ban_repeated_ngrams(logits, history.tokens, opts.no_repeat_ngram_size)
    if not sampling:
        return logits
    if opts.temperature != 1.0:
        logits = apply_temperature(logits, opts.temperature)
    if opts.top_k is not None:
        logits = keep_top_k(logits, opts.top_k)
    if opts.top_p is not None and opts.top_p < 1.0:
        logits = keep_top_p(logits, opts.top_p)
    if opts.min_p is not None and opts.min_p > 0.0:
        logits = keep_min_p(logits, opts.min_p)
    return logits


def choose_next(logits: Tensor, greedy: bool, generator: torch.Generator | None) -> Tensor:
    """The next token per row (B,): the argmax, or a draw from softmax(logits)."""
    if greedy:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        # draw where the generator lives (e.g. a CPU generator for a CUDA model), then come back
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


class History:
    """Each row's real tokens so far (prompt + generated), for the processors that look back."""

    def __init__(self, prompts: list[list[int]], vocab_size: int, device: torch.device):
        self.tokens = [list(p) for p in prompts]
        self.seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)  # (B, V)
        for row, prompt in enumerate(prompts):
            self.seen[row, prompt] = True

    def append(self, token: Tensor) -> None:
        for row, t in enumerate(token.tolist()):
            self.tokens[row].append(t)
        self.seen.scatter_(1, token[:, None], True)

    def reorder(self, rows: Tensor) -> None:
        self.tokens = [list(self.tokens[r]) for r in rows.tolist()]
        self.seen = self.seen[rows]


def hits_stop_string(new_tokens: list[int], stop_strings: list[str], decode: Callable[[list[int]], str]) -> bool:
    """Whether the generated text contains a stop string. Only a tail is decoded: every token decodes to at least one
    byte and a character takes at most 4, so 4 * (longest + 1) tokens cover the longest stop string ending at the
    newest token (an earlier match would have stopped the row already). The prompt is not searched."""
    window = 4 * (max(len(s) for s in stop_strings) + 1)
    text = decode(new_tokens[-window:])
    return any(s in text for s in stop_strings)


def ensure_some_token_allowed(logits: Tensor, opts: DecodingOptions) -> None:
    if opts.no_repeat_ngram_size > 0 and bool(torch.isinf(logits).all(dim=-1).any()):
        raise UserError(f"`sample.no_repeat_ngram_size` = {opts.no_repeat_ngram_size} bans every token of the "
                        "vocabulary at this point; use a larger n-gram size or fewer `sample.max_new_tokens`")


