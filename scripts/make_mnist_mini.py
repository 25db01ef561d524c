"""Build the embedded MNIST-mini set (src/genforge/data/assets/mnist_mini.npz) from the four MNIST IDX files.

    python scripts/make_mnist_mini.py /path/to/mnist/raw

Class-balanced and deterministic: the first `--train-per-class` images of each digit from the official train file
(600 -> 6,000) and the first `--test-per-class` of each digit from the test file (100 -> 1,000), kept in the files'
order. Keys: train_images, test_images (uint8 (N, 28, 28)), train_labels, test_labels (uint8 (N,)).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from genforge.data.images import read_idx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "genforge" / "data" / "assets" / "mnist_mini.npz"
MAX_BYTES = 2 * 1024 * 1024  # the package ships this file; keep the wheel small
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def find(raw_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (raw_dir / name).is_file():
            return raw_dir / name
    raise SystemExit(f"{raw_dir}: no {stem}.gz or {stem}")


def balanced_subset(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` examples of every class, in ascending (file) order."""
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    for c, idx in enumerate(chosen):
        if len(idx) < per_class:
            raise SystemExit(f"only {len(idx)} examples of digit {c}; lower the per-class count")
    return np.sort(np.concatenate(chosen))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="folder with the four MNIST IDX files (gzipped or not)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args(argv)

    arrays: dict[str, np.ndarray] = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        images_stem, labels_stem = FILES[split]
        images, labels = read_idx(find(args.raw_dir, images_stem)), read_idx(find(args.raw_dir, labels_stem))
        idx = balanced_subset(labels, per_class)
        arrays[f"{split}_images"] = np.ascontiguousarray(images[idx])  # (N, 28, 28) uint8
        arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)  # (N,)
        print(f"{split}: {len(idx)} images, {per_class} per class")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size:,} bytes = {size / 2**20:.2f} MiB)")
    if size > MAX_BYTES:
        raise SystemExit(f"{args.out} is {size:,} bytes, over the {MAX_BYTES:,}-byte budget; lower the counts")


if __name__ == "__main__":
    main()
