"""Image captions: the three layouts caption data comes in, split by image, and a synthetic scenes set whose
captions follow a grammar from the pixels.

Layouts (`read_captions(path, images)` tells them apart by content):

- COCO caption JSON: `images[{id, file_name, ...}]` and `annotations[{image_id, caption}]`, images in a folder;
- the Karpathy split JSON: `images[{filename, filepath?, split, sentences[{raw, tokens}]}]`, splits train / val /
  test / restval (restval is train, as in Karpathy's and every later paper's training);
- a CSV with `image,caption` rows (the Kaggle Flickr8k `captions.txt`): any file not ending in .json.

Every image keeps all its captions (evaluation scores a caption against all references). Layouts without splits are
split by image, never by caption, with a fixed seed. Problems name the file: malformed JSON (with the line),
missing keys, captions of images the file does not list, image files that do not exist.

Synthetic scenes (`make_scene`): one to three colored shapes on a plain background at seeded positions, and the
caption a grammar gives them ("a red circle above a blue square"): unlimited, made on the fly from (seed, index), so
a captioner can be shown to ground words in pixels.
"""
from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genforge.errors import UserError

CAPTION_SPLITS = ("train", "val", "test")


@dataclass
class CaptionedImage:
    image: Path  # the image file
    captions: list[str]  # all its reference captions
    split: str | None  # the layout's split (Karpathy), or None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def _image_path(folder: Path, name: str, where: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise UserError(f"{where}: the image {name!r} does not exist in {folder}; check the image folder "
                        "(`data.images`) or remove its captions")
    return path


def read_coco(data: dict[str, Any], path: Path, images: Path) -> list[CaptionedImage]:
    files = {}
    for i, entry in enumerate(data.get("images") or []):
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise UserError(f"{path}: images[{i}] needs `id` and `file_name`")
        files[entry["id"]] = entry["file_name"]
    captions: dict[Any, list[str]] = defaultdict(list)
    for i, note in enumerate(data.get("annotations") or []):
        if not isinstance(note, dict) or "image_id" not in note or not isinstance(note.get("caption"), str):
            raise UserError(f"{path}: annotations[{i}] needs `image_id` and a `caption` string")
        if note["image_id"] not in files:
            raise UserError(f"{path}: annotations[{i}] is a caption of image_id {note['image_id']!r}, which "
                            "`images` does not list")
        captions[note["image_id"]].append(note["caption"].strip())
    return [CaptionedImage(_image_path(images, files[i], str(path)), captions[i], None) for i in files if captions[i]]


def read_karpathy(data: dict[str, Any], path: Path, images: Path) -> list[CaptionedImage]:
    items = []
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "filename" not in entry or not isinstance(entry.get("sentences"), list):
            raise UserError(f"{path}: images[{i}] needs `filename` and a `sentences` list")
        split = entry.get("split", "train")
        split = "train" if split == "restval" else split
        if split not in CAPTION_SPLITS:
            raise UserError(f"{path}: images[{i}] has split {split!r}; expected train, val, test or restval")
        sentences = [s.get("raw", " ".join(s.get("tokens", []))).strip() for s in entry["sentences"]
                     if isinstance(s, dict)]
        name = str(Path(entry.get("filepath", "")) / entry["filename"])
        items.append(CaptionedImage(_image_path(images, name, str(path)), [s for s in sentences if s], split))
    return [item for item in items if item.captions]


