#!/usr/bin/env python3
"""The real-vs-real floor of genforge's FID protocols: FID/KID/precision/recall of N real *training* images
against the full test split, measured exactly like a generator's samples (`genforge eval --ref mnist:test`).

A generator that reproduced the training distribution perfectly would score about this value on the protocol with
the same N; it is the sanity anchor for the leaderboard's `fid2k-mnist-test`. Run at several resolutions, it also
shows what the resize path alone does: at 32 px both sets are first brought to 32x32 by the data pipeline (the
path a 32 px model's training data took), then both go 32 -> 299 into Inception.

The test-split features land in the same cache entries `genforge eval` uses, so a later eval at that resolution
reuses them.

    .venv/bin/python benchmarks/fid_floor.py --sizes 28,32 --n 2000 --json floor.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--channels", type=int, default=1, help="image channels of the data set (MNIST: 1)")
    parser.add_argument("--sizes", default="28", help="comma-separated resolutions, e.g. 28,32")
    parser.add_argument("--n", type=int, default=2000, help="real training images in the 'generated' set")
    parser.add_argument("--seed", type=int, default=0, help="which training images (a seeded permutation)")
    parser.add_argument("--inception", default=None, help="FID detector file (default: genforge's usual lookup)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from genforge.evaluation.cache import cached_features, reference_key_parts
    from genforge.evaluation.fid import count_tag, fid_from_features, kid, precision_recall, reference_images
    from genforge.data.inception import load_inception
    from genforge.evaluation.protocols import EvalContext

    extractor = load_inception(args.inception)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        t0 = time.perf_counter()
        ctx = EvalContext(model=None, n=args.n, options={"ref": f"{args.dataset}:test"})
        tag, test = reference_images(ctx, size, args.channels)
        parts = reference_key_parts(test, dataset=args.dataset, split="test", extractor=extractor.key_parts())
        real = cached_features(parts, lambda: extractor(test)).features.astype(np.float64)
        ctx.options["ref"] = f"{args.dataset}:train"
        _, train = reference_images(ctx, size, args.channels)
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.n]
        fake = extractor(train[pick])
        precision, recall = precision_recall(real, fake, k=3)
        kid_mean, kid_std = kid(real, fake, seed=args.seed)
        name = f"{count_tag(args.n)}-{tag}"
        row = {"size": size, "protocol": name, f"fid{name}": fid_from_features(real, fake),
               f"kid{name}": kid_mean, f"kid{name}-std": kid_std, f"precision{name}": precision,
               f"recall{name}": recall, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        meta = {"command": " ".join(sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(), "detector_sha1": extractor.sha1}
        with open(args.json, "w") as out:
            json.dump({"meta": meta, "rows": rows}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
