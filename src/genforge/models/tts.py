"""Text to speech: a Transformer text encoder, an alignment learned inside the model, a duration predictor and a
convolutional mel decoder (the encoder and monotonic alignment search of Glow-TTS / Grad-TTS with the
non-autoregressive decoder of FastSpeech), trained on transcribed recordings with no external aligner.

    symbols (B, L) -> embedding -> conv prenet -> Transformer blocks (full attention, padding masked) -> h (B, L, C)
    μ = Linear(h): the mean log-mel frame of each symbol (Grad-TTS's "encoder output")

Training. The target log-mel frames y (B, T, n_mels) come from the batch's audio through `audio.log_mel` (the one
feature config every speech part shares, `model.mel`), standardized by the training set's mean and standard
deviation (`mel_mean`, `mel_std`, measured by `adapt_to_data`). Monotonic alignment search (Kim et al. 2020,
Glow-TTS, Alg. 1) finds the monotonic, surjective assignment A of frames to symbols that maximizes
Σ_j log N(y_j; μ_A(j), I); it is a dynamic program and has no gradient. With A fixed:

    prior loss      ½ mean over frames and bands of (y_j - μ_A(j))²     pulls μ toward the frames aligned to it, which
                                                                          is what makes the next alignment better
    duration loss   mean over symbols of (log(1 + d̂_i) - log(1 + d_i))², d_i = frames A gives symbol i; the
                    duration predictor reads h with its gradient stopped (Glow-TTS sec. 3.2)
    mel loss        mean |ŷ - y| over frames and bands, ŷ = μ_A + Decoder(h_A): the decoder refines the expanded
                    means (each symbol's hidden state repeated for its frames), FastSpeech-style

Synthesis: durations from the predictor (rounded up, times `1 / speaking_rate`), expand, decode, undo the
standardization, and turn the log-mel frames into a waveform with a vocoder (`sample.vocoder`: "griffin-lim", or a
trained `vocoder` run, see `models/vocoder.py`). Long text is split into sentences, each synthesized alone and
joined with a pause.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from genforge import audio
from genforge.config import ModelSection, SampleOptions
from genforge.errors import UserError
from genforge.models._layers import Block, TransformerOptions, init_transformer_weights, rotary_tables

# --------------------------------------------------------------------------------------------------------------
# Config


class TTSConfig(TransformerOptions, ModelSection):
    family: Literal["tts"] = "tts"
    mel: audio.MelConfig = audio.MelConfig()  # the log-mel features (sample rate set from the data)
    vocab_size: int | None = Field(default=None, ge=2)  # symbols in the table, set from the data's tokenizer
    n_embd: int = Field(default=192, ge=8)  # width of symbols and of the decoder
    n_head: int = Field(default=2, ge=1)  # attention heads of the encoder blocks
    encoder_layers: int = Field(default=4, ge=1)  # Transformer blocks over the symbols
    prenet_layers: int = Field(default=3, ge=0)  # conv layers (kernel 5) before the Transformer
    decoder_layers: int = Field(default=6, ge=1)  # residual dilated conv blocks over the frames
    decoder_kernel: int = Field(default=5, ge=1)  # their kernel size (odd)
    duration_layers: int = Field(default=2, ge=1)  # conv layers (kernel 3) of the duration predictor
    dropout: float = Field(default=0.1, ge=0, lt=1)
    bias: bool = True
    mel_mean: float = 0.0  # standardization of the target frames, measured on the training set by the trainer
    mel_std: float = Field(default=1.0, gt=0)
    prior_weight: float = Field(default=1.0, ge=0)  # weights of the three losses (see the module docstring)
    duration_weight: float = Field(default=1.0, ge=0)
    mel_weight: float = Field(default=1.0, ge=0)
    rotary: bool = True  # the encoder's positions: rotary embeddings (text has no fixed length)
    add_blank: bool = True  # a learned blank symbol between symbols and at both ends (Glow-TTS / VITS "add_blank"):
    #                         it takes the silences and transitions, so real symbols align to their own sounds

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "debug": {"n_embd": 32, "n_head": 2, "encoder_layers": 1, "prenet_layers": 1, "decoder_layers": 2,
                  "duration_layers": 1, "dropout": 0.0,
                  "mel": {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "win_length": 256, "n_mels": 20,
                          "fmax": None}},
        "small": {},  # 22 kHz LJ Speech: 192 wide, 4 encoder blocks, 6 decoder blocks
    }

    def adapt_to_data(self, dataset: Any) -> TTSConfig:
        """The symbol table's size, the data's sample rate, and the mean / std of its log-mel frames."""
        mel = self.mel.model_copy(update={"sample_rate": int(dataset.sample_rate)})
        mel = audio.MelConfig.model_validate(mel.model_dump())
        total, square, count = 0.0, 0.0, 0
        for wave in dataset.waves[:200]:  # 200 clips pin the two numbers to well under 1%
            frames = audio.log_mel(torch.from_numpy(wave), mel)
            total += float(frames.sum())
            square += float(frames.double().square().sum())
            count += frames.numel()
        mean = total / count
        std = math.sqrt(max(square / count - mean * mean, 1e-8))
        return self.with_values(vocab_size=dataset.tokenizer.vocab_size, mel=mel.model_dump(), mel_mean=round(mean, 4),
                                mel_std=round(std, 4))

    def check_training(self, run: Any) -> list[str]:
        if self.decoder_kernel % 2 == 0:
            return [f"`model.decoder_kernel` = {self.decoder_kernel} must be odd (the frames stay centered)"]
        if self.n_embd % self.n_head:
            return [f"`model.n_embd` = {self.n_embd} must be divisible by `model.n_head` = {self.n_head}"]
        return []


class TTSSampleOptions(SampleOptions):
    """The text-to-speech keys of the `sample:` section."""

    SERVER_FIXED: ClassVar[tuple[str, ...]] = ("vocoder", "split")
    CHECKPOINT_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {"vocoder": ("griffin-lim",)}

    vocoder: str = "griffin-lim"  # "griffin-lim", or the run dir / step dir of a trained vocoder (same `mel` config)
    speaking_rate: float = Field(default=1.0, ge=0.25, le=4.0)  # > 1 speaks faster: durations are divided by it
    griffin_lim_iters: int = Field(default=32, ge=1, le=1000)  # iterations when the vocoder is Griffin-Lim
    pause_seconds: float = Field(default=0.3, ge=0, le=5)  # silence between sentences of a long text
    max_seconds: float = Field(default=30.0, gt=0, le=600)  # refuse to synthesize one sentence longer than this
    split: str = "test"  # without a text: speak the first n sentences of this split of the run's data set

    def data_split(self) -> str | None:
        return self.split


# --------------------------------------------------------------------------------------------------------------
# Monotonic alignment search


@torch.no_grad()
def monotonic_alignment(log_p: Tensor, symbol_lengths: Tensor, frame_lengths: Tensor) -> Tensor:
    """The most likely monotonic alignment (Glow-TTS Alg. 1). log_p: (B, L, T) log-likelihood of frame j under
    symbol i. Returns a 0/1 float tensor (B, L, T): each of the first T_b frames belongs to exactly one of the first
    L_b symbols, symbols in order, each symbol at least one frame. Needs T_b >= L_b."""
    B, L, T = log_p.shape
    neg = torch.finfo(log_p.dtype).min / 4
    value = torch.full((B, L), neg, dtype=log_p.dtype)
    value[:, 0] = log_p[:, 0, 0]
    came_from_previous = torch.zeros(B, L, T, dtype=torch.bool)  # step j entered symbol i from symbol i - 1
    blank = torch.full((B, 1), neg, dtype=log_p.dtype)
    for j in range(1, T):
        shifted = torch.cat([blank, value[:, :-1]], dim=1)
        came_from_previous[:, :, j] = shifted > value
        value = torch.maximum(value, shifted) + log_p[:, :, j]
    path = torch.zeros(B, L, T, dtype=log_p.dtype)
    index = (symbol_lengths - 1).clone()
    rows = torch.arange(B)
    for j in range(T - 1, -1, -1):
        active = j < frame_lengths
        path[rows[active], index[active], j] = 1.0
        step_back = active & came_from_previous[rows, index, j] & (index > 0)
        index = index - step_back.long()
    return path


def intersperse(symbols: Tensor, lengths: Tensor, blank: int) -> tuple[Tensor, Tensor]:
    """(B, L) ids -> (B, 2L + 1) with `blank` before, between and after the real symbols; padding stays 0."""
    B, L = symbols.shape
    out = torch.full((B, 2 * L + 1), blank, dtype=symbols.dtype, device=symbols.device)
    out[:, 1::2] = symbols
    new_lengths = 2 * lengths + 1
    out[torch.arange(2 * L + 1, device=symbols.device)[None] >= new_lengths[:, None]] = 0
    return out, new_lengths


# --------------------------------------------------------------------------------------------------------------
# Layers


class ConvNorm(nn.Module):
    """Conv1d over time (B, C, T) -> ReLU -> LayerNorm over channels -> dropout, added to its input."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.norm = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, C, T); mask: (B, 1, T), 1 on real positions. Padding stays zero."""
        h = F.relu(self.conv(x * mask))
        h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        return (x + self.dropout(h)) * mask


