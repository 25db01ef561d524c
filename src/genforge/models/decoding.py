"""Decoding shared by every autoregressive text family (the GPT, the captioner's decoder, the sentence VAE's
decoder): the logits processors, one small function per strategy, the next-token choice, the options they read,
and the two decoding loops, sampling/greedy (`decode_steps`) and beam search (`beam_search`).

A decoding loop calls `process_logits(logits, history, opts, sampling)` on each step's next-token logits (B, V)
and `choose_next` on the result; `History` keeps each row's tokens for the processors that look back. The options
object needs only the fields of `DecodingOptions`, which every text family's sample options extend; the loops also
read `SequenceOptions` (length, beams, end tokens).

The loops drive a family's `DecoderContext`: an object that runs its network with a KV cache, whatever the network
conditions on (the GPT's sliding context, the captioner's image). `start(prompts)` runs the prompts (token-id
lists) and returns the next-token logits (B, V); `step(token, sequences)` feeds one token per row (each row's
tokens so far in `sequences`) and returns the next logits; `reorder(rows)` makes row i continue row rows[i]
(beam search), and with a subset of the rows drops the others. A context may also have `join(prompts)`, which
prefills new rows after the running ones and returns their next-token logits.

Sampling and greedy decoding run on `RunningRows`: a batch whose rows leave as soon as they end, so later steps
cost only the rows still running, and to which rows can be added between steps when the context can `join` new
prompts (the GPT's can): the server's continuous batching of texts. `decode_steps` is its fixed-batch use.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
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


class SequenceOptions(DecodingOptions):
    """DecodingOptions plus how long sequences get and how they end, for the families that use the loops below."""

    max_new_tokens: int = Field(default=256, ge=1)  # tokens generated per row
    num_beams: int = Field(default=1, ge=1)  # beam search when > 1 (deterministic); 1 = greedy or sampling
    length_penalty: float = 1.0  # beam score = sum of log-probs / generated_length ** length_penalty
    early_stopping: bool = False  # beam search: stop once num_beams hypotheses ended (True) or none can improve
    eos_token_ids: list[int] = []  # a row stops after emitting one of these
    stop_strings: list[str] = []  # a row stops once its generated text contains one of these (needs a tokenizer)

    @field_validator("stop_strings")
    @classmethod
    def _non_empty(cls, stop_strings: list[str]) -> list[str]:
        if any(s == "" for s in stop_strings):
            raise ValueError("an empty stop string would stop at once; remove it")
        return stop_strings


def check_sequence_options(opts: SequenceOptions, vocab_size: int, decode: Callable[[list[int]], str] | None) -> Any:
    """What the options alone cannot check: end tokens inside the vocabulary, stop strings with a decoder, no
    sampling options with beam search. Returns `opts`."""
    bad = [i for i in opts.eos_token_ids if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"`sample.eos_token_ids` {bad} are outside the vocabulary [0, {vocab_size})")
    if opts.stop_strings and decode is None:
        raise UserError("`sample.stop_strings` needs a tokenizer to decode the generated text; pass decode= (sample() "
                        "does, when the model has a tokenizer)")
    if opts.num_beams > 1:
        sampling = [k for k in ("top_k", "top_p", "min_p") if getattr(opts, k) is not None]
        if opts.temperature not in (0.0, 1.0):
            sampling.append("temperature")
        if sampling:
            raise UserError(f"beam search (`sample.num_beams` = {opts.num_beams}) is deterministic and takes no "
                            f"sampling options, but {', '.join('`sample.' + k + '`' for k in sampling)} were set; "
                            "remove them or set num_beams=1")
        if opts.stop_strings:
            raise UserError("`sample.stop_strings` is not available with beam search; use `sample.eos_token_ids`")
    return opts


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

    def extend(self, prompts: list[list[int]]) -> None:
        """New rows after these (continuous batching)."""
        added = History(prompts, self.seen.shape[1], self.seen.device)
        self.tokens += added.tokens
        self.seen = torch.cat([self.seen, added.seen])


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


# --------------------------------------------------------------------------------------------------------------
# Decoding loops


class DecoderContext(Protocol):
    """A family's network with its KV cache, as the loops drive it (see the module docstring)."""

    def start(self, prompts: list[list[int]]) -> Tensor: ...
    def step(self, token: Tensor, sequences: list[list[int]]) -> Tensor: ...
    def reorder(self, rows: Tensor) -> None: ...


