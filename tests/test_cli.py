"""The CLI in-process: train -> sample (.png, .npz) -> list; every user mistake exits 2 with a message that names
the flag or key, never a traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genforge import checkpoint
from genforge.cli import main

REPO = Path(__file__).resolve().parents[1]
DEBUG_GAN = str(REPO / "configs" / "debug" / "gan.yaml")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", DEBUG_GAN, "--run-dir", str(run), "--set", "model.num_classes=10"]) == 0
    return run


def test_train_writes_the_exact_run_layout(trained_run: Path) -> None:
    names = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*")}
    assert names == {
        ".lock",  # the run dir's lock, held while a trainer runs
        "config.yaml", "latest", "metrics.jsonl", "samples", "samples/step-2.png", "samples/step-4.png",
        "step-2", "step-2/config.yaml", "step-2/model.safetensors", "step-2/train_state.pt",
        "step-4", "step-4/config.yaml", "step-4/model.safetensors", "step-4/train_state.pt",
    }
    assert (trained_run / "latest").read_text().strip() == "step-4"


def test_sample_png_and_npz(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", str(trained_run), "--n", "10", "--seed", "1", "--out", str(tmp_path / "g.png")]) == 0
    grid = Image.open(tmp_path / "g.png")
    assert grid.mode == "L" and grid.size == (4 * 30 + 2, 3 * 30 + 2)  # ceil(sqrt(10)) = 4 columns, 3 rows
    assert main(["sample", str(trained_run / "step-2"), "--n", "5", "--class", "7", "--out", str(tmp_path / "s.npz")]) == 0
    data = np.load(tmp_path / "s.npz")
    assert data["images"].shape == (5, 28, 28, 1) and data["images"].dtype == np.uint8
    # same seed, same images; another seed differs
    main(["sample", str(trained_run), "--n", "5", "--class", "7", "--seed", "0", "--out", str(tmp_path / "a.npz")])
    main(["sample", str(trained_run), "--n", "5", "--class", "7", "--seed", "0", "--out", str(tmp_path / "b.npz")])
    main(["sample", str(trained_run), "--n", "5", "--class", "7", "--seed", "9", "--out", str(tmp_path / "c.npz")])
    a, b, c = (np.load(tmp_path / f"{k}.npz")["images"] for k in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_sample_flags(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--n 0 is out of range" in _error(capsys, ["sample", str(trained_run), "--n", "0"])
    assert "--n 5000 is out of range" in _error(capsys, ["sample", str(trained_run), "--n", "5000"])
    assert "--class 10 is out of range" in _error(capsys, ["sample", str(trained_run), "--class", "10"])
    assert "must end in .png" in _error(capsys, ["sample", str(trained_run), "--out", str(tmp_path / "x.jpg")])
    assert "does not exist" in _error(capsys, ["sample", str(tmp_path / "nope")])
    assert "only sample.* keys" in _error(capsys, ["sample", str(trained_run), "--set", "train.steps=3"])
    assert "--threads 0: use 1 to 256" in _error(capsys, ["sample", str(trained_run), "--threads", "0"])
    assert "--threads 0: use 1 to 256" in _error(capsys, ["eval", str(trained_run), "--threads", "0"])


def test_threads_flag_sets_torch_threads(trained_run: Path, tmp_path: Path) -> None:
    import torch

    try:
        assert main(["sample", str(trained_run), "--n", "2", "--threads", "2", "--out", str(tmp_path / "t.png")]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # conftest's setting for the rest of the suite


def test_class_on_unconditional_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "u"
    assert main(["train", DEBUG_GAN, "--run-dir", str(run), "--set", "train.steps=2"]) == 0
    assert "unconditional" in _error(capsys, ["sample", str(run), "--class", "3", "--out", str(tmp_path / "x.png")])


def test_bad_config_exits_2_naming_every_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["train", DEBUG_GAN, "--run-dir", str(tmp_path / "r"), "--set", "train.lrr=1",
                          "--set", "train.batch_size=zero"])
    assert "2 problem(s)" in err and "`train.lrr`" in err and "`train.batch_size` = 'zero'" in err
    assert not (tmp_path / "r").exists()
    assert "does not exist" in _error(capsys, ["train", str(tmp_path / "missing.yaml")])


def test_existing_run_is_never_overwritten(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (trained_run / "step-4" / "model.safetensors").read_bytes()
    err = _error(capsys, ["train", DEBUG_GAN, "--run-dir", str(trained_run)])
    assert "already has checkpoints" in err and "--resume" in err
    assert (trained_run / "step-4" / "model.safetensors").read_bytes() == before


def test_missing_mnist_names_fetch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["train", DEBUG_GAN, "--run-dir", str(tmp_path / "r"), "--set", "data.name=mnist",
                          "--set", f"data.root={tmp_path / 'empty'}"])
    assert "genforge data fetch mnist" in err


def test_data_fetch_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["data", "fetch", "mnsit", "--root", str(tmp_path)])
    assert "did you mean 'mnist'" in err
    (tmp_path / "src").mkdir()
    err = _error(capsys, ["data", "fetch", "mnist", "--root", str(tmp_path / "root"), "--from", str(tmp_path / "src")])
    assert "train-images" in err


def test_corrupt_checkpoint_is_named(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    weights = copy / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = _error(capsys, ["sample", str(copy), "--out", str(tmp_path / "x.png")])
    assert "step-4/model.safetensors is truncated or corrupt" in err


def test_resume_falls_back_to_the_previous_good_checkpoint(trained_run: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    state = copy / "step-4" / "train_state.pt"
    state.write_bytes(b"garbage")
    assert checkpoint.latest_good(copy) == copy / "step-2"
    assert "step-4/train_state.pt is truncated or corrupt" in caplog.text
    assert main(["train", "--resume", str(copy), "--set", "train.steps=6"]) == 0
    assert (copy / "latest").read_text().strip() == "step-6"


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "models"]) == 0
    assert "genforge.models.gan:GAN" in capsys.readouterr().out
    assert main(["list", "datasets"]) == 0
    assert "mnist-mini" in capsys.readouterr().out
    assert main(["list", "configs"]) == 0
    assert "mnist/dcgan" in capsys.readouterr().out.splitlines()
