#!/usr/bin/env python3
"""fp32 vs bf16 (`train.precision`) per family: training speed and the loss reached, side by side in one run.

For each config, `genforge train CONFIG --set train.precision=P` runs the family's steps (`--steps`: the same for
all) for P = fp32 and P = bf16, alternating the two `--rounds` times (the machine's drift hits both alike), same
seed and data. Reported per config and precision: training throughput (the kind's unit per second, the mean of
the metrics.jsonl records after the first, i.e. without warm-up), the last logged training loss(es) and the
validation loss at the last step (the same fixed val batches for both precisions), medians over the rounds; and
the bf16/fp32 speed ratio.

bf16 is autocast: weights, optimizer states and the loss stay fp32; matmuls and convolutions run in bf16. It is
only fast where the hardware has native bf16 (CPU flags avx512_bf16 or amx_bf16; the table says which); elsewhere
it is an emulation slower than fp32.

    GENFORGE_DATA=/tmp/gfdata .venv/bin/python benchmarks/precision.py --json runs/precision.json

Data: mnist, tinyshakespeare and imdb imported from ../shared/data (`genforge data fetch NAME --from DIR`), the
captioner's shapes are drawn on the fly.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_runs import summary, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = {  # family: (config, steps, extra overrides); steps sized for a few minutes per pair on one core
    "gan": ("mnist/dcgan", 300, []),
    "vae": ("mnist/vae", 300, []),
    "diffusion": ("mnist/ddpm", 200, ["sample.steps=10", "sample.n=16"]),
    "gpt": ("shakespeare/gpt_char_baby", 300, []),
    "sentence-vae": ("imdb/sentence_vae", 60, [f"data.path={SHARED / 'imdb' / 'imdb_subset.csv'}"]),
    "captioner": ("shapes/captioner", 200, []),
}


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return ",".join(found) or "none of avx2/avx512"


def train_once(config: str, extra: list[str], precision: str, steps: int, threads: int, root: Path) -> dict:
    run, _ = train(config, steps, [f"train.precision={precision}", f"train.val_every={steps}", "train.val_batches=10",
                                   *extra], root, precision, threads=threads)
    return summary(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--steps", type=int, help="steps per run for every family (default: each family's own)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="genforge-precision-"))
    results = {}
    for family in args.families.split(","):
        config, steps, extra = CONFIGS[family]
        steps = args.steps or steps
        runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for precision in ("fp32", "bf16"):
                runs[precision].append(train_once(config, extra, precision, steps, args.threads, root))
        row = {}
        for precision, got in runs.items():
            row[precision] = {
                "throughput": statistics.median(g["throughput"] for g in got),
                "val": statistics.median(g["val"] for g in got) if got[0]["val"] is not None else None,
                "losses": {k: statistics.median(g["losses"][k] for g in got) for k in got[0]["losses"]},
                "unit": got[0]["unit"]}
        row["speedup"] = row["bf16"]["throughput"] / row["fp32"]["throughput"]
        results[family] = {"config": config, "steps": steps, **row}
        print(json.dumps({family: results[family]}), flush=True)
    print(f"\n{platform.processor() or platform.machine()}, flags {cpu_flags()}, torch threads {args.threads}, "
          f"median of {args.rounds} rounds\n")
    print("| family (config, steps) | fp32 throughput | bf16 throughput | bf16 / fp32 | val loss fp32 | "
          "val loss bf16 |")
    print("|---|---|---|---|---|---|")
    for family, r in results.items():
        unit = r["fp32"]["unit"]
        val = [f"{r[p]['val']:.4f}" if r[p]["val"] is not None else "-" for p in ("fp32", "bf16")]
        print(f"| {family} ({r['config']}, {r['steps']}) | {r['fp32']['throughput']:.0f} {unit}/s | "
              f"{r['bf16']['throughput']:.0f} {unit}/s | {r['speedup']:.2f}x | {val[0]} | {val[1]} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"flags": cpu_flags(), "rounds": args.rounds,
                                               "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
