"""Sentence VAE: a variational autoencoder of sentences (Bowman et al. 2016, "Generating Sentences from a Continuous
Space", arXiv:1511.06349), and its class-conditional variant (CVAE, Sohn et al. 2015) for sentiment-controlled text.

The model. A bidirectional GRU reads the sentence (its tokens and the end token) into q(z|x) = N(μ, diag σ²); the
decoder is a GRU language model conditioned on z: z sets its initial state, h₀ = tanh(W[z; y] + b), and with
`z_every_step` [z; y] is also appended to every input word, so the decoder cannot forget it (y: the label embedding of
a CVAE, absent otherwise). Training maximises, per sentence x = w₁..w_n followed by the end token,

    ELBO(x) = E_q[Σ_t log p(w_t | w_<t, z)] - KL(q(z|x) || N(0, I))

with one reparameterized sample and the KL in closed form, summed over tokens and latent dimensions and averaged
over the batch: loss = recon_nll + β(t)·KL. Sentences start and end with the tokenizer's newline (GPT-2 uses its
<|endoftext|> the same way), so the end token is predicted like any word.

Posterior collapse (the KL goes to 0 and the decoder ignores z) is the known failure of this model; the classic
remedies are all here, chosen in the config:

    anneal: linear     β(t) = kl_weight · min(1, t / anneal_steps)                          (Bowman et al. 2016)
    anneal: logistic   β(t) = kl_weight / (1 + exp(-10 (t - anneal_steps / 2) / anneal_steps)) (Bowman et al. 2016)
    anneal: cyclical   anneal_cycles cycles of anneal_steps steps; in each, β rises linearly over the first
                       anneal_ratio of the cycle and stays at kl_weight for the rest     (Fu et al. 2019, eq. 5)
    word_dropout       each decoder input word is replaced by a learned "dropped" embedding with this probability,
                       so the decoder must lean on z                                    (Bowman et al. 2016, 3.2)
    free_bits          the KL of each latent dimension, averaged over the batch, is charged at least free_bits
                       nats: dimensions under it get no gradient to shrink further       (Kingma et al. 2016, eq. 15)

`kl_weight` is the β of one sentence's KL term (the ELBO at 1), not a data-set-size factor. The annealing clock is a
buffer saved with the weights, so a resumed run continues it exactly.

`log_likelihood_bounds` gives the evaluation numbers: the ELBO and its terms, the importance-weighted bound on log
p(x) with k samples (Burda et al. 2016, eq. 8), and the posterior means and variances from which the metrics
compute the active units and the mutual information I(x; z) (`genforge.evaluation.sentence`).

Sampling decodes with the shared logits processors of `models/decoding.py` (greedy by default, or temperature /
top-k / top-p / min-p), from the prior, from the posterior of given sentences (`sample.reconstruct`), or along the
straight line between the posterior means of two sentences (`sample.interpolate="a|b"`, a numbered list). A CVAE
can be steered towards its class with `sample.guidance` (see `class_guidance`).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from genforge.config import ModelSection
from genforge.errors import UserError
from genforge.media import pad_sentences
from genforge.models._draws import draw_rows
from genforge.models._layers import class_ids, gaussian_kl, importance_weighted
from genforge.models.decoding import DecodingOptions, History, choose_next, ensure_some_token_allowed, process_logits

# --------------------------------------------------------------------------------------------------------------
# Config


class TextVAEConfig(ModelSection):
    family: Literal["text_vae"] = "text_vae"
    vocab_size: int | None = Field(default=None, ge=2)  # set from the tokenizer by the trainer; None until then
    boundary: int = Field(default=0, ge=0)  # id of the sentence boundary (the tokenizer's newline), set by the trainer
    num_classes: int = Field(default=0, ge=0)  # > 0: the label conditions encoder and decoder (CVAE)
    class_names: list[str] = []  # the data set's names of the classes (neg, pos), set by the trainer
    label_dim: int = Field(default=16, ge=1)  # size of the label embedding (conditional only)
    embed_dim: int = Field(default=256, ge=1)  # word embeddings (encoder and decoder each have their own)
    hidden: int = Field(default=256, ge=1)  # GRU state size (the encoder's per direction)
    latent_dim: int = Field(default=32, ge=1)  # size of z
    z_every_step: bool = True  # also feed [z; label] to the decoder at every step (not only its initial state)
    dropout: float = Field(default=0.0, ge=0, lt=1)  # on word embeddings and on the decoder's output states
    word_dropout: float = Field(default=0.0, ge=0, le=1)  # training: share of decoder input words replaced by a
    #                                                      learned "dropped" embedding (1 = the decoder sees no words)
    kl_weight: float = Field(default=1.0, ge=0)  # β: the KL term's weight once annealed (1 = the ELBO)
    anneal: Literal["none", "linear", "logistic", "cyclical"] = "linear"  # how β reaches kl_weight (docstring)
    anneal_steps: int = Field(default=2000, ge=1)  # linear/logistic: the ramp's length; cyclical: one cycle's
    anneal_cycles: int = Field(default=4, ge=1)  # cyclical: cycles before β stays at kl_weight
    anneal_ratio: float = Field(default=0.5, gt=0, le=1)  # cyclical: share of a cycle spent rising
    free_bits: float = Field(default=0.0, ge=0)  # nats per latent dimension charged at least; 0 = off
    max_length: int = Field(default=64, ge=1)  # the longest sentence sampling writes (tokens, before the end)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "debug": {"embed_dim": 16, "hidden": 16, "latent_dim": 4, "label_dim": 4, "anneal_steps": 4,
                  "max_length": 12},
        # Bowman et al. 2016 used 353-d embeddings, a 191-unit LSTM and 13-d z on the PTB; this is the common
        # modern setting of sentence VAEs (He et al. 2019, Fu et al. 2019: 256/256/32)
        "sentence": {"embed_dim": 256, "hidden": 256, "latent_dim": 32},
    }

    @model_validator(mode="after")
    def _check_classes(self) -> TextVAEConfig:
        if self.vocab_size is not None and self.boundary >= self.vocab_size:
            raise ValueError(f"`model.boundary` ({self.boundary}) is outside the vocabulary [0, {self.vocab_size}); "
                             "remove it (the trainer sets it from the tokenizer)")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"`model.class_names` has {len(self.class_names)} names for num_classes = "
                             f"{self.num_classes}; remove class_names (the trainer sets them from the data)")
        return self

    def adapt_to_data(self, dataset: Any) -> TextVAEConfig:
        """vocab_size is the tokenizer's; a CVAE needs labels with num_classes classes and records their names."""
        tokenizer = dataset.tokenizer
        if self.vocab_size is not None and self.vocab_size != tokenizer.vocab_size:
            raise UserError(f"`model.vocab_size` is {self.vocab_size} but the {tokenizer.kind} tokenizer of "
                            f"{dataset.name} has {tokenizer.vocab_size} tokens; remove model.vocab_size (it is set "
                            "from the tokenizer)")
        values: dict[str, Any] = {"vocab_size": tokenizer.vocab_size, "boundary": dataset.boundary}
        if self.num_classes:
            have = getattr(dataset, "num_classes", 0) if getattr(dataset, "labels", None) is not None else 0
            if have != self.num_classes:
                raise UserError(f"`model.num_classes` = {self.num_classes} but {dataset.name} has "
                                f"{have or 'no'} classes; use a labelled data set (imdb) with num_classes: {have} "
                                "or set model.num_classes: 0")
            values["class_names"] = list(dataset.class_names)
        return self.with_values(**values)

    def batch_options(self) -> dict[str, Any]:
        return {"sentences": True}  # padded batches of whole sentences


