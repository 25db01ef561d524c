"""Data-parallel training (torchrun, gloo, 2 processes on the 2 CPU cores): N processes with global batch B compute
what one process with batch B computes; a rank killed mid-run stops the others with a clear message, and the run
resumes exactly from its last checkpoint with another number of processes; bad launches are clear errors."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from genforge.cli import main
from genforge.models._draws import data_shard, draw_rows, draw_rows_like
from genforge.train import distributed, trainer

QUIET = ["--set", "train.progress=false"]


def genforge(*args: str, cwd: Path, timeout: float = 180,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genforge", "train", *args, *QUIET], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def weights(step_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(step_dir / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[tuple[int, str, float]]:
    return [(r["step"], k, v) for r in records(run) for k, v in r.items() if k.endswith("loss") or k.endswith("d_real")]


# --------------------------------------------------------------------------------------------------------------
# Equivalence: 2 gloo processes with global batch B == 1 process with batch B


@pytest.mark.parametrize("config, extra", [
    # GPT: gradient accumulation (DDP no_sync on the first micro-batch), validation loss reduced over the ranks
    ("debug/gpt", ["--set", "train.grad_accum=2", "--set", "train.steps=4"]),
    # GAN: two parameter groups (a DDP wrapper each), BatchNorm over the global batch, per-example latents; SGD,
    # because Adam turns the float noise of a gradient that is zero in exact math (a conv bias before BatchNorm)
    # into full-size steps of either sign, in one process as in two. (Measured: 2.6e-7 apart; 0.06 apart with
    # per-rank BatchNorm statistics.)
    ("debug/gan", ["--set", "train.steps=4", "--set", "train.optim.name=sgd", "--set", "train.optim.lr=0.02"]),
    # the other families that draw per-example noise in their loss: a VAE's ε and dynamic binarization, diffusion's
    # t, noise and label dropout, a sentence VAE's ε and word dropout
    ("debug/vae", []),
    ("debug/diffusion", []),
    ("debug/text_vae", []),
])
def test_two_processes_train_what_one_process_trains(config: str, extra: list[str], tmp_path: Path) -> None:
    one = genforge(config, "--run-dir", "one", *extra, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = genforge(config, "--run-dir", "two", *extra, "--nproc", "2", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert "data-parallel training: 2 processes (gloo)" in two.stderr
    run1, run2 = tmp_path / "one", tmp_path / "two"
    # only rank 0 wrote, and it wrote what the one-process run wrote
    assert files(run2) == files(run1)
    final = sorted(p.name for p in run1.glob("step-*"))[-1]
    assert max_difference(weights(run1 / final), weights(run2 / final)) < 2e-6
    # the logged losses are the means over the ranks, i.e. the global batch's losses
    for (s1, k1, v1), (s2, k2, v2) in zip(losses(run1), losses(run2), strict=True):
        assert (s1, k1) == (s2, k2) and v2 == pytest.approx(v1, rel=1e-5, abs=1e-6)
    # the data position is one state for any number of ranks
    state1, state2 = (torch.load(r / final / "train_state.pt", weights_only=True) for r in (run1, run2))
    for key, value in state1["data"].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(state2["data"][key]))
    assert state1["examples_seen"] == state2["examples_seen"]


# --------------------------------------------------------------------------------------------------------------
# A rank killed: the others stop at once with a clear message; the run resumes exactly, in another world size


def _worker_pids(marker: str) -> dict[int, int]:
    """{rank: pid} of the torchrun workers whose environment holds `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("GENFORGE_TEST_MARK") == marker and "RANK" in env and "TORCHELASTIC_RUN_ID" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def test_a_killed_rank_stops_the_run_which_resumes_exactly_in_one_process(tmp_path: Path) -> None:
    long = ["--set", "train.steps=100000", "--set", "train.checkpoint_every=10", "--set", "train.log_every=10",
            "--set", "train.val_every=0", "--set", "train.sample_every=0", "--set", "train.keep_last=2"]
    marker = str(tmp_path)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "genforge", "train", "debug/gpt", "--run-dir", "run", *long, *QUIET, "--nproc", "2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GENFORGE_TEST_MARK": marker})
    run = tmp_path / "run"
    try:
        deadline = time.monotonic() + 120
        while not (run / "step-20").is_dir():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-3000:]
            time.sleep(0.1)
        # the run dir's lock holds across the ranks: a second trainer is refused
        second = genforge("--resume", "run", cwd=tmp_path)
        assert second.returncode == 2 and "is in use by another genforge process" in second.stderr
        pids = _worker_pids(marker)
        assert sorted(pids) == [0, 1]
        os.kill(pids[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=60)  # no hang: the survivor fails fast, torchrun reports
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "rank 0: lost contact with the other ranks of the data-parallel run" in err
    assert "Signal 9 (SIGKILL) received" in err  # torchrun names the rank that died
    # resume in ONE process (the global batch is kept) and continue 10 steps past the last checkpoint
    last = max(int(p.name.split("-")[1]) for p in run.glob("step-*"))
    resumed = genforge("--resume", "run", "--set", f"train.steps={last + 10}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # an uninterrupted one-process run of the same length (the LR is constant, so train.steps changes nothing else)
    straight = genforge("debug/gpt", "--run-dir", "straight", *long, "--set", f"train.steps={last + 10}",
                        cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    final = f"step-{last + 10}"
    assert max_difference(weights(run / final), weights(tmp_path / "straight" / final)) < 1e-4
    assert [r["step"] for r in records(run)] == [r["step"] for r in records(tmp_path / "straight")]


def test_sigterm_stops_every_rank_at_the_same_step_after_a_checkpoint(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-m", "genforge", "train", "debug/gpt", "--run-dir", "run", "--set", "train.steps=100000",
         "--set", "train.checkpoint_every=1000", "--set", "train.log_every=5", "--set", "train.val_every=0",
         "--set", "train.sample_every=0", *QUIET, "--nproc", "2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    run = tmp_path / "run"
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-3000:]
            time.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    checkpoints = [p.name for p in run.glob("step-*")]
    # one checkpoint, not a step-1000: that of the step the ranks agreed to stop after
    assert len(checkpoints) == 1, (checkpoints, err[-3000:])
    step = int(checkpoints[0].split("-")[1])
    assert err.count(f"SIGTERM received: stopped after step {step}, checkpoint run/step-{step} written") == 1
    assert records(run)[-1]["step"] == step
    resumed = genforge("--resume", "run", "--set", f"train.steps={step + 2}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_evaluation_during_training_shards_generation_and_rank_0_scores_the_gathered_samples(tmp_path: Path) -> None:
    from genforge.evaluation.context import EvalContext
    from genforge.evaluation.protocols import evaluate
    from genforge.sampling import load

    extra = ["--set", "train.steps=80", "--set", "train.eval_every=80", "--set", "eval.n=6", "--set", "eval.seed=3",
             "--set", "eval.metrics=[distinct,repetition]", "--set", "sample.max_new_tokens=200"]
    two = genforge("debug/gpt", "--run-dir", "two", *extra, "--nproc", "2", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    logged = [r for r in records(tmp_path / "two") if "eval_seconds" in r]
    assert [r["step"] for r in logged] == [80]
    # the same numbers from the checkpoint: rank 0's 3 samples (seed 3), then rank 1's 3 (seed 4)
    pipeline = load(tmp_path / "two" / "step-80")
    samples = pipeline.generate(3, seed=3) + pipeline.generate(3, seed=4)
    ctx = EvalContext(pipeline=pipeline, n=6)
    ctx.preset_samples(samples)
    expected = evaluate(ctx, ["distinct", "repetition"])
    assert {k: pytest.approx(v, abs=1e-5) for k, v in expected.items()} == {
        k.removeprefix("eval/"): v for k, v in logged[0].items() if k.startswith("eval/")}


# --------------------------------------------------------------------------------------------------------------
# Bad launches: clear messages, exit code 2, nothing written


@pytest.mark.parametrize("args, message", [
    (["--nproc", "3"], "`train.batch_size` (4) is the global batch and must divide evenly over the processes; use "
                       "a multiple of 3, e.g. --set train.batch_size=3"),
    (["--nproc", "0"], "--nproc 0: use 1 to 1024 processes"),
])
def test_bad_launch_is_a_clear_error(args: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "debug/gpt", "--run-dir", str(tmp_path / "run"), *args, *QUIET])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_nproc_inside_torchrun_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "debug/gpt", "--run-dir", str(tmp_path / "run"), "--nproc", "2", *QUIET]) == 2
    assert "already started by torchrun (drop --nproc" in capsys.readouterr().err


def test_world_size_without_rank_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(distributed.UserError, match="RANK is missing"):
        distributed.from_env()


# --------------------------------------------------------------------------------------------------------------
# The pieces, in one process


def test_draw_rows_takes_this_ranks_rows_of_the_global_draw() -> None:
    torch.manual_seed(0)
    whole = torch.randn(8, 3)
    bern_p = torch.rand(8, 5)
    torch.manual_seed(1)
    whole_bern = torch.bernoulli(bern_p)
    for rank in (0, 1):
        with data_shard(rank, 2):
            torch.manual_seed(0)
            assert torch.equal(draw_rows(lambda m: torch.randn(m, 3), 4), whole[rank * 4:(rank + 1) * 4])
            torch.manual_seed(1)
            mine = draw_rows_like(torch.bernoulli, bern_p[rank * 4:(rank + 1) * 4])
            assert torch.equal(mine, whole_bern[rank * 4:(rank + 1) * 4])
    torch.manual_seed(0)
    assert torch.equal(draw_rows(lambda m: torch.randn(m, 3), 8), whole)  # outside a shard: the plain draw


def test_synced_batchnorm_shares_parameters_and_state_dict_and_is_plain_outside_a_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    params = list(model.parameters())
    keys = list(model.state_dict())
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    assert distributed.sync_batchnorm(model) == 2
    assert isinstance(model[1], distributed.SyncedBatchNorm) and isinstance(model[3], distributed.SyncedBatchNorm)
    assert list(model.parameters()) == params  # the optimizer's and EMA's references stay valid
    assert list(model.state_dict()) == keys  # checkpoints load into the plain model
    reference = nn.BatchNorm1d(4)
    reference.load_state_dict({k.removeprefix("1."): v for k, v in plain.items() if k.startswith("1.")})
    x = torch.randn(6, 4)
    assert torch.allclose(model[1](x), reference(x))  # no process group: an ordinary BatchNorm
    assert torch.allclose(model[1].running_mean, reference.running_mean)


def test_fp16_trains_with_a_loss_scaler_that_the_checkpoint_keeps(tmp_path: Path) -> None:
    from genforge.checkpoint import RunDir
    from genforge.config import load_config

    cfg = load_config("debug/gpt", ["train.precision=fp16", "train.progress=false"])
    result = trainer.train(cfg, RunDir(tmp_path / "run"))
    state = torch.load(result.checkpoint / "train_state.pt", weights_only=True)
    assert set(state["scalers"]) == {"model"} and state["scalers"]["model"]["scale"] == 65536.0
    assert all(r.get("model/loss", 3.0) < 5 for r in records(tmp_path / "run"))


def test_auto_precision_says_once_why_it_stays_fp32(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(trainer, "native_bf16", lambda device: False)
    with caplog.at_level(logging.INFO):
        assert trainer.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert "fp32, because this CPU has no native bf16" in caplog.text
    monkeypatch.setattr(trainer, "native_bf16", lambda device: True)
    assert trainer.resolve_precision("auto", torch.device("cpu")) == "bf16"
