"""Image captioner: an image encoder and a Transformer decoder that attends to the image (the encoder-decoder of
Vaswani et al. 2017 with image tokens for source words, as in Xu et al. 2015 "Show, Attend and Tell" with a
Transformer decoder instead of an LSTM), trained with cross-entropy on (image, caption) pairs.

The image becomes M tokens of width n_embd, chosen by `model.encoder`:

    cnn               a small CNN trained from scratch: stride-2 conv stages until the grid is at most 8x8, each
                      grid cell one token, plus a learned position embedding per cell
    inception-grid    the frozen FID Inception-v3's 8x8x2048 `mixed_10` grid (64 tokens), projected to n_embd; the
                      data set computes the features once and caches them per image (`data.captions`)
    inception-pooled  its pooled 2048-d vector as one token

then `encoder_layers` Transformer blocks with full (non-causal) self-attention mix them. The decoder is the GPT's
block (`models/gpt.py`: causal self-attention with its KV cache, MLP) with a cross-attention branch between the
two (Vaswani et al. 2017, section 3.1): pre-LayerNorm, each branch added to the residual stream,

    h = h + SelfAttn(LN(h));   h = h + CrossAttn(LN(h), image tokens);   h = h + MLP(LN(h))

A caption is the boundary token (the tokenizer's newline), its words, and the boundary again as its end, exactly as
the sentence models read sentences (`media.pad_sentences`): the decoder learns p(w_t | w_<t, image), and the loss is
the mean cross-entropy per caption token, the end token included.

Captioning decodes with the decoding loops every text family shares (`models/decoding.py`): greedy by default, beam
search (`sample.num_beams`, length penalty), or sampling with temperature / top-k / top-p, and no-repeat-ngram. The
`CaptionContext` below is what those loops drive: the image's keys and values are projected once per caption and
the words' keys and values go into the GPT's KV cache, so each new word costs one token's forward pass.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from genforge.config import ModelSection
from genforge.errors import UserError
from genforge.models._layers import (MLP, Block, CausalSelfAttention, KVCache, TransformerOptions,
                                     init_transformer_weights, rotary_tables, softcap)
from genforge.models.decoding import SequenceOptions, beam_search, check_sequence_options, decode_steps

# --------------------------------------------------------------------------------------------------------------
# Config

INCEPTION_DIM = 2048  # width of the Inception features


class CaptionerConfig(TransformerOptions, ModelSection):
    family: Literal["captioner"] = "captioner"
    encoder: Literal["cnn", "inception-grid", "inception-pooled"] = "cnn"  # what turns the image into tokens
    image_size: int | None = Field(default=None, ge=8)  # cnn: the input side, set from the data by the trainer
    cnn_channels: int = Field(default=64, ge=1)  # cnn: channels of the first stage (doubled per stage, up to 4x)
    encoder_layers: int = Field(default=1, ge=0)  # Transformer blocks over the image tokens (full attention)
    n_layer: int = Field(default=3, ge=1)  # decoder blocks
    n_head: int = Field(default=4, ge=1)  # attention heads per block (self- and cross-attention)
    n_embd: int = Field(default=256, ge=1)  # residual stream width; must be divisible by n_head
    block_size: int = Field(default=32, ge=2)  # the longest caption the decoder reads: start token + words
    dropout: float = Field(default=0.1, ge=0, lt=1)  # on embeddings, image tokens, attention and residual branches
    bias: bool = False  # biases in Linear and LayerNorm layers
    vocab_size: int | None = Field(default=None, ge=2)  # set from the tokenizer by the trainer
    boundary: int = Field(default=1, ge=0)  # the start/end token (the tokenizer's newline), set by the trainer

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "debug": {"cnn_channels": 8, "encoder_layers": 1, "n_layer": 1, "n_head": 2, "n_embd": 32,
                  "block_size": 24, "dropout": 0.0},
        # the synthetic scenes: a few words, a 32x32 image
        "shapes": {"cnn_channels": 32, "encoder_layers": 1, "n_layer": 2, "n_head": 4, "n_embd": 128,
                   "block_size": 16, "dropout": 0.0},
        # Flickr8k-size photo sets on frozen Inception features
        "photos": {"encoder": "inception-grid", "encoder_layers": 1, "n_layer": 3, "n_head": 4, "n_embd": 256,
                   "block_size": 32, "dropout": 0.3},
    }

    def check_training(self, run: Any) -> list[str]:
        if run.data.max_length + 1 > self.block_size:
            return [f"`data.max_length` = {run.data.max_length} caption tokens need `model.block_size` >= "
                    f"{run.data.max_length + 1} (the start token plus the words), but it is {self.block_size}; raise "
                    "model.block_size or lower data.max_length"]
        if self.n_embd % self.n_head:
            return [f"`model.n_embd` = {self.n_embd} must be divisible by `model.n_head` = {self.n_head}"]
        return []

    def adapt_to_data(self, dataset: Any) -> CaptionerConfig:
        """vocab_size and the boundary are the tokenizer's, image_size the data set's (what the CNN reads)."""
        tokenizer = getattr(dataset, "tokenizer", None)
        if tokenizer is None or not hasattr(dataset, "inputs"):
            raise UserError(f"a captioner trains on captioned images (data.name: captions or shapes); "
                            f"{getattr(dataset, 'name', 'this data set')} has none")
        if self.vocab_size is not None and self.vocab_size != tokenizer.vocab_size:
            raise UserError(f"`model.vocab_size` is {self.vocab_size} but the {tokenizer.kind} tokenizer of "
                            f"{dataset.name} has {tokenizer.vocab_size} tokens; remove model.vocab_size (it is set "
                            "from the tokenizer)")
        return self.with_values(vocab_size=tokenizer.vocab_size, boundary=dataset.boundary,
                                image_size=dataset.image_size)

    def encoder_input(self) -> str:
        """What the data set hands the encoder (`data.captions.ENCODER_INPUTS`)."""
        return "pixels" if self.encoder == "cnn" else self.encoder

    def batch_options(self) -> dict[str, Any]:
        return {"encoder": self.encoder_input()}


class CaptionerSampleOptions(SequenceOptions):
    """The captioner's keys of the `sample:` section; the decoding keys are the shared `SequenceOptions`."""

    temperature: float = Field(default=0.0, ge=0)  # 0 = greedy (the usual captioning default); > 0 samples
    max_new_tokens: int | None = Field(default=None, ge=1)  # the longest caption, its end token included;
    #                                                        None = model.block_size
    allow_unknown: bool = False  # a word vocabulary's <unk> may be written (by default it is never chosen)
    split: str = "val"  # without given images: caption the first n images of this split of the run's data set

    def data_split(self) -> str | None:
        return self.split


