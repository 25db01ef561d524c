#!/usr/bin/env python3
"""The GPU path, checked: one GAN and one GPT config trained on CUDA in fp32, bf16 and fp16, on one GPU and, where
the machine has several, with `--nproc <all GPUs>` (torchrun, nccl); plus the 1-vs-N-process equivalence on CUDA.
For a machine lent with a GPU (the device tool): embedded data only (mnist-mini, shakespeare-mini), no downloads.

Prints a markdown table (config, layout, precision, throughput, final loss) and writes `--json`; exits non-zero
when a run fails or the N-process weights differ from the 1-process weights by more than `--tolerance`.

    python benchmarks/gpu_check.py --json $OUT/gpu_check.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_runs import summary, train  # noqa: E402

CONFIGS = {  # name: (config, steps, overrides); embedded data sets, sized for seconds on a GPU
    "gan": ("quickstart", 400, ["train.batch_size=64"]),
    "gpt": ("shakespeare/gpt_char_baby", 400, ["data.name=shakespeare-mini", "train.batch_size=64"]),
}
# The N-process weights are checked against 1 process for the GPT only: the GAN's Adam turns the float noise of
# gradients that are zero in exact math (conv biases before BatchNorm) into full-size steps (tests/test_distributed.py
# checks the GAN with SGD); its difference is reported.
CHECKED = {"gpt"}


def run(config: str, steps: int, extra: list[str], precision: str, nproc: int, root: Path, device: str) -> Path:
    sets = [f"train.precision={precision}", f"train.device={device}", "train.channels_last=true",
            "train.val_every=0", *extra]
    return train(config, steps, sets, root, f"{precision}-{nproc}", nproc=nproc)[0]


def lossy(got: dict) -> dict:
    return {"throughput": got["throughput"], "unit": got["unit"], "loss": got["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script itself (2 gloo processes)")
    parser.add_argument("--steps", type=int, help="steps per run (default: each config's)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a machine with a GPU (--device cpu for a dry run)")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 2
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (dry run)"
    print(f"{gpus} x {name}, torch {torch.__version__}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="genforge-gpu-"))
    rows, failures = [], []
    for label, (config, steps, extra) in CONFIGS.items():
        steps = args.steps or steps
        for precision in ("fp32", "bf16", "fp16"):
            one = run(config, steps, extra, precision, 1, root, args.device)
            rows.append({"config": label, "procs": 1, "precision": precision, **lossy(summary(one))})
            if gpus > 1 and precision == "fp32":
                many = run(config, steps, extra, precision, gpus, root, args.device)
                rows.append({"config": label, "procs": gpus, "precision": precision, **lossy(summary(many))})
                from safetensors.torch import load_file

                final = sorted(one.glob("step-*"))[-1].name
                a, b = load_file(one / final / "model.safetensors"), load_file(many / final / "model.safetensors")
                diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
                rows[-1]["max_weight_difference"] = diff
                if label in CHECKED and diff > args.tolerance:
                    failures.append(f"{label}: {gpus} processes differ from 1 by {diff}")
            print(json.dumps(rows[-1]), flush=True)
    print("\n| config | processes | precision | throughput | final loss |\n|---|---|---|---|---|")
    for r in rows:
        loss = " ".join(f"{k}={v:.4f}" for k, v in r["loss"].items())
        print(f"| {r['config']} | {r['procs']} | {r['precision']} | {r['throughput']:.0f} {r['unit']}/s | {loss} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpus": gpus, "device": name, "rows": rows}, indent=1))
    if failures:
        raise SystemExit("\n".join(failures))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "4")
    main()