class RunningRows:
    """Rows decoded together by sampling or greedy choice, one token per row per step, where rows may join and leave
    between steps (continuous batching: a server adds a request's row while others decode).

    Each step is `choose()`, which picks every row's next token and says which rows ended (an end token, a stop
    string, max_new_tokens), then `advance()`, which drops the ended rows and the ones `drop`ped (a client that
    left) and feeds the others' tokens to the network. `add(prompts)` between steps prefills new rows (`start` on an
    empty batch, else the context's `join`); rows are named by the handles it returns. Rows are independent: a
    greedy row decodes the same tokens whoever shares its batch; a sampled row's draws depend on its neighbours."""

    def __init__(self, context: DecoderContext, vocab_size: int, opts: SequenceOptions,
                 generator: torch.Generator | None, decode: Callable[[list[int]], str] | None,
                 check: Callable[[list[list[int]]], list[list[int]]] | None = None):
        self.context, self.vocab_size, self.opts, self.check = context, vocab_size, opts, check
        self.generator, self.decode = generator, decode
        self.greedy = opts.temperature == 0.0
        self.handles: list[int] = []  # the handle of each row, in the batch's order
        self.new_tokens: list[list[int]] = []  # each row's tokens so far, its prompt excluded
        self.ended: list[bool] = []  # rows that leave at the next advance()
        self.logits: Tensor | None = None  # (B, V): each row's next-token logits
        self.history: History | None = None
        self.chosen: Tensor | None = None  # (B,): chosen by choose(), not yet fed
        self.next_handle = 0

    def __len__(self) -> int:
        return len(self.handles)

    def add(self, prompts: list[list[int]]) -> list[int]:
        """Prefill `prompts` as new rows (between steps: after advance(), or before the first choose()). Prompts
        the family refuses (`check`) raise before anything changes."""
        assert self.chosen is None, "rows join between steps: call advance() first"
        prompts = self.validate(prompts)
        if self.handles:
            join = getattr(self.context, "join", None)
            if join is None:
                raise TypeError(f"{type(self.context).__name__} cannot add rows to a running batch (no join())")
            logits = join(prompts)
            assert self.history is not None and self.logits is not None
            self.history.extend(prompts)
            self.logits = torch.cat([self.logits, logits])
        else:
            self.logits = self.context.start(prompts)
            self.history = History(prompts, self.vocab_size, self.logits.device)
        handles = list(range(self.next_handle, self.next_handle + len(prompts)))
        self.next_handle += len(prompts)
        self.handles += handles
        self.new_tokens += [[] for _ in prompts]
        self.ended += [False] * len(prompts)
        return handles

    def validate(self, prompts: list[list[int]]) -> list[list[int]]:
        """The prompts as the family accepts them, or its UserError (too long, ids outside the vocabulary)."""
        return self.check(prompts) if self.check is not None else prompts

    def choose(self) -> list[tuple[int, int, bool]]:
        """Every row's next token: (handle, token id, whether the row ended with it)."""
        assert self.logits is not None and self.history is not None and self.chosen is None
        opts = self.opts
        logits = process_logits(self.logits, self.history, opts, sampling=not self.greedy)
        ensure_some_token_allowed(logits, opts)
        token = choose_next(logits, self.greedy, self.generator)  # (B,)
        self.history.append(token)
        eos = torch.tensor(opts.eos_token_ids, dtype=torch.long, device=token.device)
        ends = torch.isin(token, eos).tolist() if len(eos) else [False] * len(token)
        chosen = []
        for row, t in enumerate(token.tolist()):
            tokens = self.new_tokens[row]
            tokens.append(t)
            self.ended[row] = ends[row] or len(tokens) == opts.max_new_tokens or bool(
                opts.stop_strings and hits_stop_string(tokens, opts.stop_strings, self.decode))
            chosen.append((self.handles[row], t, self.ended[row]))
        self.chosen = token
        return chosen

    def drop(self, handle: int) -> None:
        """The row leaves at the next advance() (its client has gone)."""
        if handle in self.handles:
            self.ended[self.handles.index(handle)] = True

    def advance(self) -> None:
        """Drop the ended rows and feed each other row its chosen token."""
        assert self.chosen is not None and self.history is not None
        keep = [row for row, ended in enumerate(self.ended) if not ended]
        token, self.chosen = self.chosen, None
        if len(keep) < len(self.handles):
            rows = torch.tensor(keep, dtype=torch.long, device=token.device)
            self.handles = [self.handles[r] for r in keep]
            self.new_tokens = [self.new_tokens[r] for r in keep]
            self.ended = [False] * len(keep)
            if not keep:  # empty: the next add() starts afresh
                self.logits = self.history = None
                return
            self.context.reorder(rows)
            self.history.reorder(rows)
            token = token[rows]
        self.logits = self.context.step(token, self.history.tokens)


def decode_steps(context: DecoderContext, prompts: list[list[int]], vocab_size: int, opts: SequenceOptions,
                 generator: torch.Generator | None,
                 decode: Callable[[list[int]], str] | None) -> Iterator[list[int | None]]:
    """Greedy (temperature 0) or sampling. Yields each step's new token per row, None for rows already stopped
    (a stopped row leaves the batch, so later steps cost only the running rows)."""
    rows = RunningRows(context, vocab_size, opts, generator, decode)
    rows.add(prompts)  # handles 0..B-1: each prompt's index
    while True:
        emitted: list[int | None] = [None] * len(prompts)
        for handle, token, _ in rows.choose():
            emitted[handle] = token
        yield emitted
        rows.advance()
        if not rows:
            return


