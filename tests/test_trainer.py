"""The generic trainer on the debug GAN: pinned losses, EMA and TensorBoard files, retention, divergence."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genforge import config
from genforge.cli import main
from genforge.models.gan import GAN
from genforge.checkpoint import RunDir
from genforge.train import trainer
from genforge.train.optim import learning_rate

REPO = Path(__file__).resolve().parents[1]
DEBUG_GAN = REPO / "configs" / "debug" / "gan.yaml"


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pinned_losses_after_two_steps(tmp_path: Path) -> None:
    cfg = config.load_config(DEBUG_GAN, ["train.steps=2", "train.log_every=1", "train.sample_every=0"])
    trainer.train(cfg, RunDir(tmp_path / "run"))
    first, second = _records(tmp_path / "run")
    assert first["images_seen"] == 16 and second["images_seen"] == 32  # the generator step reuses the real batch
    got = [second["discriminator/loss"], second["generator/loss"]]
    assert got == pytest.approx(PINNED_LOSSES, rel=1e-4)


PINNED_LOSSES = [1.43516, 0.704799]


def test_generator_output_slice_is_pinned() -> None:
    torch.manual_seed(0)
    model = GAN(config.load_config(DEBUG_GAN).model)
    images = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert images[0, 0, 10, 10:13].tolist() == pytest.approx(PINNED_SLICE, rel=1e-4, abs=1e-9)


PINNED_SLICE = [-5.35836e-05, -6.11146e-05, 9.82297e-06]  # N(0, 0.02) init keeps a fresh G near 0


def test_ema_tensorboard_and_retention(tmp_path: Path) -> None:
    cfg = config.load_config(DEBUG_GAN, ["train.steps=6", "train.ema_decay=0.5", "train.tensorboard=true",
                                         "train.keep_last=2"])
    result = trainer.train(cfg, RunDir(tmp_path / "run"))
    run = result.run_dir
    assert sorted(p.name for p in run.glob("step-*")) == ["step-4", "step-6"]
    assert sorted(p.name for p in (run / "step-6").iterdir()) == [
        "config.yaml", "ema.safetensors", "model.safetensors", "train_state.pt"]
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard event file"
    state = torch.load(run / "step-6" / "train_state.pt", weights_only=True)
    assert state["step"] == 6 and state["data"] == {"epoch": 0, "index": 96}
    assert set(state["optimizers"]) == {"discriminator", "generator"}


def test_ema_weights_differ_from_raw_and_sampling_uses_them(tmp_path: Path) -> None:
    from genforge import sampling

    cfg = config.load_config(DEBUG_GAN, ["train.steps=4", "train.ema_decay=0.9"])
    trainer.train(cfg, RunDir(tmp_path / "run"))
    ema_model = sampling.load(tmp_path / "run")
    raw_model = sampling.load(tmp_path / "run", use_ema=False)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert not torch.equal(ema_model.sample(4, generator=g()), raw_model.sample(4, generator=g()))


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    calls = {"n": 0}
    original = GAN.loss

    def failing_loss(self, batch, group):  # type: ignore[no-untyped-def]
        out = original(self, batch, group)
        calls["n"] += 1
        if calls["n"] > 6:  # steps 1-3 are fine (two groups per step), step 4 diverges
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(GAN, "loss", failing_loss)
    run = tmp_path / "run"
    code = main(["train", str(DEBUG_GAN), "--run-dir", str(run), "--set", "train.steps=6"])
    err = capsys.readouterr().err
    assert code == 1
    assert "step 4: discriminator loss is nan" in err and "step-2" in err
    assert (run / "latest").read_text().strip() == "step-2"
    assert sorted(p.name for p in run.glob("step-*")) == ["step-2"]


def test_lr_schedule() -> None:
    opt = config.OptimSection(lr=1.0, warmup_steps=10, schedule="cosine", min_lr=0.1)
    assert learning_rate(opt, 0, 110) == pytest.approx(0.1)
    assert learning_rate(opt, 9, 110) == pytest.approx(1.0)
    assert learning_rate(opt, 60, 110) == pytest.approx(0.55)
    assert learning_rate(opt, 110, 110) == pytest.approx(0.1)
    linear = config.OptimSection(lr=1.0, schedule="linear")
    assert learning_rate(linear, 50, 100) == pytest.approx(0.5)


def test_unknown_group_override(tmp_path: Path) -> None:
    cfg = config.load_config(DEBUG_GAN, ["train.groups.discrimnator.lr=1e-3"])
    with pytest.raises(config.UserError, match="did you mean 'discriminator'"):
        trainer.train(cfg, RunDir(tmp_path / "run"))
    assert not list((tmp_path / "run").glob("step-*"))


def test_completed_run_needs_more_steps_to_resume(tmp_path: Path) -> None:
    cfg = config.load_config(DEBUG_GAN, ["train.steps=2"])
    trainer.train(cfg, RunDir(tmp_path / "run"))
    with pytest.raises(config.UserError, match="already completed 2 steps"):
        trainer.train(cfg, RunDir(tmp_path / "run"), resume=True)


def test_keep_best_checkpoints_the_lowest_val_loss_and_never_prunes_it(tmp_path: Path) -> None:
    from genforge import sampling

    cfg = config.load_config(REPO / "configs" / "debug" / "gpt.yaml",
                             ["train.steps=6", "train.val_every=1", "train.keep_best=true", "train.keep_last=1",
                              "train.checkpoint_every=0", "train.sample_every=0", "train.optim.lr=3e-3"])
    trainer.train(cfg, RunDir(tmp_path / "run"))
    run = tmp_path / "run"
    vals = {r["step"]: r["val/loss"] for r in _records(run) if "val/loss" in r}
    best_step = min(vals, key=vals.get)
    assert (run / "best").read_text().strip() == f"step-{best_step}"
    assert sorted(p.name for p in run.glob("step-*")) == sorted({f"step-{best_step}", "step-6"})
    state = torch.load(run / "step-6" / "train_state.pt", weights_only=True)
    assert state["best"]["step"] == best_step and state["best"]["value"] == pytest.approx(vals[best_step], rel=1e-5)
    assert sampling.load(run / "best").checkpoint_dir.name == f"step-{best_step}"


class ScriptedEvaluator:
    """An evaluator returning scripted values, recording the mode and weights it was called with."""

    def __init__(self, values: list[float]):
        self.values, self.calls = list(values), []

    def __call__(self, model: torch.nn.Module, cfg: config.RunConfig) -> dict[str, float]:
        self.calls.append((model.training, torch.is_grad_enabled()))
        return {"fd-fast2k-mnist-mini-test": self.values.pop(0), "recall-fast2k-mnist-mini-test": 0.5}


def test_eval_every_logs_results_keeps_best_by_metric_and_leaves_training_unchanged(tmp_path: Path) -> None:
    overrides = ["train.steps=6", "train.sample_every=0", "train.checkpoint_every=0", "train.keep_last=1",
                 "train.ema_decay=0.5"]
    plain = trainer.train(config.load_config(DEBUG_GAN, overrides), RunDir(tmp_path / "plain"))
    cfg = config.load_config(DEBUG_GAN, overrides + ["train.eval_every=2", "train.keep_best=true",
                                                     "train.best_metric=fd-fast", "train.val_every=1"])
    evaluator = ScriptedEvaluator([5.0, 3.0, 4.0])
    result = trainer.train(cfg, RunDir(tmp_path / "run"), evaluator=evaluator)
    run = result.run_dir
    assert evaluator.calls == [(False, False)] * 3  # eval mode, no autograd
    evals = [r for r in _records(run) if "eval/fd-fast2k-mnist-mini-test" in r]
    assert [(r["step"], r["eval/fd-fast2k-mnist-mini-test"]) for r in evals] == [(2, 5.0), (4, 3.0), (6, 4.0)]
    assert (run / "best").read_text().strip() == "step-4"  # lowest fd-fast, kept although keep_last = 1
    assert sorted(p.name for p in run.glob("step-*")) == ["step-4", "step-6"]
    # evaluation draws no global random numbers: the weights equal those of the run without it
    from safetensors.torch import load_file

    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(plain.checkpoint / name), load_file(run / "step-6" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_best_mode_max_and_a_best_metric_that_matches_nothing(tmp_path: Path) -> None:
    cfg = config.load_config(DEBUG_GAN, ["train.steps=4", "train.sample_every=0", "train.eval_every=2",
                                         "train.keep_best=true", "train.best_metric=fd-fast", "train.best_mode=max"])
    trainer.train(cfg, RunDir(tmp_path / "run"), evaluator=ScriptedEvaluator([5.0, 3.0]))
    assert (tmp_path / "run" / "best").read_text().strip() == "step-2"
    cfg = config.load_config(DEBUG_GAN, ["train.steps=4", "train.eval_every=2", "train.keep_best=true",
                                         "train.best_metric=fid"])
    with pytest.raises(config.UserError, match="matches no evaluation result.*fd-fast2k-mnist-mini-test"):
        trainer.train(cfg, RunDir(tmp_path / "other"), evaluator=ScriptedEvaluator([1.0]))
    with pytest.raises(config.UserError, match="no evaluator was given"):
        trainer.train(cfg, RunDir(tmp_path / "third"))


def test_keep_best_needs_something_to_track() -> None:
    with pytest.raises(config.ConfigError, match=r"train.val_every. is 0"):
        config.load_config(DEBUG_GAN, ["train.keep_best=true"])
    with pytest.raises(config.ConfigError, match=r"train.best_metric. = 'fd-fast'.*train.eval_every. is 0"):
        config.load_config(DEBUG_GAN, ["train.keep_best=true", "train.best_metric=fd-fast", "train.val_every=5"])


def test_max_minutes_ends_the_run_with_a_final_checkpoint_and_samples(tmp_path: Path) -> None:
    cfg = config.load_config(DEBUG_GAN, ["train.steps=1000", "train.max_minutes=1e-9", "train.sample_every=0"])
    result = trainer.train(cfg, RunDir(tmp_path / "run"))
    run = result.run_dir
    assert result.step == 1 and result.checkpoint.name == "step-1"
    assert sorted(p.name for p in run.glob("step-*")) == ["step-1"]
    assert (run / "samples" / "step-1.png").is_file()
    assert [r["step"] for r in _records(run)] == [1]
    with pytest.raises(config.UserError, match="already used its time budget.*train.max_minutes"):
        trainer.train(cfg, RunDir(run), resume=True)


def test_resume_with_another_best_mode_tracks_it_afresh(tmp_path: Path) -> None:
    common = ["train.sample_every=0", "train.checkpoint_every=1", "train.keep_last=1", "train.eval_every=1",
              "train.keep_best=true", "train.best_metric=fd-fast"]
    trainer.train(config.load_config(DEBUG_GAN, common + ["train.steps=2"]), RunDir(tmp_path / "run"),
                  evaluator=ScriptedEvaluator([1.0, 2.0]))
    assert (tmp_path / "run" / "best").read_text().strip() == "step-1"
    cfg = config.load_config(DEBUG_GAN, common + ["train.steps=4", "train.best_mode=max"])
    trainer.train(cfg, RunDir(tmp_path / "run"), resume=True, evaluator=ScriptedEvaluator([0.5, 0.25]))
    assert (tmp_path / "run" / "best").read_text().strip() == "step-3"  # max mode, counted from the resume
    state = torch.load(tmp_path / "run" / "step-4" / "train_state.pt", weights_only=True)
    assert state["best"] == {"value": -0.5, "step": 3, "metric": "fd-fast", "mode": "max"}


def test_text_runs_write_periodic_samples_as_text_files(tmp_path: Path) -> None:
    """The text kind's periodic samples stay samples/step-N.txt (its first suffix), as before the kind table."""
    cfg = config.load_config(str(Path(DEBUG_GAN).with_name("gpt.yaml")), ["train.val_every=0"])
    trainer.train(cfg, RunDir(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step-2.txt", "step-4.txt"]
    text = (tmp_path / "run" / "samples" / "step-4.txt").read_text()
    assert text.startswith("\njuJwdp'l.atE':iN")  # sample.n = 2 texts separated by a blank line, from a newline
