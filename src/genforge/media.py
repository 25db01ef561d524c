"""Tensors <-> media files: image grids (PNG), raw uint8 arrays (.npz), text (JSONL)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from genforge.errors import UserError
from genforge.fileio import atomic_write, write_text


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8, rounding to nearest (x+1)*127.5."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows*(H+p)+p, cols*(W+p)+p, C) uint8 grid, filled row by row."""
    n, h, w, c = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    mode = "L" if array.shape[-1] == 1 else "RGB"
    with atomic_write(path) as tmp:
        Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode).save(tmp, format="PNG")
    return path


def save_images(images: Tensor, path: str | Path, nrow: int | None = None, labels: Tensor | None = None) -> Path:
    """Images in [-1, 1] -> a PNG grid (`.png`) or raw uint8 arrays (`.npz`, key `images` (N, H, W, C) plus
    `labels` when given)."""
    path = Path(path)
    arrays = to_uint8(images)
    if path.suffix.lower() == ".png":
        return save_png(make_grid(arrays, nrow), path)
    if path.suffix.lower() == ".npz":
        payload = {"images": arrays}
        if labels is not None:
            payload["labels"] = labels.cpu().numpy()
        with atomic_write(path) as tmp:
            np.savez_compressed(tmp, **payload)
        return path
    raise UserError(f"--out {str(path)!r}: image output must end in .png (grid) or .npz (uint8 arrays)")


def save_texts(texts: list[str], path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".txt"):
        raise UserError(f"--out {str(path)!r}: text output must end in .jsonl or .txt")
    if path.suffix.lower() == ".jsonl":
        body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    else:
        body = "\n\n".join(texts) + "\n"
    return write_text(path, body)


def load_images_npz(path: str | Path) -> Tensor:
    """An .npz of uint8 images (key `images`, (N, H, W, C) as `save_images` writes, or (N, H, W) grayscale) ->
    uint8 (N, C, H, W). Other generators' outputs can be scored this way."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--samples {str(path)!r} does not exist")
    try:
        with np.load(path) as data:
            if "images" not in data:
                raise UserError(f"--samples {path}: no `images` array inside (found: {', '.join(data.files)})")
            images = data["images"]
    except (OSError, ValueError) as exc:
        raise UserError(f"--samples {path}: not a readable .npz file ({exc})") from exc
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise UserError(f"--samples {path}: `images` must be uint8 (N, H, W[, C]); got {images.dtype} {images.shape}")
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def load_texts(path: str | Path) -> list[str]:
    """Texts from a .jsonl file ({"text": ...} per line) or a .txt file (samples separated by blank lines)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--samples {str(path)!r} does not exist")
    if path.suffix.lower() == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise UserError(f"--samples {path}, line {i}: expected {{\"text\": ...}}") from exc
        return texts
    return [t for t in path.read_text().split("\n\n") if t.strip()]
