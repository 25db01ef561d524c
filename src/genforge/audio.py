"""Waveforms <-> files, and the one log-mel feature every speech part shares.

The acoustic model predicts log-mel frames, the vocoder turns them into waveforms and the metrics compare them: all
three must compute features the same way, so they all call `log_mel` with one `MelConfig`, which each speech
family keeps in its `model:` section (and so in every checkpoint's config.yaml). Synthesis refuses a vocoder whose
MelConfig differs from the acoustic model's.

The feature is HiFi-GAN's (Kong et al. 2020, its `meldataset.py` settings for LJ Speech): the waveform is
reflect-padded by (n_fft - hop) / 2 on both sides, a Hann-windowed STFT without centering gives exactly
len // hop frames, the magnitude goes through a Slaney-style mel filterbank (librosa's default: Slaney's mel scale,
each triangle normalized to unit area), and the log is taken of max(mel, 1e-5).

Waveforms are float32 in [-1, 1]; files are read with `soundfile` and written as 16-bit PCM WAV.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from genforge.config import Section
from genforge.errors import UserError
from genforge.fileio import atomic_write

LOG_FLOOR = 1e-5  # mel energies below this are clamped before the log: silence is log(1e-5) = -11.51


class MelConfig(Section):
    """How waveforms become log-mel frames. Defaults: HiFi-GAN's LJ Speech setting (22,050 Hz, 80 bands)."""

    sample_rate: int = Field(default=22050, ge=1000, le=192000)  # Hz; set from the data by the trainer
    n_fft: int = Field(default=1024, ge=16)  # FFT size in samples
    hop_length: int = Field(default=256, ge=1)  # samples between frames: one frame per hop_length samples
    win_length: int = Field(default=1024, ge=16)  # Hann window length, <= n_fft
    n_mels: int = Field(default=80, ge=1, le=512)  # mel bands
    fmin: float = Field(default=0.0, ge=0)  # Hz, lowest band edge
    fmax: float | None = Field(default=8000.0, gt=0)  # Hz, highest band edge; None -> sample_rate / 2

    @model_validator(mode="after")
    def _consistent(self) -> MelConfig:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} must be <= n_fft {self.n_fft}")
        if self.hop_length > self.win_length:
            raise ValueError(f"hop_length {self.hop_length} must be <= win_length {self.win_length}")
        if self.top_hz <= self.fmin:
            raise ValueError(f"fmax {self.top_hz} Hz must lie above fmin {self.fmin} Hz and at most at "
                             f"sample_rate / 2 = {self.sample_rate / 2} Hz")
        return self

    @property
    def top_hz(self) -> float:
        nyquist = self.sample_rate / 2
        return nyquist if self.fmax is None else min(self.fmax, nyquist)

    def frames(self, samples: int) -> int:
        """Frames `log_mel` makes of a waveform of `samples` samples."""
        return samples // self.hop_length

    def key(self) -> tuple[Any, ...]:
        return (self.sample_rate, self.n_fft, self.hop_length, self.win_length, self.n_mels, self.fmin, self.top_hz)


# --------------------------------------------------------------------------------------------------------------
# Mel filterbank (Slaney's auditory toolbox scale, as librosa.filters.mel with htk=False, norm="slaney")

_F_SP = 200.0 / 3  # Hz per mel below 1 kHz (linear part)
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = hz >= _MIN_LOG_HZ
    mel[log_part] = _MIN_LOG_MEL + np.log(hz[log_part] / _MIN_LOG_HZ) / _LOG_STEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    log_part = mel >= _MIN_LOG_MEL
    hz[log_part] = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel[log_part] - _MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=16)
def _filterbank(key: tuple[Any, ...]) -> Tensor:
    sample_rate, n_fft, _, _, n_mels, fmin, fmax = key
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array([fmin]))[0], hz_to_mel(np.array([fmax]))[0], n_mels + 2))
    widths = np.diff(edges)
    weights = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        rising = (bins - edges[i]) / widths[i]
        falling = (edges[i + 2] - bins) / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling)) * 2.0 / (edges[i + 2] - edges[i])
    return torch.from_numpy(weights).float()


