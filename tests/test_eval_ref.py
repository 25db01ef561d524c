"""`genforge eval --ref` (and `eval.ref`): a data set split, a folder of images, or an .npz of uint8 images.

Two files of samples are comparable with each other; a folder and the .npz of the same images are the same
reference (same features, same cache entry); every bad reference is a UserError naming --ref or eval.ref. The
Inception network is replaced, as in test_eval_cli.py, by a tiny extractor whose FIDs can be worked out by hand.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genforge.cli import main
from genforge.data.images import to_size_and_channels
from genforge.data import inception as inception_module
from genforge.evaluation.context import EvalContext, reference
from genforge.evaluation.stats import fid_from_features

REPO = Path(__file__).resolve().parents[1]


class PoolExtractor:
    """Stands in for Inception: the mean of each RGB channel over the 4 quadrants, pixels scaled to [0, 1] (12
    features). A brightness shift of every pixel by d shifts every feature by d / 255 and keeps the covariance."""

    calls: ClassVar[list[int]] = []  # batch sizes extracted, in order

    def key_parts(self) -> dict[str, str]:
        return {"extractor": "test-quadrant-means", "weights_sha1": "0", "preprocess": "test"}

    def __call__(self, images: torch.Tensor, progress: Any = None) -> np.ndarray:
        PoolExtractor.calls.append(len(images))
        x = images.float() / 255
        x = x.repeat(1, 3 // x.shape[1], 1, 1)  # gray -> RGB
        return F.adaptive_avg_pool2d(x, 2).flatten(1).double().numpy()  # (N, 12)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake extractor in place of Inception, and a fresh data root; returns its reference-features cache."""
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(inception_module, "load_inception", lambda path=None, **kw: PoolExtractor())
    PoolExtractor.calls = []
    return tmp_path / "data" / "eval-cache"


def _eval(samples: Path, ref: Path | str, metrics: str = "fid") -> dict[str, float]:
    out = samples.with_name("eval.json")
    assert main(["eval", "--samples", str(samples), "--ref", str(ref), "--metrics", metrics, "--json", str(out)]) == 0
    return json.loads(out.read_text())["metrics"]


def test_two_files_of_samples_are_comparable(tmp_path: Path, cache_dir: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, (40, 28, 28, 1), dtype=np.uint8)  # (N, H, W, C), as `genforge sample` writes
    a = tmp_path / "a.npz"
    np.savez(a, images=images)
    assert _eval(a, a) == {"fid40-a": pytest.approx(0.0, abs=1e-6)}

    # every pixel + 10 (no clipping below 200): every feature moves by 10/255, the covariance stays, so the FID is
    # |mu1 - mu2|^2 = 12 * (10/255)^2; the file is (N, C, H, W) and its suffix upper-case, both read
    brighter = tmp_path / "Brighter.NPZ"
    with open(brighter, "wb") as f:
        np.savez(f, images=(images + 10).transpose(0, 3, 1, 2))
    metrics = _eval(a, brighter, "fid,kid,pr")
    assert set(metrics) == {"fid40-Brighter", "kid40-Brighter", "kid40-Brighter-std", "precision40-Brighter",
                            "recall40-Brighter"}
    assert metrics["fid40-Brighter"] == pytest.approx(12 * (10 / 255) ** 2, rel=1e-6)

    # another size and color: the reference is brought to the samples' 28x28 gray by the data pipeline's own path
    other = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    b = tmp_path / "b.npz"
    np.savez(b, images=other)
    real = to_size_and_channels(torch.from_numpy(other).permute(0, 3, 1, 2), 28, 1)
    expected = fid_from_features(PoolExtractor()(real), PoolExtractor()(torch.from_numpy(images).permute(0, 3, 1, 2)))
    assert _eval(a, b) == {"fid40-b": pytest.approx(expected, rel=1e-9)}
    assert expected > 0.01


def test_a_folder_and_the_npz_of_its_images_are_one_cached_reference(tmp_path: Path, cache_dir: Path) -> None:
    rng = np.random.default_rng(1)
    refs = rng.integers(0, 256, (24, 32, 32), dtype=np.uint8)  # gray 32x32, resized to the samples' 28x28
    folder = tmp_path / "my refs-v2"  # a space and dashes: the result keys and the cache file name stay readable
    for i, image in enumerate(refs):  # class subfolders 0/ and 1/
        (folder / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(i % 2) / f"{i:03d}.png")
    order = [i for c in (0, 1) for i in range(len(refs)) if i % 2 == c]  # the folder's order: class 0, then 1
    np.savez(tmp_path / "my refs-v2.npz", images=refs[order])  # (N, H, W) grayscale
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8))

    from_folder = _eval(samples, folder, "fid,kid,pr")
    assert set(from_folder) == {"fid30-my_refs-v2", "kid30-my_refs-v2", "kid30-my_refs-v2-std",
                                "precision30-my_refs-v2", "recall30-my_refs-v2"}
    assert PoolExtractor.calls == [24, 30]  # the reference once, the samples once
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert len(entries) == 2 and entries[0].startswith("my_refs-v2-") and entries[0].endswith(".json")
    parts = json.loads((cache_dir / entries[0]).read_text())["parts"]
    assert (parts["dataset"], parts["split"], parts["count"]) == ("my_refs-v2", "", 24)
    assert parts["content"].startswith("sha256:") and parts["extractor"] == "test-quadrant-means"

    PoolExtractor.calls = []
    assert _eval(samples, tmp_path / "my refs-v2.npz", "fid,kid,pr") == from_folder
    assert PoolExtractor.calls == [30]  # the reference features came from the folder's cache entry
    assert sorted(p.name for p in cache_dir.iterdir()) == entries  # one key for both