class TextVAESampleOptions(DecodingOptions):
    """The sentence VAE's keys of the `sample:` section; the token-choice keys are the shared `DecodingOptions`."""

    temperature: float = Field(default=0.0, ge=0)  # 0 = greedy decoding of each z (Bowman et al.); > 0 samples
    max_new_tokens: int | None = Field(default=None, ge=1)  # longest sentence written; None = model.max_length
    z_temperature: float = Field(default=1.0, ge=0)  # prior samples: z ~ N(0, z_temperature² I)
    allow_unknown: bool = False  # a word vocabulary's <unk> may be written (by default it is never chosen)
    guidance: float = Field(default=1.0, ge=0, le=20)  # a CVAE: steer each token towards the class (class_guidance);
    #                                                    1 = off, the model's own p(w|c)
    reconstruct: str | None = None  # sentences to reconstruct, separated by "|": n reconstructions of each
    interpolate: str | None = None  # "a sentence|another sentence": decode `steps` points between their codes
    steps: int = Field(default=5, ge=2, le=100)  # points of an interpolation, both ends included

    @field_validator("reconstruct", "interpolate")
    @classmethod
    def _sentences_given(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        parts = value.split("|")
        empty = [i + 1 for i, p in enumerate(parts) if not p.strip()]
        if empty:
            raise ValueError(f"sentence {empty[0]} is empty; give sentences separated by |, e.g. "
                             f'--set sample.{info.field_name}="a great film|a dull film"')
        if info.field_name == "interpolate" and len(parts) != 2:
            raise ValueError(f"takes exactly two sentences separated by one |, got {len(parts)}")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> TextVAESampleOptions:
        if self.reconstruct is not None and self.interpolate is not None:
            raise ValueError("set either sample.reconstruct or sample.interpolate, not both")
        return self

    def sentences(self) -> list[str]:
        value = self.interpolate if self.interpolate is not None else self.reconstruct
        return [p.strip() for p in value.split("|")] if value is not None else []


# --------------------------------------------------------------------------------------------------------------
# Model


class SentenceEncoder(nn.Module):
    """q(z | x, y): a bidirectional GRU over the sentence; its last states (both directions) and the label give μ, log σ²."""

    def __init__(self, cfg: TextVAEConfig, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.label_embed = nn.Embedding(cfg.num_classes, cfg.label_dim) if cfg.num_classes else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.embed_dim, cfg.hidden, batch_first=True, bidirectional=True)
        self.to_stats = nn.Linear(2 * cfg.hidden + (cfg.label_dim if cfg.num_classes else 0), 2 * cfg.latent_dim)

    def forward(self, tokens: Tensor, lengths: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """tokens (B, T) with each row's first lengths[b] real; -> μ, log σ² (B, D)."""
        emb = self.dropout(self.embed(tokens))  # (B, T, E)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)  # (2, B, H): the last real step of each direction
        h = torch.cat([h[0], h[1]], dim=1)  # (B, 2H)
        if self.label_embed is not None:
            assert labels is not None
            h = torch.cat([h, self.label_embed(labels)], dim=1)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)
        return mu, logvar


class SentenceDecoder(nn.Module):
    """p(x | z, y): a GRU language model whose initial state (and, with z_every_step, every input) carries [z; y]."""

    def __init__(self, cfg: TextVAEConfig, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        cond_dim = cfg.latent_dim + (cfg.label_dim if cfg.num_classes else 0)
        self.embed = nn.Embedding(vocab_size + 1, cfg.embed_dim)  # row vocab_size: the "dropped word" (word dropout)
        self.label_embed = nn.Embedding(cfg.num_classes, cfg.label_dim) if cfg.num_classes else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.z_every_step = cfg.z_every_step
        self.init_state = nn.Linear(cond_dim, cfg.hidden)
        self.gru = nn.GRU(cfg.embed_dim + (cond_dim if cfg.z_every_step else 0), cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, vocab_size)

    def condition(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """[z; label embedding] (B, cond_dim)."""
        if self.label_embed is None:
            return z
        assert labels is not None
        return torch.cat([z, self.label_embed(labels)], dim=1)

    def initial_state(self, cond: Tensor) -> Tensor:
        return torch.tanh(self.init_state(cond)).unsqueeze(0)  # (1, B, H)

    def states(self, tokens: Tensor, cond: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The GRU's output states (B, T, H) for input ids (B, T) (ids == vocab_size are dropped words), and its last
        state. `state` None starts from the initial state of `cond` (B, cond_dim)."""
        inputs = self.dropout(self.embed(tokens))  # (B, T, E)
        if self.z_every_step:
            inputs = torch.cat([inputs, cond.unsqueeze(1).expand(-1, tokens.shape[1], -1)], dim=2)
        out, state = self.gru(inputs, self.initial_state(cond) if state is None else state)  # (B, T, H)
        return self.dropout(out), state

    def forward(self, tokens: Tensor, cond: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Next-token logits (B, T, V), and the last state (see `states`)."""
        out, state = self.states(tokens, cond, state)
        return self.out(out), state


def class_guidance(logits: Tensor, labels: Tensor, scale: float) -> Tensor:
    """Next-token log-probabilities steered towards each row's class: log p(w|c) + (s - 1)(log p(w|c) - log p(w)),
    with p(w) = the mean of p(w|c') over the classes (a uniform class prior). This is p(w|c) p(c|w)^(s-1): the
    classifier-free guidance of Ho & Salimans (2022, eq. 6), with the model's own class posterior standing in for an
    unconditional model, applied token by token as Sanchez et al. (2023) do for language models. logits: (C, B, V)
    under each class; -> (B, V) for the classes `labels` (B,)."""
    logp = torch.log_softmax(logits, dim=-1)  # (C, B, V)
    marginal = torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])  # (B, V)
    own = logp[labels, torch.arange(logp.shape[1], device=logp.device)]  # (B, V)
    return own + (scale - 1.0) * (own - marginal)


class TextVAE(nn.Module):
    Config = TextVAEConfig
    SampleOptions = TextVAESampleOptions
    output_kind: ClassVar[Literal["text"]] = "text"
    conditioning: ClassVar[Literal["class"]] = "class"  # `cond` of sample(): class ids (--class pos / --class 1)
    eval_metrics: ClassVar[tuple[str, ...]] = ("sentence-elbo", "sentence-nll", "distinct", "self-bleu")

    def __init__(self, config: TextVAEConfig):
        super().__init__()
        if config.vocab_size is None:
            raise UserError("`model.vocab_size` is not set: the trainer sets it from the data set's tokenizer; when "
                            "building a sentence VAE by hand, pass vocab_size=tokenizer.vocab_size")
        self.config = config
        self.encoder = SentenceEncoder(config, config.vocab_size)
        self.decoder = SentenceDecoder(config, config.vocab_size)
        # training losses computed so far: the annealing clock, saved with the weights so resume continues it exactly
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.tokenizer: Any = None  # set by the trainer / loader; None: sample() returns token-id lists
        self.boundary = config.boundary  # starts and ends every sentence

    # ---- the model contract

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.parameters())}

    @staticmethod
    def count_examples(batch: dict[str, Tensor]) -> int:
        """Throughput counts real tokens (words and end tokens), not padding."""
        return int((batch["y"] != -100).sum())

    def kl_weight_now(self) -> float:
        """β at this point of training (see the module docstring)."""
        cfg = self.config
        t = float(self.steps_seen)
        if cfg.anneal == "none":
            return cfg.kl_weight
        if cfg.anneal == "linear":
            return cfg.kl_weight * min(1.0, t / cfg.anneal_steps)
        if cfg.anneal == "logistic":
            return cfg.kl_weight / (1.0 + math.exp(-10.0 * (t - cfg.anneal_steps / 2) / cfg.anneal_steps))
        if t >= cfg.anneal_cycles * cfg.anneal_steps:  # cyclical, after the last cycle
            return cfg.kl_weight
        phase = (t % cfg.anneal_steps) / cfg.anneal_steps  # position within the cycle, [0, 1)
        return cfg.kl_weight * min(1.0, phase / cfg.anneal_ratio)

    def _labels(self, labels: Tensor | None) -> Tensor | None:
        if not self.config.num_classes:
            return None
        if labels is None:
            raise UserError("this sentence CVAE (model.num_classes > 0) needs labelled data (imdb); the batch has "
                            "no labels")
        return labels

    def _drop_words(self, x: Tensor) -> Tensor:
        """Word dropout on the decoder inputs: the first input (the start boundary) always stays."""
        p = self.config.word_dropout
        if not self.training or p == 0:
            return x
        drop = draw_rows(lambda m: torch.rand(m, *x.shape[1:], device=x.device), x.shape[0]) < p
        drop[:, 0] = False
        return x.masked_fill(drop, self.config.vocab_size)

    def reconstruction_nll(self, x: Tensor, y: Tensor, z: Tensor, labels: Tensor | None) -> Tensor:
        """-log p(x | z) per sentence (B,): the summed cross-entropy of every real target token. The output layer,
        most of the cost with a large vocabulary, runs on the real positions only, not on the padding."""
        states, _ = self.decoder.states(x, self.decoder.condition(z, labels))  # (B, T, H)
        real = y != -100  # (B, T)
        logits = self.decoder.out(states[real])  # (R, V), R = real tokens
        nll = F.cross_entropy(logits.float(), y[real], reduction="none")  # (R,)
        rows = torch.arange(y.shape[0], device=y.device)[:, None].expand_as(y)[real]
        return torch.zeros(y.shape[0], dtype=nll.dtype, device=y.device).index_add(0, rows, nll)

    def encode(self, y: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """μ, log σ² of q(z|x) for targets y (B, T) (the sentence and its end token, -100 where padded)."""
        lengths = (y != -100).sum(1)
        return self.encoder(y.clamp(min=0), lengths, labels)

    def loss(self, batch: dict[str, Tensor], group: str = "model") -> dict[str, Tensor]:
        """batch: {"x": (B, T) decoder inputs, "y": (B, T) targets, -100 where padded, "label": (B,) for a CVAE}.
        Nats per sentence, averaged over the batch."""
        if group != "model":
            raise ValueError(f"unknown param group {group!r}")
        x, y = batch["x"], batch["y"]
        labels = self._labels(batch.get("label"))
        mu, logvar = self.encode(y, labels)
        eps = draw_rows(lambda m: torch.randn(m, *mu.shape[1:], device=mu.device, dtype=mu.dtype), mu.shape[0])
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterization
        recon = self.reconstruction_nll(self._drop_words(x), y, z, labels)  # (B,)
        kl_dims = gaussian_kl(mu, logvar)  # (B, D)
        kl = kl_dims.sum(1)  # (B,)
        beta = self.kl_weight_now()
        if self.config.free_bits > 0:  # each dimension's batch-mean KL, charged at least free_bits
            kl_term = kl_dims.mean(0).clamp(min=self.config.free_bits).sum()
        else:
            kl_term = kl.mean()
        if self.training:
            self.steps_seen += 1
        tokens = (y != -100).sum()
        return {
            "loss": recon.mean() + beta * kl_term,
            "recon_nll": recon.detach().mean(),
            "kl": kl.detach().mean(),
            "neg_elbo": (recon + kl).detach().mean(),  # β = 1, whatever the training β
            "neg_elbo_per_token": (recon + kl).detach().sum() / tokens,
            "kl_weight": torch.tensor(beta),
        }

    # ---- evaluation

    @torch.no_grad()
    def log_likelihood_bounds(self, sentences: list[list[int]], labels: Tensor | None = None, *, k: int = 1,
                              batch_size: int = 64, chunk: int = 50,
                              generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-sentence bounds on log p(x) for token-id lists (without boundaries): {"elbo", "log_px_iw" (k
        samples), "recon_log_px", "kl", "tokens" (the sentence's tokens plus its end)} (N,) float64 nats, and
        "kl_per_dim" (D,), "posterior_means", "posterior_logvars" (N, D)."""
        if k < 1:
            raise UserError(f"importance samples k = {k}: need at least 1")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out: dict[str, list[Tensor]] = {key: [] for key in ("elbo", "iw", "recon", "kl", "kl_dims", "mu", "logvar",
                                                              "tokens")}
        try:
            for start in range(0, len(sentences), batch_size):
                batch = pad_sentences(sentences[start:start + batch_size], self.boundary)
                x, y = batch["x"].to(device), batch["y"].to(device)
                y_lab = self._labels(None if labels is None else labels[start:start + batch_size].to(device))
                mu, logvar = self.encode(y, y_lab)
                kl_dims = gaussian_kl(mu, logvar)

                def log_px(z: Tensor) -> Tensor:  # (kc, B, D) -> (kc, B)
                    kc = z.shape[0]
                    return -self.reconstruction_nll(x.repeat(kc, 1), y.repeat(kc, 1), z.flatten(0, 1),
                                                    None if y_lab is None else y_lab.repeat(kc)).view(kc, -1)

                iw, recon = importance_weighted(mu, logvar, k, chunk, generator, log_px)
                out["iw"].append(iw)
                out["recon"].append(recon)
                out["kl"].append(kl_dims.sum(1).double())
                out["elbo"].append(recon - kl_dims.sum(1).double())
                out["kl_dims"].append(kl_dims.double())
                out["mu"].append(mu.double())
                out["logvar"].append(logvar.double())
                out["tokens"].append((y != -100).sum(1).double())
        finally:
            self.train(was_training)
        j = {key: torch.cat(v).cpu() for key, v in out.items()}
        return {"elbo": j["elbo"], "log_px_iw": j["iw"], "recon_log_px": j["recon"], "kl": j["kl"],
                "tokens": j["tokens"], "kl_per_dim": j["kl_dims"].mean(0), "posterior_means": j["mu"],
                "posterior_logvars": j["logvar"]}

    # ---- sampling

    @torch.no_grad()
    def decode_latents(self, z: Tensor, labels: Tensor | None, opts: TextVAESampleOptions,
                       generator: torch.Generator | None) -> list[list[int]]:
        """Token ids of one sentence per row of z (B, D), up to the end token (not included)."""
        B = z.shape[0]
        guided = opts.guidance != 1.0
        C = self.config.num_classes if guided else 1
        if guided:
            if labels is None:
                raise UserError(f"`sample.guidance` = {opts.guidance} steers a class-conditional model towards its "
                                "class; this sentence VAE is unconditional (model.num_classes = 0): remove it")
            # every row decoded under every class: row c * B + b is row b under class c
            classes = torch.arange(C, device=z.device).repeat_interleave(B)
            cond = self.decoder.condition(z.repeat(C, 1), classes)
        else:
            cond = self.decoder.condition(z, labels)
        token = torch.full((B,), self.boundary, dtype=torch.long, device=z.device)
        state = None
        history = History([[] for _ in range(B)], self.config.vocab_size, z.device)
        sentences: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        greedy = opts.temperature == 0.0
        unknown = None if opts.allow_unknown else getattr(self.tokenizer, "unknown_id", None)  # a word vocab's <unk>
        for _ in range(opts.max_new_tokens or self.config.max_length):
            fed = token.repeat(C) if guided else token
            logits, state = self.decoder(fed[:, None], cond, state)  # (B or C*B, 1, V)
            logits = logits[:, -1].float()
            if guided:
                logits = class_guidance(logits.view(C, B, -1), labels, opts.guidance)
            if unknown is not None:
                logits[:, unknown] = -math.inf
            logits = process_logits(logits, history, opts, sampling=not greedy)
            ensure_some_token_allowed(logits, opts)
            token = choose_next(logits, greedy, generator)  # (B,)
            history.append(token)
            for row, t in enumerate(token.tolist()):
                if done[row]:
                    continue
                if t == self.boundary:
                    done[row] = True
                else:
                    sentences[row].append(t)
            if all(done):
                break
        return sentences

    def _encode_texts(self, texts: list[str], labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Posterior μ, log σ² of given sentences (strings)."""
        if self.tokenizer is None:
            raise UserError("this sentence VAE has no tokenizer to encode sample.reconstruct/interpolate with; load "
                            "it from a checkpoint (which holds tokenizer.json)")
        ids = [self.tokenizer.encode(t) for t in texts]
        unknown = getattr(self.tokenizer, "unknown_id", None)  # a word vocabulary's <unk>
        empty = [i + 1 for i, s in enumerate(ids) if not s or all(t == unknown for t in s)]
        if empty:
            raise UserError(f"sentence {empty[0]} ({texts[empty[0] - 1]!r}) has no word this model knows (its "
                            "vocabulary is that of its training text); give a sentence with known words")
        y = pad_sentences(ids, self.boundary)["y"].to(next(self.parameters()).device)
        return self.encode(y, labels)

    @torch.no_grad()
    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None,
               **options: Any) -> list[str] | list[list[int]]:
        """Sentences: n from the prior; with sample.reconstruct, n reconstructions of each given sentence (z from
        its posterior; its mean when decoding is greedy); with sample.interpolate, `steps` sentences along the line
        between the two sentences' posterior means, numbered "1. ...". cond: class ids or None (a CVAE then cycles
        through its classes for prior samples, and needs a class for given sentences)."""
        opts = TextVAESampleOptions.parse(options)
        cfg = self.config
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            texts = opts.sentences()
            if not texts:
                labels = class_ids(n, cond, cfg.num_classes, device, "sentence VAE")
                z = torch.randn(n, cfg.latent_dim, generator=generator, device=device) * opts.z_temperature
                ids = self.decode_latents(z, labels, opts, generator)
            else:
                if cfg.num_classes and cond is None:
                    names = ", ".join(cfg.class_names) or f"0..{cfg.num_classes - 1}"
                    raise UserError(f"this sentence CVAE encodes given sentences with their class: pass --class "
                                    f"({names})")
                label = class_ids(1, cond, cfg.num_classes, device, "sentence VAE")
                labels = None if label is None else label.expand(len(texts))
                mu, logvar = self._encode_texts(texts, labels)
                if opts.interpolate is not None:
                    t = torch.linspace(0, 1, opts.steps, device=device)[:, None]
                    z = mu[0] + t * (mu[1] - mu[0])  # (steps, D)
                    z_labels = None if label is None else label.expand(opts.steps)
                else:
                    z = mu.repeat_interleave(n, 0)  # (len(texts) * n, D), each sentence's n together
                    if opts.temperature > 0:
                        noise = torch.randn(z.shape, generator=generator, device=device)
                        z = z + torch.exp(0.5 * logvar).repeat_interleave(n, 0) * noise
                    z_labels = None if label is None else label.expand(len(z))
                ids = self.decode_latents(z, z_labels, opts, generator)
        finally:
            self.train(was_training)
        if self.tokenizer is None:
            return ids
        sentences = [self.tokenizer.decode(s) for s in ids]
        if opts.interpolate is not None:
            return [f"{i + 1}. {s}" for i, s in enumerate(sentences)]
        return sentences
