"""A run killed with SIGKILL at an arbitrary step and resumed ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from genforge.cli import main

REPO = Path(__file__).resolve().parents[1]
DEBUG_GAN = str(REPO / "configs" / "debug" / "gan.yaml")
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
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genforge.cli", *_args(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "step-30").exists():  # kill somewhere after the third checkpoint
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_before = sorted(p.name for p in killed.glob("step-*"))
    assert "step-120" not in steps_before

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
