#!/usr/bin/env python3
"""GPT training speed: nanoGPT's CPU "baby GPT" against `genforge train`, side by side in one run.

The reference is nanoGPT's own train.py from a checkout outside this repo (--nanogpt), run exactly as its README
runs the CPU baby GPT:

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
        --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=N --lr_decay_iters=N
        --dropout=0.0

(plus --out_dir in the scratch dir, --always_save_checkpoint=True so that the last model is the one evaluated, and
--eval_interval=N when N is not a multiple of 250 so that the last step is evaluated). Its data dir is prepared
once, without a download: Tiny Shakespeare's input.txt is copied from genforge's data root into
data/shakespeare_char/ and nanoGPT's own prepare.py turns it into train.bin/val.bin/meta.pkl.

genforge runs `genforge train configs/shakespeare/gpt_char_baby.yaml` (nanoGPT's settings; train.steps and the
decay length set to N) and, with --fast, configs/shakespeare/gpt_char_baby_fast.yaml as shipped (or with
--fast-steps). Every run is a subprocess; the runs alternate with a large fp32 torch.mm (the peak FLOP/s of this
machine for the model FLOPs utilization) so that a busy machine hits all of them alike. With --repeat R the
sequence [mm, nanoGPT, genforge..., mm] is run R times and medians are reported.

Measured per run:
- wall_s: the process from start to exit (imports, data, training, evaluation, samples, checkpoints).
- tokens_per_s: median over the run of the per-step throughput (nanoGPT: 768 / each iteration's time; genforge: the
  `throughput` records of metrics.jsonl), so evaluation pauses do not count.
- mfu: model.flops_per_token() * tokens_per_s / the torch.mm FLOP/s (6N + 12 * n_layer * n_embd * block_size per
  token, the formula of nanoGPT's estimate_mfu and the PaLM paper).
- val_loss: the run's own last validation loss (nanoGPT: 20 random val batches; genforge: 20 fixed ones), and
  time_to_target_s: wall time until the first validation loss <= --target (lines time-stamped as they appear).
- common_val_loss: both final models evaluated here on the same 100 fixed windows (12 x 64) of nanoGPT's val.bin,
  so that the two loss numbers are measured the same way.

Example (the short run first, then at most two full ones)::

    .venv/bin/python benchmarks/gpt_train.py --nanogpt /work/.bench/nanoGPT --iters 200
    .venv/bin/python benchmarks/gpt_train.py --nanogpt /work/.bench/nanoGPT --iters 2000 --fast

The last stdout line is one JSON object with the results; a markdown table precedes it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BABY = dict(block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128)
NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                 "--log_interval=1", *(f"--{k}={v}" for k, v in BABY.items()), "--dropout=0.0"]
GENFORGE = [sys.executable, "-c", "import sys; from genforge.cli import main; sys.exit(main(sys.argv[1:]))"]


# --------------------------------------------------------------------------------------------------------------
# Peak: a large fp32 matmul


def matmul_flops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t)


# --------------------------------------------------------------------------------------------------------------
# Running a process with time-stamped output


def run_timed(cmd: list[str], cwd: Path, log_path: Path,
              watch: Path | None = None) -> tuple[float, list[tuple[float, str]]]:
    """Run cmd; return its wall time and (seconds since start, line) for each stdout line, or, with `watch`, for
    each line appended to that file while it runs (genforge's metrics.jsonl)."""
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with open(log_path, "w") as log:
        # unbuffered: a piped Python child otherwise writes its lines in 8 KB blocks, and each line's time stamp
        # would be when its block arrived, up to a hundred nanoGPT iterations late
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE if watch is None else log,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if watch is None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((time.perf_counter() - start, line.rstrip("\n")))
                log.write(line)
        else:
            stop = threading.Event()

            def tail() -> None:
                pos, partial = 0, ""
                while True:
                    finished = stop.is_set()
                    if watch.exists():
                        with open(watch) as f:
                            f.seek(pos)
                            chunk = f.read()
                            pos = f.tell()
                        now = time.perf_counter() - start
                        partial += chunk
                        *complete, partial = partial.split("\n")
                        lines.extend((now, line) for line in complete)
                    if finished:
                        return
                    time.sleep(0.1)

            thread = threading.Thread(target=tail)
            thread.start()
            proc.wait()
            stop.set()
            thread.join()
        proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]}... failed with exit code {proc.returncode}; see {log_path}")
    return wall, lines


# --------------------------------------------------------------------------------------------------------------
# nanoGPT


def prepare_nanogpt_data(nanogpt: Path) -> Path:
    data_dir = nanogpt / "data" / "shakespeare_char"
    if (data_dir / "train.bin").exists() and (data_dir / "meta.pkl").exists():
        return data_dir
    from genforge.data.download import data_root, raw_dir

    source = raw_dir("tinyshakespeare", data_root(None)) / "input.txt"
    if not source.exists():
        raise SystemExit(f"{source} is missing: run `genforge data fetch tinyshakespeare --from DIR` first")
    shutil.copyfile(source, data_dir / "input.txt")
    # prepare.py imports requests for its download, which is skipped when input.txt exists: stub the module
    stub = ("import runpy, sys, types; sys.modules['requests'] = types.ModuleType('requests'); "
            "runpy.run_path('prepare.py')")
    subprocess.run([sys.executable, "-c", stub], cwd=data_dir, check=True, stdout=subprocess.DEVNULL)
    return data_dir