# --------------------------------------------------------------------------------------------------------------
# Model


class CNNEncoder(nn.Module):
    """Pixels (B, 3, S, S) in [-1, 1] -> tokens (B, M, n_embd): a 3x3 stem, then stride-2 stages (conv, GroupNorm,
    GELU, conv, GroupNorm, GELU) until the grid is at most 8x8; each cell of the last grid is one token."""

    def __init__(self, image_size: int, channels: int, n_embd: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.GELU()]
        side, width = image_size, channels
        while side > 8:
            out = min(width * 2, channels * 4)
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.GroupNorm(min(8, out), out), nn.GELU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(min(8, out), out), nn.GELU()]
            side, width = (side + 1) // 2, out
        self.net = nn.Sequential(*layers)
        self.to_tokens = nn.Conv2d(width, n_embd, 1)
        self.tokens = side * side

    def forward(self, images: Tensor) -> Tensor:
        return self.to_tokens(self.net(images)).flatten(2).transpose(1, 2)  # (B, side*side, n_embd)


class FeatureEncoder(nn.Module):
    """Frozen Inception features (B, M, 2048) -> tokens (B, M, n_embd): LayerNorm, then a linear projection."""

    def __init__(self, tokens: int, n_embd: int):
        super().__init__()
        self.norm = nn.LayerNorm(INCEPTION_DIM)
        self.proj = nn.Linear(INCEPTION_DIM, n_embd)
        self.tokens = tokens

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(self.norm(features))