def beam_search(context: DecoderContext, prompts: list[list[int]], vocab_size: int,
                opts: SequenceOptions) -> list[list[int]]:
    """Beam search with HF transformers' semantics. Each prompt keeps num_beams running beams; a beam that emits an
    eos token becomes a finished hypothesis scored sum(log p) / generated_len ** length_penalty (generated_len
    counts the new tokens, the eos included). A prompt is done when it has num_beams hypotheses and either
    early_stopping is set or no running beam can beat the worst one; at max_new_tokens the running beams join the
    hypotheses. Returns the best hypothesis per prompt (new tokens only)."""
    K = opts.num_beams
    B = len(prompts)
    beam_prompts = [p for p in prompts for _ in range(K)]  # row b * K + k is beam k of prompt b
    logits = context.start(beam_prompts)
    V = logits.size(-1)
    device = logits.device
    history = History(beam_prompts, vocab_size, device)
    eos = set(opts.eos_token_ids)
    beam_scores = torch.zeros(B, K, device=device)
    beam_scores[:, 1:] = -math.inf  # all beams start identical: only beam 0 may expand at the first step
    new_tokens: list[list[int]] = [[] for _ in beam_prompts]
    hypotheses: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # (score, tokens), best first
    done = [False] * B
    for step in range(opts.max_new_tokens):
        # 1. log-probabilities of every continuation, then the processors (on log-probs, as HF does for beams)
        logprobs = process_logits(F.log_softmax(logits, dim=-1), history, opts, sampling=False)  # (B*K, V)
        ensure_some_token_allowed(logprobs, opts)
        candidates = (beam_scores.view(-1, 1) + logprobs).view(B, K * V)
        # 2. the 2K best per prompt: enough to keep K running beams even if K of them end in eos
        top_scores, top_ids = candidates.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        top_scores_l, top_beams_l, top_tokens_l = top_scores.tolist(), (top_ids // V).tolist(), (top_ids % V).tolist()
        rows, tokens, scores = [], [], []
        for b in range(B):
            if done[b]:  # keep its beams computing (shapes stay fixed); their output is never read
                rows += [b * K + k for k in range(K)]
                tokens += [0] * K
                scores += [0.0] * K
                continue
            kept = 0
            for rank, (score, beam, token) in enumerate(zip(top_scores_l[b], top_beams_l[b], top_tokens_l[b])):
                row = b * K + beam
                if token in eos:
                    if rank < K and score > -math.inf:  # an eos ranked below the K best would not be a beam either
                        _add_hypothesis(hypotheses[b], new_tokens[row] + [token], score, step + 1, opts)
                    continue
                rows.append(row)
                tokens.append(token)
                scores.append(score)
                kept += 1
                if kept == K:
                    break
            while kept < K:  # fewer than K finite candidates (tiny vocabulary): pad with dead beams
                rows.append(b * K)
                tokens.append(0)
                scores.append(-math.inf)
                kept += 1
            done[b] = _beams_done(hypotheses[b], max(top_scores_l[b]), step + 1, opts)
        # 3. continue the chosen beams: reorder everything that is per row, then append the new tokens
        index = torch.tensor(rows, device=device)
        token = torch.tensor(tokens, device=device)
        context.reorder(index)
        history.reorder(index)
        history.append(token)
        new_tokens = [new_tokens[r] + [t] for r, t in zip(rows, tokens)]
        beam_scores = torch.tensor(scores, device=device).view(B, K)
        if all(done) or step == opts.max_new_tokens - 1:
            break
        logits = context.step(token, history.tokens)
    # 4. prompts still running at max_new_tokens: their beams are hypotheses too
    for b in range(B):
        if not done[b]:
            for k in range(K):
                score = float(beam_scores[b, k])
                if score > -math.inf:
                    _add_hypothesis(hypotheses[b], new_tokens[b * K + k], score, len(new_tokens[b * K + k]), opts)
    return [hyps[0][1] if hyps else [] for hyps in hypotheses]


def _add_hypothesis(hyps: list[tuple[float, list[int]]], tokens: list[int], sum_logprobs: float,
                    generated_len: int, opts: SequenceOptions) -> None:
    """Insert, keeping the num_beams best by length-penalised score, best first."""
    hyps.append((sum_logprobs / generated_len ** opts.length_penalty, tokens))
    hyps.sort(key=lambda h: h[0], reverse=True)
    del hyps[opts.num_beams:]


def _beams_done(hyps: list[tuple[float, list[int]]], best_running: float, generated_len: int,
                opts: SequenceOptions) -> bool:
    if len(hyps) < opts.num_beams:
        return False
    if opts.early_stopping:
        return True
    # HF's heuristic: the best running sum, penalised at the current length, cannot beat the worst hypothesis
    return hyps[-1][0] >= best_running / generated_len ** opts.length_penalty
