"""Image data sets (MNIST, the embedded MNIST-mini, a folder of images) and the shuffled batches the trainer reads.

Every builder returns an `ImageDataset` whose images are one preloaded uint8 tensor (N, C, H, W): the data sets this
toolkit targets fit in memory, and indexing one tensor with a permutation slice is much faster than a DataLoader
with workers on a 2-core machine. `data.channels`, `data.image_size` and `data.limit` are applied once, at load time:

- `data.limit`: keep the first N examples (in file order; for a folder, the sorted file list).
- `data.channels`: 1 = grayscale (ITU-R 601-2 luma, as Pillow's "L"), 3 = RGB (gray is repeated); None = native.
- `data.image_size`: square size. A non-square image is first center-cropped to a square (a square resize would
  squash it); the resize is torch `F.interpolate(mode="bilinear", antialias=True)` on float pixel values, rounded
  back to uint8. Antialiasing matters when shrinking: without it bilinear downsampling aliases thin strokes.

`ImageBatches` turns pixels into the model's input range [-1, 1] per batch, in a seeded order per epoch.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import logging
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genforge.config import DataSection
from genforge.data.download import ENV_VAR, data_root, data_root_origin, raw_dir
from genforge.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what `imagefolder` reads (case-insensitive); other files are ignored
_READ_CHUNK = 1 << 20  # bytes per read when streaming an IDX file
_FLOAT_CHUNK_ELEMENTS = 1 << 24  # pixels converted to float at once when resizing/recoloring (64 MB of float32)


@dataclass
class ImageDataset:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None  # int64 (N,); None for an unlabeled set
    num_classes: int  # number of label values (0 when unlabeled); a class-conditional model sizes its embedding by it
    name: str  # the registry name it was built from, for messages and logs

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.dim() == 4, (self.images.dtype, self.images.shape)
        if self.labels is not None:
            assert self.labels.dtype == torch.int64 and self.labels.shape == (len(self.images),), self.labels.shape

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(self, batch_size: int, seed: int) -> "ImageBatches":
        """The trainer's view of a data set: an endless, resumable batch source."""
        return ImageBatches(self, batch_size, seed)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)


# --------------------------------------------------------------------------------------------------------------
# IDX files (the MNIST format): magic 00 00 <type> <ndim>, ndim big-endian uint32 sizes, then the data, big-endian