class CrossAttention(nn.Module):
    """Multi-head attention from the caption's positions (queries) to the image tokens (keys and values)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.q = nn.Linear(n_embd, n_embd, bias=bias)
        self.kv = nn.Linear(n_embd, 2 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # a residual projection: scaled init
        self.resid_dropout = nn.Dropout(dropout)
        self.weights: Tensor | None = None  # with `keep_weights`: the last attention weights (B, nh, T, M)
        self.keep_weights = False

    def memory(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, nh, M, hs) of the image tokens (B, M, C): computed once per caption."""
        B, M, C = image.shape
        k, v = self.kv(image).split(C, dim=2)
        return (k.view(B, M, self.n_head, C // self.n_head).transpose(1, 2),
                v.view(B, M, self.n_head, C // self.n_head).transpose(1, 2))

    def forward(self, x: Tensor, memory: tuple[Tensor, Tensor]) -> Tensor:
        B, T, C = x.shape
        k, v = memory
        q = self.q(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.keep_weights:  # the attention picture: the weights themselves, so computed in the open
            weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (B, nh, T, M)
            self.weights = weights
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class DecoderBlock(nn.Module):
    """The GPT block with cross-attention to the image between self-attention and the MLP (pre-LayerNorm)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, opts: TransformerOptions):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, opts)
        self.ln_x = nn.LayerNorm(n_embd, bias=bias)
        self.cross = CrossAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias, opts)

    def forward(self, x: Tensor, memory: tuple[Tensor, Tensor], cache: Any = None, start: int = 0,
                rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), None, cache, start, rotary)
        x = x + self.cross(self.ln_x(x), memory)
        return x + self.mlp(self.ln_2(x))


class Captioner(nn.Module):
    Config = CaptionerConfig
    SampleOptions = CaptionerSampleOptions
    output_kind: ClassVar[Literal["caption"]] = "caption"
    conditioning: ClassVar[Literal["image"]] = "image"  # `cond` of sample(): the encoder inputs of the images

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        if config.vocab_size is None:
            raise UserError("`model.vocab_size` is not set: the trainer sets it from the data set's tokenizer; when "
                            "building a captioner by hand, pass vocab_size=tokenizer.vocab_size")
        if config.n_embd % config.n_head:
            raise UserError(f"`model.n_embd` = {config.n_embd} must be divisible by `model.n_head` = {config.n_head}")
        self.config = config
        C = config.n_embd
        if config.encoder == "cnn":
            if config.image_size is None:
                raise UserError("`model.image_size` is not set: the trainer sets it from the data set; when building "
                                "a CNN captioner by hand, pass image_size")
            self.encoder = CNNEncoder(config.image_size, config.cnn_channels, C)
        else:
            self.encoder = FeatureEncoder(64 if config.encoder == "inception-grid" else 1, C)
        self.image_pos = nn.Parameter(torch.zeros(1, self.encoder.tokens, C))  # a learned embedding per token
        self.image_drop = nn.Dropout(config.dropout)
        self.image_blocks = nn.ModuleList(Block(C, config.n_head, config.dropout, config.bias, config)
                                          for _ in range(config.encoder_layers))
        self.image_ln = nn.LayerNorm(C, bias=config.bias)
        self.wte = nn.Embedding(config.vocab_size, C)  # word embeddings
        # learned word positions, unless rotary embeddings turn the decoder's queries and keys instead
        self.wpe = None if config.rotary else nn.Embedding(config.block_size, C)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(C, config.n_head, config.dropout, config.bias, config)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, bias=config.bias)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_head:
            self.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017)
        # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers) (two branches per block)
        init_transformer_weights(self, config.n_layer + config.encoder_layers, config)
        nn.init.normal_(self.image_pos, std=0.02)
        self.tokenizer: Any = None  # set by the trainer / loader; None: captions are token-id lists
        self.boundary = config.boundary

    def encode(self, image: Tensor) -> Tensor:
        """Encoder inputs (pixels (B, 3, S, S) or features (B, M, 2048)) -> image tokens (B, M, C)."""
        expected = self.encoder.tokens if self.config.encoder != "cnn" else None
        if expected is not None and (image.dim() != 3 or image.shape[1:] != (expected, INCEPTION_DIM)):
            raise UserError(f"this captioner (model.encoder: {self.config.encoder}) reads Inception features of "
                            f"shape (N, {expected}, {INCEPTION_DIM}), got {tuple(image.shape)}")
        if self.config.encoder == "cnn" and (image.dim() != 4 or image.shape[1:] != (3, self.config.image_size,
                                                                                  self.config.image_size)):
            side = self.config.image_size
            raise UserError(f"this captioner (model.encoder: cnn) reads RGB images of shape (N, 3, {side}, {side}) "
                            f"in [-1, 1], got {tuple(image.shape)}")
        tokens = self.image_drop(self.encoder(image) + self.image_pos)  # (B, M, C)
        if self.image_blocks:
            full = torch.ones(1, 1, tokens.shape[1], tokens.shape[1], dtype=torch.bool, device=tokens.device)
            for block in self.image_blocks:
                tokens = block(tokens, full)
        return self.image_ln(tokens)

    def memories(self, image_tokens: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each decoder block's keys and values of the image tokens."""
        return [block.cross.memory(image_tokens) for block in self.blocks]

    def decode(self, idx: Tensor, memories: list[tuple[Tensor, Tensor]], cache: KVCache | None = None,
               last_only: bool = False) -> Tensor:
        """Next-token logits (B, T, V) for caption tokens idx (B, T) after what `cache` holds."""
        start = cache.length if cache is not None else 0
        T = idx.shape[1]
        if start + T > self.config.block_size:
            raise UserError(f"a caption of {start + T} tokens is longer than `model.block_size` "
                            f"({self.config.block_size}); lower sample.max_new_tokens")
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.wte(idx)
        rotary = None
        if self.wpe is None:
            rotary = rotary_tables(positions, self.config.n_embd // self.config.n_head, self.config.rotary_base)
        else:
            x = x + self.wpe(positions)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, memories[i], cache.layers[i] if cache is not None else None, start, rotary)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x)
        return softcap(self.lm_head(x[:, -1:] if last_only else x), self.config.logit_softcap)

    # ---- the model contract

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.parameters())}

    def matrix_parameters(self) -> list[nn.Parameter]:
        """The hidden weight matrices (Muon's parameters): the Linear weights of the Transformer blocks."""
        blocks = [*self.image_blocks, *self.blocks]
        return [m.weight for b in blocks for m in b.modules() if isinstance(m, nn.Linear)]

    @staticmethod
    def count_examples(batch: dict[str, Tensor]) -> int:
        """Throughput counts caption tokens (words and end tokens), not padding."""
        return int((batch["y"] != -100).sum())

    def loss(self, batch: dict[str, Tensor], group: str = "model") -> dict[str, Tensor]:
        """batch: {"image": encoder inputs, "x": (B, T) caption inputs, "y": (B, T) targets, -100 where padded}.
        Mean cross-entropy per caption token, in nats."""
        if group != "model":
            raise ValueError(f"unknown param group {group!r}")
        logits = self.decode(batch["x"], self.memories(self.encode(batch["image"])))  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["y"].reshape(-1), ignore_index=-100)
        return {"loss": loss}

    # ---- captioning

    @torch.inference_mode()
    def caption(self, images: Tensor, *, generator: torch.Generator | None = None,
                attention: bool = False, **options: Any) -> list[list[int]]:
        """Token ids of one caption per image (its end token not included). images: encoder inputs (B, ...).
        options: the fields of `CaptionerSampleOptions`. With attention=True (greedy or sampling only), each
        caption's cross-attention weights are kept in `self.last_attention`: (B, new tokens, M), averaged over
        heads and decoder layers."""
        opts = CaptionerSampleOptions.parse(options)
        check_sequence_options(opts, self.config.vocab_size, None)
        steps = opts.max_new_tokens or self.config.block_size
        if steps > self.config.block_size:
            raise UserError(f"`sample.max_new_tokens` = {steps} is more than this captioner reads "
                            f"(`model.block_size` = {self.config.block_size}); use at most {self.config.block_size}")
        if attention and opts.num_beams > 1:
            raise UserError("the attention picture follows one caption as it is written; use num_beams=1")
        opts = opts.model_copy(update={"max_new_tokens": steps, "eos_token_ids": [*opts.eos_token_ids,
                                                                                   self.boundary]})
        was_training = self.training
        self.eval()
        for block in self.blocks:
            block.cross.keep_weights = attention
        try:
            device = self.lm_head.weight.device
            banned = None if opts.allow_unknown else getattr(self.tokenizer, "unknown_id", None)
            context = CaptionContext(self, self.encode(images.to(device)), steps, banned)
            prompts = [[self.boundary] for _ in range(len(images))]
            if opts.num_beams > 1:
                new = beam_search(context, prompts, self.config.vocab_size, opts)
            else:
                new = [[] for _ in prompts]
                for step_tokens in decode_steps(context, prompts, self.config.vocab_size, opts, generator, None):
                    for row, token in enumerate(step_tokens):
                        if token is not None:
                            new[row].append(token)
            if attention:
                self.last_attention = torch.stack(context.attention, dim=1) if context.attention else None
        finally:
            self.train(was_training)
            for block in self.blocks:
                block.cross.keep_weights, block.cross.weights = False, None  # later captions keep no weights
        return [ids[:-1] if ids and ids[-1] == self.boundary else ids for ids in new]

    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, data: Any = None,
               **options: Any) -> list[dict[str, Any]]:
        """Captions as COCO results, [{"image_id", "caption"}]: of the images `cond` (their encoder inputs, (N, ...),
        ids 0..N-1), or else of the first n images of `data` (the run's data set at `sample.split`)."""
        opts = CaptionerSampleOptions.parse(options)
        if cond is not None:
            images, ids = cond, list(range(len(cond)))
        elif data is None:
            raise UserError("a captioner captions images: pass them (`genforge sample RUN --image photo.jpg`), or "
                            "sample through genforge.load(...) / `genforge sample`, which read the run's data set")
        else:
            if n > len(data):
                raise UserError(f"--n {n}: the {opts.split} split of {data.name} has {len(data)} images; ask for at "
                                "most that many, or choose another split with --set sample.split=...")
            rows = list(range(n))
            images, ids = data.inputs(rows, self.config.encoder_input()), [data.keys[i] for i in rows]
        tokens = self.caption(images, generator=generator, **opts.model_dump())
        texts = [self.tokenizer.decode(t) for t in tokens] if self.tokenizer is not None else tokens
        return [{"image_id": i, "caption": t} for i, t in zip(ids, texts)]


