"""Caption data: the COCO, Karpathy and CSV layouts, the split by image, their errors, and the synthetic scenes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from genforge.data.captions import COLORS, SHAPES, CaptionedImage, make_scene, read_captions, split_by_image
from genforge.errors import UserError


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(folder / name)
    return folder


def test_three_layouts_read_the_same_captions(tmp_path: Path) -> None:
    images = _images(tmp_path / "images", ["a.jpg", "b.jpg"])
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1, "caption": "A dog. "}, {"image_id": 2, "caption": "A cat."},
                            {"image_id": 1, "caption": "A brown dog."}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    karpathy = {"images": [{"filename": "a.jpg", "split": "restval", "sentences": [{"raw": "A dog."},
                                                                                   {"tokens": ["a", "brown", "dog"]}]},
                           {"filename": "b.jpg", "split": "test", "sentences": [{"raw": "A cat."}]}]}
    (tmp_path / "karpathy.json").write_text(json.dumps(karpathy))
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A dog.\nb.jpg,A cat.\na.jpg,A brown dog.\n")
    coco_items = read_captions(tmp_path / "coco.json")
    assert [(i.image.name, i.captions, i.split) for i in coco_items] == [
        ("a.jpg", ["A dog.", "A brown dog."], None), ("b.jpg", ["A cat."], None)]
    karpathy_items = read_captions(tmp_path / "karpathy.json", images)
    assert [(i.image.name, i.captions, i.split) for i in karpathy_items] == [
        ("a.jpg", ["A dog.", "a brown dog"], "train"), ("b.jpg", ["A cat."], "test")]  # restval trains
    assert [(i.image.name, i.captions) for i in read_captions(tmp_path / "captions.txt")] == [
        ("a.jpg", ["A dog.", "A brown dog."]), ("b.jpg", ["A cat."])]
    assert {k: [i.image.name for i in v] for k, v in split_by_image(karpathy_items, 0.1, 0.1).items()} == \
        {"train": ["a.jpg"], "val": [], "test": ["b.jpg"]}


def test_bad_caption_files_name_the_problem(tmp_path: Path) -> None:
    _images(tmp_path / "images", ["a.jpg"])
    cases = {
        "bad.json": ('{"images": [', r"not valid JSON \(Expecting value at line 1"),
        "orphan.json": (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                    "annotations": [{"image_id": 7, "caption": "x"}]}),
                        "annotations\\[0\\] is a caption of image_id 7, which `images` does not list"),
        "missing.json": (json.dumps({"images": [{"id": 1, "file_name": "gone.jpg"}],
                                     "annotations": [{"image_id": 1, "caption": "x"}]}),
                         "the image 'gone.jpg' does not exist in"),
        "nokeys.json": (json.dumps({"images": [{"file_name": "a.jpg"}]}), "images\\[0\\] needs `id` and `file_name`"),
        "split.json": (json.dumps({"images": [{"filename": "a.jpg", "split": "dev", "sentences": [{"raw": "x"}]}]}),
                       "has split 'dev'; expected train, val, test or restval"),
        "cols.csv": ("file,text\na.jpg,x\n", "needs the columns `image` and `caption` \\(its header is file, text\\)"),
        "list.json": ("[1, 2]", "expected a JSON object with an `images` list"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(UserError, match=message):
            read_captions(tmp_path / name)
    with pytest.raises(UserError, match="does not exist; point it at a COCO caption JSON"):
        read_captions(tmp_path / "nope.json")
    two = [CaptionedImage(tmp_path / "images" / "a.jpg", ["x"], None)] * 2
    with pytest.raises(UserError, match="2 images cannot give 1 val and 1 test images and still train"):
        split_by_image(two, 1, 1)


def test_flickr8k_subset_split_by_image() -> None:
    items = read_captions(shared_data("flickr8k_subset", "captions_coco.json"))
    assert len(items) == 1000 and all(len(i.captions) == 5 for i in items)
    splits = split_by_image(items, 100, 100)
    assert {k: len(v) for k, v in splits.items()} == {"train": 800, "val": 100, "test": 100}
    names = [{i.image.name for i in v} for v in splits.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])  # no image in two splits


def test_synthetic_scenes_are_seeded_and_captioned_from_the_pixels() -> None:
    image, caption = make_scene(0, 0, size=64)
    assert caption == "a blue triangle right of a yellow circle"
    again, same = make_scene(0, 0, size=64)
    assert same == caption and np.array_equal(image, again)
    assert make_scene(1, 0, size=64)[1] != caption or not np.array_equal(make_scene(1, 0, size=64)[0], image)
    yellow = np.argwhere((image == COLORS["yellow"]).all(-1))
    blue = np.argwhere((image == COLORS["blue"]).all(-1))
    assert blue[:, 1].mean() > yellow[:, 1].mean() + 10  # "right of": the blue pixels lie to the right
    objects = [sum(make_scene(5, i)[1].replace(",", " ").split().count(s) for s in SHAPES) for i in range(300)]
    assert all(objects.count(n) > 50 for n in (1, 2, 3))  # one, two and three objects all occur
    pairs = [make_scene(5, i, objects=2)[1] for i in range(300)]
    assert all(any(f" {r} " in p for p in pairs) for r in ("above", "below", "left of", "right of"))
    order = list(COLORS)
    firsts = [(order.index(p.split()[1]), order.index(p.split()[-2])) for p in pairs]
    assert all(a <= b for a, b in firsts)  # one caption per scene: the pair named in color order
    for i in range(40):  # the named relation is the picture's only one: the gap along its axis dominates
        picture, caption = make_scene(5, i, size=64, objects=2)
        words = caption.split()
        a, b = (np.argwhere((picture == COLORS[c]).all(-1)).mean(0) for c in (words[1], words[-2]))
        along = 0 if ("above" in words or "below" in words) else 1
        assert abs(a[along] - b[along]) > 2 * abs(a[1 - along] - b[1 - along]) - 6, caption