def read_caption_csv(path: Path, images: Path) -> list[CaptionedImage]:
    captions: dict[str, list[str]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "image" not in columns or "caption" not in columns:
            raise UserError(f"{path}: a caption CSV needs the columns `image` and `caption` (its header is "
                            f"{', '.join(columns) or 'empty'})")
        for row in reader:
            if not row.get("image") or row.get("caption") is None:
                raise UserError(f"{path}, line {reader.line_num}: the row has no image or no caption")
            captions[row["image"]].append(row["caption"].strip())
    where = str(path)
    return [CaptionedImage(_image_path(images, name, where), caps, None) for name, caps in captions.items()]


def read_captions(path: str | Path, images: str | Path | None = None) -> list[CaptionedImage]:
    """The captioned images of a COCO JSON, Karpathy JSON or image,caption CSV; `images` is the image folder
    (default: `images/` beside the file, else the file's folder)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"`data.path` = {str(path)!r} does not exist; point it at a COCO caption JSON, a Karpathy "
                        "split JSON or an image,caption CSV")
    folder = Path(images).expanduser() if images is not None else (
        path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    if not folder.is_dir():
        raise UserError(f"the image folder {str(folder)!r} does not exist; set `data.images`")
    if path.suffix.lower() != ".json":  # .csv, or the Kaggle Flickr8k captions.txt
        items = read_caption_csv(path, folder)
    else:
        data = _load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise UserError(f"{path}: expected a JSON object with an `images` list (COCO or Karpathy layout)")
        is_karpathy = any(isinstance(e, dict) and "sentences" in e for e in data["images"])
        items = (read_karpathy if is_karpathy else read_coco)(data, path, folder)
    if not items:
        raise UserError(f"{path}: no image has a caption")
    return items


def split_by_image(items: list[CaptionedImage], val: int | float, test: int | float,
                   seed: int = 0) -> dict[str, list[CaptionedImage]]:
    """{train, val, test}: the layout's own splits when it has them (Karpathy), else a seeded shuffle of the images
    with `val` and `test` images (a count, or a fraction when below 1)."""
    if all(item.split is not None for item in items):
        return {s: [item for item in items if item.split == s] for s in CAPTION_SPLITS}
    order = list(items)
    random.Random(seed).shuffle(order)
    n_val = int(round(val * len(order))) if val < 1 else int(val)
    n_test = int(round(test * len(order))) if test < 1 else int(test)
    if n_val + n_test >= len(order):
        raise UserError(f"{len(order)} images cannot give {n_val} val and {n_test} test images and still train; "
                        "lower the val/test sizes")
    return {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


# --------------------------------------------------------------------------------------------------------------
# Synthetic scenes


COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
          "white": (240, 240, 240), "purple": (140, 60, 170)}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (30, 30, 30)


def _draw(canvas: np.ndarray, shape: str, color: tuple[int, int, int], cy: float, cx: float, r: float) -> None:
    size = canvas.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif shape == "square":
        mask = (abs(yy - cy) <= r * 0.85) & (abs(xx - cx) <= r * 0.85)
    else:  # an upward triangle: apex at the top, base at the bottom
        top, bottom = cy - r, cy + r * 0.8
        half = (yy - top) / (bottom - top) * r
        mask = (yy >= top) & (yy <= bottom) & (abs(xx - cx) <= half)
    canvas[mask] = color


def make_scene(seed: int, index: int, size: int = 32, objects: int | None = None) -> tuple[np.ndarray, str]:
    """(uint8 image (size, size, 3), caption) of scene `index` of the set `seed`: 1 to 3 objects (or `objects`).
    Two objects are placed one clearly above, below, left or right of the other, and the caption says which: "a red
    circle above a blue square"; one is "a green triangle"; three are "a red circle, a blue square and a yellow
    triangle" from left to right. Objects of one scene differ in color or shape."""
    rng = random.Random(seed * 1_000_003 + index)
    count = objects or rng.randint(1, 3)
    kinds: list[tuple[str, str]] = []
    while len(kinds) < count:
        kind = (rng.choice(list(COLORS)), rng.choice(SHAPES))
        if kind not in kinds:
            kinds.append(kind)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    r = size / (5.5 if count < 3 else 7.5)
    if count == 1:
        (color, shape), = kinds
        _draw(canvas, shape, COLORS[color], rng.uniform(r, size - r), rng.uniform(r, size - r), r)
        return canvas, f"a {color} {shape}"
    if count == 2:
        relation = rng.choice(("above", "below", "left of", "right of"))
        near, far = rng.uniform(r, size / 2 - r / 2), rng.uniform(size / 2 + r / 2, size - r)
        across_a, across_b = rng.uniform(r, size - r), rng.uniform(r, size - r)
        first, second = {"above": ((near, across_a), (far, across_b)), "below": ((far, across_a), (near, across_b)),
                         "left of": ((across_a, near), (across_b, far)),
                         "right of": ((across_a, far), (across_b, near))}[relation]
        for (color, shape), (cy, cx) in zip(kinds, (first, second)):
            _draw(canvas, shape, COLORS[color], cy, cx, r)
        (c1, s1), (c2, s2) = kinds
        return canvas, f"a {c1} {s1} {relation} a {c2} {s2}"
    columns = [size * (i + 0.5) / count for i in range(count)]
    for (color, shape), cx in zip(kinds, columns):
        _draw(canvas, shape, COLORS[color], rng.uniform(r, size - r), cx, r)
    names = [f"a {c} {s}" for c, s in kinds]
    return canvas, ", ".join(names[:-1]) + " and " + names[-1]
