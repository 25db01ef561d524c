#!/usr/bin/env python3
"""Data-parallel scaling on one machine: the same config and global batch trained by one process and by
`--nproc N` torchrun processes (gloo on a CPU, nccl on GPUs), side by side in one run.

Layouts (each `--rounds` times, interleaved so the machine's drift hits all alike):

    1p x 1t   one process, 1 torch thread            (the baseline)
    1p x Nt   one process, N torch threads           (what one process makes of the same cores)
    Np x 1t   `genforge train --nproc N`, 1 thread each (DistributedDataParallel)
    Np x 1t, per-rank BN   the same with `train.sync_batchnorm=false` (configs with BatchNorm only): each rank
              normalizes over its slice, PyTorch DDP's default, without the per-BatchNorm all-reduce

Reported: training throughput (the kind's unit per second, mean of the metrics.jsonl records after the first, so
without start-up and warm-up), the speedup over 1p x 1t, and the final training loss (the same global batches and
noise in every layout, so the losses agree up to float rounding). Wall time includes process start-up (torch
import, rendezvous), which torchrun pays once per process.

    GENFORGE_DATA=/tmp/gfdata .venv/bin/python benchmarks/ddp_scaling.py --json runs/ddp_scaling.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_runs import summary, train  # noqa: E402

CONFIGS = {  # name: (config, steps, overrides, has BatchNorm)
    "gpt-baby": ("shakespeare/gpt_char_baby", 300, [], False),
    "dcgan": ("mnist/dcgan", 200, [], True),
}


def train_once(config: str, steps: int, extra: list[str], procs: int, threads: int, root: Path,
               sync_bn: bool = True) -> dict:
    sets = ["train.val_every=0", f"train.sync_batchnorm={str(sync_bn).lower()}", *extra]
    run, wall = train(config, steps, sets, root, f"{procs}p{threads}t", nproc=procs, threads=threads)
    got = summary(run)
    return {"throughput": got["throughput"], "wall": wall, "unit": got["unit"], "loss": got["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    n = args.nproc
    layouts = [(1, 1, True), (1, n, True), (n, 1, True), (n, 1, False)]
    root = Path(tempfile.mkdtemp(prefix="genforge-ddp-"))
    results = {}
    for name in args.configs.split(","):
        config, steps, extra, has_bn = CONFIGS[name]
        mine = [(p, t, sync) for p, t, sync in layouts if sync or has_bn]
        label = {(p, t, sync): f"{p}p x {t}t" + ("" if sync else ", per-rank BN") for p, t, sync in mine}
        got: dict[str, list[dict]] = {label[key]: [] for key in mine}
        for _ in range(args.rounds):
            for p, t, sync in mine:
                got[label[(p, t, sync)]].append(train_once(config, steps, extra, p, t, root, sync))
        base = statistics.median(g["throughput"] for g in got["1p x 1t"])
        results[name] = {"config": config, "steps": steps, "layouts": {
            layout: {"throughput": statistics.median(g["throughput"] for g in runs),
                     "speedup": statistics.median(g["throughput"] for g in runs) / base,
                     "wall": statistics.median(g["wall"] for g in runs), "unit": runs[0]["unit"],
                     "loss": runs[0]["loss"]} for layout, runs in got.items()}}
        print(json.dumps({name: results[name]}), flush=True)
    print(f"\n{os.cpu_count()} CPUs, median of {args.rounds} rounds\n")
    print("| config (steps) | layout | throughput | speedup vs 1p x 1t | wall s | final loss |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        for layout, v in r["layouts"].items():
            loss = " ".join(f"{k}={x:.4f}" for k, x in v["loss"].items())
            print(f"| {r['config']} ({r['steps']}) | {layout} | {v['throughput']:.0f} {v['unit']}/s | "
                  f"{v['speedup']:.2f}x | {v['wall']:.1f} | {loss} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpus": os.cpu_count(), "rounds": args.rounds, "results": results},
                                              indent=1))


if __name__ == "__main__":
    main()
