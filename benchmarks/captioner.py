"""Image captioning numbers for BENCHMARKS.md: a trained captioner run scored greedy and with beam search on its
held-out images, the caption speed of each, and (synthetic scenes) the exact-match rate per number of objects.

    python benchmarks/captioner.py RUN_DIR [--n 100] [--beams 3] [--objects 1,2,3] [--out result.json]

RUN_DIR is a finished `genforge train` run (e.g. flickr8k/captioner or shapes/captioner). For each decoding (greedy,
beam N) it runs the `captions` metric protocol of `genforge eval` on the first --n test images (so the numbers are
the ones `genforge eval RUN --set sample.num_beams=N` prints) and times the captioning alone: the encoder inputs
(pixels, or the cached Inception features) are read before the clock starts, so feature extraction is counted
separately (see BENCHMARKS.md: Inception grid features cost ~0.35 s per image on one core, once per image).
--objects (shapes only) scores test scenes with exactly k objects for each k given. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from genforge import sampling
from genforge.data.build import build_dataset
from genforge.evaluation.captioning import metric_captions
from genforge.evaluation.context import EvalContext


def timed_captions(pipeline: sampling.Pipeline, n: int, beams: int) -> float:
    """Images per second of captioning the first n test images (inputs prepared beforehand), best of 2 runs."""
    data = pipeline.config.data.model_copy(update={"limit": None})
    dataset = build_dataset(data, "test", tokenizer=pipeline.tokenizer)
    inputs = dataset.inputs(list(range(min(n, len(dataset)))), pipeline.config.model.encoder_input())
    options = pipeline.options(num_beams=beams)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for chunk in inputs.split(50):
            pipeline.module.caption(chunk, **options)
        best = min(best, time.perf_counter() - start)
    return len(inputs) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--n", type=int, default=100, help="test images scored (default 100)")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--objects", help="shapes: comma-separated object counts to score separately, e.g. 1,2,3")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict[str, float]] = {}
    for label, beams in (("greedy", 1), (f"beam{args.beams}", args.beams)):
        pipeline = sampling.load(args.run, overrides=[f"sample.num_beams={beams}"])
        scores = metric_captions(EvalContext(pipeline=pipeline, n=args.n))
        scores["images_per_s"] = timed_captions(pipeline, args.n, beams)
        results[label] = scores
        for k in [int(x) for x in args.objects.split(",")] if args.objects else []:
            pipeline.config = pipeline.config.model_copy(
                update={"data": pipeline.config.data.model_copy(update={"objects": k})})
            results[f"{label}-objects{k}"] = metric_captions(EvalContext(pipeline=pipeline, n=args.n))
    for label, scores in results.items():
        print(label)
        for key, value in scores.items():
            print(f"  {key:40s} {value:.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
