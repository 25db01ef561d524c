#!/usr/bin/env python3
"""FID feature extraction speed: genforge's extractor against a plain NCHW batch loop over the same network.

Side by side in one process, on the same MNIST test images, alternating the order every round:

- plain:  the detector's TorchScript `layers`, contiguous NCHW input, batches under no_grad
          (`inception.reference_features`), what a straightforward implementation does
- ts-cl:  the same TorchScript graph fed channels_last input under inference_mode
- fused:  `InceptionFeatures` as `genforge eval` runs it: `inception_fused.FusedInception` (batch norm folded,
          stacked 1x1 convs, pool/1x1 commuted, channels_last throughout) under inference_mode

Preprocessing (resize to 299) is included in every variant. Prints images/s per round, the medians, the ratios
to plain, and the largest per-image relative L2 difference of the features to plain's.

    .venv/bin/python benchmarks/inception_speed.py --n 200 --rounds 3 --threads 2
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inception", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from genforge.config import DataSection
    from genforge.data.images import build_mnist_mini
    from genforge.data.inception import load_inception, reference_features

    extractor = load_inception(args.inception)
    extractor.batch_size = args.batch
    images = build_mnist_mini(DataSection(name="mnist-mini"), "test").images[: args.n]

    def plain(x: torch.Tensor) -> np.ndarray:
        return reference_features(extractor, x, batch_size=args.batch)

    def ts_cl(x: torch.Tensor) -> np.ndarray:
        extractor.fused = False
        try:
            return extractor(x)
        finally:
            extractor.fused = True

    def fused(x: torch.Tensor) -> np.ndarray:
        return extractor(x)

    variants = {"plain": plain, "ts-cl": ts_cl, "fused": fused}
    for fn in variants.values():  # warm up: oneDNN primitives, the fused network's construction
        fn(images[: args.batch])
    rates: dict[str, list[float]] = {name: [] for name in variants}
    features: dict[str, np.ndarray] = {}
    names = list(variants)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            features[name] = variants[name](images)
            rates[name].append(len(images) / (time.perf_counter() - t0))
            print(f"round {r}: {name:6s} {rates[name][-1]:7.2f} images/s", flush=True)
    medians = {name: statistics.median(v) for name, v in rates.items()}
    base = features["plain"]
    diffs = {name: float((np.linalg.norm(f - base, axis=1) / np.linalg.norm(base, axis=1)).max())
             for name, f in features.items()}
    result = {"threads": torch.get_num_threads(), "n": len(images), "batch": args.batch, "rounds": args.rounds,
              "median_images_per_s": {k: round(v, 2) for k, v in medians.items()},
              "ratio_to_plain": {k: round(v / medians["plain"], 3) for k, v in medians.items()},
              "max_rel_feature_diff_to_plain": diffs, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine()}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