_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or plain (told apart by content, not name), into an array of its shape.

    The size must match the header exactly: a truncated download or trailing bytes are a UserError naming the
    file, never a silently shorter (or misaligned) data set. The data is streamed into the result array, so peak
    memory is the array itself (47 MB for the MNIST train images), not the file plus a copy.
    """
    path = Path(path)
    try:
        with open(path, "rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            return _read_idx_stream(f, path, "uncompressed size" if gzipped else "size")
    except (OSError, EOFError, zlib.error) as exc:
        what = "gzip data" if gzipped else "file"
        raise UserError(f"{path}: corrupt or truncated {what} ({exc}); delete it and fetch it again") from exc


def _read_idx_stream(f: BinaryIO, path: Path, what: str) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
        raise UserError(f"{path}: not an IDX file: wrong magic number {magic.hex(' ')!r} (expected 00 00, a type "
                        f"byte in {', '.join(f'{t:02x}' for t in _IDX_TYPES)}, and the number of dimensions)")
    ndim = magic[3]
    header = 4 + 4 * ndim
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise UserError(f"{path}: truncated IDX file: its {what} is {4 + len(dims)} bytes, shorter than its own "
                        f"{header}-byte header")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = _IDX_TYPES[magic[2]]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        array = np.empty(shape, dtype=dtype)
    except (MemoryError, ValueError) as exc:
        raise UserError(f"{path}: the header says shape {shape} ({expected} bytes), which cannot be allocated; "
                        "the file is corrupt") from exc
    view = memoryview(array.reshape(-1).view(np.uint8))
    filled = 0
    while filled < len(view):  # chunked: a gzip stream's readinto goes through a temporary bytes object
        n = f.readinto(view[filled : filled + _READ_CHUNK])
        if not n:
            raise UserError(f"{path}: truncated IDX file: the header says shape {shape} ({expected} bytes) but "
                            f"its {what} is {header + filled} bytes; delete it and fetch it again")
        filled += n
    trailing = 0
    while chunk := f.read(_READ_CHUNK):
        trailing += len(chunk)
    if trailing:
        raise UserError(f"{path}: {trailing} unexpected trailing bytes after the {expected} bytes that the header "
                        f"(shape {shape}) describes; the file is corrupt or not what its name says")
    return array.astype(dtype.newbyteorder("="), copy=False)  # native byte order (a no-op for uint8)


# --------------------------------------------------------------------------------------------------------------
# Builders: `build(cfg: DataSection, split) -> ImageDataset` (registry.DATASETS)


def _check_split(dataset: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise UserError(f"`data.split` = {split!r} is not a split of {dataset}; allowed: {', '.join(allowed)}")


_MNIST_FILES = {  # split -> (images, labels), un-gzipped names; ".gz" is tried first
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def build_mnist(cfg: DataSection, split: str) -> ImageDataset:
    """MNIST from `<data root>/mnist/raw/` (`genforge data fetch mnist`): "train" = 60,000, "test" = 10,000 images."""
    _check_split("mnist", split, list(_MNIST_FILES))
    root = data_root(cfg.root)
    folder = raw_dir("mnist", root)
    paths: list[Path] = []
    missing: list[str] = []
    for stem in _MNIST_FILES[split]:
        found = next((folder / n for n in (stem + ".gz", stem) if (folder / n).is_file()), None)
        if found is None:
            missing.append(stem + ".gz")
        else:
            paths.append(found)
    if missing:
        raise UserError(
            f"MNIST {split} files not found in {folder} (missing {', '.join(missing)}; the data root {root} is "
            f"{data_root_origin(cfg.root)}). Run `genforge data fetch mnist` to download them, or "
            f"`genforge data fetch mnist --from DIR` to import local copies; or point env {ENV_VAR} or `data.root` "
            f"at a data root that has mnist/raw/ (or use `data.name: mnist-mini`, which needs no download)"
        )
    images_path, labels_path = paths
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise UserError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or labels.dtype != np.uint8 or labels.max(initial=0) > 9:
        raise UserError(f"{labels_path}: expected {images.shape[0]} uint8 labels 0..9 (one per image in "
                        f"{images_path.name}), got {labels.dtype} {labels.shape}")
    dataset = ImageDataset(images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28)
                           labels=torch.from_numpy(labels.astype(np.int64)), num_classes=10, name="mnist")
    return _finish(dataset, cfg, split)


MNIST_MINI_ASSET = "mnist_mini.npz"  # in genforge/data/assets/, made by scripts/make_mnist_mini.py


def build_mnist_mini(cfg: DataSection, split: str) -> ImageDataset:
    """The embedded MNIST subset (no download): class-balanced, "train" = 6,000 and "test" = 1,000 images, the first
    600 / 100 of each digit in the official files' order."""
    _check_split("mnist-mini", split, ["train", "test"])
    asset = importlib.resources.files("genforge.data").joinpath("assets").joinpath(MNIST_MINI_ASSET)
    with asset.open("rb") as f, np.load(f) as arrays:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    dataset = ImageDataset(images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28)
                           labels=torch.from_numpy(labels.astype(np.int64)), num_classes=10, name="mnist-mini")
    return _finish(dataset, cfg, split)


