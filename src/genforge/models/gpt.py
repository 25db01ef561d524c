"""GPT: a decoder-only Transformer language model (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners"), with KV-cached generation and the standard decoding strategies.

Read top to bottom: the config, the model (attention, MLP, block, GPT with its training loss), then generation:
the KV cache and the sliding context that the decoding loops shared by every text family (sampling/greedy and beam
search, with the logits processors, in `models/decoding.py`) drive through `generate`, `stream` and `sample`.

Generation in two paragraphs. Prompts of different lengths are left-padded into one (B, P) batch; an attention
mask hides the padding and each row's position ids start at 0 on its first real token, so a padded row computes
exactly what it would alone. The prompt runs through the model once ("prefill") and fills a KV cache preallocated
for min(block_size, P + max_new_tokens) positions, (B, nh, capacity, hs) per layer; every later step feeds one token
per row, writes its keys and values in place and attends to the cache, so a step never recomputes the context.

Past `block_size` the context slides. nanoGPT's sample.py crops the context to the last block_size tokens before
every step, which with learned absolute position embeddings shifts every token's position each step: no cached key
stays valid, and each token costs a full block_size-token forward pass. Here, when the cache is full and a token
must be fed, the cache is rebuilt from each row's last `window_keep` tokens (default block_size // 2, the new token
included) with one forward pass at positions 0..window_keep-1, and filling continues from there. The model so sees
between window_keep and block_size tokens of context (nanoGPT: always block_size), and the rebuild, one prefill of
window_keep tokens per block_size - window_keep new tokens, keeps the cost per token flat on average. A sequence
that fits in block_size never slides, so it is computed exactly as without a cache; window_keep = block_size
reproduces nanoGPT's crop exactly (and its cost: a rebuild every token). In a left-padded batch the window slides
for all rows at once, when the longest row fills the context, so past block_size a shorter row may see a few
tokens less context than it would alone. A prompt longer than block_size is refused with a UserError.

Continuous batching (`running_rows`, the server's texts): rows that end leave the batch, and new prompts join a
running batch between two steps (`SlidingContext.join`): they are prefilled on their own and their cache is
concatenated to the running one, right-aligned, the shorter side padded at the left. Columns that are padding in
every row are cut off when rows leave, so the cache stays as long as its longest row.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from genforge.config import ModelSection
from genforge.errors import UserError
from genforge.models._layers import (Block, KVCache, TransformerOptions, init_transformer_weights, rotary_tables,
                                     softcap)
from genforge.models.decoding import (RunningRows, SequenceOptions, beam_search, check_sequence_options,
                                      decode_steps)

# --------------------------------------------------------------------------------------------------------------
# Config


class GPTConfig(TransformerOptions, ModelSection):
    family: Literal["gpt"] = "gpt"
    n_layer: int = Field(default=6, ge=1)  # Transformer blocks
    n_head: int = Field(default=6, ge=1)  # attention heads per block
    n_embd: int = Field(default=384, ge=1)  # residual stream width; must be divisible by n_head
    block_size: int = Field(default=256, ge=1)  # context length: training windows, the longest prompt and the
    #                                           generation context (which slides past it, see the module docstring)
    vocab_size: int | None = Field(default=None, ge=1)  # set from the tokenizer by the trainer; None until then
    dropout: float = Field(default=0.0, ge=0, lt=1)  # on embeddings, attention weights and residual branches
    bias: bool = False  # biases in Linear and LayerNorm layers (GPT-2 has them; nanoGPT trains without, a bit faster)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # the tiny model tests use
        "debug": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.0},
        # nanoGPT's "baby GPT" for a laptop CPU (README, shakespeare_char on a MacBook)
        "baby": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0},
        # nanoGPT's config/train_shakespeare_char.py
        "char": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2},
    }

    @field_validator("n_embd")
    @classmethod
    def _divisible_by_heads(cls, n_embd: int, info: Any) -> int:
        n_head = info.data.get("n_head")
        if n_head and n_embd % n_head:
            raise ValueError(f"must be divisible by `model.n_head` ({n_head}) so that every head gets "
                             f"n_embd / n_head dimensions; e.g. n_embd={n_head * max(1, round(n_embd / n_head))}")
        return n_embd

    def check_training(self, run: Any) -> list[str]:
        """A micro-batch must fit in the machine's memory: train.batch_size=100000 is refused before the run dir is
        touched, rather than by the kernel's OOM killer after allocating everything. (Checked when training only:
        a checkpoint samples on a machine with less memory than the one that trained it.)

        The estimate, per token of a micro-batch (batch_size x block_size tokens), counts 4-byte values kept for
        the backward pass: about 28 * n_embd per layer (LayerNorm, q/k/v, attention output, projections, the 4x
        MLP before and after GELU, residuals), the attention weights 2 * block_size * n_head per layer (softmax
        and its dropout, when attention is not fused), and 3 x the logits' width (logits, softmax, gradient).
        """
        import os  # here rather than at the top: only this check reads the machine

        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # bytes of physical memory
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name: nothing to compare to
            return []
        bpe_vocab = (run.data.vocab_size or 4096) if run.data.tokenizer == "bpe" else 256  # before adapt_to_data
        vocab = max(self.vocab_size or bpe_vocab, 256)
        per_token = 4 * (self.n_layer * (28 * self.n_embd + 2 * self.block_size * self.n_head) + 3 * vocab)
        batch_size = run.train.batch_size
        need = batch_size * self.block_size * per_token
        if need <= memory:
            return []
        fits = memory // (self.block_size * per_token)
        advice = (f"the largest batch size that fits is {fits}. Lower train.batch_size and raise train.grad_accum "
                  "to keep the examples per optimizer step" if fits else
                  "even train.batch_size=1 does not fit: lower model.block_size, model.n_layer or model.n_embd")
        return [f"`train.batch_size` = {batch_size}: one micro-batch of {batch_size} x {self.block_size} tokens "
                f"needs about {need / 1e9:.1f} GB for activations, attention and logits (this GPT: {per_token} "
                f"bytes per token), more than this machine's {memory / 1e9:.1f} GB of memory; {advice}"]

    def adapt_to_data(self, dataset: Any) -> "GPTConfig":
        """vocab_size is the tokenizer's (written into config.yaml, so the checkpoint rebuilds the model without the
        data); a different value given by hand is a clear error."""
        tokenizer = dataset.tokenizer
        if self.vocab_size is not None and self.vocab_size != tokenizer.vocab_size:
            raise UserError(f"`model.vocab_size` is {self.vocab_size} but the {tokenizer.kind} tokenizer of "
                            f"{dataset.name} has {tokenizer.vocab_size} tokens; remove model.vocab_size (it is set "
                            "from the tokenizer)")
        return self.with_values(vocab_size=tokenizer.vocab_size)

    def batch_options(self) -> dict[str, Any]:
        return {"block_size": self.block_size}  # training windows of the context length


# --------------------------------------------------------------------------------------------------------------
# Model


class GPT(nn.Module):
    Config = GPTConfig
    output_kind: ClassVar[Literal["text"]] = "text"
    conditioning: ClassVar[Literal["prompt"]] = "prompt"  # `cond` of sample(): prompt text (--prompt)

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size is None:
            raise UserError("`model.vocab_size` is not set: the trainer sets it from the data set's tokenizer; when "
                            "building a GPT by hand, pass vocab_size=tokenizer.vocab_size")
        self.config = config
        layers: dict[str, nn.Module] = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}  # token embeddings
        if not config.rotary:  # rotary embeddings turn queries and keys instead of adding a position vector
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # learned position embeddings
        layers["drop"] = nn.Dropout(config.dropout)
        layers["h"] = nn.ModuleList(Block(config.n_embd, config.n_head, config.dropout, config.bias, config)
                                    for _ in range(config.n_layer))
        layers["ln_f"] = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_head:  # weight tying (Press & Wolf 2017): logits off the token embeddings, one matrix fewer
            self.transformer.wte.weight = self.lm_head.weight
        # GPT-2 init (two residual branches per block), or zero residual projections with zero_init_proj
        init_transformer_weights(self, config.n_layer, config)
        if config.zero_init_proj and not config.tie_head:
            nn.init.zeros_(self.lm_head.weight)  # an untied head starts at zero too (modded-nanogpt)
        # Set after construction by whoever has the tokenizer (trainer, checkpoint loader). None: `sample` takes and
        # returns token-id lists instead of strings.
        self.tokenizer: Any = None

    def forward(self, idx: Tensor, *, position_ids: Tensor | None = None, attn_mask: Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """Logits (B, T, vocab_size) for token ids idx (B, T); (B, 1, vocab_size) with last_only.

        position_ids: (B, T) or (T,); default 0..T-1 after what the cache already holds. attn_mask: bool
        (B, 1, T, L), True = may attend, where L counts the cached positions plus these T; None = causal.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if position_ids is None:
            if start + T > self.config.block_size:
                raise UserError(f"a sequence of {start + T} tokens is longer than `model.block_size` "
                                f"({self.config.block_size}); use windows of at most block_size tokens")
            position_ids = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.rotary:
            rotary = rotary_tables(position_ids, self.config.n_embd // self.config.n_head, self.config.rotary_base)
        else:
            x = x + self.transformer.wpe(position_ids)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache.layers[i] if cache is not None else None, start, rotary)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]  # generation needs only the next-token distribution: skip the (T, vocab) matmul
        return softcap(self.lm_head(x), self.config.logit_softcap)

    # ---- the model contract (see models/_protocol.py)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.parameters())}  # parameters() lists the tied embedding/head matrix once

    def optimizer_param_groups(self, params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as nanoGPT makes them: every parameter with 2+ dimensions (matmul weights, embeddings)
        decays; biases and LayerNorm gains (1-D) do not. The trainer uses this hook when a family has it."""
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def matrix_parameters(self) -> list[nn.Parameter]:
        """The hidden weight matrices (Muon's parameters): every Linear weight inside the blocks; the embeddings and
        the output layer stay with AdamW (Jordan et al. 2024, "Muon")."""
        return [m.weight for m in self.transformer.h.modules() if isinstance(m, nn.Linear)]

    def loss(self, batch: dict[str, Tensor], group: str = "model") -> dict[str, Tensor]:
        """batch: {"x": int64 (B, T) inputs, "y": int64 (B, T) next tokens, -100 where padded}. Mean cross-entropy
        over all predicted positions, in nats per token."""
        logits = self(batch["x"])  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), batch["y"].reshape(-1), ignore_index=-100)
        return {"loss": loss}

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (the token embeddings are counted: they are
        the output layer too), as nanoGPT and the scaling-law papers count."""
        n = sum(p.numel() for p in self.parameters())
        positions = self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0
        return n - positions if non_embedding else n

    def flops_per_token(self) -> int:
        """Training FLOPs per token at full context, for MFU: 6N for the matmuls (forward + backward) plus
        12 * n_layer * n_embd * block_size for attention scores (PaLM paper, appendix B; nanoGPT `estimate_mfu`)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    # ---- generation (the machinery is below the class)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], *, generator: torch.Generator | None = None,
                 decode: Callable[[list[int]], str] | None = None,
                 on_token: Callable[[int, int], None] | None = None, **options: Any) -> list[list[int]]:
        """Continue each prompt (a list of token ids; lengths may differ) and return each row's new tokens, the
        prompt excluded, an end token (eos/stop string) included.

        options: the fields of `GenerationOptions` (max_new_tokens, temperature, top_k, top_p, min_p,
        repetition_penalty, no_repeat_ngram_size, num_beams, length_penalty, early_stopping, eos_token_ids,
        stop_strings, window_keep). max_new_tokens may exceed block_size: the context then slides (module docstring),
        for beam search too. decode: token ids -> text, needed for stop_strings. on_token(row, token_id) is called for
        each new token as soon as it is chosen (not available with beam search, whose beams change until the end).
        generator: the random source of sampling; same seed, same prompts -> same tokens.
        """
        opts = parse_options(options, self.config.vocab_size, decode)
        prompts = check_prompts(prompts, opts, self.config)
        with _eval_mode(self):
            if opts.num_beams > 1:
                if on_token is not None:
                    raise UserError("streaming tokens is not available with beam search (`sample.num_beams` = "
                                    f"{opts.num_beams}): the best beam is known only at the end; use num_beams=1")
                return beam_search(sliding_context(self, opts), prompts, self.config.vocab_size, opts)
            new_tokens: list[list[int]] = [[] for _ in prompts]
            for step_tokens in decode_steps(sliding_context(self, opts), prompts, self.config.vocab_size, opts,
                                            generator, decode):
                for row, token in enumerate(step_tokens):
                    if token is not None:
                        new_tokens[row].append(token)
                        if on_token is not None:
                            on_token(row, token)
            return new_tokens

    def stream(self, prompts: Sequence[Sequence[int]], *, generator: torch.Generator | None = None,
               decode: Callable[[list[int]], str] | None = None, **options: Any) -> Iterator[list[int | None]]:
        """Like `generate`, but returns an iterator that yields once per step: a list with each row's new token id,
        None for rows that have already stopped. Sampling and greedy only (beam search cannot stream). Bad options
        and prompts raise here, before the first step."""
        opts = parse_options(options, self.config.vocab_size, decode)
        if opts.num_beams > 1:
            raise UserError(f"streaming is not available with beam search (`sample.num_beams` = {opts.num_beams}); "
                            "use generate(), or num_beams=1")
        return self._stream(check_prompts(prompts, opts, self.config), opts, generator, decode)

    def running_rows(self, *, generator: torch.Generator | None = None,
                     decode: Callable[[list[int]], str] | None = None, **options: Any) -> RunningRows:
        """An empty batch for continuous batching (`models.decoding.RunningRows`): `add` prompts (token-id lists,
        checked like `generate`'s) between steps, `choose` and `advance` each step. Sampling and greedy only. The
        caller runs it without gradients and in eval mode (the server's loaded models are)."""
        opts = parse_options(options, self.config.vocab_size, decode)
        if opts.num_beams > 1:
            raise UserError(f"continuous batching decodes one row per prompt; `sample.num_beams` = {opts.num_beams} "
                            "needs generate()")
        return RunningRows(sliding_context(self, opts), self.config.vocab_size, opts, generator, decode,
                           check=lambda prompts: check_prompts(prompts, opts, self.config))

    @torch.inference_mode()
    def _stream(self, prompts: list[list[int]], opts: GenerationOptions, generator: torch.Generator | None,
                decode: Callable[[list[int]], str] | None) -> Iterator[list[int | None]]:
        with _eval_mode(self):
            yield from decode_steps(sliding_context(self, opts), prompts, self.config.vocab_size, opts,
                                    generator, decode)

    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None,
               **options: Any) -> list[str] | list[list[int]]:
        """n texts, each its prompt followed by the continuation.

        cond: None (every sample starts from a newline, as nanoGPT's sample.py), one prompt string (used for all
        n samples) or a list of n prompt strings. Without a tokenizer (`self.tokenizer is None`) prompts are
        token-id lists (None starts from token 0) and the result is token-id lists. options: see `generate`.
        """
        tokenizer = self.tokenizer
        if tokenizer is None:
            if cond is None:
                prompts: list[list[int]] = [[0]] * n
            elif isinstance(cond, str):
                raise UserError("this GPT has no tokenizer, so a text prompt cannot be encoded; load the model from "
                                "a checkpoint (which holds tokenizer.json) or pass token-id lists")
            else:
                if all(isinstance(t, int) for t in cond):  # one prompt given as a flat list of ids
                    cond = [cond]
                prompts = _n_prompts(n, [list(p) for p in cond])
            return self.generate(prompts, generator=generator, **options)
        if cond is None:
            texts = ["\n"] * n
        elif isinstance(cond, str):
            texts = [cond] * n
        else:
            texts = _n_prompts(n, [str(c) for c in cond])
        prompts = [_encode_prompt(tokenizer, text, unconditional=cond is None) for text in texts]
        new_tokens = self.generate(prompts, generator=generator, decode=tokenizer.decode, **options)
        # decode prompt + continuation together: a byte-level token may complete a character the prompt began
        return [tokenizer.decode(p + t) for p, t in zip(prompts, new_tokens)]


def _n_prompts(n: int, prompts: list[Any]) -> list[Any]:
    if len(prompts) == 1:
        return prompts * n
    if len(prompts) != n:
        raise UserError(f"got {len(prompts)} prompts for {n} samples; give one prompt (used for every sample) or "
                        f"exactly n={n}")
    return prompts


def _encode_prompt(tokenizer: Any, text: str, unconditional: bool) -> list[int]:
    try:
        return tokenizer.encode(text)
    except UserError as exc:
        if unconditional:
            raise UserError("unconditional sampling starts from a newline, which this tokenizer cannot encode (the "
                            "training text has none); give a prompt: `genforge sample --prompt TEXT`, or "
                            "`--set sample.prompt=TEXT` for training's periodic samples") from exc
        raise


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Generation always runs without dropout; the caller's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------------------
# Generation options, checked once up front. Errors name them `sample.<key>`, as the CLI spells them.


class GenerationOptions(SequenceOptions):
    """The GPT's keys of the `sample:` section (HF-style decoding), checked once before generation starts; the
    token-choice and sequence keys (temperature, top_k, top_p, min_p, repetition_penalty, no_repeat_ngram_size,
    max_new_tokens, num_beams, length_penalty, early_stopping, eos_token_ids, stop_strings) are the shared
    `SequenceOptions` of `models/decoding.py`."""

    max_new_tokens: int = Field(default=256, ge=1)  # tokens generated per prompt; past block_size the context slides
    window_keep: int | None = Field(default=None, ge=1)  # tokens kept when the context slides past block_size;
    #                                                      None = block_size // 2; block_size = nanoGPT's exact crop


GPT.SampleOptions = GenerationOptions  # the GPT's keys of the `sample:` section (defined after the class, above)


def parse_options(options: dict[str, Any], vocab_size: int,
                  decode: Callable[[list[int]], str] | None) -> GenerationOptions:
    return check_sequence_options(GenerationOptions.parse(options), vocab_size, decode)


def check_prompts(prompts: Sequence[Sequence[int]], opts: GenerationOptions, config: GPTConfig) -> list[list[int]]:
    """Reject what generation cannot honour: empty prompts, ids outside the vocabulary, prompts past block_size."""
    if len(prompts) == 0:
        raise UserError("no prompts given; pass at least one (a list of token ids)")
    checked = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str) or not all(isinstance(t, int) or (torch.is_tensor(t) and t.numel() == 1)
                                              for t in prompt):
            raise UserError(f"prompt {i} is not a list of token ids: {str(prompt)[:60]!r}; encode text prompts with "
                            "the model's tokenizer first (sample() does, when the model has one)")
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise UserError(f"prompt {i} is empty: a GPT needs at least one token to condition on; give a prompt "
                            "(--prompt TEXT), or sample without one to start from a newline")
        bad = next((j for j, t in enumerate(prompt) if not 0 <= t < config.vocab_size), None)
        if bad is not None:
            raise UserError(f"prompt {i} has token id {prompt[bad]} at position {bad}, outside the model's "
                            f"vocabulary [0, {config.vocab_size}); was it encoded with another tokenizer?")
        checked.append(prompt)
    longest = max(range(len(checked)), key=lambda i: len(checked[i]))
    if len(checked[longest]) > config.block_size:
        raise UserError(f"prompt {longest} has {len(checked[longest])} tokens, more than the model's context "
                        f"(`model.block_size` = {config.block_size}); shorten it to at most {config.block_size} tokens "
                        "(generation slides the context past block_size, but the prompt must fit in it)")
    if opts.window_keep is not None and opts.window_keep > config.block_size:
        raise UserError(f"`sample.window_keep` ({opts.window_keep}) exceeds the model's context (`model.block_size` = "
                        f"{config.block_size}); pass --set sample.window_keep=N with 1 <= N <= {config.block_size}")
    return checked


def left_pad(prompts: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Token ids (B, P) with each prompt right-aligned, and a bool (B, P) that is True on real tokens."""
    P = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), P, dtype=torch.long)  # the padding id is irrelevant: masked everywhere
    real = torch.zeros(len(prompts), P, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        idx[row, P - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        real[row, P - len(prompt):] = True
    return idx.to(device), real.to(device)


def padding_mask(real: Tensor, q_len: int) -> Tensor:
    """Attention mask (B, 1, q_len, L), True = may attend, for queries at the last q_len of L positions whose keys
    are real where `real` (B, L) is True. A padding query attends to itself: a row of all -inf would give NaN, and
    NaN in a padded position's output would leak into its cached keys/values (0 * NaN = NaN)."""
    L = real.shape[1]
    q_pos = torch.arange(L - q_len, L, device=real.device)[:, None]  # (q_len, 1)
    k_pos = torch.arange(L, device=real.device)[None, :]  # (1, L)
    causal = k_pos <= q_pos  # (q_len, L)
    return (causal & real[:, None, None, :]) | (k_pos == q_pos)


class SlidingContext:
    """Each row's context while generating: a KV cache that slides past block_size (see the module docstring).

    `start(prompts)` prefills the left-padded prompts and returns the next-token logits (B, V); `step(token, sequences)`
    feeds one token per row and returns the next logits. When the cache is full, the step instead rebuilds it from
    each row's last `keep` tokens of `sequences` (each row's tokens so far, ending with `token`): absolute position
    embeddings tie every cached key to its position, so the past cannot be shifted, only recomputed.

    Continuous batching: `join(prompts)` prefills new rows and adds them after the running ones. All rows stay
    right-aligned on the newest position: the shorter side gets padding columns at the left, masked like a
    prompt's padding, and each row keeps its own position ids, so a joined row computes what it would alone.
    `reorder` with a subset of the rows drops the others, and the columns that are padding in every remaining row
    are cut off, so the cache is as long as its longest row, not as old as the batch."""

    def __init__(self, model: GPT, keep: int, extra: int):
        assert 1 <= keep <= model.config.block_size and extra >= 0, (keep, extra)
        self.model = model
        self.keep = keep  # tokens a rebuild keeps
        self.extra = extra  # positions a row may still need after its prompt: max_new_tokens - 1
        self.capacity = 0  # cached positions: min(block_size, longest prompt + extra), set by start()
        self.rebuilds = 0  # how often the window slid

    def start(self, prompts: list[list[int]], capacity: int | None = None) -> Tensor:
        model = self.model
        idx, real = left_pad(prompts, model.lm_head.weight.device)  # (B, P), (B, P)
        B, P = idx.shape
        self.capacity = capacity or min(model.config.block_size, P + self.extra)
        self.cache = KVCache(model.config.n_layer, self.capacity)
        self.padded = not bool(real.all())  # no padding: plain causal attention, no mask to build per step
        self.real_keys = torch.ones(B, self.capacity, dtype=torch.bool, device=idx.device)  # (B, capacity)
        self.real_keys[:, :P] = real
        positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, P): 0 at each row's first real token
        self.next_pos = real.sum(dim=1, keepdim=True)  # (B, 1)
        mask = padding_mask(real, P) if self.padded else None
        logits = model(idx, position_ids=positions, attn_mask=mask, cache=self.cache, last_only=True)
        return logits[:, -1].float()

    def step(self, token: Tensor, sequences: list[list[int]]) -> Tensor:
        if self.cache.length == self.capacity:
            if self.capacity < self.model.config.block_size:  # joined rows need more room: grow, keep everything
                self._realign(self.cache.length, min(self.model.config.block_size, 2 * self.capacity))
            else:  # full: slide
                self.rebuilds += 1
                return self.start([seq[-self.keep:] for seq in sequences], self.capacity)
        L = self.cache.length + 1
        mask = padding_mask(self.real_keys[:, :L], 1) if self.padded else None  # (B, 1, 1, L)
        logits = self.model(token[:, None], position_ids=self.next_pos, attn_mask=mask, cache=self.cache,
                            last_only=True)
        self.next_pos = self.next_pos + 1
        return logits[:, -1].float()

    def reorder(self, rows: Tensor) -> None:
        """Row i continues the history of row rows[i] (beam search); a subset of the rows drops the others."""
        self.cache.reorder(rows)
        self.real_keys, self.next_pos = self.real_keys[rows], self.next_pos[rows]
        if self.padded and len(rows):
            first_real = int(self.real_keys[:, : self.cache.length].any(dim=0).long().argmax())
            if first_real > 0:  # every remaining row has padding there: cut it off
                self._realign(self.cache.length - first_real, self.capacity)

    def join(self, prompts: list[list[int]]) -> Tensor:
        """Prefill `prompts` as new rows after the running ones; returns the new rows' next-token logits."""
        new = SlidingContext(self.model, self.keep, self.extra)
        logits = new.start(prompts)
        length = max(self.cache.length, new.cache.length)
        capacity = min(self.model.config.block_size,
                       max(self.capacity + length - self.cache.length, new.capacity + length - new.cache.length))
        self._realign(length, capacity)
        new._realign(length, capacity)
        self.cache.append_rows(new.cache)
        self.real_keys = torch.cat([self.real_keys, new.real_keys])
        self.next_pos = torch.cat([self.next_pos, new.next_pos])
        self.padded = True
        return logits

    def _realign(self, length: int, capacity: int) -> None:
        """The cache `length` long (padding added or cut at the left) in `capacity` positions."""
        old = self.cache.length
        kept = min(old, length)
        real_keys = torch.ones(len(self.real_keys), capacity, dtype=torch.bool, device=self.real_keys.device)
        real_keys[:, : length - kept] = False
        real_keys[:, length - kept:length] = self.real_keys[:, old - kept:old]
        self.real_keys, self.capacity = real_keys, capacity
        self.cache.realign(length, capacity)
        self.padded = self.padded or length > old


def sliding_context(model: GPT, opts: GenerationOptions) -> SlidingContext:
    """The context for generating opts.max_new_tokens after each prompt. The last new token is never fed, so a
    capacity of P + max_new_tokens - 1 <= block_size (P: the longest prompt) holds the whole sequence and never
    slides."""
    return SlidingContext(model, opts.window_keep or max(1, model.config.block_size // 2), opts.max_new_tokens - 1)
