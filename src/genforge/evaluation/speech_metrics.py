"""Speech metrics for text-to-speech: mel-cepstral distortion after DTW alignment, word error rate, an independent
recognizer (PocketSphinx) to get the words a synthesized clip speaks, and the real-time factor.

Pure functions on numpy waveforms; `genforge eval` wires them into protocols.

    mcd_dtw(ref, syn, rate)          mel-cepstral distortion (dB) over the DTW path between two clips
    word_error_rate(refs, hyps)      corpus WER (edits summed over utterances / reference words summed) and S/D/I
    Recognizer().transcribe(w, r)    PocketSphinx 5 with its bundled US English acoustic model, dictionary and LM
    real_time_factor(compute, audio) seconds of compute per second of audio (< 1: faster than real time)

MCD setting (fixed, independent of any model's own features, so every checkpoint is scored the same way):

1. both waveforms are resampled to 22,050 Hz and turned into HiFi-GAN log-mel frames with `MCD_MEL`
   (1024-point FFT, Hann window 1024, hop 256 = 11.6 ms, 80 Slaney mel bands over 0-8 kHz, natural log of the
   magnitude-mel energies floored at 1e-5);
2. leading and trailing frames whose energy lies more than `SILENCE_DB` (40 dB) below the clip's loudest frame are
   dropped (interior pauses are kept);
3. mel-cepstral coefficients = the orthonormal DCT-II of each frame's log-mel energies over the 80 bands;
   c1..c13 are kept, c0 (the frame's overall level) is excluded, so a gain change alone costs nothing;
4. DTW aligns the two cepstral sequences: local cost = Euclidean distance between frames, steps (1,0), (0,1),
   (1,1) with unit weights, path from the first frame pair to the last;
5. MCD = (10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d)^2), averaged over the frame pairs of the path.

MCD values are only comparable within one implementation and one setting: SPTK-style `mcep` cepstra (all-pass
warped, alpha=0.42), other orders, c0 handling, frame rates, trimming or path weights all change the number,
often by several dB. Report it as "genforge mcd_dtw", not next to numbers from papers.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from genforge.audio import MelConfig, log_mel, resample
from genforge.errors import UserError

log = logging.getLogger(__name__)

MCD_MEL = MelConfig(sample_rate=22050, n_fft=1024, hop_length=256, win_length=1024, n_mels=80, fmin=0.0, fmax=8000.0)
MCD_ORDER = 13  # cepstral coefficients c1..c13 compared (c0 excluded)
SILENCE_DB = 40.0  # leading/trailing frames this far below the loudest frame's energy are trimmed
MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)  # dB per unit of Euclidean cepstral distance


# --------------------------------------------------------------------------------------------------------------
# Mel-cepstral distortion


def _mono(wave: Any, name: str) -> np.ndarray:
    """A 1-D finite float64 waveform, or a UserError that names `name`."""
    array = np.asarray(wave, dtype=np.float64)
    if array.ndim > 1 and sum(d > 1 for d in array.shape) <= 1:
        array = array.reshape(-1)  # (1, T) or (T, 1): one channel
    if array.ndim != 1:
        raise UserError(f"{name} has shape {array.shape}; a mono waveform (1-D array of samples) is required; "
                        "average the channels first")
    if array.size == 0:
        raise UserError(f"{name} is empty (0 samples); pass a waveform with audio in it")
    if not np.all(np.isfinite(array)):
        raise UserError(f"{name} holds NaN or infinite samples; check the model output that produced it")
    return array


def _check_rate(sample_rate: int, name: str = "sample_rate") -> int:
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise UserError(f"`{name}` ({sample_rate!r}) must be a positive whole number of Hz, e.g. 22050")
    return int(sample_rate)


def mel_cepstrum(wave: np.ndarray, sample_rate: int, *, order: int = MCD_ORDER,
                 trim_db: float | None = SILENCE_DB) -> np.ndarray:
    """(T,) waveform at `sample_rate` -> (frames, order) mel-cepstral coefficients c1..c_order in the module's fixed
    setting (`MCD_MEL`: 22,050 Hz, FFT 1024, hop 256, 80 bands; orthonormal DCT-II of the log-mel energies).

    With `trim_db`, leading and trailing frames whose energy (10 log10 of the summed mel energies) lies more than
    `trim_db` dB below the loudest frame's are dropped; None keeps every frame."""
    wave = _mono(wave, "the waveform")
    rate = _check_rate(sample_rate)
    if not 1 <= order < MCD_MEL.n_mels:
        raise UserError(f"`order` ({order}) must lie in 1..{MCD_MEL.n_mels - 1}: c1..c_order of {MCD_MEL.n_mels} bands")
    wave = resample(wave.astype(np.float32), rate, MCD_MEL.sample_rate)
    minimum = (MCD_MEL.n_fft - MCD_MEL.hop_length) // 2 + MCD_MEL.hop_length
    if len(wave) < minimum:
        raise UserError(f"a waveform of {len(wave)} samples at {MCD_MEL.sample_rate} Hz is too short for mel "
                        f"cepstra: at least {minimum} samples ({minimum / MCD_MEL.sample_rate * 1000:.0f} ms) needed")
    with torch.no_grad():
        mel = log_mel(torch.from_numpy(wave), MCD_MEL).double().numpy().T  # (frames, n_mels), natural log
    if trim_db is not None:
        energy_db = 10.0 * np.log10(np.exp(mel).sum(axis=1))  # (frames,)
        loud = np.flatnonzero(energy_db >= energy_db.max() - trim_db)  # never empty: the loudest frame is in it
        mel = mel[loud[0]: loud[-1] + 1]
    from scipy.fft import dct

    cepstrum = dct(mel, type=2, norm="ortho", axis=1)  # (frames, n_mels): c0..c79
    return cepstrum[:, 1: order + 1]


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, float]:
    """Dynamic time warping over an (N, M) local-cost matrix with steps (1,0), (0,1), (1,1), unit weights, from
    (0, 0) to (N-1, M-1). Returns the (L, 2) path of (i, j) index pairs and its total cost.

    The accumulated cost A[i, j] = cost[i, j] + min(A[i-1, j], A[i-1, j-1], A[i, j-1]) is filled row by row, each row
    vectorized: with e[j] = cost[i, j] + min(A[i-1, j], A[i-1, j-1]) the best entry from the row above and
    S = cumsum(cost[i]), the horizontal steps unroll to A[i, j] = S[j] + min_{k<=j}(e[k] - S[k]), a running minimum.
    Backtracking prefers the diagonal, then the vertical step, on ties."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise UserError(f"a DTW cost matrix must be 2-D and non-empty, got shape {cost.shape}")
    n, m = cost.shape
    acc = np.empty((n, m))  # (N, M) accumulated cost
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        above = acc[i - 1]
        enter = cost[i].copy()  # best entry into row i from row i-1
        enter[0] += above[0]
        enter[1:] += np.minimum(above[1:], above[:-1])
        running = np.cumsum(cost[i])
        acc[i] = running + np.minimum.accumulate(enter - running)
    path = [(n - 1, m - 1)]
    i, j = n - 1, m - 1
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            steps = (acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
            best = int(np.argmin(steps))  # argmin returns the first minimum: diagonal, then vertical
            i, j = (i - 1, j - 1) if best == 0 else (i - 1, j) if best == 1 else (i, j - 1)
        path.append((i, j))
    return np.array(path[::-1], dtype=np.int64), float(acc[-1, -1])


def mcd_dtw(reference_wave: np.ndarray, synthesized_wave: np.ndarray, sample_rate: int) -> float:
    """Mel-cepstral distortion in dB between two waveforms at `sample_rate`, averaged over their DTW path.

    Both clips go through `mel_cepstrum` (resampled to 22,050 Hz, FFT 1024, hop 256, 80 mel bands, c1..c13, leading
    and trailing silence more than 40 dB below the loudest frame trimmed), DTW aligns them on the Euclidean distance
    between cepstral frames, and each aligned pair costs (10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d)^2). Identical
    clips score 0. Only comparable to MCD from this function: see the module docstring."""
    rate = _check_rate(sample_rate)
    reference = mel_cepstrum(_mono(reference_wave, "reference_wave"), rate)  # (N, 13)
    synthesized = mel_cepstrum(_mono(synthesized_wave, "synthesized_wave"), rate)  # (M, 13)
    from scipy.spatial.distance import cdist

    distance = cdist(reference, synthesized)  # (N, M) Euclidean distances, exact: identical frames give 0
    path, total = dtw_path(distance)
    return MCD_SCALE * total / len(path)


# --------------------------------------------------------------------------------------------------------------
# Word error rate

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters/digits, with apostrophes only between them (don't, o'clock)


def normalize_for_wer(text: str) -> list[str]:
    """Text -> the words WER compares: lower case; punctuation removed, hyphens and other symbols split words
    ("twenty-seventh" -> twenty, seventh); apostrophes kept only inside words (curly ones made straight); whitespace
    collapsed. Numbers are not spelled out here: references must already spell them (LJ Speech's normalized column
    does), as recognizers output words."""
    if not isinstance(text, str):
        raise UserError(f"WER compares text strings, got {type(text).__name__} ({text!r})")
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _WORD.findall(text)


def _edit_counts(reference: list[str], hypothesis: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum word-level Levenshtein alignment. Among alignments of the
    same total cost, backtracking prefers match/substitution, then deletion, then insertion."""
    n, m = len(reference), len(hypothesis)
    dist = [[0] * (m + 1) for _ in range(n + 1)]  # dist[i][j]: edits turning reference[:i] into hypothesis[:j]
    for i in range(n + 1):
        dist[i][0] = i
    for j in range(m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        row, above, word = dist[i], dist[i - 1], reference[i - 1]
        for j in range(1, m + 1):
            row[j] = min(above[j - 1] + (word != hypothesis[j - 1]), above[j] + 1, row[j - 1] + 1)
    subs = dels = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and dist[i][j] == dist[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            subs += reference[i - 1] != hypothesis[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and dist[i][j] == dist[i - 1][j] + 1:
            dels += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return subs, dels, ins


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float | int]:
    """Corpus word error rate of `hypotheses` against `references` (one string per utterance, same order), both
    through `normalize_for_wer`: wer = (S + D + I) summed over utterances / reference words summed.

    Returns {"wer", "substitutions", "deletions", "insertions", "reference_words", "utterances"}. WER can exceed 1
    when the hypotheses insert many words."""
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise UserError("word_error_rate takes lists of utterances (one string each), not a single string; "
                        "wrap it: word_error_rate([reference], [hypothesis])")
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise UserError(f"{len(references)} references but {len(hypotheses)} hypotheses: WER needs one hypothesis "
                        "per reference, in the same order")
    if not references:
        raise UserError("no utterances to score: references and hypotheses are empty")
    subs = dels = ins = words = 0
    for reference, hypothesis in zip(references, hypotheses):
        ref_words = normalize_for_wer(reference)
        s, d, i = _edit_counts(ref_words, normalize_for_wer(hypothesis))
        subs, dels, ins, words = subs + s, dels + d, ins + i, words + len(ref_words)
    if words == 0:
        raise UserError(f"the {len(references)} references hold no words after normalization, so WER is undefined; "
                        "check that the reference texts are not empty")
    return {"wer": (subs + dels + ins) / words, "substitutions": subs, "deletions": dels, "insertions": ins,
            "reference_words": words, "utterances": len(references)}


# --------------------------------------------------------------------------------------------------------------
# Recognizer


class Recognizer:
    """Speech -> text with PocketSphinx 5 (`pip install pocketsphinx`): its bundled US English continuous acoustic
    model (16 kHz), CMUdict pronunciations and its generic US English trigram language model (en-us.lm.bin). None of
    these come from genforge's data or models, so the words a synthesized clip is heard to say do not depend on
    the synthesizer being scored.

    The decoder is created on the first `transcribe` call (about half a second) and reused; one Recognizer is not
    safe to share between threads. `options` go to `pocketsphinx.Decoder` unchanged (e.g. lm=..., dict=...)."""

    sample_rate = 16000  # Hz, the acoustic model's rate

    def __init__(self, **options: Any):
        self.options = {"loglevel": "FATAL", **options}
        self._decoder: Any = None

    @property
    def decoder(self) -> Any:
        if self._decoder is None:
            try:
                import pocketsphinx
            except ImportError:
                raise UserError("the speech recognizer needs the `pocketsphinx` package: pip install pocketsphinx"
                                ) from None
            self._decoder = pocketsphinx.Decoder(samprate=self.sample_rate, **self.options)
            log.info("pocketsphinx decoder: hmm=%s lm=%s", self._decoder.config["hmm"], self._decoder.config["lm"])
        return self._decoder

    def transcribe(self, wave: np.ndarray, sample_rate: int) -> str:
        """A mono waveform in [-1, 1] at `sample_rate` -> the recognized words, lower case, space-separated ("" when
        nothing is recognized). Resampled to 16 kHz and fed as 16-bit PCM as one utterance."""
        wave = _mono(wave, "the waveform to transcribe")
        rate = _check_rate(sample_rate)
        pcm16 = resample(wave.astype(np.float32), rate, self.sample_rate)
        pcm16 = np.round(np.clip(pcm16, -1.0, 1.0) * 32767).astype("<i2")
        decoder = self.decoder
        decoder.start_utt()
        decoder.process_raw(pcm16.tobytes(), no_search=False, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        return "" if hypothesis is None else " ".join(hypothesis.hypstr.split())


# --------------------------------------------------------------------------------------------------------------
# Speed


def real_time_factor(seconds_of_compute: float, seconds_of_audio: float) -> float:
    """Seconds of compute per second of audio produced or processed: below 1 is faster than real time (0.1 = ten
    seconds of speech per second of compute)."""
    if not (math.isfinite(seconds_of_audio) and seconds_of_audio > 0):
        raise UserError(f"seconds_of_audio ({seconds_of_audio}) must be a positive number of seconds")
    if not (math.isfinite(seconds_of_compute) and seconds_of_compute >= 0):
        raise UserError(f"seconds_of_compute ({seconds_of_compute}) must be zero or a positive number of seconds")
    return float(seconds_of_compute) / float(seconds_of_audio)
