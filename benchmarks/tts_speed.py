"""Real-time factor of text-to-speech on this CPU, part by part: the acoustic model (text -> log-mel frames), then
each vocoder (frames -> waveform): Griffin-Lim at a few iteration counts, a trained vocoder run, and the HiFi-GAN
presets at random weights (speed does not depend on the weights). RTF = seconds of compute / seconds of audio; below
0.1 is ten times faster than real time. Median of --repeats runs after one warm-up, each on the same sentences.

    .venv/bin/python benchmarks/tts_speed.py runs/ljspeech-tts --vocoder runs/ljspeech-hifigan --threads 2

Prints a markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

import genforge
from genforge.models.vocoder import Vocoder, VocoderConfig, griffin_lim

SENTENCES = [
    "The prisoners were then taken to the jail, where they waited for their trial.",
    "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts.",
]


def timed(fn: Any, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy initializations
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tts", help="a TTS run dir or step dir")
    parser.add_argument("--vocoder", help="a trained vocoder run dir (same mel features)")
    parser.add_argument("--presets", default="tiny-cpu,v3,v1", help="HiFi-GAN presets timed at random weights")
    parser.add_argument("--gl-iters", default="8,32", help="Griffin-Lim iteration counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tts = genforge.load(args.tts)
    mel_cfg = tts.module.config.mel
    ids = [tts.tokenizer.encode(s) for s in SENTENCES]
    mels = [tts.module.synthesize_mel(i)[0] for i in ids]
    seconds = sum(m.shape[-1] for m in mels) * mel_cfg.hop_length / mel_cfg.sample_rate

    rows: list[tuple[str, float]] = []
    rows.append(("acoustic model (text -> log-mel)",
                 timed(lambda: [tts.module.synthesize_mel(i) for i in ids], args.repeats)))
    for iters in [int(x) for x in args.gl_iters.split(",") if x]:
        rows.append((f"Griffin-Lim, {iters} iterations",
                     timed(lambda it=iters: [griffin_lim(m, mel_cfg, n_iter=it) for m in mels], args.repeats)))
    vocoders: list[tuple[str, Any]] = []
    if args.vocoder:
        vocoders.append((f"trained vocoder {args.vocoder}", genforge.load(args.vocoder).module))
    for preset in [p for p in args.presets.split(",") if p]:
        cfg = VocoderConfig.from_dict({"family": "vocoder", "preset": preset, "mel": mel_cfg.model_dump()})
        vocoders.append((f"HiFi-GAN {preset} ({sum(p.numel() for p in Vocoder(cfg).generator.parameters()) / 1e6:.2f}M"
                         " generator weights, random)", Vocoder(cfg).eval()))
    for name, model in vocoders:
        rows.append((name, timed(lambda m=model: [m.vocode(x[None]) for x in mels], args.repeats)))

    print(f"{seconds:.2f} s of audio ({len(SENTENCES)} sentences), {args.threads} threads, median of "
          f"{args.repeats}\n")
    print("| part | seconds | RTF |\n|---|---|---|")
    for name, spent in rows:
        print(f"| {name} | {spent:.3f} | {spent / seconds:.4f} |")
    print(json.dumps({"audio_seconds": seconds, "threads": args.threads,
                      "rtf": {name: spent / seconds for name, spent in rows}}))


if __name__ == "__main__":
    main()