def run_nanogpt(nanogpt: Path, iters: int, work: Path, target: float, label: str = "nanogpt",
                flags: list[str] | None = None, decay_iters: int | None = None, eval_interval: int | None = None,
                tokens_per_step: int = BABY["batch_size"] * BABY["block_size"]) -> dict[str, Any]:
    """nanoGPT's train.py for `iters` iterations: the baby GPT (NANOGPT_FLAGS) unless `flags` says otherwise; with
    `decay_iters` > iters, the first `iters` iterations of a longer schedule."""
    out_dir = work / f"{label}-out"
    flags = NANOGPT_FLAGS if flags is None else flags
    eval_interval = eval_interval or (250 if iters % 250 == 0 else iters)
    schedule = [f"--max_iters={iters}", f"--lr_decay_iters={decay_iters or iters}"]
    cmd = [sys.executable, "train.py", *flags, *schedule,
           f"--eval_interval={eval_interval}", f"--out_dir={out_dir}", "--always_save_checkpoint=True"]
    wall, lines = run_timed(cmd, nanogpt, work / f"{label}.log")
    step_ms = [float(m.group(1)) for _, line in lines
               if (m := re.match(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", line))]
    vals = [(t, int(m.group(1)), float(m.group(2))) for t, line in lines
            if (m := re.match(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", line))]
    return {
        "name": "nanoGPT",
        "command": "python train.py " + " ".join(flags + schedule),
        "steps": iters,
        "wall_s": wall,
        "tokens_per_s": tokens_per_step / (statistics.median(step_ms[5:] or step_ms) / 1000),
        "val_loss": vals[-1][2],
        "val_curve": [(step, loss) for _, step, loss in vals],
        "time_to_target_s": next((t for t, _, loss in vals if loss <= target), None),
        "checkpoint": str(out_dir / "ckpt.pt"),
    }


# --------------------------------------------------------------------------------------------------------------
# genforge


def run_genforge(config: Path, steps: int | None, work: Path, target: float, extra: list[str] | None = None,
                 label: str | None = None) -> dict[str, Any]:
    """`genforge train config` (plus --set `extra`) in work/genforge-<label or the config's name>."""
    label = label or config.stem
    run_dir = work / f"genforge-{label}"
    overrides = ["train.progress=false", *(extra or [])]
    if steps is not None:
        overrides += [f"train.steps={steps}", f"train.optim.decay_steps={steps}"]
    cmd = [*GENFORGE, "train", str(config), "--run-dir", str(run_dir), *(a for o in overrides for a in ("--set", o))]
    wall, lines = run_timed(cmd, REPO, work / f"genforge-{label}.log", watch=run_dir / "metrics.jsonl")
    records = [(t, json.loads(line)) for t, line in lines if line.strip()]
    throughput = [r["throughput"] for _, r in records if "throughput" in r]
    vals = [(t, r["step"], r["val/loss"]) for t, r in records if "val/loss" in r]
    shown = " ".join(f"--set {o}" for o in overrides if o != "train.progress=false")
    return {
        "name": f"genforge {label if label != config.stem else config.name}",
        "command": f"genforge train {config.relative_to(REPO)} {shown}".strip(),
        "steps": records[-1][1]["step"],
        "wall_s": wall,
        "tokens_per_s": statistics.median(throughput[1:] or throughput),
        "val_loss": vals[-1][2],
        "val_curve": [(step, loss) for _, step, loss in vals],
        "time_to_target_s": next((t for t, _, loss in vals if loss <= target), None),
        "checkpoint": str(run_dir),
    }


# --------------------------------------------------------------------------------------------------------------
# The same validation loss for both final models


def common_val_losses(runs: list[dict[str, Any]], nanogpt: Path, data_dir: Path, batches: int = 100) -> None:
    import pickle

    import numpy as np
    import torch
    import torch.nn.functional as F

    from genforge import sampling

    val = torch.from_numpy(np.fromfile(data_dir / "val.bin", dtype=np.uint16).astype(np.int64))
    B, T = BABY["batch_size"], BABY["block_size"]
    starts = torch.randint(len(val) - T, (batches, B), generator=torch.Generator().manual_seed(0))
    windows = val[starts[..., None] + torch.arange(T + 1)]  # (batches, B, T + 1)
    stoi = pickle.loads((data_dir / "meta.pkl").read_bytes())["stoi"]
    sys.path.insert(0, str(nanogpt))
    import model as nanogpt_model

    for run in runs:
        if run["name"] == "nanoGPT":
            ckpt = torch.load(run["checkpoint"], map_location="cpu", weights_only=False)  # nanoGPT's own pickle
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
                model = nanogpt_model.GPT(nanogpt_model.GPTConfig(**ckpt["model_args"]))
            model.load_state_dict(ckpt["model"])
            logits_of = lambda x: model(x, x)[0]  # noqa: E731  (with targets nanoGPT returns all positions)
        else:
            model = sampling.load(run["checkpoint"])
            ids = {c: model.tokenizer.encode(c)[0] for c in stoi}
            assert ids == stoi, "genforge's char vocabulary differs from nanoGPT's"
            logits_of = model
        model.eval()
        with torch.no_grad():
            losses = [F.cross_entropy(logits_of(w[:, :-1].contiguous()).flatten(0, 1), w[:, 1:].flatten()).item()
                      for w in windows]
        run["common_val_loss"] = sum(losses) / len(losses)


# --------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (outside this repo)")
    parser.add_argument("--iters", type=int, default=2000, help="steps of nanoGPT and of gpt_char_baby.yaml")
    parser.add_argument("--fast", action="store_true", help="also run configs/shakespeare/gpt_char_baby_fast.yaml")
    parser.add_argument("--fast-steps", type=int, default=None, help="override the fast config's steps")
    parser.add_argument("--no-baby", action="store_true", help="skip gpt_char_baby.yaml (e.g. with --fast)")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole sequence this many times")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every run and the matmul")
    parser.add_argument("--target", type=float, default=1.88, help="val loss for time_to_target_s")
    parser.add_argument("--work", type=Path, default=None, help="scratch dir (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    nanogpt = args.nanogpt.resolve()
    data_dir = prepare_nanogpt_data(nanogpt)
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpt_train_"))).resolve()

    configs: list[tuple[Path, int | None]] = []
    if not args.no_baby:
        configs.append((REPO / "configs/shakespeare/gpt_char_baby.yaml", args.iters))
    if args.fast:
        configs.append((REPO / "configs/shakespeare/gpt_char_baby_fast.yaml", args.fast_steps))
    rounds: list[list[dict[str, Any]]] = []
    peaks: list[float] = []
    for r in range(args.repeat):
        round_dir = work / f"round-{r}"
        if round_dir.exists():
            shutil.rmtree(round_dir)
        round_dir.mkdir(parents=True)
        peaks.append(matmul_flops())
        runs = [run_nanogpt(nanogpt, args.iters, round_dir, args.target)]
        print(f"nanoGPT: {runs[-1]['wall_s']:.1f} s, val {runs[-1]['val_loss']:.4f}", flush=True)
        for config, steps in configs:
            runs.append(run_genforge(config, steps, round_dir, args.target))
            print(f"{runs[-1]['name']}: {runs[-1]['wall_s']:.1f} s, val {runs[-1]['val_loss']:.4f}", flush=True)
        peaks.append(matmul_flops())
        common_val_losses(runs, nanogpt, data_dir)
        rounds.append(runs)

    peak = statistics.median(peaks)
    from genforge.models.gpt import GPT, GPTConfig

    flops_per_token = GPT(GPTConfig.from_dict({"family": "gpt", "preset": "baby", "vocab_size": 65})).flops_per_token()
    summary = []
    for i in range(len(rounds[0])):
        med = lambda key: statistics.median(r[i][key] for r in rounds)  # noqa: E731
        ttt = [r[i]["time_to_target_s"] for r in rounds]
        summary.append({
            "name": rounds[0][i]["name"], "command": rounds[0][i]["command"], "steps": rounds[0][i]["steps"],
            "wall_s": med("wall_s"), "tokens_per_s": med("tokens_per_s"), "val_loss": med("val_loss"),
            "common_val_loss": med("common_val_loss"),
            "time_to_target_s": statistics.median(ttt) if None not in ttt else None,
            "mfu": flops_per_token * med("tokens_per_s") / peak,
            "val_curve": rounds[0][i]["val_curve"],
        })
    ref = summary[0]
    for row in summary:
        row["wall_ratio"] = row["wall_s"] / ref["wall_s"]
        row["tokens_per_s_ratio"] = row["tokens_per_s"] / ref["tokens_per_s"]
    print()
    print(f"peak: fp32 torch.mm 2048^2 = {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads); model "
          f"{flops_per_token / 1e6:.2f} MFLOP/token; {args.repeat} round(s), medians")
    print("| run | steps | wall (x nanoGPT) | tokens/s (x nanoGPT) | MFU | val loss (own) | val loss (common) | "
          f"time to val <= {args.target} |")
    print("|---|---|---|---|---|---|---|---|")
    for row in summary:
        ttt = f"{row['time_to_target_s']:.1f} s" if row["time_to_target_s"] is not None else "not reached"
        print(f"| {row['name']} | {row['steps']} | {row['wall_s']:.1f} s ({row['wall_ratio']:.2f}x) | "
              f"{row['tokens_per_s']:.0f} ({row['tokens_per_s_ratio']:.2f}x) | {100 * row['mfu']:.0f}% | "
              f"{row['val_loss']:.4f} | {row['common_val_loss']:.4f} | {ttt} |")
    print(json.dumps({"benchmark": "gpt_train", "peak_flops": peak, "peaks": peaks, "flops_per_token": flops_per_token,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "work": str(work),
                      "runs": summary}))


if __name__ == "__main__":
    main()
