"""Vocoders: log-mel frames -> waveforms. HiFi-GAN (trained) and Griffin-Lim (no training), in one file.

Text-to-speech predicts `audio.log_mel` frames; a vocoder turns them into a waveform of exactly frames * hop_length
samples, so both must use the same `audio.MelConfig` (the TTS model refuses a vocoder trained on other features).

- `griffin_lim`    the always-available baseline: mel -> linear magnitudes by non-negative least squares against
                   the mel filterbank, then the fast Griffin-Lim algorithm (Griffin & Lim 1984, "Signal estimation from
                   modified short-time Fourier transform"; Perraudin, Balazs & Søndergaard 2013, "A fast Griffin-Lim
                   algorithm", arXiv:1306.0233) that estimates the phase.
- `Vocoder`        HiFi-GAN (Kong, Kim & Bae 2020, arXiv:2010.05646): a transposed-conv generator with multi-
                   receptive-field fusion (MRF, sec. 2.1), trained against a multi-period (MPD, sec. 2.2) and a multi-
                   scale discriminator (MSD, sec. 2.3) with least-squares GAN losses, a mel-spectrogram L1 loss (x45)
                   and a feature-matching loss (x2) (sec. 2.4, eqs. 1-6). Presets: the paper's V1, V2, V3, a
                   `tiny-cpu` model for laptops and `debug`.
A TTS model names its vocoder in `sample.vocoder`: "griffin-lim", or a vocoder run that the sampling pipeline
loads (`SampleOptions.CHECKPOINT_KEYS`) and whose `vocode` it calls.

Where this file departs from the reference code (github.com/jik876/hifi-gan), on purpose:
- Weights keep PyTorch's default init. The reference draws N(0, 0.01) weights *after* applying weight norm, which
  never reaches the parameters (weight norm recomputes the weight from g and v), so default init is what trained
  its published models.
- The mel loss compares `audio.log_mel` of both waveforms at the model's one MelConfig (the reference computes the
  loss's mels with fmax = Nyquist); a TTS model and its vocoder then share every feature.
- The real waveforms' feature maps are detached in the feature-matching loss (no gradient reaches D in a G step).
- The discriminators' channel counts are config lists (the paper's by default), so small presets can shrink them;
  a grouped conv of the MSD uses the paper's groups, or the largest common divisor of its channels when smaller.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, model_validator
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from genforge import audio
from genforge.audio import MelConfig
from genforge.config import ModelSection, SampleOptions
from genforge.errors import UserError

LRELU_SLOPE = 0.1  # every LeakyReLU of HiFi-GAN except the one before conv_post (which uses PyTorch's 0.01)

# The debug data set's features (speech-mini): 8 kHz, 64-sample hop, 20 bands up to Nyquist.
DEBUG_MEL: dict[str, Any] = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "win_length": 256, "n_mels": 20,
                             "fmax": None}


class VocoderConfig(ModelSection):
    family: Literal["vocoder"] = "vocoder"
    mel: MelConfig = MelConfig()  # the features it vocodes; mel.sample_rate is set from the data when training
    resblock: Literal[1, 2] = 1  # MRF residual block: 1 = two convs per dilation (V1, V2), 2 = one (V3)
    upsample_rates: list[int] = [8, 8, 2, 2]  # stride of each transposed conv; their product must be mel.hop_length
    upsample_kernel_sizes: list[int] = [16, 16, 4, 4]  # transposed conv kernels: >= the rate, kernel - rate even
    upsample_initial_channel: int = Field(default=512, ge=1)  # channels after conv_pre; each upsampling halves them
    resblock_kernel_sizes: list[int] = [3, 7, 11]  # odd kernel of each MRF residual block
    resblock_dilation_sizes: list[list[int]] = [[1, 3, 5], [1, 3, 5], [1, 3, 5]]  # dilations per block: 3 (type 1)
    #                                                                               or 2 (type 2) each
    periods: list[int] = [2, 3, 5, 7, 11]  # MPD: one sub-discriminator per period (primes avoid overlaps, sec. 2.2)
    mpd_channels: list[int] = [32, 128, 512, 1024, 1024]  # MPD: channels of its 5 convs (4 of stride 3, then 1)
    msd_channels: list[int] = [128, 128, 256, 512, 1024, 1024, 1024]  # MSD: channels of its 7 convs
    msd_scales: int = Field(default=3, ge=1, le=4)  # MSD: raw audio, then x2 and x4 average-pooled
    segment_size: int = Field(default=8192, ge=1)  # samples per training crop; a multiple of mel.hop_length
    mel_loss_weight: float = Field(default=45.0, ge=0)  # lambda_mel of eq. 6
    fm_loss_weight: float = Field(default=2.0, ge=0)  # lambda_fm of eq. 6

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # a few thousand weights at 8 kHz: the tests and the smoke runs
        "debug": {"mel": DEBUG_MEL, "resblock": 2, "upsample_rates": [4, 4, 4], "upsample_kernel_sizes": [8, 8, 8],
                  "upsample_initial_channel": 16, "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 2]],
                  "mpd_channels": [2, 4, 4, 4, 4], "msd_channels": [4, 4, 4, 4, 4, 4, 4], "msd_scales": 2,
                  "segment_size": 1024},
        "v1": {},  # the paper's V1 (Table 1 of the paper: 13.9 M generator weights)
        "v2": {"upsample_initial_channel": 128},  # V2: V1 with 128 channels (0.9 M)
        "v3": {"resblock": 2, "upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8],
               "upsample_initial_channel": 256, "resblock_kernel_sizes": [3, 5, 7],
               "resblock_dilation_sizes": [[1, 2], [2, 6], [3, 12]]},  # V3 (1.5 M), the fastest on CPU
        # smaller than V3 on both sides, for a 2-core CPU: V3's generator layout at 64 channels, discriminators at
        # 1/16 of the paper's widths, 4096-sample crops
        "tiny-cpu": {"resblock": 2, "upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8],
                     "upsample_initial_channel": 64, "resblock_kernel_sizes": [3, 5, 7],
                     "resblock_dilation_sizes": [[1, 2], [2, 6], [3, 12]],
                     "mpd_channels": [8, 16, 32, 64, 64], "msd_channels": [16, 16, 16, 32, 64, 64, 64],
                     "segment_size": 4096},
    }

    @model_validator(mode="before")
    @classmethod
    def _merge_preset_mel(cls, data: Any) -> Any:
        # `model.preset` fills top-level keys only, so `--set model.mel.n_mels=40` on the debug preset would drop
        # the preset's other mel settings: merge the given mel keys into the preset's mel instead.
        if isinstance(data, dict) and isinstance(data.get("mel"), dict):
            preset_mel = cls.PRESETS.get(str(data.get("preset")), {}).get("mel")
            if preset_mel is not None:
                data = {**data, "mel": {**preset_mel, **data["mel"]}}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> VocoderConfig:
        problems = []
        hop = self.mel.hop_length
        rates, kernels = self.upsample_rates, self.upsample_kernel_sizes
        if not rates or len(rates) != len(kernels):
            problems.append(f"model.upsample_rates {rates} and model.upsample_kernel_sizes {kernels} must be "
                            "non-empty lists of the same length (one transposed conv each)")
        elif math.prod(rates) != hop:
            problems.append(f"model.upsample_rates {rates} multiply to {math.prod(rates)}, but model.mel.hop_length "
                            f"is {hop}: the generator must make exactly one hop of samples per mel frame; change "
                            "the rates (or the hop) so that they agree")
        for u, k in zip(rates, kernels):
            if u < 1 or k < u or (k - u) % 2:
                problems.append(f"upsampling rate {u} with kernel {k}: a kernel must be >= its rate and differ "
                                "from it by an even number, so that each layer multiplies the length exactly")
        if rates and self.upsample_initial_channel < 2 ** len(rates):
            problems.append(f"model.upsample_initial_channel {self.upsample_initial_channel} is halved by each of "
                            f"the {len(rates)} upsamplings; it must be at least {2 ** len(rates)}")
        blocks, dilations = self.resblock_kernel_sizes, self.resblock_dilation_sizes
        per_block = 3 if self.resblock == 1 else 2
        if not blocks or len(blocks) != len(dilations):
            problems.append(f"model.resblock_kernel_sizes {blocks} and model.resblock_dilation_sizes {dilations} "
                            "must be non-empty lists of the same length (one MRF residual block each)")
        elif any(len(d) != per_block for d in dilations):
            problems.append(f"model.resblock_dilation_sizes {dilations}: resblock type {self.resblock} takes "
                            f"{per_block} dilations per block")
        if any(k < 1 or k % 2 == 0 for k in blocks) or any(d < 1 for ds in dilations for d in ds):
            problems.append(f"model.resblock_kernel_sizes {blocks} must be odd and the dilations >= 1 (same-length "
                            "convolutions)")
        if len(self.mpd_channels) != 5 or len(self.msd_channels) != 7 or min(self.mpd_channels + self.msd_channels) < 1:
            problems.append(f"model.mpd_channels {self.mpd_channels} needs 5 and model.msd_channels "
                            f"{self.msd_channels} 7 positive channel counts (one per conv, as in the paper)")
        if not self.periods or min(self.periods) < 2:
            problems.append(f"model.periods {self.periods}: give at least one period, each >= 2")
        if self.segment_size % hop:
            problems.append(f"model.segment_size {self.segment_size} is not a multiple of model.mel.hop_length "
                            f"{hop}; use e.g. {max(1, round(self.segment_size / hop)) * hop}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def adapt_to_data(self, dataset: Any) -> VocoderConfig:
        """The features take the data's sample rate (the data set resamples its clips to one rate)."""
        rate = getattr(dataset, "sample_rate", None)
        if rate is None:
            raise UserError(f"the vocoder trains on speech, but data set {type(dataset).__name__} has no sample rate; "
                            "use a speech data set (e.g. data.name: speech-mini or ljspeech)")
        try:
            return self.with_values(mel={**self.mel.model_dump(), "sample_rate": int(rate)})
        except ValidationError as exc:
            raise UserError(f"model.mel does not fit the data's {rate} Hz: {exc.errors()[0]['msg']}") from None

    def batch_options(self) -> dict[str, Any]:
        return {"segment": self.segment_size}  # batches {"audio": (B, segment_size)} of random crops


