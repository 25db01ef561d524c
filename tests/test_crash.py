"""SIGKILL a training run at deterministic points — during steps, inside checkpoint writes, while pruning, while
replacing `latest` — resume it, and check that it ends bit-identical to an uninterrupted run, that metrics.jsonl has
every step once, and that no temporary file survives the resume. A GAN (two groups, EMA, n_critic 2), a GPT
(token data, val loss), a VAE (the KL warm-up's clock, EMA) and a class-conditional diffusion model (label dropout,
random timesteps, EMA) and a sentence VAE (an epoch's batch order, word dropout, the cyclical annealing
clock). The fast tier kills at a few points; `-m slow` at every point of every kind."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crash_child import TARGETS, signal_at
from genforge.checkpoint import TEMPORARY, step_dirs
from genforge.cli import main

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "gan": (str(REPO / "configs" / "debug" / "gan.yaml"),
            ["train.steps=12", "train.checkpoint_every=3", "train.keep_last=2", "train.log_every=3",
             "train.sample_every=6", "train.ema_decay=0.9", "model.n_critic=2", "train.threads=1"]),
    "gpt": (str(REPO / "configs" / "debug" / "gpt.yaml"),
            ["train.steps=8", "train.checkpoint_every=2", "train.keep_last=2", "train.log_every=2",
             "train.sample_every=4", "train.threads=1"]),
    "vae": (str(REPO / "configs" / "debug" / "vae.yaml"),
            ["train.steps=8", "train.checkpoint_every=2", "train.keep_last=2", "train.log_every=2",
             "train.sample_every=4", "train.threads=1", "model.kl_warmup_steps=6", "train.ema_decay=0.9"]),
    "diffusion": (str(REPO / "configs" / "debug" / "diffusion.yaml"),
                  ["train.steps=6", "train.checkpoint_every=2", "train.keep_last=2", "train.log_every=2",
                   "train.sample_every=3", "train.threads=1", "model.num_classes=10", "sample.steps=3"]),
    "text_vae": (str(REPO / "configs" / "debug" / "text_vae.yaml"),
                 ["train.steps=8", "train.checkpoint_every=2", "train.keep_last=2", "train.log_every=2",
                  "train.sample_every=4", "train.threads=1", "model.anneal=cyclical", "model.word_dropout=0.3",
                  "model.dropout=0.1"]),
    "captioner": (str(REPO / "configs" / "debug" / "captioner.yaml"),
                  ["train.steps=8", "train.checkpoint_every=2", "train.keep_last=2", "train.log_every=2",
                   "train.sample_every=4", "train.threads=1", "model.dropout=0.1"]),
    "vocoder": (str(REPO / "configs" / "debug" / "vocoder.yaml"),
                ["train.steps=8", "train.checkpoint_every=2", "train.keep_last=2", "train.log_every=2",
                 "train.sample_every=4", "train.threads=1", "train.ema_decay=0.9"]),
    "tts": (str(REPO / "configs" / "debug" / "tts.yaml"),
            ["train.steps=8", "train.checkpoint_every=2", "train.keep_last=2", "train.log_every=2",
             "train.sample_every=4", "train.threads=1", "model.dropout=0.1"]),
}
# (point, K): the K-th call of that function in the run gets the SIGKILL (tests/crash_child.py says which)
FAST_POINTS = {
    "gan": [("batch", 14), ("weights", 1), ("weights", 4), ("state", 3), ("rename", 5), ("prune", 1), ("latest", 3), ("latest", 5)],
    "gpt": [("batch", 3), ("state", 2), ("rename", 3), ("prune", 1), ("latest", 2)],
    "vae": [("batch", 5), ("weights", 2), ("latest", 2)],  # the KL warm-up clock is a buffer: resumed exactly
    "diffusion": [("batch", 3), ("state", 2)],  # label dropout, timesteps and noise come from the saved RNG
    "text_vae": [("batch", 3), ("weights", 2), ("latest", 2)],  # the epoch order, word dropout, annealing clock
    "captioner": [("batch", 3), ("state", 2)],  # the (image, caption) pair order, scenes drawn again, dropout
    "tts": [("batch", 3), ("weights", 2)],  # the length-bucketed clip order, dropout
    "vocoder": [("batch", 3), ("state", 2)],  # the crops' clips and offsets, both groups' optimizers, the EMA
}
SLOW_POINTS = {family: [(point, k) for point in TARGETS for k in range(1, 9)] for family in RUNS}


def _args(family: str, run: Path, *extra: str) -> list[str]:
    config, settings = RUNS[family]
    args = ["train", config, "--run-dir", str(run), *extra]
    for setting in settings:
        args += ["--set", setting]
    return args


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = {}
    for family in RUNS:
        runs[family] = tmp_path_factory.mktemp("reference") / family
        assert main(_args(family, runs[family])) == 0
    return runs


def run_killed(point: str, k: int, args: list[str]) -> int:
    """Run the CLI in a forked child (it starts at once: torch and genforge are already imported) that SIGKILLs
    itself at the K-th call of `point`; return its wait status as subprocess does (-9 for SIGKILL)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            signal_at(point, {k})
            code = main(args)
        finally:
            os._exit(locals().get("code", 1))
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _crash_and_resume(family: str, point: str, k: int, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    code = run_killed(point, k, _args(family, run))
    if code == 0:
        pytest.skip(f"the run makes fewer than {k} calls of {point}")  # only in the exhaustive slow tier
    assert code == -signal.SIGKILL
    final = [p.name for p in step_dirs(reference)]  # oldest first, by step number
    if (run / final[-1] / "train_state.pt").is_file():
        # killed after the last checkpoint was in place (while pruning or pointing `latest` at it): the run is
        # complete; the resume says so (exit 2), and opening the run repaired `latest` and removed temporaries
        assert main(_args(family, run, "--resume")) == 2
        assert set(final) <= {p.name for p in run.glob("step-*")}  # an old one pruning did not reach may stay
    else:
        assert main(_args(family, run, "--resume")) == 0
        assert [p.name for p in step_dirs(run)] == final
    assert (run / "latest").read_text().strip() == final[-1]
    for name in ["model.safetensors", "ema.safetensors"]:
        if (reference / final[-1] / name).exists():
            a, b = load_file(reference / final[-1] / name), load_file(run / final[-1] / name)
            different = [key for key in a if not torch.equal(a[key], b[key])]
            assert a.keys() == b.keys() and not different, f"{name}: {different[:5]} differ"
    ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    loss_keys = [key for key in ref[0] if key.endswith("loss")]
    assert [[r.get(key) for key in loss_keys] for r in got] == [[r.get(key) for key in loss_keys] for r in ref]
    leftovers = [p.relative_to(run).as_posix() for p in run.rglob("*") if TEMPORARY.match(p.name)]
    assert not leftovers, f"temporary files survived the resume: {leftovers}"


@pytest.mark.parametrize(("family", "point", "k"), [(f, p, k) for f, points in FAST_POINTS.items() for p, k in points])
def test_sigkill_at_a_point_then_resume_is_bit_identical(family: str, point: str, k: int,
                                                         reference: dict[str, Path], tmp_path: Path) -> None:
    _crash_and_resume(family, point, k, reference[family], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "point", "k"), [(f, p, k) for f, points in SLOW_POINTS.items() for p, k in points])
def test_sigkill_everywhere_then_resume_is_bit_identical(family: str, point: str, k: int,
                                                         reference: dict[str, Path], tmp_path: Path) -> None:
    _crash_and_resume(family, point, k, reference[family], tmp_path)