def build_imagefolder(cfg: DataSection, split: str) -> ImageDataset:
    """PNG/JPEG files from the folder `data.path`.

    Layout: one subfolder per class (class ids follow the sorted subfolder names; images may sit deeper inside a
    class folder), or all images directly in the folder for an unlabeled set (labels None, num_classes 0). A folder
    has no splits: "train", the default `data.split`, uses every image. Alpha channels are dropped. Without
    `data.image_size` all images must share one size; without `data.channels` a mix of gray and color images is
    read as RGB.
    """
    _check_split("imagefolder", split, ["train"])
    if cfg.path is None:
        raise UserError("`data.path` is required for `data.name: imagefolder`: the folder of PNG/JPEG images "
                        "(one subfolder per class, or all at the top level), e.g. --set data.path=path/to/images")
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"`data.path` = {cfg.path!r} {problem}; set it to a folder of PNG/JPEG images")

    files, class_names = _list_imagefolder(folder)
    if cfg.limit is not None:
        files = files[: cfg.limit]
    arrays = [decode_image(path, cfg.channels) for path, _ in files]  # each (H, W, C) uint8
    if len({a.shape[2] for a in arrays}) > 1:  # mixed gray and color without `data.channels`: promote to RGB
        log.info("%s: mix of grayscale and color images; reading all as RGB (set `data.channels` to choose)", folder)
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]  # (C, H, W)

    sizes = {t.shape[1:] for t in tensors}
    if len(sizes) > 1:
        if cfg.image_size is None:
            (a, ta), (b, tb) = _two_different_sizes(files, tensors)
            raise UserError(f"`data.path` = {cfg.path!r}: images differ in size ({a} is {ta[2]}x{ta[1]}, {b} is "
                            f"{tb[2]}x{tb[1]}); set `data.image_size` to resize them all to one square size")
        tensors = [_resize(t.unsqueeze(0), cfg.image_size)[0] for t in tensors]
    images = torch.stack(tensors)  # (N, C, H, W)
    labels = None
    if class_names:
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    dataset = ImageDataset(images=images, labels=labels, num_classes=len(class_names), name="imagefolder")
    return _finish(dataset, cfg, split)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _list_imagefolder(folder: Path) -> tuple[list[tuple[Path, int | None]], list[str]]:
    """[(file, class id or None)] in sorted order, and the class names (empty when unlabeled)."""
    top = sorted(p for p in folder.iterdir() if _is_image(p))
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = {d.name: sorted(p for p in d.rglob("*") if _is_image(p)) for d in subdirs}
    with_images = [name for name, paths in per_class.items() if paths]
    if top and with_images:
        raise UserError(f"`data.path` = {str(folder)!r} has images both at the top level (e.g. {top[0].name}) and "
                        f"in subfolders (e.g. {with_images[0]}/); put every image in a class subfolder, or all of "
                        "them at the top level for an unlabeled set")
    if top:
        return [(p, None) for p in top], []
    if not with_images:
        raise UserError(f"`data.path` = {str(folder)!r} has no images ({', '.join(IMAGE_SUFFIXES)}), neither at the "
                        "top level nor in class subfolders")
    empty = [name for name, paths in per_class.items() if not paths]
    if empty:
        raise UserError(f"`data.path` = {str(folder)!r}: class subfolder(s) {', '.join(empty)} have no images; every "
                        "subfolder is a class, so add images or remove those folders")
    names = sorted(per_class)
    return [(p, i) for i, name in enumerate(names) for p in per_class[name]], names