class VocoderSampleOptions(SampleOptions):
    """The vocoder's keys of the `sample:` section."""

    split: str = "test"  # the data split whose first n clips are resynthesized (log-mel -> vocoder)

    @model_validator(mode="after")
    def _check_split(self) -> VocoderSampleOptions:
        if not self.split:
            raise ValueError("sample.split must name a data split, e.g. test")
        return self

    def data_split(self) -> str | None:
        return self.split


# --------------------------------------------------------------------------------------------------------------
# Griffin-Lim


def _stft_frames(cfg: MelConfig) -> tuple[int, int, Tensor]:
    """log_mel's framing: (left pad, right pad, Hann window zero-padded to n_fft as torch.stft centers it)."""
    left = (cfg.n_fft - cfg.hop_length) // 2
    window = torch.hann_window(cfg.win_length)
    offset = (cfg.n_fft - cfg.win_length) // 2
    window = F.pad(window, (offset, cfg.n_fft - cfg.win_length - offset))
    return left, cfg.n_fft - cfg.hop_length - left, window


def _overlap_add(spec: Tensor, cfg: MelConfig, window: Tensor, length: int) -> Tensor:
    """Least-squares inverse STFT (Griffin & Lim 1984, eq. 6): x(n) = Σ_t w(n - tH) y_t(n - tH) / Σ_t w²(n - tH).
    (B, F, T) complex -> (B, length). Written out because torch.istft refuses center=False with a Hann window
    (the window sum vanishes at the first sample); here the envelope is floored instead, and the samples where it
    is tiny are the padding that is trimmed away."""
    frames = torch.fft.irfft(spec, n=cfg.n_fft, dim=1) * window[:, None]  # (B, n_fft, T)
    envelope = _fold(window.square()[None, :, None].expand(1, -1, spec.shape[-1]), cfg.hop_length, length)
    return _fold(frames, cfg.hop_length, length) / envelope.clamp(min=1e-8)


