"""Image data layer: IDX reading, fetch/download with checksums, the three builders, and ImageBatches."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_data
from genforge.config import DataSection
from genforge.data import download
from genforge.data.download import Fetchable, RemoteFile, data_root, fetch, fetchable
from genforge.data.images import (
    ImageBatches,
    ImageDataset,
    build_imagefolder,
    build_mnist,
    build_mnist_mini,
    read_idx,
)
from genforge.errors import UserError


_IDX_CODE = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, _IDX_CODE[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def pixel_sum(images: torch.Tensor) -> int:
    return int(images.numpy().sum(dtype=np.int64))  # numpy: torch's uint8 -> int64 sum is slow on big tensors


# ----------------------------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([1, -2, 70000], dtype=np.int32),
        np.array([[0.5, -1.25]], dtype=np.float32),
    ],
    ids=["uint8-3d", "int32-1d", "float32-2d"],
)
def test_read_idx_round_trip(tmp_path: Path, array: np.ndarray, gz: bool) -> None:
    path = write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), array, gz)
    result = read_idx(path)
    assert result.shape == array.shape and result.dtype.isnative
    np.testing.assert_array_equal(result, array)
    result[...] = 0  # writable: torch.from_numpy must not warn or share a read-only buffer


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\x00\x01", "trailing"),
        (lambda b: b"\x08\x03" + b[2:], "magic"),
        (lambda b: b[:6], "truncated"),  # cut inside the header
    ],
    ids=["truncated", "trailing", "magic", "short-header"],
)
def test_read_idx_rejects_damaged_files(tmp_path: Path, damage, expected: str, gz: bool) -> None:
    data = damage(idx_bytes(np.zeros((4, 5, 5), dtype=np.uint8)))
    path = tmp_path / ("bad.gz" if gz else "bad")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(UserError, match=expected) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 10, 10)))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# data root


def test_data_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GENFORGE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root(None) == tmp_path / "home" / ".cache" / "genforge" / "data"
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "env"))
    assert data_root(None) == tmp_path / "env"
    assert data_root(str(tmp_path / "cfg")) == tmp_path / "cfg"


# ----------------------------------------------------------------------------------------------------------------
# fetch and download, on a tiny fake table entry (no network, no real data needed)

TINY_CONTENT = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
TINY_GZ = gzip.compress(TINY_CONTENT, mtime=0)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Registers fetchable "tiny" (one gzipped IDX file) whose only mirror is a local folder; returns that folder."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "tiny-idx3-ubyte.gz").write_bytes(TINY_GZ)
    entry = Fetchable(
        name="tiny",
        description="test entry",
        mirrors=(mirror.as_uri() + "/",),
        files=(RemoteFile("tiny-idx3-ubyte.gz", md5(TINY_GZ), md5(TINY_CONTENT)),),
        license="none",
    )
    monkeypatch.setitem(download.FETCHABLE, "tiny", entry)
    return mirror


def test_fetchable_lists_mnist() -> None:
    assert "mnist" in fetchable()
    with pytest.raises(UserError, match="did you mean 'mnist'"):
        fetch("mnits", Path("unused"))


def test_fetch_downloads_from_file_url(tiny: Path, tmp_path: Path) -> None:
    out = fetch("tiny", tmp_path / "root", progress=False)
    assert out == tmp_path / "root" / "tiny" / "raw"
    assert (out / "tiny-idx3-ubyte.gz").read_bytes() == TINY_GZ
    assert [p.name for p in out.iterdir()] == ["tiny-idx3-ubyte.gz"]  # no temp files left behind
    assert read_idx(out / "tiny-idx3-ubyte.gz").shape == (3, 4, 5)


def test_download_tries_next_mirror_and_bad_checksum_leaves_nothing(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"
    missing_url = (tmp_path / "missing.bin").as_uri()
    download.download([missing_url, good.as_uri()], dest, md5(b"payload"), progress=False)
    assert dest.read_bytes() == b"payload"

    dest2 = tmp_path / "out" / "other.bin"
    with pytest.raises(UserError, match="MD5 mismatch") as info:
        download.download([good.as_uri()], dest2, "0" * 32, progress=False)
    assert "0" * 32 in str(info.value) and md5(b"payload") in str(info.value)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]  # no dest2, no .part file


def test_download_over_http_with_progress_bar(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    payload = bytes(range(256)) * 5000
    (served / "blob.bin").write_bytes(payload)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
            dest = download.download([url], tmp_path / "blob.bin", md5(payload), progress=True)
        finally:
            server.shutdown()
    assert dest.read_bytes() == payload


def test_fetch_offline_fails_fast_and_names_from(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = download.FETCHABLE["tiny"]
    monkeypatch.setitem(download.FETCHABLE, "tiny", Fetchable(**{**entry.__dict__, "mirrors": ("http://127.0.0.1:9/",)}))
    with pytest.raises(UserError) as info:
        fetch("tiny", tmp_path / "root", progress=False)
    message = str(info.value)
    assert "offline?" in message and "genforge data fetch tiny --from DIR" in message
    assert "http://127.0.0.1:9/tiny-idx3-ubyte.gz" in message
    assert not list((tmp_path / "root" / "tiny" / "raw").iterdir())


def test_fetch_from_dir_gz_or_plain_and_skips_present(tiny: Path, tmp_path: Path) -> None:
    # a recompressed copy (different gzip header, so a different MD5) verifies by its content
    source = tmp_path / "src"
    source.mkdir()
    (source / "tiny-idx3-ubyte.gz").write_bytes(gzip.compress(TINY_CONTENT, mtime=12345))
    out = fetch("tiny", tmp_path / "root", source_dir=source)
    stored = out / "tiny-idx3-ubyte.gz"
    first_stat = stored.stat()
    fetch("tiny", tmp_path / "root", source_dir=source)  # already present and verified: not copied again
    assert stored.stat().st_mtime_ns == first_stat.st_mtime_ns and stored.stat().st_ino == first_stat.st_ino

    plain_source = tmp_path / "plain" / "raw"  # `--from DIR` also looks in DIR/raw
    plain_source.mkdir(parents=True)
    (plain_source / "tiny-idx3-ubyte").write_bytes(TINY_CONTENT)
    out2 = fetch("tiny", tmp_path / "root2", source_dir=plain_source.parent)
    assert [p.name for p in out2.iterdir()] == ["tiny-idx3-ubyte"]
    np.testing.assert_array_equal(read_idx(out2 / "tiny-idx3-ubyte"), read_idx(stored))


def test_fetch_from_dir_rejects_wrong_file(tiny: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    wrong = source / "tiny-idx3-ubyte.gz"
    wrong.write_bytes(gzip.compress(TINY_CONTENT[:-1] + b"\xff", mtime=0))
    with pytest.raises(UserError) as info:
        fetch("tiny", tmp_path / "root", source_dir=source)
    message = str(info.value)
    assert str(wrong) in message and md5(TINY_GZ) in message and md5(wrong.read_bytes()) in message
    assert not list((tmp_path / "root" / "tiny" / "raw").iterdir())  # nothing half-imported

    with pytest.raises(UserError, match="missing tiny-idx3-ubyte.gz"):
        fetch("tiny", tmp_path / "root", source_dir=tmp_path / "mirror" / "..")


def test_fetch_replaces_corrupt_present_file(tiny: Path, tmp_path: Path) -> None:
    raw = tmp_path / "root" / "tiny" / "raw"
    raw.mkdir(parents=True)
    (raw / "tiny-idx3-ubyte").write_bytes(b"garbage")
    fetch("tiny", tmp_path / "root", progress=False)
    assert [p.name for p in raw.iterdir()] == ["tiny-idx3-ubyte.gz"]


# ----------------------------------------------------------------------------------------------------------------
# MNIST (real files) and MNIST-mini


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    fetch("mnist", root, source_dir=shared_data("mnist", "raw"), progress=False)  # the table's checksums accept the shared copies
    return root


def test_build_mnist_from_fetched_files(mnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFORGE_DATA", str(mnist_root))
    train = build_mnist(DataSection(name="mnist"), "train")
    test = build_mnist(DataSection(name="mnist"), "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28) and train.num_classes == test.num_classes == 10
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert pixel_sum(train.images[0]) == 27525 and pixel_sum(test.images[0]) == 18454
    assert pixel_sum(train.images) == 1567298545 and pixel_sum(test.images) == 264923200
    assert int(train.labels.sum()) == 267236 and int(test.labels.sum()) == 44434

    small = build_mnist(DataSection(name="mnist", limit=100, image_size=32, channels=3), "train")
    assert small.images.shape == (100, 3, 32, 32) and pixel_sum(small.images) == 9933972
    torch.testing.assert_close(small.images[:, 0], small.images[:, 2])


def test_build_mnist_reads_plain_idx_files(mnist_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for path in shared_data("mnist", "raw").iterdir():
        if path.name.startswith("t10k-labels"):
            (source / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
        else:
            (source / path.name).symlink_to(path)
    raw = fetch("mnist", tmp_path / "root", source_dir=source)
    assert (raw / "t10k-labels-idx1-ubyte").is_file()
    test = build_mnist(DataSection(name="mnist", root=str(tmp_path / "root")), "test")
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_build_mnist_missing_files_say_how_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path))
    with pytest.raises(UserError) as info:
        build_mnist(DataSection(name="mnist"), "train")
    message = str(info.value)
    for part in ("genforge data fetch mnist", "--from DIR", str(tmp_path / "mnist" / "raw"), "GENFORGE_DATA",
                 "data.root", "train-images-idx3-ubyte.gz"):
        assert part in message


@pytest.mark.parametrize("build", [build_mnist, build_mnist_mini, build_imagefolder])
def test_unknown_split_lists_allowed(build) -> None:
    with pytest.raises(UserError, match=r"`data.split` = 'valid'.*allowed: train"):
        build(DataSection(path="unused"), "valid")


def test_mnist_mini_is_class_balanced() -> None:
    train = build_mnist_mini(DataSection(), "train")
    test = build_mnist_mini(DataSection(), "test")
    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64 and train.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [600] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the official order, subset
    assert pixel_sum(train.images) == 159014314


def test_mnist_mini_transforms() -> None:
    ds = build_mnist_mini(DataSection(limit=10, image_size=14, channels=3), "test")
    assert ds.images.shape == (10, 3, 14, 14) and ds.labels.shape == (10,)
    full = build_mnist_mini(DataSection(limit=10), "test")
    # antialiased 2x downsampling of a 28x28 digit keeps the mean brightness (up to rounding)
    assert abs(ds.images[:, 0].float().mean() - full.images.float().mean()) < 1.0
    same = build_mnist_mini(DataSection(limit=10, image_size=28, channels=1), "test")
    torch.testing.assert_close(same.images, full.images)


# ----------------------------------------------------------------------------------------------------------------
# imagefolder


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder_classes_resize_and_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n in (("dog", 2), ("cat", 3)):
        for i in range(n):
            save_png(tmp_path / name / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = build_imagefolder(DataSection(name="imagefolder", path=str(tmp_path)), "train")
    assert ds.images.shape == (5, 3, 16, 16) and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]  # sorted class names: cat = 0, dog = 1
    first = np.asarray(Image.open(tmp_path / "cat" / "0.png"))
    np.testing.assert_array_equal(ds.images[0].permute(1, 2, 0).numpy(), first)

    gray = build_imagefolder(DataSection(name="imagefolder", path=str(tmp_path), channels=1, image_size=8), "train")
    assert gray.images.shape == (5, 1, 8, 8)
    # torch's antialiased bilinear follows Pillow's BILINEAR resize (up to rounding)
    expected = np.asarray(Image.open(tmp_path / "cat" / "0.png").convert("L").resize((8, 8), Image.BILINEAR))
    assert np.abs(gray.images[0, 0].numpy().astype(int) - expected.astype(int)).max() <= 1

    limited = build_imagefolder(DataSection(name="imagefolder", path=str(tmp_path), limit=2), "train")
    assert len(limited) == 2 and limited.num_classes == 2


def test_imagefolder_unlabeled_mixed_sizes_and_crop(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", np.full((10, 20), 200, dtype=np.uint8))  # wide gray image
    wide = np.zeros((10, 20), dtype=np.uint8)
    wide[:, 5:15] = 255  # the center square is white: a center crop keeps only white
    save_png(tmp_path / "b.png", wide)
    save_png(tmp_path / "c.jpg", np.full((10, 10, 3), 100, dtype=np.uint8))
    cfg = DataSection(name="imagefolder", path=str(tmp_path))
    with pytest.raises(UserError, match=r"differ in size.*data.image_size"):
        build_imagefolder(cfg, "train")
    ds = build_imagefolder(cfg.model_copy(update={"image_size": 10}), "train")
    assert ds.labels is None and ds.num_classes == 0
    assert ds.images.shape == (3, 3, 10, 10)  # a gray + color mix is read as RGB
    assert (ds.images[1] == 255).all()
    assert set(ds.images[2].flatten().tolist()) <= {99, 100, 101}  # JPEG is lossy


def test_imagefolder_errors_name_key_or_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="`data.path` is required"):
        build_imagefolder(DataSection(name="imagefolder"), "train")
    with pytest.raises(UserError, match="`data.path`.*does not exist"):
        build_imagefolder(DataSection(name="imagefolder", path=str(tmp_path / "nope")), "train")
    with pytest.raises(UserError, match="`data.path`.*no images"):
        build_imagefolder(DataSection(name="imagefolder", path=str(tmp_path)), "train")

    save_png(tmp_path / "cls" / "ok.png", np.zeros((4, 4), dtype=np.uint8))
    bad = tmp_path / "cls" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="cannot read this image") as info:
        build_imagefolder(DataSection(name="imagefolder", path=str(tmp_path)), "train")
    assert str(bad) in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# ImageBatches


def tiny_dataset(n: int = 10, labeled: bool = True) -> ImageDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous() * 25
    labels = torch.arange(n, dtype=torch.int64) if labeled else None
    return ImageDataset(images=images, labels=labels, num_classes=n if labeled else 0, name="tiny")


def test_batches_range_and_determinism() -> None:
    ds = build_mnist_mini(DataSection(limit=512), "train")
    batch = ImageBatches(ds, 64, seed=3).next_batch()
    assert batch["image"].shape == (64, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (64,)

    def run(seed: int) -> list[torch.Tensor]:
        batches = ImageBatches(ds, 64, seed=seed)
        return [batches.next_batch()["label"] for _ in range(12)]  # crosses an epoch boundary (8 per epoch)

    assert all(torch.equal(a, b) for a, b in zip(run(3), run(3)))
    assert not all(torch.equal(a, b) for a, b in zip(run(3), run(4)))
    first_epoch = torch.cat(run(3)[:8])
    assert sorted(first_epoch.tolist()) != first_epoch.tolist() and len(set(first_epoch.tolist())) <= 10


def test_batches_exact_resume() -> None:
    ds = build_mnist_mini(DataSection(limit=300), "train")
    original = ImageBatches(ds, 32, seed=7)  # 9 batches per epoch: 7 + 5 crosses into epoch 1
    for _ in range(7):
        original.next_batch()
    state = original.state_dict()
    assert state == {"epoch": 0, "index": 224}
    continued = [original.next_batch() for _ in range(5)]

    resumed = ImageBatches(ds, 32, seed=7)
    resumed.load_state_dict(state)
    for a, b in zip(continued, (resumed.next_batch() for _ in range(5))):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert resumed.state_dict() == original.state_dict() == {"epoch": 1, "index": 96}


def test_batches_epoch_wrap_drops_partial_batch() -> None:
    batches = ImageBatches(tiny_dataset(10), 4, seed=0)
    assert batches.batches_per_epoch == 2
    epoch0 = torch.cat([batches.next_batch()["label"] for _ in range(2)])
    epoch1 = torch.cat([batches.next_batch()["label"] for _ in range(2)])
    assert batches.state_dict() == {"epoch": 1, "index": 8}
    assert torch.equal(epoch0, batches.permutation(0)[:8]) and torch.equal(epoch1, batches.permutation(1)[:8])
    assert len(set(epoch0.tolist())) == 8 and not torch.equal(epoch0, epoch1)
    # pixel values follow the labels: image k is 25 * k everywhere, scaled to [-1, 1]
    images = ImageBatches(tiny_dataset(10, labeled=False), 4, seed=0).next_batch()
    assert set(images) == {"image"}
    expected = (batches.permutation(0)[:4].float() * 25 / 127.5 - 1).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    torch.testing.assert_close(images["image"], expected)


def test_batches_reject_bad_sizes_and_states() -> None:
    with pytest.raises(UserError, match=r"`train.batch_size` \(11\).*10 images"):
        ImageBatches(tiny_dataset(10), 11, seed=0)
    batches = ImageBatches(tiny_dataset(10), 4, seed=0)
    with pytest.raises(UserError, match="data.limit"):
        batches.load_state_dict({"epoch": 0, "index": 50})
