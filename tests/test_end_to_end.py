"""End-to-end runs through the CLI (slow tier: `pytest -m slow`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def genforge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genforge.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1800)


def test_quickstart_trains_and_samples(tmp_path: Path) -> None:
    run = tmp_path / "quick"
    result = genforge("train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(run),
                      "--set", "train.steps=300", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "samples:" in result.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 300
    assert list(run.glob("events.out.tfevents.*"))
    result = genforge("sample", str(run), "--n", "16", "--out", str(tmp_path / "s.npz"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (16, 28, 28, 1)
    # a trained generator draws dark backgrounds with bright strokes, not noise
    assert images.mean() < 100 and (images > 200).mean() > 0.03


def test_gpt_trains_and_streams(tmp_path: Path) -> None:
    run = tmp_path / "gpt"
    result = genforge("train", str(REPO / "configs" / "shakespeare" / "gpt_char_baby.yaml"), "--run-dir", str(run),
                      "--set", "data.name=shakespeare-mini", "--set", "train.steps=300", "--set", "train.val_every=150",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    vals = [json.loads(line)["val/loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "val/loss" in line]
    assert vals[-1] < 2.6  # ln(61) = 4.1 at the start
    result = genforge("sample", str(run), "--prompt", "ROMEO:", "--set", "sample.max_new_tokens=40", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > 40


def test_an_installed_package_has_its_configs(tmp_path: Path) -> None:
    """A non-editable install (what `pip install genforge` gives) carries the shipped configs: `genforge list
    configs` and `genforge train mnist/dcgan` work from a directory that is not a checkout."""
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    where = subprocess.run([sys.executable, "-c", "import genforge; print(genforge.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    listed = subprocess.run([sys.executable, "-m", "genforge.cli", "list", "configs"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert "mnist/dcgan" in listed.stdout.split() and "quickstart" in listed.stdout.split()
    trained = subprocess.run([sys.executable, "-m", "genforge.cli", "train", "mnist/dcgan", "--run-dir", "run",
                              "--set", "data.name=mnist-mini", "--set", "train.steps=2", "--set", "train.progress=false"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "step-2" / "model.safetensors").is_file()
