"""Proof that a family is one file: `tests/toy_family.py` (outside the package) registers two families, a data set,
metrics and a new output kind, and goes through `genforge train`, `--resume`, `sample` and `eval` via cli.main with
no edit to `src/genforge`: once with an existing kind (image) and once with its own kind (1-D signals as .npy)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from genforge.cli import main


@pytest.fixture(autouse=True)
def plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFORGE_PLUGINS", "toy_family")  # tests/ is on sys.path: pytest puts it there


def _config(tmp_path: Path, body: dict) -> str:
    train = {"steps": 4, "batch_size": 4, "log_every": 2, "sample_every": 2, "checkpoint_every": 2,
             "tensorboard": False, "progress": False, "optim": {"name": "sgd", "lr": 0.5, "betas": [0.0, 0.999]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": "toy", "dir": str(tmp_path / "runs")}, "train": train, **body}))
    return str(path)


def test_a_family_with_its_own_output_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, {"model": {"family": "toy-signal", "preset": "debug"},
                             "data": {"name": "toy-sines", "limit": 8}, "sample": {"n": 3, "noise": 0.0}})
    run = tmp_path / "runs" / "toy"
    assert main(["train", cfg]) == 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-2.npy", "step-4.npy"]
    assert sorted(p.name for p in (run / "step-4").iterdir()) == ["config.yaml", "model.safetensors",
                                                                 "train_state.pt"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["signals_seen"] for r in records] == [8, 16]  # the kind's unit, counted by the kind

    assert main(["train", "--resume", str(run), "--set", "train.steps=6"]) == 0
    assert (run / "latest").read_text().strip() == "step-6"
    mean = load_file(run / "step-6" / "model.safetensors")["mean"]
    # SGD (lr 0.5, d/dm of a mean over 8 points: 0.125 m per step) towards sines of amplitude U(0.5, 1.5): after 6
    # steps about 1 - 0.875**6 = 55% of the way to sin(2 pi * 2/7) = 0.975
    assert mean[2].item() == pytest.approx(0.53353, abs=1e-4)
    periodic = np.load(run / "samples" / "step-6.npy")
    assert periodic.shape == (3, 8) and np.allclose(periodic, mean.numpy())  # noise 0: the mean itself

    assert main(["sample", str(run), "--n", "5", "--set", "sample.noise=0.5"]) == 0
    samples = np.load(tmp_path / "samples.npy")  # the kind's default suffix
    assert samples.shape == (5, 8) and not np.allclose(samples, mean.numpy())
    assert main(["sample", str(run), "--set", "sample.bn_stats=batch"]) == 2
    assert "unknown key `sample.bn_stats` for a toy-signal model; allowed here: n, seed" in capsys.readouterr().err
    assert main(["sample", str(run), "--out", "x.png"]) == 2
    assert "signal samples must end in .npy" in capsys.readouterr().err

    assert main(["eval", str(run), "--json", "eval.json"]) == 0  # the kind's default metrics and n
    results = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert list(results) == ["signal_energy@32"]
    assert results["signal_energy@32"] == pytest.approx(float((mean**2).mean()), rel=1e-5)
    assert main(["eval", "--samples", "samples.npy", "--n", "4", "--json", "files.json"]) == 0
    assert list(json.loads((tmp_path / "files.json").read_text())["metrics"]) == ["signal_energy@4"]
    assert main(["eval", str(run), "--metrics", "fid"]) == 2
    assert "fid applies to image models; this one makes signal" in capsys.readouterr().err


def test_a_family_with_an_existing_output_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, {"model": {"family": "toy-image"}, "data": {"name": "mnist-mini", "limit": 64},
                             "sample": {"n": 4, "noise": 0.0}})
    run = tmp_path / "runs" / "toy"
    assert main(["train", cfg, "--set", "train.steps=2"]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.steps=4"]) == 0
    assert (run / "samples" / "step-4.png").is_file()
    assert main(["sample", str(run), "--out", str(tmp_path / "x.npz")]) == 0
    with np.load(tmp_path / "x.npz") as data:
        assert data["images"].shape == (4, 28, 28, 1)
    assert main(["eval", str(run), "--metrics", "pixel-mean", "--n", "8", "--json", str(tmp_path / "e.json")]) == 0
    assert list(json.loads((tmp_path / "e.json").read_text())["metrics"]) == ["pixel_mean@8"]
    assert main(["sample", str(run), "--prompt", "hi"]) == 2
    assert "--prompt applies to models conditioned on a prompt; this toy-image model is not" in capsys.readouterr().err


def test_a_kind_nobody_registered_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import toy_family

    from genforge import registry

    class Hologram(toy_family.ToySignal):
        output_kind = "hologram"

    registry.register("models", "toy-signal", Hologram)
    try:
        cfg = _config(tmp_path, {"model": {"family": "toy-signal"}, "data": {"name": "toy-sines"}})
        assert main(["train", cfg]) == 2
    finally:
        registry.register("models", "toy-signal", toy_family.ToySignal)
    err = capsys.readouterr().err
    assert "unknown output kind 'hologram'" in err and "register_kind" in err


def test_a_plugin_that_does_not_exist_is_named(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GENFORGE_PLUGINS", "no_such_plugin_module")
    assert main(["list", "models"]) == 2
    assert "plugin module 'no_such_plugin_module'" in capsys.readouterr().err