def test_a_data_set_reference_keeps_its_name_and_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache key parts come from the reference itself, not from splitting `mnist-mini-test` at a dash."""
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    ref = reference(EvalContext(pipeline=None, n=1, options={"ref": "mnist-mini:test"}), 28, 1)
    assert (ref.tag, ref.dataset, ref.split, tuple(ref.images.shape)) == ("mnist-mini-test", "mnist-mini", "test",
                                                                           (1000, 1, 28, 28))


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("floats.npz", "rgba.npz", "pixels.npz", "single.npz", "junk.npz",
                                                 "empty", "grid.png")}
    np.savez(paths["floats.npz"], images=np.zeros((3, 28, 28, 1), np.float32))
    np.savez(paths["rgba.npz"], images=np.zeros((3, 28, 28, 4), np.uint8))
    np.savez(paths["pixels.npz"], pixels=np.zeros((3, 28, 28, 1), np.uint8))
    with open(paths["single.npz"], "wb") as f:
        np.save(f, np.zeros((3, 28, 28, 1), np.uint8))
    paths["junk.npz"].write_bytes(b"not a zip archive")
    paths["empty"].mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(paths["grid.png"])
    return paths


def test_bad_references_are_errors_naming_ref(tmp_path: Path, cache_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=np.zeros((4, 28, 28, 1), np.uint8))
    bad = _bad_files(tmp_path)
    cases = [
        (str(tmp_path / "missing.npz"), "does not exist"),
        (str(tmp_path / "no-such-folder"), ("expected DATASET:SPLIT (e.g. mnist:test), a folder of PNG/JPEG "
                                            "images, or an .npz file of uint8 images")),
        ("", "is empty"),
        (str(bad["grid.png"]), "is a file but not an .npz"),
        (str(bad["empty"]), "has no images (.png, .jpg, .jpeg)"),
        (str(bad["floats.npz"]), "`images` must be uint8 (0..255), not float32"),
        (str(bad["rgba.npz"]), "has 4 channels"),
        (str(bad["pixels.npz"]), "no `images` array inside (found: pixels)"),
        (str(bad["single.npz"]), "holds a single .npy array"),
        (str(bad["junk.npz"]), "cannot be read as an .npz archive"),
    ]
    for ref, message in cases:
        assert main(["eval", "--samples", str(samples), "--ref", ref, "--metrics", "fid"]) == 2, ref
        err = capsys.readouterr().err
        assert f"--ref {ref!r}" in err and message in err and "Traceback" not in err, (ref, err)
    assert main(["eval", "--samples", str(samples), "--metrics", "fid"]) == 2
    assert "needs --ref: DATASET:SPLIT (e.g. --ref mnist:test), a folder" in capsys.readouterr().err
    assert PoolExtractor.calls == []  # every problem is found before any features are computed


def test_eval_ref_in_training_takes_a_file_and_fails_early_on_a_missing_one(tmp_path: Path, cache_dir: Path,
                                                                             capsys: pytest.CaptureFixture[str]
                                                                             ) -> None:
    refs = tmp_path / "refs.npz"
    np.savez(refs, images=np.random.default_rng(2).integers(0, 256, (30, 28, 28, 1), dtype=np.uint8))
    base = ["train", str(REPO / "configs" / "debug" / "gan.yaml"), "--set", "train.steps=2",
            "--set", "train.eval_every=2", "--set", "eval.n=20", "--set", "eval.metrics=[fid]"]
    run = tmp_path / "run"
    assert main(base + ["--run-dir", str(run), "--set", f"eval.ref={refs}"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["eval/fid20-refs"] for r in records if "eval/fid20-refs" in r]
    assert len(logged) == 1 and logged[0] > 0
    # `genforge eval RUN` takes the run's eval.ref and n: the same samples against the same file
    out = tmp_path / "e.json"
    assert main(["eval", str(run), "--metrics", "fid", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"] == {"fid20-refs": pytest.approx(logged[0], rel=1e-5)}

    missing = tmp_path / "missing.npz"
    assert main(base + ["--run-dir", str(tmp_path / "bad"), "--set", f"eval.ref={missing}"]) == 2
    assert f"eval.ref = {str(missing)!r}: the file" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
