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
import hashlib
import io
import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genforge.data.build import ShuffledOrder
from genforge.data.images import decode_image
from genforge.errors import UserError
from genforge.media import pad_sentences

log = logging.getLogger(__name__)

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


def image_folder(path: Path, images: str | Path | None) -> Path:
    """The folder image names are relative to: `images` when given, else `images/` beside the caption file, else the
    file's own folder."""
    if images is not None:
        return Path(images).expanduser()
    return path.parent / "images" if (path.parent / "images").is_dir() else path.parent


def read_captions(path: str | Path, images: str | Path | None = None) -> list[CaptionedImage]:
    """The captioned images of a COCO JSON, Karpathy JSON or image,caption CSV; `images` is the image folder
    (default: `images/` beside the file, else the file's folder)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"`data.path` = {str(path)!r} does not exist; point it at a COCO caption JSON, a Karpathy "
                        "split JSON or an image,caption CSV")
    folder = image_folder(path, images)
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


def make_scene(seed: int, index: int, size: int = 32, objects: int | None = None,
               draw: bool = True) -> tuple[np.ndarray, str]:
    """(uint8 image (size, size, 3), caption) of scene `index` of the set `seed`: 1 to 3 objects (or `objects`).
    Two objects are placed one clearly above, below, left or right of the other (offset across that axis by at most
    half their gap along it, so no other relation fits the picture), and the caption says which: "a red
    circle above a blue square", the two named in a fixed order (by color as COLORS lists them, then shape), so a
    scene has exactly one right caption; one is "a green triangle"; three are "a red circle, a blue square and a
    yellow triangle" from left to right. Objects of one scene differ in color or shape. draw=False skips the
    drawing (the image is then blank): the caption, and the positions, are the same."""
    rng = random.Random(seed * 1_000_003 + index)
    count = objects or rng.randint(1, 3)
    kinds: list[tuple[str, str]] = []
    while len(kinds) < count:
        kind = (rng.choice(list(COLORS)), rng.choice(SHAPES))
        if kind not in kinds:
            kinds.append(kind)
    if count == 2:  # name the pair in a fixed order (colors as listed, then shapes): "a red circle above a blue
        #             square" and "a blue square below a red circle" are the same scene, so only one may be the caption
        kinds.sort(key=lambda k: (list(COLORS).index(k[0]), SHAPES.index(k[1])))
    r = size / (5.5 if count < 3 else 7.5)
    places: list[tuple[float, float]] = []  # (cy, cx) of each object, in the order of `kinds`
    if count == 1:
        places.append((rng.uniform(r, size - r), rng.uniform(r, size - r)))
        caption = "a {} {}".format(*kinds[0])
    elif count == 2:
        relation = rng.choice(("above", "below", "left of", "right of"))
        near, far = rng.uniform(r, size / 2 - r / 2), rng.uniform(size / 2 + r / 2, size - r)
        # across the named axis the two stay within half their gap along it, so the relation named is the only
        # one the picture shows (with both across positions free, "above" could also look like "left of")
        across_a = rng.uniform(r, size - r)
        spread = (far - near) / 2
        across_b = min(max(across_a + rng.uniform(-spread, spread), r), size - r)
        places += {"above": [(near, across_a), (far, across_b)], "below": [(far, across_a), (near, across_b)],
                   "left of": [(across_a, near), (across_b, far)],
                   "right of": [(across_a, far), (across_b, near)]}[relation]
        (c1, s1), (c2, s2) = kinds
        caption = f"a {c1} {s1} {relation} a {c2} {s2}"
    else:
        places += [(rng.uniform(r, size - r), size * (i + 0.5) / count) for i in range(count)]
        names = [f"a {c} {s}" for c, s in kinds]
        caption = ", ".join(names[:-1]) + " and " + names[-1]
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    if draw:
        for (color, shape), (cy, cx) in zip(kinds, places):
            _draw(canvas, shape, COLORS[color], cy, cx, r)
    return canvas, caption


# --------------------------------------------------------------------------------------------------------------
# The data set a captioner trains on: images (as pixels, or as frozen Inception features) and their captions

ENCODER_INPUTS = ("pixels", "inception-grid", "inception-pooled")  # what a captioner's encoder reads
FEATURE_VERSION = "pil-bicubic-299-v1"  # how an image reaches the detector; part of the feature cache path
_SCENE_SEEDS = {"train": 0, "val": 1, "test": 2}  # shapes: each split is its own seeded stream of scenes
_SCENE_COUNTS = {"train": 50_000, "val": 500, "test": 1000}  # shapes: scenes per split (train: data.limit)


def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the file as RGB (read as image folders read it), resized to a square (aspect not kept,
    as captioning encoders read them) with Pillow's antialiased bicubic filter. An unreadable file is a UserError
    naming it."""
    from PIL import Image  # here: only caption files need Pillow

    rgb = decode_image(path, 3)  # (H, W, 3)
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8).copy()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_DETECTOR: dict[str, Any] = {}


