"""A run killed with SIGKILL in the middle of a step and resumed ends bit-identical to an uninterrupted run. The kill
is deterministic (tests/crash_child.py: at the 67th training batch, inside step 34 of this schedule, after the
third checkpoint), so it happens at the same point on a fast or a slow machine."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from genforge.cli import main

REPO = Path(__file__).resolve().parents[1]
DEBUG_GAN = str(REPO / "configs" / "debug" / "gan.yaml")
CRASH_CHILD = Path(__file__).with_name("crash_child.py")
# WGAN-GP with n_critic 2, EMA and dropout: every source of state the trainer must carry across a restart
SETTINGS = ["train.steps=120", "train.checkpoint_every=10", "train.keep_last=3", "train.sample_every=0",
            "train.log_every=5", "train.ema_decay=0.9", "train.threads=1", "model.loss=wgan-gp", "model.d_norm=layer",
            "model.n_critic=2", "model.d_dropout=0.1", "train.optim.schedule=cosine", "train.optim.warmup_steps=5"]


def _args(run_dir: Path) -> list[str]:
    args = ["train", DEBUG_GAN, "--run-dir", str(run_dir)]
    for s in SETTINGS:
        args += ["--set", s]
    return args


def test_sigkill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert main(_args(reference)) == 0

    killed = tmp_path / "killed"
    # n_critic 2: two fresh batches per step, so batch 67 is the first discriminator batch of step 34
    proc = subprocess.run([sys.executable, str(CRASH_CHILD), "batch", "67", "--", *_args(killed)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    steps_before = sorted(p.name for p in killed.glob("step-*"))
    assert steps_before == ["step-10", "step-20", "step-30"]

    assert main(["train", "--resume", str(killed)]) == 0
    for name in ["model.safetensors", "ema.safetensors"]:
        a = load_file(reference / "step-120" / name)
        b = load_file(killed / "step-120" / name)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {different[:5]} differ after resume (killed at {steps_before})"
    ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(5, 121, 5))  # no duplicates or gaps
    for key in ["discriminator/loss", "generator/loss", "discriminator/gp", "generator/lr"]:
        assert [r[key] for r in got] == [r[key] for r in ref], key