def mel_filterbank(cfg: MelConfig) -> Tensor:
    """(n_mels, n_fft // 2 + 1) float32 weights: mel energies = weights @ STFT magnitudes."""
    return _filterbank(cfg.key())


@lru_cache(maxsize=16)
def _window(win_length: int) -> Tensor:
    return torch.hann_window(win_length)


def magnitudes(wave: Tensor, cfg: MelConfig) -> Tensor:
    """(..., T) waveform -> (..., n_fft // 2 + 1, T // hop) STFT magnitudes, HiFi-GAN's padding (no centering)."""
    shape = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1]).float()
    pad = (cfg.n_fft - cfg.hop_length) // 2
    if flat.shape[-1] <= pad:
        raise UserError(f"a waveform of {flat.shape[-1]} samples is too short for log-mel features with n_fft "
                        f"{cfg.n_fft}: it needs more than {pad} samples ({pad / cfg.sample_rate:.3f} s)")
    flat = torch.nn.functional.pad(flat.unsqueeze(1), (pad, cfg.n_fft - cfg.hop_length - pad), mode="reflect")
    spec = torch.stft(flat.squeeze(1), cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                      window=_window(cfg.win_length).to(flat.device), center=False, return_complex=True)
    mag = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-9)
    mag = mag[..., : cfg.frames(wave.shape[-1])]
    return mag.reshape(*shape, mag.shape[-2], mag.shape[-1])


def log_mel(wave: Tensor, cfg: MelConfig) -> Tensor:
    """(..., T) waveform in [-1, 1] -> (..., n_mels, T // hop_length) natural-log mel energies."""
    mag = magnitudes(wave, cfg)
    mel = torch.matmul(mel_filterbank(cfg).to(mag.device), mag)
    return torch.log(torch.clamp(mel, min=LOG_FLOOR))


# --------------------------------------------------------------------------------------------------------------
# Files


