"""Stand-in for ``torchvision.datasets`` (MNIST only).

``MNIST(root, train=True, transform=None, target_transform=None, download=False)``
behaves like torchvision's for reading: samples are ``(PIL 'L' image, int target)``,
``.data`` is a uint8 tensor (N, 28, 28) and ``.targets`` an int64 tensor.

Differences, on purpose:

* It never downloads. ``download=True`` is accepted and ignored.
* The raw IDX directory is taken from the environment variable
  ``GENFORGE_REF_MNIST_RAW`` when set, otherwise ``<root>/MNIST/raw`` as in
  torchvision. Each file may be plain or gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import os
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = ["MNIST"]

RAW_ENV = "GENFORGE_REF_MNIST_RAW"

# IDX type codes -> numpy dtypes (all stored big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_maybe_gz(directory: str, name: str) -> bytes:
    plain = os.path.join(directory, name)
    for path, opener in ((plain, open), (plain + ".gz", gzip.open)):
        if os.path.isfile(path):
            with opener(path, "rb") as f:
                return f.read()
    raise FileNotFoundError(
        f"MNIST file {name!r} (or {name}.gz) not found in {directory!r}; "
        f"set {RAW_ENV} to the directory holding the raw IDX files (this shim never downloads)"
    )


def read_idx(data: bytes) -> np.ndarray:
    """Parse an IDX (big-endian) byte string into an ndarray in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("not an IDX file (bad magic)")
    dtype = _IDX_DTYPES.get(data[2])
    if dtype is None:
        raise ValueError(f"unknown IDX type code 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 1
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


class MNIST(torch.utils.data.Dataset):
    resources_names = {
        True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    classes = [
        "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
        "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
    ]

    def __init__(
        self,
        root: str,
        train: bool = True,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        download: bool = False,
    ) -> None:
        self.root = os.path.expanduser(str(root))
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        images_name, labels_name = self.resources_names[bool(train)]
        raw = self.raw_folder
        self.data = torch.from_numpy(read_idx(_open_maybe_gz(raw, images_name)))
        self.targets = torch.from_numpy(read_idx(_open_maybe_gz(raw, labels_name)).astype(np.int64))
        if self.data.dtype != torch.uint8 or self.data.ndim != 3 or len(self.data) != len(self.targets):
            raise ValueError(f"unexpected MNIST arrays in {raw!r}: {tuple(self.data.shape)} / {tuple(self.targets.shape)}")

    @property
    def raw_folder(self) -> str:
        env = os.environ.get(RAW_ENV)
        if env:
            return env
        return os.path.join(self.root, self.__class__.__name__, "raw")

    @property
    def class_to_idx(self):
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        img, target = self.data[index], int(self.targets[index])
        # A 2-D uint8 array becomes a mode 'L' image (Pillow deprecated the explicit mode= argument).
        img = Image.fromarray(img.numpy())
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        split = "Train" if self.train else "Test"
        return (f"Dataset {self.__class__.__name__}\n    Number of datapoints: {len(self)}\n"
                f"    Root location: {self.root}\n    Split: {split}\n    (genforge reference shim)")
