#!/usr/bin/env python3
"""Quality and wall time against the number of sampling steps, per sampler, for one diffusion checkpoint.

For every (sampler, steps) pair the same n images are generated (one seed; the same starting noise for every row)
and timed, then scored by genforge's own metrics on those very images: `fd-fast` (Fréchet distance in the feature
space of genforge's MNIST classifier, seconds per row) and, with `--fid`, FID in Inception space against the full
test split (minutes per row on a CPU: the 10k reference features are cached after the first row).

    .venv/bin/python benchmarks/diffusion_steps.py runs/mnist-ddpm --classifier runs/mnist-classifier \
        --samplers ddpm,ddim,dpm++2m --steps 10,25,50,100 --n 2000 --threads 2 --json steps.json

Rows whose images x steps exceed `--max-evals` (network evaluations) are skipped and listed as such, so the 1000-step
ancestral row can be asked for with a smaller --n instead of running for hours. Each row's samples can be kept
(`--keep DIR`, uint8 .npz) to score later with `genforge eval --samples`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a diffusion run dir or step dir")
    p.add_argument("--classifier", required=True, help="classifier run dir for fd-fast (genforge train mnist/classifier)")
    p.add_argument("--samplers", default="ddpm,ddim,dpm++2m")
    p.add_argument("--steps", default="10,25,50,100,1000")
    p.add_argument("--n", type=int, default=2000, help="images per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fid", action="store_true", help="also FID against --ref (Inception; slow on a CPU)")
    p.add_argument("--ref", default=None, help="reference for fid/fd-fast (default: the run's data set, test split)")
    p.add_argument("--max-evals", type=float, default=2e5, help="skip rows with more than this many image x steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", default=None, help="save each row's samples as DIR/<sampler>-<steps>.npz")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = p.parse_args(argv)

    import torch

    from genforge import media, sampling
    from genforge.evaluation.context import EvalContext
    from genforge.evaluation.protocols import evaluate

    torch.set_num_threads(args.threads)
    rows = []
    shared: dict = {}  # networks and reference features shared between rows
    for sampler in args.samplers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            if args.n * steps > args.max_evals:
                rows.append({"sampler": sampler, "steps": steps, "skipped": f"{args.n * steps:.0f} evals > --max-evals"})
                continue
            pipe = sampling.load(args.run, overrides=[f"sample.sampler={sampler}", f"sample.steps={steps}"])
            options = {"classifier": args.classifier, "ref": args.ref}
            ctx = EvalContext(pipeline=pipe, n=args.n, seed=args.seed, options=options)
            ctx.cache.update(shared)
            start = time.perf_counter()
            images = ctx.samples()
            seconds = time.perf_counter() - start
            results = evaluate(ctx, ["fd-fast"] + (["fid"] if args.fid else []))
            shared.update({k: v for k, v in ctx.cache.items() if k in ("classifier", "inception")})
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                media.save_images(images, Path(args.keep) / f"{sampler}-{steps}.npz")
            row = {"sampler": sampler, "steps": steps, "n": args.n, "seconds": round(seconds, 2),
                   "images_per_s": round(args.n / seconds, 2), **{k: round(v, 4) for k, v in results.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = sorted({k for r in rows for k in r if k.startswith(("fd-fast", "fid"))})
    print("\n| sampler | steps | images/s | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        if "skipped" in r:
            print(f"| {r['sampler']} | {r['steps']} | skipped ({r['skipped']}) |" + " |" * len(keys))
        else:
            print(f"| {r['sampler']} | {r['steps']} | {r['images_per_s']} | "
                  + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