def inception_grid(files: list[Path], root: str | None = None, progress: bool = True) -> torch.Tensor:
    """The frozen encoder's features of image files: float16 (N, 64, 2048), the Inception-v3 `mixed_10` grid of each
    (see `data.inception`). Each image's features are cached under a hash of its bytes, the detector's weights and
    the preprocessing (`<data root>/caption-features/`), so training, evaluation and sampling read them once."""
    from genforge.data.download import data_root
    from genforge.data.inception import load_inception
    from genforge.fileio import write_bytes

    if "inception" not in _DETECTOR:  # loaded once per process: its weights' hash is part of the cache path
        _DETECTOR["inception"] = load_inception()
    extractor = _DETECTOR["inception"]
    folder = data_root(root) / "caption-features" / f"inception-grid-{extractor.sha1[:12]}-{FEATURE_VERSION}"
    out = torch.empty(len(files), 64, 2048, dtype=torch.float16)
    digests = [_file_digest(f) for f in files]
    missing = []
    for i, digest in enumerate(digests):
        path = folder / digest[:2] / f"{digest}.npy"
        if path.is_file():
            out[i] = torch.from_numpy(np.load(path))
        else:
            missing.append(i)
    if missing:
        log.info("computing Inception grid features of %d images (cached in %s)", len(missing), folder)
        done = 0
        for start in range(0, len(missing), 16):
            rows = missing[start:start + 16]
            pixels = np.stack([load_image(files[i], 299) for i in rows]).transpose(0, 3, 1, 2)  # (B, 3, 299, 299)
            grid = extractor.grid(pixels)  # (B, 64, 2048) float16
            for i, features in zip(rows, grid):
                buffer = io.BytesIO()
                np.save(buffer, features)
                write_bytes(folder / digests[i][:2] / f"{digests[i]}.npy", buffer.getvalue())
                out[i] = torch.from_numpy(features)
            done += len(rows)
            if progress:
                log.info("Inception features: %d/%d images", done, len(missing))
    return out


@dataclass
class CaptionDataset:
    """One split: its images (files, or synthetic scenes made from (seed, index) when asked for) and every image's
    reference captions, as text (for the metrics) and as token ids (for training: those within data.max_length)."""

    keys: list[str]  # image ids: file names relative to the image folder, or "scene-<seed>-<index>"
    references: list[list[str]]  # every reference caption of each image
    captions: list[list[list[int]]]  # token ids of each image's usable references (without boundaries)
    tokenizer: Any
    name: str  # for messages and result keys
    image_size: int  # the side the pixels are resized to (a trained encoder's input)
    files: list[Path] | None = None  # the image files, or None for scenes
    scene_seed: int = 0  # scenes: the split's seed
    scene_objects: int | None = None  # scenes: objects per scene (None: 1 to 3)
    root: str | None = None  # the data root (feature cache)
    _pixels: torch.Tensor | None = field(default=None, repr=False)
    _grid: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def boundary(self) -> int:
        from genforge.data.tokenizers import boundary_id

        return boundary_id(self.tokenizer)

    def pixels(self, rows: list[int]) -> torch.Tensor:
        """uint8 (B, 3, S, S) of the images `rows`. Scenes are drawn now; files are read once and kept."""
        if self.files is None:
            scenes = [make_scene(self.scene_seed, int(i), self.image_size, self.scene_objects)[0] for i in rows]
            return torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2).contiguous()
        if self._pixels is None:
            images = np.stack([load_image(f, self.image_size) for f in self.files])
            self._pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return self._pixels[rows]

    def inputs(self, rows: list[int], encoder: str) -> torch.Tensor:
        """What a captioner's encoder reads for the images `rows`: pixels as floats in [-1, 1] (B, 3, S, S), or the
        frozen Inception features, float32 (B, 64, 2048) for the grid or (B, 1, 2048) pooled."""
        if encoder == "pixels":
            return self.pixels(rows).float().div(127.5).sub(1.0)
        if encoder not in ENCODER_INPUTS:
            raise UserError(f"unknown encoder input {encoder!r}; known: {', '.join(ENCODER_INPUTS)}")
        if self.files is None:
            raise UserError(f"{self.name}: the Inception encoders read cached features of image files; scenes are "
                            "made on the fly, so train them with `model.encoder: cnn`")
        if self._grid is None:
            self._grid = inception_grid(self.files, self.root)
        grid = self._grid[rows].float()  # (B, 64, 2048)
        return grid if encoder == "inception-grid" else grid.mean(dim=1, keepdim=True)

    def batches(self, batch_size: int, seed: int, encoder: str = "pixels") -> CaptionBatches:
        return CaptionBatches(self, batch_size, seed, encoder)