def _fold(frames: Tensor, hop: int, length: int) -> Tensor:
    """Overlap-add (B, n, T) frames `hop` apart into (B, length) samples. When n is a multiple of hop (every shipped
    feature config), as n / hop shifted adds of (T * hop) samples: F.fold gives the same sums but spends most of
    Griffin-Lim's time copying."""
    B, n, T = frames.shape
    if n % hop:
        fold = dict(output_size=(1, length), kernel_size=(1, n), stride=(1, hop))
        return F.fold(frames, **fold).reshape(B, length)
    out = frames.new_zeros(B, max(length, (T - 1) * hop + n))
    for j in range(n // hop):
        out[:, j * hop: j * hop + T * hop] += frames[:, j * hop:(j + 1) * hop, :].transpose(1, 2).reshape(B, T * hop)
    return out[:, :length]


def mel_to_magnitudes(log_mel: Tensor, cfg: MelConfig, n_iter: int = 50) -> Tensor:
    """(..., n_mels, T) log-mel -> (..., n_fft // 2 + 1, T) non-negative STFT magnitudes S that solve
    M S = Y = exp(log_mel) in the least-squares sense under S >= 0, with M the mel filterbank:

    1. S_0 = max(pinv(M) Y, 1e-10): the unconstrained least-squares solution, clamped to (just above) 0;
    2. n_iter multiplicative updates S <- S * (M^T Y) / (M^T M S) (Lee & Seung 2001), which keep S >= 0 and do not
       increase ||M S - Y||. They bring the log-mel of S much closer to the input: on a 440 Hz sine at the debug
       features the mean |log M S - log_mel| falls from 1.27 (the clamped pseudo-inverse alone) to 0.014.

    Bins that no filter covers (above fmax) come out 0."""
    basis = audio.mel_filterbank(cfg).to(log_mel.device)  # (n_mels, F)
    target = log_mel.float().exp()  # (..., n_mels, T)
    inverse = torch.linalg.pinv(basis.double()).float()  # (F, n_mels)
    magnitude = torch.matmul(inverse, target).clamp(min=1e-10)  # (..., F, T)
    numerator = torch.matmul(basis.T, target)
    for _ in range(n_iter):
        magnitude = magnitude * numerator / torch.matmul(basis.T, torch.matmul(basis, magnitude)).clamp(min=1e-10)
    return magnitude


def griffin_lim(log_mel: Tensor, cfg: MelConfig, n_iter: int = 32, momentum: float = 0.99,
                generator: torch.Generator | None = None) -> Tensor:
    """(n_mels, T) or (B, n_mels, T) log-mel -> waveforms (T * hop_length,) or (B, T * hop_length) in [-1, 1].

    1. S >= 0 with M S ~ exp(log_mel): magnitudes from the mel energies (`mel_to_magnitudes`: the pseudo-inverse
       clamped at 0, refined by non-negative least-squares updates).
    2. The fast Griffin-Lim algorithm (Perraudin et al. 2013, Algorithm 2), with P1(c) = STFT(ISTFT(c)) the
       projection onto consistent spectrograms and P2(c) = S c / |c| onto those with magnitude S:
           c_n = P1(P2(t_{n-1})),   t_n = c_n + α (c_n - c_{n-1})       (α = `momentum`; α = 0 is Griffin-Lim)
       starting from random phases (`generator`; a fixed seed when None, so the result is deterministic).
    3. x = ISTFT(P2(t_N)) on log_mel's framing, its padding trimmed: exactly T * hop samples, clamped to [-1, 1].
    """
    if log_mel.ndim not in (2, 3) or log_mel.shape[-2] != cfg.n_mels:
        raise UserError(f"griffin_lim takes log-mel frames (n_mels, frames) or (batch, n_mels, frames) with n_mels = "
                        f"{cfg.n_mels}; got shape {tuple(log_mel.shape)}")
    if n_iter < 0 or not 0 <= momentum < 1:
        raise UserError(f"griffin_lim: n_iter ({n_iter}) must be >= 0 and momentum ({momentum}) in [0, 1)")
    single = log_mel.ndim == 2
    mels = log_mel[None] if single else log_mel  # (B, n_mels, T)
    return _fast_griffin_lim(mel_to_magnitudes(mels, cfg), cfg, n_iter, momentum, generator)[0 if single else ...]


def _fast_griffin_lim(magnitude: Tensor, cfg: MelConfig, n_iter: int, momentum: float,
                      generator: torch.Generator | None) -> Tensor:
    """Step 2 and 3 of `griffin_lim`: (B, F, T) STFT magnitudes on log_mel's framing -> (B, T * hop) waveforms."""
    device, frames = magnitude.device, magnitude.shape[-1]
    left, right, window = _stft_frames(cfg)
    window = window.to(device)
    length = frames * cfg.hop_length + left + right  # padded length whose STFT has exactly T frames

    def stft(x: Tensor) -> Tensor:  # (B, length) -> (B, F, T)
        return torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, window=window, center=False,
                          return_complex=True)

    def with_magnitude(c: Tensor) -> Tensor:  # P2
        return magnitude * c / c.abs().clamp(min=1e-8)

    if generator is None:
        generator = torch.Generator().manual_seed(0)
    phase = torch.rand(magnitude.shape, generator=generator).to(device) * (2 * math.pi)
    t = torch.polar(torch.ones_like(magnitude), phase)  # t_0: unit phasors
    previous = torch.zeros_like(t)
    for _ in range(n_iter):
        c = stft(_overlap_add(with_magnitude(t), cfg, window, length))  # c_n = P1(P2(t_{n-1}))
        t = c + momentum * (c - previous)
        previous = c
    wave = _overlap_add(with_magnitude(t), cfg, window, length)[:, left: left + frames * cfg.hop_length]
    return wave.clamp(-1, 1)


