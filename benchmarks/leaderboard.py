#!/usr/bin/env python3
"""Fixed-budget MNIST leaderboard: every shipped MNIST GAN, VAE and diffusion config and genforge's faithful
re-implementations of PyTorch-GAN's `gan.py` and `dcgan.py`, each trained for the same wall-clock budget of training
steps on full MNIST, then scored by the same code: FID-2k / KID / precision-recall in Inception space against the
full test split, and the fast classifier metrics.

Every entry is trained by `genforge train CONFIG --set train.max_minutes=M` (the budget counts the training steps,
data loading included, not the final sample grid and checkpoint), one at a time, with `--threads` torch threads
and, with `--cpus`, pinned by `taskset` to those cores, so no two entries ever share a core. Then each run is scored
with `genforge eval RUN --metrics ... --n 2000 --ref mnist:test --json RUN/eval.json`.

    .venv/bin/python benchmarks/leaderboard.py --out runs/leaderboard --minutes 10 --threads 1 --cpus 0 \
        --classifier runs/mnist-classifier --stage all

Two more rows run PyTorch-GAN's own unmodified `gan.py` and `dcgan.py` (from a local checkout, `--pytorch-gan`)
under the same budget through `benchmarks/gan_reference.py --minutes M --samples-out`, and score the 2,000 images
their generator then makes (in train mode, as the scripts make their images) with `genforge eval --samples`.

Stages: `train` (skips entries whose run already finished), `eval` (skips entries that have eval.json), `table`
(prints the markdown table from the run dirs). The reference rows use PyTorch-GAN's architectures, losses,
optimizer and batch size (see benchmarks/configs/pytorchgan_*.yaml) but run in genforge's trainer, so within the
budget they take at least as many steps as the original scripts would (genforge's step is 1.7-2x faster, see
BENCHMARKS.md): the comparison favours the reference.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (name, config, reference?) in table order
ENTRIES = [
    ("dcgan", "configs/mnist/dcgan.yaml", False),
    ("wgan_gp", "configs/mnist/wgan_gp.yaml", False),
    ("sngan_hinge", "configs/mnist/sngan_hinge.yaml", False),
    ("cgan", "configs/mnist/cgan.yaml", False),
    ("vae", "configs/mnist/vae.yaml", False),
    ("cvae", "configs/mnist/cvae.yaml", False),
    ("ddpm", "configs/mnist/ddpm.yaml", False),
    ("ddpm_cond", "configs/mnist/ddpm_cond.yaml", False),
    ("pytorchgan_gan", "benchmarks/configs/pytorchgan_gan.yaml", True),
    ("pytorchgan_dcgan", "benchmarks/configs/pytorchgan_dcgan.yaml", True),
    # PyTorch-GAN's own unmodified scripts (benchmarks/gan_reference.py, budget mode), to check the re-implementations
    ("original_gan", "implementations/gan/gan.py", True),
    ("original_dcgan", "implementations/dcgan/dcgan.py", True),
]
IMAGE_METRICS = "fid,kid,pr,fd-fast,pr-fast,coverage"
FAMILY = {"vae": "vae", "cvae": "vae", "ddpm": "diffusion", "ddpm_cond": "diffusion"}  # the rest are GANs
CONDITIONAL = {"cgan", "cvae", "ddpm_cond"}  # scored for class accuracy too (samples cycle through the classes)


def genforge_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("genforge")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "genforge"]


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return (["taskset", "-c", cpus] + cmd) if cpus and shutil.which("taskset") else cmd


def finished(run: Path) -> bool:
    return (run / "train_summary.json").is_file()


def last_record(run: Path) -> dict:
    """The last training record of metrics.jsonl (the one with step counts)."""
    record: dict = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "images_seen" in row:
            record = row
    return record


def train(entries: list[tuple[str, str, bool]], args: argparse.Namespace, env: dict[str, str]) -> None:
    for name, config, _ in entries:
        run = Path(args.out) / name
        if finished(run):
            print(f"[train] {name}: done already ({run})", flush=True)
            continue
        if run.exists():
            shutil.rmtree(run)  # an interrupted run would not have had its whole budget: start over
        cmd = pinned(genforge_cmd() + [
            "train", str(ROOT / config), "--run-dir", str(run),
            "--set", f"train.max_minutes={args.minutes}", "--set", "train.steps=10000000",
            "--set", f"train.threads={args.threads}", "--set", "train.sample_every=0",
            "--set", "train.checkpoint_every=0", "--set", "train.tensorboard=false",
            "--set", "train.progress=false", "--set", f"run.seed={args.seed}",
        ], args.cpus)
        if name.startswith("original_"):
            run.mkdir(parents=True)
            cmd = pinned([sys.executable, str(ROOT / "benchmarks" / "gan_reference.py"), "--script",
                          name.removeprefix("original_"), "--repo", args.pytorch_gan, "--mnist-raw", args.mnist_raw,
                          "--minutes", str(args.minutes), "--threads", str(args.threads),
                          "--samples-out", str(run / "samples.npz"), "--samples-n", str(args.n),
                          "--json-out", str(run / "reference.json")], args.cpus)
        print(f"[train] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        if name.startswith("original_"):
            ref = json.loads((run / "reference.json").read_text())
            steps, seconds = ref["iterations_run"], ref["train_seconds"]
            record = {"step": steps, "images_seen": steps * ref["batch_size"], "elapsed": seconds}
        else:
            record = last_record(run)
        summary = {"config": config, "minutes": args.minutes, "threads": args.threads, "cpus": args.cpus,
                   "steps": record["step"], "images_seen": record["images_seen"], "train_seconds": record["elapsed"],
                   "wall_seconds": round(time.perf_counter() - t0, 1)}
        (run / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"[train] {name}: {summary}", flush=True)


def evaluate(entries: list[tuple[str, str, bool]], args: argparse.Namespace, env: dict[str, str]) -> None:
    for name, _, reference in entries:
        run = Path(args.out) / name
        if (run / "eval.json").is_file():
            print(f"[eval] {name}: done already", flush=True)
            continue
        metrics = IMAGE_METRICS + (",class-acc" if name in CONDITIONAL else "")
        what = ["--samples", str(run / "samples.npz")] if name.startswith("original_") else [str(run)]
        cmd = genforge_cmd() + ["eval", *what, "--metrics", metrics, "--n", str(args.n), "--ref", args.ref,
                                "--classifier", args.classifier, "--json", str(run / "eval.json")]
        if args.inception:
            cmd += ["--inception", args.inception]
        if reference and not name.startswith("original_"):  # PyTorch-GAN's scripts make their images with G in train mode (BatchNorm batch statistics)
            cmd += ["--set", "sample.bn_stats=batch", "--set", "sample.bn_batch=64"]
        print(f"[eval] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(pinned(cmd, args.eval_cpus), check=True, env=env, stdout=subprocess.DEVNULL)
        print(f"[eval] {name}: {time.perf_counter() - t0:.0f} s", flush=True)


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def pick(metrics: dict[str, float], prefix: str) -> float | None:
    """The value whose key starts with `prefix` followed by a count (fid2k-..., precision-fast2k-...)."""
    for key, value in metrics.items():
        if key.startswith(prefix) and key[len(prefix):len(prefix) + 1].isdigit() and not key.endswith("-std"):
            return value
    return None


def table(entries: list[tuple[str, str, bool]], args: argparse.Namespace) -> str:
    head = ("| entry | family | config | steps | images seen | images/s | FID-2k | KID-2k | precision | recall | "
            "fast FD-2k | fast P / R | classes (KL) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    best: dict[bool, tuple[float, str]] = {}
    best_family: dict[str, tuple[float, str]] = {}
    for name, config, reference in entries:
        run = Path(args.out) / name
        if not (run / "eval.json").is_file():
            continue
        summary = json.loads((run / "train_summary.json").read_text())
        m = json.loads((run / "eval.json").read_text())["metrics"]
        fid = pick(m, "fid")
        rate = summary["images_seen"] / summary["train_seconds"]
        label = (f"PyTorch-GAN `{name.split('_')[1]}.py` (original script)" if name.startswith("original_") else
                 f"PyTorch-GAN `{name.split('_')[1]}.py` (re-impl.)" if reference else f"genforge {name}")
        family = FAMILY.get(name, "gan")
        lines.append(
            f"| {label} | {family} | `{config}` | {summary['steps']:,} | "
            f"{summary['images_seen']:,} | {rate:,.0f} | "
            f"{fmt(fid, '.2f')} | {fmt(pick(m, 'kid'), '.4f')} | {fmt(pick(m, 'precision'), '.3f')} | "
            f"{fmt(pick(m, 'recall'), '.3f')} | {fmt(pick(m, 'fd-fast'), '.2f')} | "
            f"{fmt(pick(m, 'precision-fast'), '.3f')} / {fmt(pick(m, 'recall-fast'), '.3f')} | "
            f"{fmt(pick(m, 'classes_covered'), '.0f')} ({fmt(pick(m, 'label_kl_uniform'), '.3f')}) |")
        if fid is not None and (reference not in best or fid < best[reference][0]):
            best[reference] = (fid, name)
        if fid is not None and not reference and (family not in best_family or fid < best_family[family][0]):
            best_family[family] = (fid, name)
    if False in best and True in best:
        ratio = best[False][0] / best[True][0]
        lines.append("")
        lines.append(f"Best genforge ({best[False][1]}, FID-2k {best[False][0]:.2f}) / best reference "
                     f"({best[True][1]}, FID-2k {best[True][0]:.2f}) = **{ratio:.2f}x** (goal <= 0.5x)")
    if best_family:
        lines.append("")
        lines.append("Best genforge entry per family: " + ", ".join(
            f"{family} {name} {fid:.2f}" for family, (fid, name) in sorted(best_family.items(), key=lambda kv: kv[1])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/leaderboard", help="run dirs go here, one per entry")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per entry")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training")
    parser.add_argument("--cpus", default=None, help="taskset core list for training, e.g. 0")
    parser.add_argument("--eval-cpus", default=None, help="taskset core list for evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=2000, help="generated images per evaluation")
    parser.add_argument("--ref", default="mnist:test")
    parser.add_argument("--classifier", default="runs/mnist-classifier", help="classifier run for the fast metrics")
    parser.add_argument("--inception", default=None)
    parser.add_argument("--pytorch-gan", default="/work/.bench/PyTorch-GAN", help="PyTorch-GAN checkout (original_*)")
    parser.add_argument("--mnist-raw", default=str(ROOT.parent / "shared" / "data" / "mnist" / "raw"))
    parser.add_argument("--only", default=None, help="comma-separated entry names")
    parser.add_argument("--stage", choices=["train", "eval", "table", "all"], default="all")
    args = parser.parse_args(argv)
    entries = [e for e in ENTRIES if args.only is None or e[0] in args.only.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.stage in ("train", "all"):
        train(entries, args, env)
    if args.stage in ("eval", "all"):
        evaluate(entries, args, env)
    if args.stage in ("table", "all"):
        print(table(entries, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