class CaptionContext:
    """What the shared decoding loops drive (`models.decoding.DecoderContext`): the captioner with the image's
    keys and values, computed once, and a KV cache for the words. Beam search asks for K rows per image: the image
    rows are repeated to match and reordered with the beams."""

    def __init__(self, model: Captioner, image_tokens: Tensor, capacity: int, banned: int | None):
        self.model, self.image_tokens, self.capacity, self.banned = model, image_tokens, capacity, banned
        self.attention: list[Tensor] = []  # per step, (B, M): with keep_weights on

    def _logits(self, idx: Tensor) -> Tensor:
        logits = self.model.decode(idx, self.memories, self.cache, last_only=True)[:, -1].float()  # (B, V)
        if self.banned is not None:
            logits[:, self.banned] = -math.inf
        weights = [b.cross.weights for b in self.model.blocks if b.cross.weights is not None]
        if weights:  # mean over layers and heads of the newest position's weights: (B, M), zeros for ended rows
            mean = torch.stack([w[:, :, -1] for w in weights]).mean(dim=(0, 2)).cpu()
            self.attention.append(mean.new_zeros(self.batch, mean.shape[1]).index_copy_(0, self.rows, mean))
        return logits

    def start(self, prompts: list[list[int]]) -> Tensor:
        rows = len(prompts) // len(self.image_tokens)  # 1, or num_beams
        self.memories = self.model.memories(self.image_tokens.repeat_interleave(rows, dim=0))
        self.cache = KVCache(self.model.config.n_layer, self.capacity)
        self.batch, self.rows = len(prompts), torch.arange(len(prompts))  # the rows left: ended ones leave
        idx = torch.tensor(prompts, dtype=torch.long, device=self.image_tokens.device)  # (B, 1): the start token
        return self._logits(idx)

    def step(self, token: Tensor, sequences: list[list[int]]) -> Tensor:
        return self._logits(token[:, None])

    def reorder(self, rows: Tensor) -> None:
        self.cache.reorder(rows)
        self.rows = self.rows[rows.cpu()]
        self.memories = [(k[rows], v[rows]) for k, v in self.memories]