# --------------------------------------------------------------------------------------------------------------
# Generator: (B, n_mels, T) -> (B, 1, T * hop) in [-1, 1]


def _same_padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nn.Module):
    """One MRF residual block (sec. 2.1, fig. 1). Type 1: for each dilation d, x += conv_1(lrelu(conv_d(lrelu(x))));
    type 2 (V3): x += conv_d(lrelu(x)). Kernel k, channels unchanged, length unchanged."""

    def __init__(self, channels: int, kernel: int, dilations: list[int], kind: int):
        super().__init__()

        def conv(dilation: int) -> nn.Module:
            return weight_norm(nn.Conv1d(channels, channels, kernel, dilation=dilation,
                                         padding=_same_padding(kernel, dilation)))

        self.dilated = nn.ModuleList([conv(d) for d in dilations])
        self.plain = nn.ModuleList([conv(1) for _ in dilations]) if kind == 1 else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C, L) -> (B, C, L)
        for i, dilated in enumerate(self.dilated):
            h = dilated(F.leaky_relu(x, LRELU_SLOPE))
            if self.plain is not None:
                h = self.plain[i](F.leaky_relu(h, LRELU_SLOPE))
            x = x + h
        return x


class Generator(nn.Module):
    """conv_pre (k7) -> per upsampling: LeakyReLU, ConvTranspose1d (stride u, channels halved), MRF (the average of
    |k_r| residual blocks) -> LeakyReLU -> conv_post (k7, 1 channel) -> tanh. Weight norm on every conv."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cfg.mel.n_mels, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.mrfs = nn.ModuleList()
        for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
            # output length (L - 1) u - 2 (k - u) / 2 + k = L u
            self.ups.append(weight_norm(nn.ConvTranspose1d(ch, ch // 2, k, u, padding=(k - u) // 2)))
            ch //= 2
            self.mrfs.append(nn.ModuleList([ResBlock(ch, kr, dr, cfg.resblock) for kr, dr in
                                            zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)]))
        self.conv_post = weight_norm(nn.Conv1d(ch, 1, 7, padding=3))

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_pre(mel)  # (B, C0, T)
        for up, mrf in zip(self.ups, self.mrfs):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # (B, C_i, T * u_1 ... u_i)
            x = sum(block(x) for block in mrf) / len(mrf)  # MRF: the mean of its residual blocks
        x = self.conv_post(F.leaky_relu(x))  # the reference uses the default slope 0.01 here
        return torch.tanh(x)  # (B, 1, T * hop)


# --------------------------------------------------------------------------------------------------------------
# Discriminators: (B, 1, L) -> [(logits, feature maps)] per sub-discriminator


class PeriodDiscriminator(nn.Module):
    """MPD sub-discriminator (sec. 2.2): the waveform reshaped to (L / p, p), so every column holds samples p apart;
    5 convs with (5, 1) kernels (4 of stride 3) and LeakyReLU, then a (3, 1) conv to one channel."""

    def __init__(self, period: int, channels: list[int]):
        super().__init__()
        self.period = period
        widths = [1] + channels
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(c_in, c_out, (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)))
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]))
        ])
        self.conv_post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, c, length = x.shape
        if length % self.period:  # reflect-pad to a whole number of periods
            pad = self.period - length % self.period
            x = F.pad(x, (0, pad), mode="reflect")
            length += pad
        x = x.view(b, c, length // self.period, self.period)  # (B, 1, L / p, p)
        return conv_stack(self.convs, self.conv_post, x)


def conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A sub-discriminator's body: each conv then LeakyReLU, then the output conv. Returns its flattened scores and
    every layer's output (the feature-matching loss compares them for real and generated audio)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return x.flatten(1), features


class ScaleDiscriminator(nn.Module):
    """MSD sub-discriminator (sec. 2.3, after MelGAN): strided and grouped 1-D convs with LeakyReLU, then a k3 conv
    to one channel. Spectral norm on the first (raw audio) scale, weight norm on the others."""

    KERNELS = (15, 41, 41, 41, 41, 41, 5)
    STRIDES = (1, 2, 2, 4, 4, 1, 1)
    GROUPS = (1, 4, 16, 16, 16, 16, 1)

    def __init__(self, channels: list[int], use_spectral_norm: bool):
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        widths = [1] + channels
        self.convs = nn.ModuleList([
            norm(nn.Conv1d(c_in, c_out, k, s, groups=math.gcd(g, c_in, c_out), padding=(k - 1) // 2))
            for c_in, c_out, k, s, g in zip(widths[:-1], widths[1:], self.KERNELS, self.STRIDES, self.GROUPS)
        ])
        self.conv_post = norm(nn.Conv1d(widths[-1], 1, 3, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return conv_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.discriminators = nn.ModuleList([PeriodDiscriminator(p, cfg.mpd_channels) for p in cfg.periods])

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        return [d(x) for d in self.discriminators]


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.discriminators = nn.ModuleList([ScaleDiscriminator(cfg.msd_channels, use_spectral_norm=i == 0)
                                             for i in range(cfg.msd_scales)])
        self.pool = nn.AvgPool1d(4, 2, padding=2)  # x2 downsampling between scales

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        out = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.pool(x)
            out.append(d(x))
        return out


# --------------------------------------------------------------------------------------------------------------
# The model


class Vocoder(nn.Module):
    Config = VocoderConfig
    SampleOptions = VocoderSampleOptions
    output_kind: ClassVar[Literal["audio"]] = "audio"
    validation_group: ClassVar[str] = "generator"  # train.val_every: the generator's loss on held-out crops
    ema_modules: ClassVar[tuple[str, ...]] = ("generator",)  # used only when train.ema_decay > 0 (HiFi-GAN: none)
    # The paper's order: a discriminator step on a fresh batch of real crops, then a generator step on the same
    # crops. The trainer freezes the generator during the discriminator step, so the generator step recomputes
    # the fakes with gradients (the discriminator's copy is made under no_grad).
    train_schedule: ClassVar[list[tuple[str, int, bool]]] = [("discriminator", 1, True), ("generator", 1, False)]

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.mpd = MultiPeriodDiscriminator(config)
        self.msd = MultiScaleDiscriminator(config)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"discriminator": [*self.mpd.parameters(), *self.msd.parameters()],
                "generator": list(self.generator.parameters())}

    def count_examples(self, batch: dict[str, Tensor]) -> float:
        """Seconds of audio in a training batch (the "audio" kind counts seconds)."""
        crops = batch["audio"]
        return crops.shape[0] * crops.shape[-1] / self.config.mel.sample_rate

    # -- losses ------------------------------------------------------------------------------------------------

    def loss(self, batch: dict[str, Tensor], group: str) -> dict[str, Tensor]:
        cfg = self.config
        crops = batch["audio"]  # (B, segment) in [-1, 1]
        mel = audio.log_mel(crops, cfg.mel)  # (B, n_mels, T)
        real = crops[:, None, : mel.shape[-1] * cfg.mel.hop_length].float()  # (B, 1, T * hop)
        if group == "discriminator":
            with torch.no_grad():
                fake = self.generator(mel)
            return self._discriminator_loss(real, fake.to(real.dtype))
        if group == "generator":
            return self._generator_loss(real, self.generator(mel), mel)
        raise ValueError(f"unknown param group {group!r}")

    def _discriminator_loss(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        # eq. 1 (LSGAN): E[(D(x) - 1)^2 + D(G(s))^2], summed over the sub-discriminators (eq. 5)
        # Real and fake crops go through each discriminator as one batch (half the kernel launches; no layer mixes
        # examples).
        out: dict[str, Tensor] = {}
        both = torch.cat([real, fake])  # (2B, 1, L)
        for name, disc in (("mpd", self.mpd), ("msd", self.msd)):
            terms = []
            for logits, _ in disc(both):
                d_real, d_fake = logits.chunk(2)
                terms.append(((1 - d_real) ** 2).mean() + (d_fake**2).mean())
            out[name] = torch.stack(terms).sum()
        out["loss"] = out["mpd"] + out["msd"]
        out["mpd"], out["msd"] = out["mpd"].detach(), out["msd"].detach()
        return out

    def _generator_loss(self, real: Tensor, fake: Tensor, mel: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        adv, fm = [], []
        for disc in (self.mpd, self.msd):
            with torch.no_grad():
                real_out = disc(real)
            for (_, f_real), (d_fake, f_fake) in zip(real_out, disc(fake)):
                adv.append(((1 - d_fake) ** 2).mean())  # eq. 2: E[(D(G(s)) - 1)^2]
                # eq. 4: Σ_i (1/N_i) ||D^i(x) - D^i(G(s))||_1 over the layers i of this sub-discriminator
                fm.append(sum(F.l1_loss(b, a) for a, b in zip(f_real, f_fake)))
        mel_l1 = F.l1_loss(audio.log_mel(fake.squeeze(1), cfg.mel), mel)  # eq. 3: ||φ(x) - φ(G(s))||_1
        adv_loss, fm_loss = torch.stack(adv).sum(), torch.stack(fm).sum()
        loss = adv_loss + cfg.fm_loss_weight * fm_loss + cfg.mel_loss_weight * mel_l1  # eq. 6
        return {"loss": loss, "adv": adv_loss.detach(), "fm": fm_loss.detach(), "mel": mel_l1.detach()}

    # -- synthesis ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def vocode(self, log_mel: Tensor) -> Tensor:
        """(B, n_mels, T) or (n_mels, T) log-mel (`audio.log_mel` at `config.mel`) -> (B, T * hop) or (T * hop,)
        waveforms in [-1, 1], in eval mode, the module's mode restored afterwards."""
        cfg = self.config.mel
        if log_mel.ndim not in (2, 3) or log_mel.shape[-2] != cfg.n_mels:
            raise UserError(f"the vocoder takes log-mel frames (batch, n_mels, frames) with n_mels = {cfg.n_mels}; "
                            f"got shape {tuple(log_mel.shape)}")
        single = log_mel.ndim == 2
        param = next(self.generator.parameters())
        was_training = self.generator.training
        self.generator.eval()
        try:
            with parametrize.cached():  # compute each weight-normed weight once, not once per call of its conv
                wave = self.generator(log_mel.to(param.device, param.dtype).reshape(-1, *log_mel.shape[-2:]))
        finally:
            self.generator.train(was_training)
        wave = wave.squeeze(1).float()  # (B, T * hop)
        return wave[0] if single else wave

    @torch.no_grad()
    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, data: Any = None,
               **options: Any) -> audio.AudioClips:
        """Resynthesis of the first n clips of the data split `sample.split` (the pipeline passes it as `data`):
        each clip -> `audio.log_mel` -> `vocode`. Deterministic (`generator` is not used)."""
        opts = VocoderSampleOptions.parse(options)
        cfg = self.config.mel
        if cond is not None:
            raise UserError("the vocoder takes no --class, --prompt or --text: it resynthesizes clips of the data "
                            "set (sample.split); give text to a tts model, which calls a vocoder")
        waves = getattr(data, "waves", None)
        if waves is None:
            what = "no data set" if data is None else f"a {type(data).__name__}, which holds no waveforms"
            raise UserError(f"the vocoder resynthesizes real speech clips, but it was given {what}; sample it from "
                            "a run whose data is a speech data set (or pass data= a data set with .waves)")
        rate = getattr(data, "sample_rate", None)
        if rate != cfg.sample_rate:
            raise UserError(f"the data's clips are at {rate} Hz, but this vocoder was trained at {cfg.sample_rate} Hz "
                            "(model.mel.sample_rate); use data at the vocoder's rate")
        if n > len(waves):
            raise UserError(f"asked for {n} clips, but the {opts.split} split holds "
                            f"{len(waves)}; pass --n {len(waves)} or fewer")
        device = next(self.parameters()).device
        out = []
        for wave in waves[:n]:
            mel = audio.log_mel(torch.as_tensor(np.asarray(wave, dtype=np.float32), device=device), cfg)
            out.append(self.vocode(mel).cpu().numpy())
        return audio.AudioClips(out, cfg.sample_rate)
