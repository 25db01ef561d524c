#!/usr/bin/env python3
"""GAN training throughput (images/s) and peak memory: genforge vs PyTorch-GAN, side by side in one run.

Each round runs, one after the other on the same machine, the reference script (via gan_reference.py, unmodified
code from a local PyTorch-GAN checkout) and genforge on the config that reproduces its architecture, batch size
and optimizer (benchmarks/configs/pytorchgan_*.yaml), then genforge's shipped MNIST configs. Rounds alternate
the order so that drift in machine load hits both sides. Reported: median images/s over rounds, the ratio
genforge / reference, and the peak RSS of each training process.

    .venv/bin/python benchmarks/gan_throughput.py --repo /work/.bench/PyTorch-GAN \
        --mnist-raw ../shared/data/mnist/raw --iters 100 --rounds 3

genforge reads full MNIST from its data root: run `genforge data fetch mnist --from ../shared/data/mnist/raw`
first. Prints a markdown table and writes --json-out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GENFORGE = [sys.executable, "-m", "genforge.cli"]

PAIRS = {  # reference script -> genforge config with the same architecture and batch size
    "dcgan": HERE / "configs" / "pytorchgan_dcgan.yaml",
    "gan": HERE / "configs" / "pytorchgan_gan.yaml",
}
SHIPPED = ["configs/mnist/dcgan.yaml", "configs/mnist/wgan_gp.yaml", "configs/mnist/sngan_hinge.yaml",
           "configs/mnist/cgan.yaml"]


def run_with_rss(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> tuple[str, float]:
    """Run a command; return its stdout and the peak RSS (MiB) of the process, from wait4."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return text, usage.ru_maxrss / 1024


def genforge_throughput(config: str, warmup: int, iters: int, threads: int | None) -> dict:
    """images/s over the steps after `warmup`, from metrics.jsonl (cumulative step time, no sampling/saving)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [*GENFORGE, "train", str(config), "--run-dir", str(run), "--set", f"train.steps={warmup + iters}",
               "--set", f"train.log_every={warmup}", "--set", "train.sample_every=0",
               "--set", "train.checkpoint_every=0", "--set", "train.tensorboard=false", "--set", "train.progress=false"]
        if threads:
            cmd += ["--set", f"train.threads={threads}"]
        started = time.perf_counter()
        _, rss = run_with_rss(cmd)
        wall = time.perf_counter() - started
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in records if "images_seen" in r}
    first, last = by_step[warmup], by_step[warmup + iters]
    images = last["images_seen"] - first["images_seen"]
    seconds = last["elapsed"] - first["elapsed"]
    return {"images_per_s": images / seconds, "peak_rss_mb": rss, "wall_s": wall, "steps": warmup + iters}


def reference_throughput(script: str, repo: str, mnist_raw: str, warmup: int, iters: int,
                         threads: int | None) -> dict:
    cmd = [sys.executable, str(HERE / "gan_reference.py"), "--script", script, "--repo", repo,
           "--mnist-raw", mnist_raw, "--iters", str(iters), "--warmup", str(warmup)]
    if threads:
        cmd += ["--threads", str(threads)]
    text, _ = run_with_rss(cmd)
    result = json.loads(text.strip().splitlines()[-1])
    return {"images_per_s": result["images_per_s"], "peak_rss_mb": result["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", required=True, help="local checkout of eriklindernoren/PyTorch-GAN (never committed)")
    p.add_argument("--mnist-raw", default=str(REPO.parent / "shared" / "data" / "mnist" / "raw"))
    p.add_argument("--iters", type=int, default=100, help="measured iterations per run")
    p.add_argument("--warmup", type=int, default=10, help="iterations excluded from timing")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    p.add_argument("--only", choices=["pairs", "shipped", "all"], default="all")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if args.iters % args.warmup:
        p.error("--iters must be a multiple of --warmup (genforge logs every --warmup steps)")

    results: dict[str, list[dict]] = {}
    for round_index in range(args.rounds):
        if args.only in ("pairs", "all"):
            for script, config in PAIRS.items():
                sides = [("ref", script), ("genforge", config)]
                if round_index % 2:
                    sides.reverse()
                for side, target in sides:
                    if side == "ref":
                        r = reference_throughput(script, args.repo, args.mnist_raw, args.warmup, args.iters, args.threads)
                        results.setdefault(f"PyTorch-GAN {script}.py", []).append(r)
                    else:
                        r = genforge_throughput(str(config), args.warmup, args.iters, args.threads)
                        results.setdefault(f"genforge {Path(config).name}", []).append(r)
                    print(f"round {round_index} {side} {script}: {r['images_per_s']:.1f} images/s", file=sys.stderr)
        if args.only in ("shipped", "all"):
            for config in SHIPPED:
                r = genforge_throughput(str(REPO / config), args.warmup, args.iters, args.threads)
                results.setdefault(f"genforge {config}", []).append(r)
                print(f"round {round_index} {config}: {r['images_per_s']:.1f} images/s", file=sys.stderr)

    summary = {name: {"images_per_s": statistics.median(r["images_per_s"] for r in runs),
                      "all_images_per_s": [round(r["images_per_s"], 1) for r in runs],
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)} for name, runs in results.items()}
    print("| run | images/s (median) | per round | peak RSS MiB | vs reference |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        ratio = ""
        for script, config in PAIRS.items():
            ref = summary.get(f"PyTorch-GAN {script}.py")
            if ref and name == f"genforge {Path(config).name}":
                ratio = f"{s['images_per_s'] / ref['images_per_s']:.2f}x"
        print(f"| {name} | {s['images_per_s']:.1f} | {s['all_images_per_s']} | {s['peak_rss_mb']:.0f} | {ratio} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
