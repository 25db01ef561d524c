"""Speech metrics: MCD with DTW on seeded synthetic "speech" (steady harmonic vowels), the DTW path on hand examples
and against a plain triple loop, WER counts on hand cases, WER normalization, the PocketSphinx recognizer on one
real LJ Speech clip, and the UserErrors for bad input."""
from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import shared_data

from genforge.errors import UserError
from genforge.evaluation.speech_metrics import (
    MCD_MEL,
    Recognizer,
    dtw_path,
    mcd_dtw,
    mel_cepstrum,
    normalize_for_wer,
    real_time_factor,
    word_error_rate,
)

SR = 22050
F0 = [120, 180, 240, 150, 300]  # Hz, one per "vowel"
DURATIONS = [0.3, 0.2, 0.4, 0.3, 0.2]  # seconds per vowel: 1.4 s in all


def vowels(f0s: list[int], seconds: list[float], seed: int) -> np.ndarray:
    """Steady harmonic tones (harmonics of f0 up to 5 kHz, amplitude 1/k) one after another, over a faint noise
    floor drawn with `seed`: the same sequence with longer `seconds` is the same "utterance" spoken slower."""
    rng = np.random.default_rng(seed)
    parts = []
    for f0, duration in zip(f0s, seconds):
        t = np.arange(int(duration * SR)) / SR
        k = np.arange(1, 5000 // f0 + 1)
        parts.append((np.sin(2 * np.pi * f0 * k[:, None] * t).T / k).sum(1) * 0.2)
    wave = np.concatenate(parts)
    return (wave + 0.003 * rng.standard_normal(len(wave))).astype(np.float32)


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    return vowels(F0, DURATIONS, seed=0)


# --------------------------------------------------------------------------------------------------------------
# MCD


def test_mel_cepstrum_shape_and_fixed_setting(utterance):
    cepstrum = mel_cepstrum(utterance, SR, trim_db=None)
    assert cepstrum.shape == (len(utterance) // MCD_MEL.hop_length, 13)  # 1.4 s -> 120 frames of c1..c13
    assert (MCD_MEL.sample_rate, MCD_MEL.n_fft, MCD_MEL.hop_length, MCD_MEL.n_mels) == (22050, 1024, 256, 80)
    # the setting is fixed: the same sound at 16 kHz is resampled to 22,050 Hz and gives the same frame count
    from genforge.audio import resample

    assert mel_cepstrum(resample(utterance, SR, 16000), 16000, trim_db=None).shape[0] == cepstrum.shape[0]


def test_mcd_of_a_clip_against_itself_is_zero(utterance):
    assert mcd_dtw(utterance, utterance, SR) == 0.0
    assert mcd_dtw(utterance, 0.5 * utterance, SR) < 1e-4  # c0 (level) is excluded: a gain change costs nothing


def test_mcd_small_for_the_same_utterance_at_another_tempo_large_for_different_sounds(utterance):
    noise_only = mcd_dtw(utterance, vowels(F0, DURATIONS, seed=5), SR)  # same timing, another noise floor
    slower = mcd_dtw(utterance, vowels(F0, [1.5 * s for s in DURATIONS], seed=1), SR)
    faster = mcd_dtw(utterance, vowels(F0, [0.7 * s for s in DURATIONS], seed=2), SR)
    reversed_vowels = mcd_dtw(utterance, vowels(F0[::-1], DURATIONS, seed=3), SR)
    noise = mcd_dtw(utterance, (0.1 * np.random.default_rng(4).standard_normal(len(utterance))).astype(np.float32), SR)
    measured = [noise_only, slower, faster, reversed_vowels, noise]
    assert measured == pytest.approx([3.5616, 4.2754, 5.6827, 20.1524, 64.2567], abs=2e-3)
    assert max(slower, faster) < 6 < 15 < reversed_vowels  # DTW absorbs tempo; different sounds stay far apart


def test_mcd_trims_leading_and_trailing_silence(utterance):
    silence = np.zeros(SR // 2, dtype=np.float32)
    padded = np.concatenate([silence, utterance, silence, silence])  # 0.5 s before, 1 s after
    # 1.5 s of silence is dropped but for the 5 frames whose windows reach into the sound
    assert (len(mel_cepstrum(padded, SR)), len(mel_cepstrum(utterance, SR))) == (125, 120)
    assert mcd_dtw(utterance, padded, SR) == pytest.approx(1.5824, abs=2e-3)
    # without trimming the 129 silent frames all pair with an edge frame of the sound and dominate the mean
    kept, full = mel_cepstrum(utterance, SR, trim_db=None), mel_cepstrum(padded, SR, trim_db=None)
    assert len(full) == len(padded) // 256
    from scipy.spatial.distance import cdist

    path, total = dtw_path(cdist(kept, full))
    assert 10 / np.log(10) * np.sqrt(2) * total / len(path) > 20


def test_mcd_dtw_is_fast_on_ten_second_clips():
    rng = np.random.default_rng(0)
    a = vowels(list(rng.integers(100, 300, 30)), [1 / 3] * 30, seed=1)  # 10 s each, 861 frames
    b = vowels(list(rng.integers(100, 300, 30)), [1 / 3] * 30, seed=2)
    start = time.perf_counter()
    mcd_dtw(a, b, SR)
    assert time.perf_counter() - start < 1.0  # about 0.05 s on a 2-core laptop CPU


# --------------------------------------------------------------------------------------------------------------
# DTW


def test_dtw_path_hand_examples():
    x, y = np.array([0, 1, 2, 2, 3]), np.array([0, 1, 2, 3])  # x holds its "2" one frame longer
    path, total = dtw_path(np.abs(x[:, None] - y[None, :]))
    assert path.tolist() == [[0, 0], [1, 1], [2, 2], [3, 2], [4, 3]] and total == 0
    path, total = dtw_path(np.abs(y[:, None] - x[None, :]))  # transposed: a horizontal step instead
    assert path.tolist() == [[0, 0], [1, 1], [2, 2], [2, 3], [3, 4]] and total == 0
    # no zero-cost path: cost [[0, 1, 2], [2, 1, 0]]; two paths cost 1, the diagonal wins the tie when backtracking
    path, total = dtw_path(np.abs(np.array([0, 2])[:, None] - np.array([0, 1, 2])[None, :]))
    assert path.tolist() == [[0, 0], [0, 1], [1, 2]] and total == 1
    assert dtw_path(np.array([[5.0]]))[0].tolist() == [[0, 0]]
    assert dtw_path(np.ones((1, 3)))[0].tolist() == [[0, 0], [0, 1], [0, 2]]


def test_dtw_total_matches_the_plain_recurrence():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        cost = rng.random((int(rng.integers(1, 25)), int(rng.integers(1, 25))))
        n, m = cost.shape
        acc = np.full((n + 1, m + 1), np.inf)
        acc[0, 0] = 0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i - 1, j - 1], acc[i, j - 1])
        path, total = dtw_path(cost)
        assert total == pytest.approx(acc[n, m], abs=1e-9)
        assert cost[path[:, 0], path[:, 1]].sum() == pytest.approx(total, abs=1e-9)
        steps = np.diff(path, axis=0)
        assert path[0].tolist() == [0, 0] and path[-1].tolist() == [n - 1, m - 1]
        assert ((steps >= 0) & (steps <= 1)).all() and (steps.sum(1) >= 1).all()


# --------------------------------------------------------------------------------------------------------------
# WER


def test_normalize_for_wer():
    assert normalize_for_wer("Hello,   World!\n") == ["hello", "world"]
    assert normalize_for_wer("Don't stop -- the \"rules,\" 'quoted'") == ["don't", "stop", "the", "rules", "quoted"]
    assert normalize_for_wer("the twenty-seventh George") == ["the", "twenty", "seventh", "george"]
    assert normalize_for_wer("The King\u2019s Bench; rock 'n' roll.") == ["the", "king's", "bench", "rock", "n", "roll"]
    assert normalize_for_wer("  ... ") == []


def test_word_error_rate_counts():
    one = word_error_rate(["the cat sat on the mat"], ["the cat sat on mat"])
    assert one == {"wer": 1 / 6, "substitutions": 0, "deletions": 1, "insertions": 0, "reference_words": 6,
                   "utterances": 1}
    two = word_error_rate(["a b c", "hello world"], ["A x, c d.", ""])
    assert (two["substitutions"], two["deletions"], two["insertions"], two["reference_words"]) == (1, 2, 1, 5)
    assert two["wer"] == pytest.approx(4 / 5)
    swapped = word_error_rate(["a b"], ["b a"])  # two substitutions rather than a deletion and an insertion
    assert (swapped["substitutions"], swapped["deletions"], swapped["insertions"]) == (2, 0, 0)
    inserted = word_error_rate(["", "yes"], ["um uh", "yes"])  # an empty reference adds only insertions
    assert (inserted["insertions"], inserted["wer"]) == (2, 2.0)
    assert word_error_rate(["Printing, in the only sense"], ["printing in the only sense"])["wer"] == 0


# --------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_user_errors(utterance):
    with pytest.raises(UserError, match="reference_wave is empty"):
        mcd_dtw(np.zeros(0), utterance, SR)
    with pytest.raises(UserError, match="synthesized_wave has shape"):
        mcd_dtw(utterance, np.zeros((2, 1000)), SR)
    with pytest.raises(UserError, match="NaN"):
        mcd_dtw(utterance, np.full(4000, np.nan), SR)
    with pytest.raises(UserError, match="too short"):
        mcd_dtw(utterance, np.ones(100), SR)
    with pytest.raises(UserError, match="sample_rate"):
        mcd_dtw(utterance, utterance, 0)
    with pytest.raises(UserError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(UserError, match="no utterances"):
        word_error_rate([], [])
    with pytest.raises(UserError, match="hold no words"):
        word_error_rate(["", "..."], ["a", "b"])
    with pytest.raises(UserError, match="not a single string"):
        word_error_rate("a b", "a b")
    with pytest.raises(UserError, match="empty"):
        Recognizer().transcribe(np.zeros(0, dtype=np.float32), 16000)  # checked before the decoder loads
    with pytest.raises(UserError, match="seconds_of_audio"):
        real_time_factor(1.0, 0.0)


def test_real_time_factor():
    assert real_time_factor(2.0, 8.0) == 0.25
    assert real_time_factor(0.0, 1.0) == 0.0


# --------------------------------------------------------------------------------------------------------------
# Recognizer on real speech


def test_recognizer_hears_a_real_lj_speech_clip():
    pytest.importorskip("pocketsphinx", reason="the recognizer needs `pip install pocketsphinx`")
    from genforge.audio import read_wav

    wave, rate = read_wav(shared_data("ljspeech_subset", "wavs", "LJ002-0193.wav"))  # 4.0 s at 22,050 Hz
    text = Recognizer().transcribe(wave, rate)  # reference: "In these cases security was given for the amount of
    assert {"these", "cases", "security", "given", "amount", "debt"} <= set(text.split())  # the debt,"
    assert word_error_rate(["In these cases security was given for the amount of the debt,"], [text])["wer"] < 0.2