class CaptionBatches(ShuffledOrder):
    """Endless batches of (image, one of its captions) pairs, a shuffled epoch of all pairs at a time:

        image  float (B, ...):   the encoder's input (`CaptionDataset.inputs`)
        x      int64 (B, T):     the boundary, then the caption (padded, never read)
        y      int64 (B, T):     the caption, then the boundary (its end); -100 where padded

    `state_dict()` holds the generator, the epoch's order and the position in it: a resumed run draws exactly the
    batches the uninterrupted run would have."""

    EXAMPLES = "caption"

    def __init__(self, dataset: CaptionDataset, batch_size: int, seed: int, encoder: str):
        self.pairs = torch.tensor([(i, j) for i, caps in enumerate(dataset.captions) for j in range(len(caps))],
                                  dtype=torch.long).view(-1, 2)  # (P, 2): image, caption
        if len(self.pairs) < batch_size:
            raise UserError(f"{dataset.name} has {len(self.pairs)} (image, caption) pairs in this split, fewer than "
                            f"one batch of `train.batch_size` = {batch_size}; lower train.batch_size or add data")
        self.dataset, self.batch_size, self.encoder = dataset, batch_size, encoder
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.zeros(0, dtype=torch.long)
        self.position = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.position + self.batch_size > len(self.order):  # whole batches only: a new epoch
            self.order = torch.randperm(len(self.pairs), generator=self.generator)
            self.position = 0
        picked = self.pairs[self.order[self.position:self.position + self.batch_size]]
        self.position += self.batch_size
        rows = picked[:, 0].tolist()
        captions = [self.dataset.captions[i][j] for i, j in picked.tolist()]
        return {"image": self.dataset.inputs(rows, self.encoder), **pad_sentences(captions, self.dataset.boundary)}


def _encode_captions(references: list[list[str]], tokenizer: Any, max_length: int, name: str,
                     split: str) -> list[list[list[int]]]:
    encoded, too_long = [], 0
    for refs in references:
        ids = [tokenizer.encode(r) for r in refs]
        kept = [c for c in ids if 0 < len(c) <= max_length]
        too_long += sum(len(c) > max_length for c in ids)
        encoded.append(kept)
    if too_long:
        log.info("%s %s: %d captions longer than data.max_length are not trained on (still references)", name, split,
                 too_long)
    return encoded


def _fit_tokenizer(cfg: Any, train_captions: list[str]) -> Any:
    from genforge.data.tokenizers import boundary_id, train_tokenizer

    tokenizer = train_tokenizer(cfg.tokenizer, "\n".join(train_captions) + "\n", cfg.vocab_size, cfg.min_freq)
    boundary_id(tokenizer)  # fails early with a clear message if the tokenizer cannot mark a caption's end
    return tokenizer


_CACHE: dict[tuple[Any, ...], tuple[Any, dict[str, CaptionDataset]]] = {}  # the last few builds, per settings


