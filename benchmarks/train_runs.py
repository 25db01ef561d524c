"""What the fixed-budget benchmarks share: train a shipped config in a subprocess, quietly, and summarize its
metrics.jsonl (precision.py, ddp_scaling.py, gpu_check.py)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUIET = ["train.sample_every=0", "train.checkpoint_every=0", "train.eval_every=0", "train.tensorboard=false",
         "train.progress=false"]  # only training: samples and the final checkpoint are written at the last step


def train(config: str, steps: int, sets: list[str], root: Path, label: str, *, nproc: int = 1,
          threads: int | None = None) -> tuple[Path, float]:
    """`genforge train CONFIG` for `steps` steps (6 log records) with `sets` (plus QUIET), in a fresh run dir under
    `root`, with `--nproc` when nproc > 1; returns (run dir, wall seconds, start-up included). A failed run stops
    the benchmark with its stderr."""
    run = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root)) / "run"
    command = [sys.executable, "-m", "genforge", "train", config, "--run-dir", str(run)]
    for s in [f"train.steps={steps}", f"train.log_every={max(1, steps // 6)}", *QUIET, *sets]:
        command += ["--set", s]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    if threads:
        command += ["--set", f"train.threads={threads}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{config} ({label}) failed:\n{done.stderr[-3000:]}")
    return run, wall


def summary(run: Path) -> dict:
    """Throughput (mean of the logged records after the first, so without warm-up), its unit, the last logged
    losses and the last validation loss (None without one)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "throughput" in r]
    return {"throughput": statistics.mean(r["throughput"] for r in logs[1:] or logs),
            "unit": next(k for k in logs[-1] if k.endswith("_seen")).removesuffix("_seen"),
            "losses": {k: v for k, v in logs[-1].items() if k.endswith("loss")},
            "val": next((r["val/loss"] for r in reversed(records) if "val/loss" in r), None)}
