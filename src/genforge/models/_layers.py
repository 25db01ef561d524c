"""Pieces used identically by several families (STYLE.md: "a block used identically by two families moves here")."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from genforge.errors import UserError


def class_ids(n: int, cond: Any, num_classes: int, device: torch.device, family: str) -> Tensor | None:
    """`cond` of a class-conditional `sample` as n class ids (int64 (n,)): a class id, a sequence/tensor of n ids,
    or None. None on a conditional model cycles through the classes 0, 1, ..., so a grid with num_classes columns
    shows one class per column; on an unconditional model (num_classes 0) None stays None."""
    if cond is None:
        return torch.arange(n, device=device) % num_classes if num_classes else None
    if not num_classes:
        raise UserError(f"this {family} model is unconditional (model.num_classes = 0); drop --class")
    labels = torch.as_tensor(cond, device=device, dtype=torch.long)
    labels = labels.expand(n) if labels.ndim == 0 else labels
    if labels.shape != (n,):
        raise UserError(f"--class: expected one class id or {n} ids, got shape {tuple(labels.shape)}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise UserError(f"--class {bad[0].item()} is out of range; this model has classes 0..{num_classes - 1}")
    return labels


def check_image_data(dataset: Any, channels: int, image_size: int, num_classes: int) -> None:
    """The data set the trainer loaded must have the image shape and the classes an image model is built for."""
    c, h, w = dataset.image_shape
    if (c, h, w) != (channels, image_size, image_size):
        raise UserError(
            f"data set {dataset.name} has images of shape {(c, h, w)} but the model makes "
            f"{(channels, image_size, image_size)}; set `data.image_size: {image_size}` and "
            f"`data.channels: {channels}` to convert the data, or change `model.image_size`/`model.channels`"
        )
    if num_classes:
        if dataset.labels is None:
            raise UserError(f"`model.num_classes` is {num_classes} but {dataset.name} has no labels; "
                            "set model.num_classes: 0 or use labelled data (imagefolder with class subfolders)")
        if dataset.num_classes != num_classes:
            raise UserError(f"`model.num_classes` ({num_classes}) differs from the {dataset.num_classes} "
                            f"classes of {dataset.name}; set model.num_classes: {dataset.num_classes}")


def image_size_problems(run: Any, image_size: int, channels: int) -> list[str]:
    """Cross-section checks of an image model's `model:` against `data:`, reported with the config's others."""
    problems = []
    if run.data.image_size is not None and run.data.image_size != image_size:
        problems.append(f"`data.image_size` ({run.data.image_size}) differs from `model.image_size` ({image_size}); "
                        f"set both to the same value")
    if run.data.channels is not None and run.data.channels != channels:
        problems.append(f"`data.channels` ({run.data.channels}) differs from `model.channels` ({channels})")
    return problems


# Gaussian posteriors of the VAE families (models/vae.py, models/text_vae.py)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) || N(0, 1)) per latent dimension (K&W 2014, appendix B), (B, D) -> (B, D)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; μ, diag σ²) summed over the last dimension."""
    return (-0.5 * ((z - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))).sum(-1)


def importance_weighted(mu: Tensor, logvar: Tensor, k: int, chunk: int, generator: torch.Generator | None,
                        log_px_given_z: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """The importance-weighted bound log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x) (Burda et al. 2016, eq. 8) with
    z_i ~ q(z|x) = N(μ, diag σ²) drawn `chunk` at a time, and log p(x|z_1) of the first draw (the ELBO's
    reconstruction term). log_px_given_z: z (kc, B, D) -> (kc, B). Returns both (B,) in float64."""
    std = torch.exp(0.5 * logvar)
    log_weights: list[Tensor] = []
    first: Tensor | None = None
    for start in range(0, k, chunk):
        kc = min(chunk, k - start)
        eps = torch.randn((kc, *mu.shape), generator=generator, device=mu.device)  # (kc, B, D)
        z = mu + std * eps
        log_px = log_px_given_z(z)  # (kc, B)
        if first is None:
            first = log_px[0]
        log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        log_weights.append(log_px + log_pz - log_normal(z, mu, logvar))
    assert first is not None
    weights = torch.cat(log_weights).double()  # (k, B)
    return torch.logsumexp(weights, 0) - math.log(k), first.double()


# --------------------------------------------------------------------------------------------------------------
# Transformer blocks, shared by every Transformer family (the GPT, the captioner's encoder and decoder)
#
# nanoGPT's block (GPT-2: pre-LayerNorm, learned absolute positions, GELU MLP, tied head) is the default. The
# levers of the NanoGPT speedrun (Keller Jordan et al., modded-nanogpt, 2024) are options of `TransformerOptions`,
# which a family's config inherits, so every Transformer family chooses them with the same keys:
#
#     rotary          rotary position embeddings on queries and keys (Su et al. 2021, RoFormer, eq. 34) instead of
#                     a learned position table
#     qk_norm         RMS-normalize each head's queries and keys before attention (Dehghani et al. 2023; Wortsman
#                     et al. 2023): bounded attention logits, so higher learning rates stay stable
#     mlp: relu2      the MLP's activation is ReLU(x)² (So et al. 2021, Primer) instead of GELU
#     zero_init_proj  the residual branches' output projections start at zero: each block starts as the identity
#     logit_softcap   logits = c · tanh(logits / c) (Gemma 2): no runaway logits; None = off
#     tie_head        the output layer reads logits off the token embeddings (Press & Wolf 2017); False = its own


class TransformerOptions(BaseModel):
    """The block keys of a Transformer family's `model:` section (see above); defaults are nanoGPT's block."""

    rotary: bool = False  # rotary position embeddings (no learned position table)
    rotary_base: float = Field(default=10000.0, gt=1)  # RoPE's θ: wavelengths from 2π to 2π·base
    qk_norm: bool = False  # RMS-normalize queries and keys per head
    mlp: Literal["gelu", "relu2"] = "gelu"  # the MLP's activation
    zero_init_proj: bool = False  # residual output projections start at zero (else N(0, 0.02 / sqrt(2 n_layer)))
    logit_softcap: float | None = Field(default=None, gt=0)  # c in c · tanh(logits / c); None = off
    tie_head: bool = True  # output layer = token embeddings (weight tying)


def rotary_tables(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles, (..., T, head_dim / 2), for position ids (T,) or (B, T): pair i of a
    head's dimensions turns by position · base^(-2i / head_dim) (RoFormer eq. 15)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (..., T, hs/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate x (B, nh, T, hs) by `rotary_tables`: dimension i pairs with i + hs/2 (the GPT-NeoX layout)."""
    cos, sin = tables
    if cos.dim() == 3:  # per-row positions (B, T, hs/2): broadcast over the heads
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, opts: TransformerOptions | None = None):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.qk_norm = opts is not None and opts.qk_norm
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # query, key, value projections for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # output projection (a residual projection: scaled init)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, cache: LayerKV | None = None,
                start: int = 0, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x: (B, T, C) at positions [start, start + T) of the sequence. attn_mask: bool (B, 1, T, L), True = may
        attend; None means plain causal attention (no padding). cache: this layer's keys/values of earlier positions.
        rotary: the tables (`rotary_tables`) of these T positions, or None."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rotary is not None:  # keys are cached rotated: a key's rotation depends only on its own position
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if cache is not None:
            k, v = cache.update(k, v, start)  # (B, nh, start + T, hs): the cached past plus this step
        # is_causal aligns the mask top-left, which is right only when the queries start at key 0
        is_causal = attn_mask is None and T > 1
        assert not (is_causal and start > 0), "chunked prefill needs an explicit mask"
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool, opts: TransformerOptions | None = None):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.relu2 = opts is not None and opts.mlp == "relu2"
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)  # a residual projection: scaled init
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else self.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block (GPT-2): normalise the input of each branch, keep the residual stream clean."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, opts: TransformerOptions | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, opts)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias, opts)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, cache: LayerKV | None = None,
                start: int = 0, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache, start, rotary)
        return x + self.mlp(self.ln_2(x))