class DurationPredictor(nn.Module):
    """log(1 + frames) of each symbol from its hidden state (FastSpeech 2's variance predictor)."""

    def __init__(self, channels: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([ConvNorm(channels, 3, 1, dropout) for _ in range(layers)])
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h, mask)
        return (self.out(h) * mask).squeeze(1)  # (B, L)


# --------------------------------------------------------------------------------------------------------------
# The model


class TTS(nn.Module):
    output_kind: ClassVar[str] = "audio"
    conditioning: ClassVar[str] = "text"
    Config = TTSConfig
    SampleOptions = TTSSampleOptions
    eval_metrics: ClassVar[tuple[str, ...]] = ("speech",)

    def __init__(self, config: TTSConfig):
        super().__init__()
        if config.vocab_size is None:
            raise UserError("model.vocab_size is unset: it comes from the data's symbol table when training starts")
        self.config = config
        C, M = config.n_embd, config.mel.n_mels
        self.blank = config.vocab_size  # the blank symbol's id: one row after the table's symbols
        self.embed = nn.Embedding(config.vocab_size + int(config.add_blank), C, padding_idx=0)
        self.prenet = nn.ModuleList([ConvNorm(C, 5, 1, config.dropout) for _ in range(config.prenet_layers)])
        self.blocks = nn.ModuleList([Block(C, config.n_head, config.dropout, config.bias, config)
                                     for _ in range(config.encoder_layers)])
        self.ln_f = nn.LayerNorm(C)
        self.to_mean = nn.Linear(C, M)
        self.durations = DurationPredictor(C, config.duration_layers, config.dropout)
        self.decoder = nn.ModuleList([ConvNorm(C, config.decoder_kernel, 2 ** (i % 3), config.dropout)
                                      for i in range(config.decoder_layers)])
        self.to_mel = nn.Conv1d(C, M, 1)
        nn.init.normal_(self.embed.weight, std=C ** -0.5)
        nn.init.zeros_(self.to_mel.weight)  # the decoder starts as "μ is the answer" and learns the residual
        nn.init.zeros_(self.to_mel.bias)
        init_transformer_weights(self.blocks, config.encoder_layers, config)
        self.tokenizer: Any = None  # the symbol table; set by the trainer and the loader

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.parameters())}

    def matrix_parameters(self) -> list[nn.Parameter]:
        """What `train.optim.name: muon` trains with Muon: the encoder blocks' weight matrices (attention and MLP);
        embeddings, convolutions, norms and output projections stay with AdamW."""
        return [m.weight for m in self.blocks.modules() if isinstance(m, nn.Linear)]

    def count_examples(self, batch: dict[str, Tensor]) -> float:
        """Seconds of audio in a batch: the unit of the audio kind's throughput."""
        return float(batch["audio_lengths"].sum()) / self.config.mel.sample_rate

    # ---- encoder

    def encode(self, symbols: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """symbols (B, L) -> hidden states h (B, C, L'), means μ (B, M, L'), mask (B, 1, L'), with L' = 2L + 1 when
        blanks are added (they are added here, so callers always pass the table's ids)."""
        if self.config.add_blank:
            symbols, lengths = intersperse(symbols, lengths, self.blank)
        B, L = symbols.shape
        mask = (torch.arange(L, device=symbols.device)[None] < lengths[:, None]).unsqueeze(1).float()
        x = self.embed(symbols).transpose(1, 2) * mask  # (B, C, L)
        for layer in self.prenet:
            x = layer(x, mask)
        x = x.transpose(1, 2)  # (B, L, C)
        keys = mask.bool().view(B, 1, 1, L)  # padded symbols are never attended to
        rotary = rotary_tables(torch.arange(L, device=x.device), self.config.n_embd // self.config.n_head,
                               self.config.rotary_base) if self.config.rotary else None
        for block in self.blocks:
            x = block(x, keys.expand(B, 1, L, L), rotary=rotary)
        h = self.ln_f(x).transpose(1, 2) * mask  # (B, C, L)
        return h, self.to_mean(h.transpose(1, 2)).transpose(1, 2) * mask, mask

    def decode(self, h_frames: Tensor, mean_frames: Tensor, frame_mask: Tensor) -> Tensor:
        """Expanded hidden states (B, C, T) and means (B, M, T) -> standardized log-mel frames (B, M, T)."""
        x = h_frames
        for layer in self.decoder:
            x = layer(x, frame_mask)
        return (mean_frames + self.to_mel(x)) * frame_mask

    # ---- training

    def targets(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Standardized log-mel frames (B, M, T) of the batch's audio and each clip's frame count."""
        mel = audio.log_mel(batch["audio"], self.config.mel)
        frames = batch["audio_lengths"] // self.config.mel.hop_length
        return (mel - self.config.mel_mean) / self.config.mel_std, frames

    def loss(self, batch: dict[str, Tensor], group: str = "model") -> dict[str, Tensor]:
        symbols, symbol_lengths = batch["text"], batch["text_lengths"]
        y, frame_lengths = self.targets(batch)
        too_short = frame_lengths < symbol_lengths * (2 if self.config.add_blank else 1) + 1
        if bool(too_short.any()):
            b = int(too_short.nonzero()[0])
            raise UserError(f"a clip of {int(frame_lengths[b])} frames has {int(symbol_lengths[b])} symbols: every "
                            "symbol needs at least one frame; lower model.mel.hop_length or drop such clips")
        T = y.shape[-1]
        frame_mask = (torch.arange(T, device=y.device)[None] < frame_lengths[:, None]).unsqueeze(1).float()
        h, mean, mask = self.encode(symbols, symbol_lengths)
        symbol_lengths = mask.sum((1, 2)).long()  # with the blanks
        with torch.no_grad():  # log N(y_j; μ_i, I) up to a constant, for every (symbol, frame) pair: (B, L, T)
            log_p = (mean.transpose(1, 2) @ y - 0.5 * mean.square().sum(1).unsqueeze(-1)
                     - 0.5 * y.square().sum(1).unsqueeze(1))
            path = monotonic_alignment(log_p.float().cpu(), symbol_lengths.cpu(), frame_lengths.cpu()).to(y.device)
        mean_frames = mean @ path  # (B, M, T): each frame gets its symbol's mean
        h_frames = h @ path
        n_frames = frame_mask.sum() * y.shape[1]
        prior = 0.5 * ((y - mean_frames).square() * frame_mask).sum() / n_frames
        durations = path.sum(-1)  # (B, L)
        predicted = self.durations(h.detach(), mask)
        duration = ((predicted - torch.log1p(durations)).square() * mask.squeeze(1)).sum() / mask.sum()
        mel = ((self.decode(h_frames, mean_frames, frame_mask) - y).abs() * frame_mask).sum() / n_frames
        c = self.config
        total = c.prior_weight * prior + c.duration_weight * duration + c.mel_weight * mel
        return {"loss": total, "prior": prior.detach(), "duration": duration.detach(), "mel": mel.detach()}

    # ---- synthesis

    @torch.no_grad()
    def synthesize_mel(self, symbols: list[int], speaking_rate: float = 1.0,
                       max_seconds: float = 30.0) -> tuple[Tensor, Tensor]:
        """One utterance's symbol ids -> its log-mel frames (M, T) in the feature's own scale (not standardized), and
        the alignment that made them (symbols with blanks, T): 1 where a frame belongs to a symbol."""
        device = self.embed.weight.device
        ids = torch.tensor([symbols], dtype=torch.long, device=device)
        h, mean, mask = self.encode(ids, torch.tensor([len(symbols)], device=device))
        log_frames = self.durations(h, mask)[0]
        frames = torch.clamp(torch.ceil(torch.expm1(log_frames) / speaking_rate), min=1).long()
        total = int(frames.sum())
        limit = int(max_seconds * self.config.mel.sample_rate / self.config.mel.hop_length)
        if total > limit:
            seconds = total * self.config.mel.hop_length / self.config.mel.sample_rate
            raise UserError(f"this sentence would last {seconds:.1f} s, more than sample.max_seconds = {max_seconds}; "
                            "split the text into shorter sentences or raise sample.max_seconds")
        path = torch.zeros(1, len(frames), total, device=device)
        ends = frames.cumsum(0)
        starts = ends - frames
        for i in range(len(frames)):
            path[0, i, int(starts[i]):int(ends[i])] = 1.0
        frame_mask = torch.ones(1, 1, total, device=device)
        y = self.decode(h @ path, mean @ path, frame_mask)[0]
        return y * self.config.mel_std + self.config.mel_mean, path[0]

    def vocode(self, mel: Tensor, vocoder: Any, griffin_lim_iters: int) -> Tensor:
        """Log-mel frames (B, M, T) -> waveforms (B, T * hop): Griffin-Lim, or a trained vocoder's checkpoint (the
        sampling pipeline loads the run `sample.vocoder` names and passes it here)."""
        from genforge.models.vocoder import griffin_lim

        if isinstance(vocoder, str):
            if vocoder != "griffin-lim":
                raise UserError(f"sample.vocoder = {vocoder!r}: give griffin-lim or the run dir of a trained vocoder "
                                "(loaded through genforge.sampling.load)")
            return griffin_lim(mel, self.config.mel, n_iter=griffin_lim_iters)
        module = getattr(vocoder, "module", None)
        if not hasattr(module, "vocode"):
            raise UserError(f"sample.vocoder: that checkpoint is a {getattr(vocoder, 'family', '?')} model, not a "
                            "vocoder; give the run dir of a vocoder (model.family: vocoder) or griffin-lim")
        trained = vocoder.config.model.mel
        if trained.key() != self.config.mel.key():
            fields = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax")
            diff = "; ".join(f"{f} {a} here vs {b} in the vocoder" for f, a, b in
                             zip(fields, self.config.mel.key(), trained.key()) if a != b)
            raise UserError(f"sample.vocoder: the vocoder was trained on other log-mel features than this model "
                            f"makes ({diff}); train the vocoder with this model's model.mel, or use griffin-lim")
        return module.vocode(mel)

    def speak(self, text: str, *, vocoder: Any = "griffin-lim", speaking_rate: float = 1.0,
              griffin_lim_iters: int = 32, pause_seconds: float = 0.3,
              max_seconds: float = 30.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A text of any length -> one waveform, sentence by sentence, joined with `pause_seconds` of silence; and
        pictures of the last sentence's log-mel frames and alignment (for TensorBoard)."""
        if self.tokenizer is None:
            raise UserError("this model has no symbol table; load it from a checkpoint (it holds tokenizer.json)")
        if not text or not text.strip():
            raise UserError("the text to speak is empty; give a sentence, e.g. --text \"Printing, in the only "
                            "sense...\"")
        gap = np.zeros(int(pause_seconds * self.config.mel.sample_rate), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for sentence in self.tokenizer.sentences(text):
            mel, alignment = self.synthesize_mel(self.tokenizer.encode(sentence), speaking_rate, max_seconds)
            wave = self.vocode(mel.unsqueeze(0), vocoder, griffin_lim_iters)[0].float().cpu().numpy()
            pieces += [gap, wave] if pieces else [wave]
        pictures = {"mel": audio.picture(mel), "alignment": audio.picture(alignment)}
        return np.concatenate(pieces).astype(np.float32), pictures

    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, data: Any = None,
               vocoder: Any = "griffin-lim", speaking_rate: float = 1.0, griffin_lim_iters: int = 32,
               pause_seconds: float = 0.3, max_seconds: float = 30.0, split: str = "test") -> audio.AudioClips:
        """n clips: the text `cond` (a string, or a list of n strings), or else the first n texts of `data`'s split.
        Synthesis is deterministic; `generator` is accepted for the common signature."""
        if cond is None:
            if data is None:
                raise UserError("give a text to speak (--text \"...\" or sample.text)")
            texts = list(data.texts[:n])
        elif isinstance(cond, str):
            texts = [cond] * n
        else:
            texts = [str(t) for t in cond]
        options = dict(vocoder=vocoder, speaking_rate=speaking_rate, griffin_lim_iters=griffin_lim_iters,
                       pause_seconds=pause_seconds, max_seconds=max_seconds)
        spoken = [self.speak(t, **options) for t in texts]
        return audio.AudioClips([wave for wave, _ in spoken], self.config.mel.sample_rate, texts, spoken[0][1])