def decode_image(path: Path, channels: int | None) -> np.ndarray:
    """(H, W, C) uint8 with C = `channels`, or the image's own (1 for gray modes, else 3)."""
    from PIL import Image  # imported here: only image folders need Pillow

    try:
        with Image.open(path) as image:
            return _pil_to_array(image, channels, path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot read this image ({exc}); fix or remove the file") from exc


_SIXTEEN_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N")  # Pillow's modes of a 16-bit grayscale PNG


def _pil_to_array(image: Any, channels: int | None, path: Path) -> np.ndarray:
    """An open PIL image -> (H, W, C) uint8, C = `channels` or the image's own (1 for gray modes, else 3).

    16-bit grayscale ("I;16*", or "I" in older Pillows) keeps the high byte, value >> 8, as Pillow itself does for
    16-bit RGB PNGs: Pillow's own convert("L") clips such values to 255, which saturates every pixel above 255.
    """
    if image.mode in _SIXTEEN_BIT_GRAY or image.mode == "I":
        values = np.asarray(image)  # (H, W) uint16 (either byte order) or int32
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise UserError(f"{path}: 32-bit integer pixels (range {values.min()}..{values.max()}) are not 8- or "
                            f"16-bit image data (0..65535); save the image as an 8-bit or 16-bit PNG")
        gray = (values.astype(np.int64) >> 8).astype(np.uint8)  # (H, W)
        return np.repeat(gray[:, :, None], 3 if channels == 3 else 1, axis=2)
    if channels is None:
        mode = "L" if image.mode in ("1", "L", "LA", "F") else "RGB"
    else:
        mode = "L" if channels == 1 else "RGB"
    array = np.array(image.convert(mode))  # a writable copy, so torch.from_numpy is safe
    return array[:, :, None] if array.ndim == 2 else array


def _two_different_sizes(
    files: list[tuple[Path, int | None]], tensors: list[torch.Tensor]
) -> tuple[tuple[str, torch.Size], tuple[str, torch.Size]]:
    """The first file and the first one whose size differs from it, with their (C, H, W) shapes."""
    first = tensors[0].shape
    other = next(i for i, t in enumerate(tensors) if t.shape[1:] != first[1:])
    return (files[0][0].name, first), (files[other][0].name, tensors[other].shape)


# --------------------------------------------------------------------------------------------------------------
# Load-time transforms: limit, channels, size


def _finish(dataset: ImageDataset, cfg: DataSection, split: str) -> ImageDataset:
    images, labels = dataset.images, dataset.labels
    if cfg.limit is not None and cfg.limit < len(images):
        # clone so that the full set's memory is freed rather than kept alive by a view
        images = images[: cfg.limit].clone()
        labels = labels[: cfg.limit].clone() if labels is not None else None
    images = to_size_and_channels(images, cfg.image_size, cfg.channels)
    result = ImageDataset(images=images.contiguous(), labels=labels, num_classes=dataset.num_classes,
                          name=dataset.name)
    c, h, w = result.image_shape
    log.info("%s %s: %d images %dx%dx%d, %d classes", result.name, split, len(result), c, h, w, result.num_classes)
    return result


def to_size_and_channels(images: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, `channels`, `size`, `size`) as `data.image_size` and `data.channels` convert
    a data set (None keeps that dimension). Evaluation brings reference images from a file through the same path."""
    if channels == 1:  # before resizing: fewer channels to resize
        images = _to_channels(images, 1)
    if size is not None:
        images = _resize(images, size)
    if channels == 3:  # after resizing, for the same reason
        images = _to_channels(images, 3)
    return images


def _chunked(
    images: torch.Tensor, out_shape: tuple[int, ...], fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Apply `fn` (float (n, C, H, W) -> float) in chunks and round back to uint8, bounding the float memory."""
    n = images.shape[0]
    per_image = max(1, int(np.prod(images.shape[1:])), int(np.prod(out_shape)))
    step = max(1, _FLOAT_CHUNK_ELEMENTS // per_image)
    out = torch.empty((n, *out_shape), dtype=torch.uint8)
    for start in range(0, n, step):
        out[start : start + step] = fn(images[start : start + step].float()).round_().clamp_(0, 255).to(torch.uint8)
    return out


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601-2, the weights of Pillow's "L" mode


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 3 and c == 1:
        return images.repeat(1, 3, 1, 1)
    assert channels == 1 and c == 3, (c, channels)
    return _chunked(images, (1, *images.shape[2:]), lambda x: (x * _LUMA).sum(dim=1, keepdim=True))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size): center-crop to a square, then antialiased bilinear."""
    h, w = images.shape[2:]
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        images = images[:, :, top : top + side, left : left + side]
    if images.shape[-1] == size:
        return images

    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    return _chunked(images, (images.shape[1], size, size), resize)


# --------------------------------------------------------------------------------------------------------------
# Batches


def _epoch_seed(seed: int, epoch: int) -> int:
    # A hash rather than `seed + epoch`: with a sum, runs with seeds 0 and 1 would see the same orders one epoch apart.
    digest = hashlib.sha256(f"genforge.ImageBatches:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ImageBatches:
    """Endless shuffled batches of an ImageDataset, reproducible and exactly resumable.

    Epoch e visits the examples in the order `torch.randperm(N)` draws from a generator seeded with a hash of
    (seed, e), so the order depends only on the seed and the epoch, and the position is two integers
    (`state_dict()`) that a checkpoint stores. The last partial batch of each epoch is dropped: every batch has
    exactly `batch_size` examples, which keeps shapes static and per-batch statistics comparable.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int):
        n = len(dataset)
        if batch_size > n:
            raise UserError(f"`train.batch_size` ({batch_size}) is larger than the data set ({n} images in "
                            f"{dataset.name}); set train.batch_size <= {n}, or raise or remove `data.limit`")
        if batch_size < 1:
            raise UserError(f"`train.batch_size` ({batch_size}) must be at least 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0  # epochs completed
        self.index = 0  # examples of the current epoch's order already served
        self._order: torch.Tensor | None = None  # the current epoch's permutation, made on first use

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order (int64 (N,)) in which epoch `epoch` visits the examples."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(len(self.dataset), generator=generator)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """{"image": float32 (B, C, H, W) in [-1, 1], "label": int64 (B,) (only for labeled sets)}."""
        if self.index + self.batch_size > len(self.dataset):  # only a partial batch is left: start the next epoch
            self.epoch += 1
            self.index = 0
            self._order = None
        if self._order is None:
            self._order = self.permutation(self.epoch)
        idx = self._order[self.index : self.index + self.batch_size]
        self.index += self.batch_size
        # index the uint8 tensor first, convert only the batch: x / 127.5 - 1 maps 0..255 to -1..1
        batch = {"image": self.dataset.images[idx].float().div_(127.5).sub_(1.0)}
        if self.dataset.labels is not None:
            batch["label"] = self.dataset.labels[idx]
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= len(self.dataset):
            raise UserError(f"data position {state} from the checkpoint does not fit this data set "
                            f"({len(self.dataset)} images in {self.dataset.name}); was `data.limit` or `data.name` "
                            "changed since?")
        self.epoch, self.index = epoch, index
        self._order = None