def init_transformer_weights(model: nn.Module, residual_layers: int, opts: TransformerOptions | None) -> None:
    """GPT-2 init: N(0, 0.02) for every Linear and Embedding (biases 0); the residual projections (`c_proj`) scaled
    by 1/sqrt(2 · residual_layers), so the residual stream's variance does not grow with depth, or zero with
    `zero_init_proj`."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            if opts is not None and opts.zero_init_proj:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * residual_layers))


def softcap(logits: Tensor, cap: float | None) -> Tensor:
    """c · tanh(logits / c) (Gemma 2's final-logit soft-capping); None leaves the logits as they are."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


class LayerKV:
    """One layer's keys and values, allocated as (B, nh, max_len, hs) on first use (in the dtype the layer computes,
    e.g. bf16 under autocast) and written in place, so a step appends without copying the past."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Store k, v (B, nh, T, hs) at positions [start, start + T); return positions [0, start + T)."""
        if self.k is None or self.v is None:
            B, nh, _, hs = k.shape
            self.k = k.new_zeros(B, nh, self.max_len, hs)
            self.v = v.new_zeros(B, nh, self.max_len, hs)
        end = start + k.shape[2]
        assert end <= self.max_len, (end, self.max_len)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, rows: Tensor) -> None:
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k[rows], self.v[rows]

    def realign(self, length: int, new_length: int, capacity: int) -> None:
        """Move the filled positions [0, length) into a buffer of `capacity` positions so that they end at
        `new_length`: zeros are added at the left (new_length > length) or the oldest positions dropped."""
        self.max_len = capacity
        if self.k is None or self.v is None:
            return
        kept = min(length, new_length)
        moved = []
        for old in (self.k, self.v):
            buffer = old.new_zeros(old.shape[0], old.shape[1], capacity, old.shape[3])
            buffer[:, :, new_length - kept:new_length] = old[:, :, length - kept:length]
            moved.append(buffer)
        self.k, self.v = moved

    def append_rows(self, other: "LayerKV") -> None:
        """Add `other`'s rows after these (both aligned to the same length and capacity)."""
        if other.k is None or other.v is None:
            return
        if self.k is None or self.v is None:
            self.k, self.v = other.k, other.v
            return
        self.k, self.v = torch.cat([self.k, other.k]), torch.cat([self.v, other.v])


class KVCache:
    """Per-layer keys and values for a whole generation; `length` positions are filled."""

    def __init__(self, n_layer: int, max_len: int):
        self.layers = [LayerKV(max_len) for _ in range(n_layer)]
        self.length = 0

    def reorder(self, rows: Tensor) -> None:
        """Row i continues the history of row rows[i] (beam search); a subset of the rows drops the others."""
        for layer in self.layers:
            layer.reorder(rows)

    def realign(self, new_length: int, capacity: int) -> None:
        """Continuous batching: the same newest positions, ending at `new_length` (padding added or dropped at the
        left), in buffers of `capacity` positions."""
        for layer in self.layers:
            layer.realign(self.length, new_length, capacity)
        self.length = new_length

    def append_rows(self, other: "KVCache") -> None:
        """Continuous batching: `other`'s rows after these, both realigned to the same length and capacity."""
        assert (other.length, len(other.layers)) == (self.length, len(self.layers))
        for layer, theirs in zip(self.layers, other.layers):
            layer.append_rows(theirs)
