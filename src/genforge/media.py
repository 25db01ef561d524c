"""Tensors <-> media files: image grids (PNG), raw uint8 arrays (.npz), text (JSONL)."""
from __future__ import annotations

import json
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from genforge.errors import UserError
from genforge.fileio import atomic_write, read_utf8, write_text


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


def _samples_file(path: str | Path) -> Path:
    """The --samples path, if it is a file; a directory or a missing path is a UserError saying so."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--samples {str(path)!r} is a directory; give a .npz (images) or .jsonl/.txt (texts) file")
    if not path.is_file():
        raise UserError(f"--samples {str(path)!r} does not exist")
    return path


# What np.load raises on a file that is not a whole .npz: a truncated zip (BadZipFile, EOFError, zlib.error), a
# member with a broken .npy header (ValueError), a zip that needs a password or an unknown compression
# (RuntimeError, NotImplementedError), a header whose shape cannot be allocated (MemoryError).
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError,
               MemoryError, struct.error)


def load_images_npz(path: str | Path, where: str | None = None) -> Tensor:
    """An .npz of uint8 images (key `images`) -> uint8 (N, C, H, W). Other generators' outputs can be scored this
    way, so three layouts are read: (N, H, W, C) as `save_images` writes, (N, H, W) grayscale, and (N, C, H, W)
    (torch's layout) when that is unambiguous: C = shape[1] is 1 or 3 and shape[3] is not. C must be 1 or 3.
    `where` starts every error message (default `--samples PATH`; `eval --ref` passes its own)."""
    path = _samples_file(path)
    where = where or f"--samples {path}"
    if path.stat().st_size == 0:
        raise UserError(f"{where}: the file is empty (0 bytes); write it again with "
                        "np.savez(path, images=uint8_array) or `genforge sample RUN --out FILE.npz`")
    try:
        with open(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise UserError(f"{where}: holds a single .npy array, not an .npz archive; save it with "
                                "np.savez(path, images=array)")
            with data:
                if "images" not in data.files:
                    found = ", ".join(data.files) or "nothing"
                    raise UserError(f"{where}: no `images` array inside (found: {found}); save the uint8 images "
                                    "with np.savez(path, images=array)")
                images = data["images"]
    except PermissionError as exc:
        raise UserError(f"{where}: cannot be read ({exc.strerror}); check its permissions") from exc
    except _NPZ_ERRORS as exc:
        raise UserError(f"{where}: cannot be read as an .npz archive: truncated or not an .npz archive "
                        f"({type(exc).__name__}: {exc}); write it again with np.savez(path, images=uint8_array)") from exc
    return _images_nchw(images, where)


def _images_nchw(images: np.ndarray, where: str) -> Tensor:
    """The `images` array of a samples file -> uint8 (N, C, H, W), or a UserError saying how to fix the array."""
    shape = tuple(images.shape)
    if images.dtype != np.uint8:
        if images.dtype.kind == "f":
            how = ("floats in [-1, 1]: np.clip((x + 1) * 127.5, 0, 255).round().astype(np.uint8); floats in "
                   "[0, 1]: np.clip(x * 255, 0, 255).round().astype(np.uint8)")
        else:
            how = "values 0..255 of another type: x.astype(np.uint8)"
        raise UserError(f"{where}: `images` must be uint8 (0..255), not {images.dtype} {shape}; convert them, e.g. "
                        f"for {how}")
    if images.ndim not in (3, 4):
        raise UserError(f"{where}: `images` must be uint8 images shaped (N, H, W), (N, H, W, C) or (N, C, H, W); "
                        f"got shape {shape}")
    if shape[0] == 0:
        raise UserError(f"{where}: `images` holds 0 images (shape {shape}); save at least one")
    if images.ndim == 3:
        images = images[..., None]  # (N, H, W, 1)
    elif images.shape[3] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    n, h, w, c = images.shape
    if c not in (1, 3):
        raise UserError(f"{where}: `images` {shape} has {c} channels; give (N, H, W, C) or (N, C, H, W) with C = 1 "
                        "(gray) or 3 (RGB); for RGBA keep the color channels: images[..., :3]")
    if h == 0 or w == 0:
        raise UserError(f"{where}: `images` {shape} are empty images ({h}x{w} pixels)")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def load_texts(path: str | Path) -> list[str]:
    """Texts from a .jsonl file ({"text": ...} per line) or a .txt file (samples separated by blank lines)."""
    path = _samples_file(path)
    where = f"--samples {path}"
    body = read_utf8(path, where, "samples files are UTF-8 .jsonl or .txt")
    if path.suffix.lower() == ".jsonl":
        texts = [_jsonl_text(line, i, where) for i, line in enumerate(body.split("\n"), 1) if line.strip()]
    else:
        texts = [t for t in body.split("\n\n") if t.strip()]
    if not texts:
        layout = 'one {"text": "..."} per line' if path.suffix.lower() == ".jsonl" else "separated by blank lines"
        raise UserError(f"{where}: has no texts; give a file of samples, {layout}")
    return texts


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
               float: "a number", type(None): "null"}  # what json.loads returns, in JSON's words


def _jsonl_text(line: str, number: int, where: str) -> str:
    """The "text" of one .jsonl line (a trailing \\r of a Windows line end is not part of the JSON)."""
    expected = 'expected a JSON object {"text": "..."} per line'
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        problem = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise UserError(f"{where}, line {number}: not valid JSON ({problem}); {expected}") from exc
    if not isinstance(record, dict):
        raise UserError(f"{where}, line {number}: {expected}, got {_JSON_TYPES[type(record)]}")
    if "text" not in record:
        raise UserError(f'{where}, line {number}: no "text" key (found: {", ".join(record) or "nothing"}); {expected}')
    text = record["text"]
    if not isinstance(text, str):
        raise UserError(f'{where}, line {number}: "text" must be a string, got {_JSON_TYPES[type(text)]}; {expected}')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, written as \udXXX in the JSON
        raise UserError(f'{where}, line {number}: "text" is not valid Unicode (a lone surrogate '
                        f"{text[exc.start]!a}); {expected}") from exc
    return text


def pad_sentences(sentences: list[list[int]], boundary: int, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A padded batch of sentences (token-id lists, without boundaries), the layout sentence models train on
    (`data.sentences.SentenceBatches`) and are evaluated on:

        x      int64 (B, T): the boundary, then the sentence (padded with the boundary id, never read)
        y      int64 (B, T): the sentence, then the boundary (its end); -100 where padded
        label  int64 (B,):   the sentences' classes, when given

    T is the longest sentence plus one."""
    T = max(len(s) for s in sentences) + 1
    x = torch.full((len(sentences), T), boundary, dtype=torch.long)
    y = torch.full((len(sentences), T), -100, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        ids = torch.tensor(sentence, dtype=torch.long)
        x[row, 1:len(sentence) + 1] = ids
        y[row, :len(sentence)] = ids
        y[row, len(sentence)] = boundary
    batch = {"x": x, "y": y}
    if labels is not None:
        batch["label"] = labels.long()
    return batch


def save_attention(pictures: list[np.ndarray], captions: list[dict[str, Any]], path: str | Path) -> Path:
    """The attention picture of captions (Xu et al. 2015, fig. 2): one row per image, the image and then, for each
    word, the image lit where the decoder looked when it wrote that word, with the word below. pictures: uint8
    (S, S, 3) each; captions: records with "words" and "attention" (words, M), M image tokens on a square grid."""
    from PIL import ImageDraw, ImageFont

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--attention {str(path)!r}: the attention picture is a PNG; end the file name in .png")
    side = pictures[0].shape[0]
    label = 14  # pixels under each tile for its word
    columns = 1 + max(len(c["words"]) for c in captions)
    sheet = Image.new("RGB", (columns * (side + 2), len(captions) * (side + label + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, (picture, record) in enumerate(zip(pictures, captions)):
        top = row * (side + label + 2)
        sheet.paste(Image.fromarray(picture), (0, top))
        draw.text((2, top + side), "image", fill=(0, 0, 0), font=font)
        weights = record.get("attention")
        for col, word in enumerate(record["words"]):
            left = (col + 1) * (side + 2)
            lit = picture.astype(np.float32) * 0.25
            if weights is not None:
                w = torch.as_tensor(weights[col], dtype=torch.float32)
                grid = math.isqrt(w.numel())
                heat = torch.nn.functional.interpolate(w.view(1, 1, grid, grid), size=(side, side), mode="bilinear",
                                                       align_corners=False)[0, 0]
                heat = (heat / heat.max().clamp(min=1e-12)).numpy()[:, :, None]  # (S, S, 1) in [0, 1]
                lit = picture.astype(np.float32) * (0.25 + 0.75 * heat)
            sheet.paste(Image.fromarray(lit.round().clip(0, 255).astype(np.uint8)), (left, top))
            draw.text((left + 2, top + side), word, fill=(0, 0, 0), font=font)
    with atomic_write(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
