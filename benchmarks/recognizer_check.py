"""How well the independent recognizer (`speech_metrics.Recognizer`, PocketSphinx 5 with its default US English
models) hears real speech: transcribe the last N clips of the LJ Speech subset (by id order: the held-out
sentences) and score them against the normalized text column. This is the WER floor a perfect synthesizer of
LJ Speech's voice would get; a synthesizer's WER is only meaningful next to it.

    .venv/bin/python benchmarks/recognizer_check.py [--data ../shared/data/ljspeech_subset] [--last 20]

Prints each clip's reference and hypothesis, the corpus WER with its S/D/I counts, and the recognition speed in
seconds of audio per second of compute (and its real-time factor).
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from genforge.audio import read_wav
from genforge.evaluation.speech_metrics import Recognizer, real_time_factor, word_error_rate

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ljspeech_subset"


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LJ Speech dir with metadata.csv and wavs/")
    parser.add_argument("--last", type=int, default=20, help="how many clips from the end, by id order")
    args = parser.parse_args(argv)

    with open(args.data / "metadata.csv", encoding="utf-8", newline="") as f:
        rows = sorted(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE))  # id|text|normalized text
    rows = rows[-args.last:]

    recognizer = Recognizer()
    start = time.perf_counter()
    recognizer.decoder  # noqa: B018 - load the models outside the timed loop
    load_seconds = time.perf_counter() - start
    references, hypotheses, audio_seconds, compute_seconds = [], [], 0.0, 0.0
    for clip_id, _, normalized in rows:
        wave, rate = read_wav(args.data / "wavs" / f"{clip_id}.wav")
        start = time.perf_counter()
        hypothesis = recognizer.transcribe(wave, rate)
        compute_seconds += time.perf_counter() - start
        audio_seconds += len(wave) / rate
        clip = word_error_rate([normalized], [hypothesis])
        print(f"{clip_id}  wer {clip['wer']:.3f}\n  ref: {normalized}\n  hyp: {hypothesis}")
        references.append(normalized)
        hypotheses.append(hypothesis)

    scores = word_error_rate(references, hypotheses)
    print(f"\ncorpus WER {scores['wer']:.4f} over {scores['utterances']} clips, {scores['reference_words']} reference "
          f"words: S {scores['substitutions']}, D {scores['deletions']}, I {scores['insertions']}")
    print(f"speed: {audio_seconds:.1f} s of audio in {compute_seconds:.1f} s = {audio_seconds / compute_seconds:.2f} s "
          f"of audio per second (RTF {real_time_factor(compute_seconds, audio_seconds):.3f}); "
          f"model load {load_seconds:.2f} s")
    return {**scores, "audio_seconds": audio_seconds, "compute_seconds": compute_seconds}


if __name__ == "__main__":
    main()