def read_wav(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A sound file -> (float32 mono waveform in [-1, 1], its sample rate). With `sample_rate`, resampled to it.
    A missing, unreadable or empty file is a UserError naming it."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such audio file; check the path (a WAV file beside metadata.csv, in wavs/)")
    try:
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise UserError(f"{path}: cannot read this audio file ({exc}); is it a valid WAV/FLAC file? Replace or "
                        "remove it") from None
    if wave.shape[0] == 0:
        raise UserError(f"{path}: the audio file holds no samples; replace or remove it")
    wave = wave.mean(axis=1)
    if sample_rate is not None and rate != sample_rate:
        wave, rate = resample(wave, rate, sample_rate), sample_rate
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed FIR) from `rate` to `target` Hz."""
    from scipy.signal import resample_poly

    if rate == target:
        return wave.astype(np.float32)
    g = math.gcd(int(rate), int(target))
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def to_pcm16(wave: np.ndarray | Tensor) -> np.ndarray:
    """float waveform -> int16 samples, clipped to [-1, 1] and rounded."""
    if isinstance(wave, Tensor):
        wave = wave.detach().float().cpu().numpy()
    return np.round(np.clip(np.asarray(wave, dtype=np.float32), -1, 1) * 32767).astype(np.int16)


def write_wav(path: str | Path, wave: np.ndarray | Tensor, sample_rate: int) -> Path:
    """Write a mono waveform as 16-bit PCM WAV, atomically (a crash leaves no half-written file)."""
    import soundfile

    path = Path(path)
    with atomic_write(path) as tmp:
        soundfile.write(str(tmp), to_pcm16(wave), sample_rate, subtype="PCM_16", format="WAV")
    return path


def wav_bytes(wave: np.ndarray | Tensor, sample_rate: int) -> bytes:
    """A mono waveform as the bytes of a 16-bit PCM WAV file (for HTTP responses)."""
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, to_pcm16(wave), sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Samples of the "audio" output kind


class AudioClips:
    """What speech families' `sample` returns: mono float32 waveforms in [-1, 1] at one sample rate, with the text
    each one speaks (None for a vocoder's resynthesis without text)."""

    def __init__(self, waves: list[np.ndarray], sample_rate: int, texts: list[str] | None = None,
                 pictures: dict[str, np.ndarray] | None = None):
        if texts is not None and len(texts) != len(waves):
            raise ValueError(f"{len(texts)} texts for {len(waves)} waveforms")
        self.waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves]
        self.sample_rate = int(sample_rate)
        self.texts = list(texts) if texts is not None else None
        self.pictures = dict(pictures or {})  # name -> (H, W) uint8, e.g. the first clip's mel frames, alignment

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, index: slice) -> AudioClips:
        if not isinstance(index, slice):
            raise TypeError("AudioClips are sliced, e.g. clips[:4]")
        return AudioClips(self.waves[index], self.sample_rate, self.texts[index] if self.texts else None)

    @property
    def seconds(self) -> float:
        return sum(len(w) for w in self.waves) / self.sample_rate

    def joined(self, gap_seconds: float = 0.5) -> np.ndarray:
        """All clips in one waveform with `gap_seconds` of silence between them."""
        gap = np.zeros(int(gap_seconds * self.sample_rate), dtype=np.float32)
        parts: list[np.ndarray] = []
        for i, wave in enumerate(self.waves):
            parts += [gap, wave] if i else [wave]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    @staticmethod
    def concat(chunks: list[AudioClips]) -> AudioClips:
        if not chunks:
            raise ValueError("no audio chunks to join")
        rates = {c.sample_rate for c in chunks}
        if len(rates) != 1:
            raise ValueError(f"audio chunks at different sample rates {sorted(rates)}")
        texts = None if any(c.texts is None for c in chunks) else [t for c in chunks for t in c.texts or []]
        return AudioClips([w for c in chunks for w in c.waves], rates.pop(), texts)


def picture(values: np.ndarray | Tensor) -> np.ndarray:
    """A (rows, columns) array as a uint8 picture for TensorBoard: min..max -> 0..255, row 0 at the bottom (as
    spectrograms and alignments are drawn: low bands and the first symbol at the bottom)."""
    if isinstance(values, Tensor):
        values = values.detach().float().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.ascontiguousarray((scaled[::-1] * 255).round().astype(np.uint8))


def save_clips(clips: AudioClips, path: Path, nrow: int | None = None) -> Path:
    """.wav: every clip in one 16-bit WAV, half a second of silence between them; .zip: one WAV per clip
    (clip_000.wav, ...) and texts.txt with the text of each, one per line."""
    import zipfile

    if not len(clips):
        raise UserError("there are no audio clips to save")
    if path.suffix.lower() == ".wav":
        return write_wav(path, clips.joined(), clips.sample_rate)
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, wave in enumerate(clips.waves):
            archive.writestr(f"clip_{i:03d}.wav", wav_bytes(wave, clips.sample_rate))
        if clips.texts is not None:
            archive.writestr("texts.txt", "".join(f"clip_{i:03d}.wav\t{t}\n" for i, t in enumerate(clips.texts)))
    return path


def log_clips(writer: Any, tag: str, clips: AudioClips, step: int, nrow: int | None = None) -> None:
    """TensorBoard: the first four clips as audio, with their texts."""
    for i, wave in enumerate(clips.waves[:4]):
        writer.add_audio(f"{tag}/{i}", torch.from_numpy(np.clip(wave, -1, 1)).unsqueeze(0), step,
                         sample_rate=clips.sample_rate)
    for name, picture in clips.pictures.items():
        writer.add_image(f"{tag}/{name}", picture, step, dataformats="HW")
    if clips.texts:
        writer.add_text(f"{tag}/texts", "\n\n".join(f"    {i}: {t}" for i, t in enumerate(clips.texts[:4])), step)