def build_captions(cfg: Any, split: str, tokenizer: Any = None) -> CaptionDataset:
    """`data.name: captions`: the captioned images of `data.path` (COCO JSON, Karpathy JSON or an image,caption
    CSV; images in `data.images`), split by image (the Karpathy file's own splits, else `data.val_fraction` and
    `data.test_fraction` of the images with a fixed seed). `data.limit` keeps the first N train images. The
    tokenizer (`data.tokenizer`, word for captions) is fitted on the train captions."""
    if split not in CAPTION_SPLITS:
        raise UserError(f"`data.split` = {split!r} is not a split of a caption data set; allowed: "
                        f"{', '.join(CAPTION_SPLITS)}")
    if cfg.path is None:
        raise UserError("`data.name: captions` needs `data.path`: a COCO caption JSON, a Karpathy split JSON or an "
                        "image,caption CSV (e.g. ../shared/data/flickr8k_subset/captions.txt)")
    key = ("captions", cfg.path, cfg.images, cfg.val_fraction, cfg.test_fraction, cfg.limit, cfg.tokenizer,
           cfg.vocab_size, cfg.min_freq, cfg.max_length, cfg.image_size, cfg.root,
           tokenizer.to_json() if tokenizer is not None else None)
    if key not in _CACHE:
        path = Path(cfg.path).expanduser()
        splits = split_by_image(read_captions(path, cfg.images), cfg.val_fraction, cfg.test_fraction)
        if cfg.limit is not None:
            splits["train"] = splits["train"][: cfg.limit]
        if tokenizer is None:
            tokenizer = _fit_tokenizer(cfg, [c for item in splits["train"] for c in item.captions])
        folder = image_folder(path, cfg.images)
        built = {}
        for name, items in splits.items():
            keys = [item.image.relative_to(folder).as_posix() for item in items]
            references = [item.captions for item in items]
            built[name] = CaptionDataset(keys, references, _encode_captions(references, tokenizer, cfg.max_length,
                                                                            path.name, name),
                                         tokenizer, path.parent.name or path.name, cfg.image_size or 64,
                                         files=[item.image for item in items], root=cfg.root)
        _remember(key, tokenizer, built)
    dataset = _CACHE[key][1][split]
    if len(dataset) == 0:
        raise UserError(f"the {split} split of {dataset.name} has no images; raise `data.{split}_fraction`"
                        if split != "train" else f"the train split of {dataset.name} has no images")
    return dataset


def build_shapes(cfg: Any, split: str, tokenizer: Any = None) -> CaptionDataset:
    """`data.name: shapes`: synthetic scenes (`make_scene`) with their grammar captions, drawn on the fly. Each
    split is its own seeded stream: train has `data.limit` scenes (default 50,000), val 500, test 1,000;
    `data.objects` fixes the objects per scene (default 1 to 3), `data.image_size` the side (default 32)."""
    if split not in CAPTION_SPLITS:
        raise UserError(f"`data.split` = {split!r} is not a split of shapes; allowed: {', '.join(CAPTION_SPLITS)}")
    size = cfg.image_size or 32
    key = ("shapes", cfg.limit, cfg.objects, size, cfg.tokenizer, cfg.vocab_size, cfg.min_freq, cfg.max_length,
           tokenizer.to_json() if tokenizer is not None else None)
    if key not in _CACHE:
        if tokenizer is None:  # the grammar's words, every one of them, whatever scenes the train split drew
            words = [*COLORS, *SHAPES, "a", "above", "below", "left", "right", "of", "and", ","]
            tokenizer = _fit_tokenizer(cfg, [" ".join(words)])
        built = {}
        for name in CAPTION_SPLITS:
            seed = _SCENE_SEEDS[name]
            count = cfg.limit if name == "train" and cfg.limit is not None else _SCENE_COUNTS[name]
            references = [[make_scene(seed, i, size, cfg.objects, draw=False)[1]] for i in range(count)]
            built[name] = CaptionDataset([f"scene-{seed}-{i}" for i in range(count)], references,
                                         _encode_captions(references, tokenizer, cfg.max_length, "shapes", name),
                                         tokenizer, "shapes", size, scene_seed=seed, scene_objects=cfg.objects)
        _remember(key, tokenizer, built)
    return _CACHE[key][1][split]


def _remember(key: tuple[Any, ...], tokenizer: Any, built: dict[str, CaptionDataset]) -> None:
    while len(_CACHE) >= 4:
        del _CACHE[next(iter(_CACHE))]
    _CACHE[key] = (tokenizer, built)


def encoder_inputs_of_files(files: list[Path], encoder: str, image_size: int, root: str | None = None) -> torch.Tensor:
    """A captioner's encoder inputs for image files given at sampling time (`genforge sample --image`): as the
    data set makes them for its own images."""
    dataset = CaptionDataset([f.name for f in files], [[] for _ in files], [[] for _ in files], None, "images",
                             image_size, files=list(files), root=root)
    return dataset.inputs(list(range(len(files))), encoder)
