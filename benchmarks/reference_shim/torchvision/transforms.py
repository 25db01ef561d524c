"""Stand-in for ``torchvision.transforms`` (the subset the reference scripts use).

Behaviour follows torchvision's documentation for PIL-image input:

* ``Resize(size)`` with an int matches the *smaller* edge to ``size`` keeping the
  aspect ratio (long edge = ``int(size * long / short)``); a sequence ``(h, w)``
  is used as is. Default interpolation is bilinear, done with ``PIL.Image.resize``
  (PIL resizing is always antialiased). If the image already has the output size
  it is returned unchanged.
* ``ToTensor`` turns a PIL image / HxW(xC) uint8 ndarray into a float CxHxW tensor
  scaled to [0, 1].
* ``Normalize(mean, std)`` computes ``(x - mean) / std`` per channel, out of place
  unless ``inplace=True``.
"""

from __future__ import annotations

import enum
import numbers
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["Compose", "Resize", "ToTensor", "Normalize", "InterpolationMode"]


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_PIL_RESAMPLE = {
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.NEAREST_EXACT: Image.Resampling.NEAREST,
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    InterpolationMode.BOX: Image.Resampling.BOX,
    InterpolationMode.HAMMING: Image.Resampling.HAMMING,
    InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
}


class Compose:
    """Apply transforms one after another."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        body = "".join(f"\n    {t}" for t in self.transforms)
        return f"{self.__class__.__name__}({body}\n)"


def _resized_output_size(height: int, width: int, size: List[int], max_size: Optional[int]) -> Tuple[int, int]:
    if len(size) == 1:
        short, long = (width, height) if width <= height else (height, width)
        new_short = size[0]
        new_long = int(new_short * long / short)
        if max_size is not None:
            if max_size <= new_short:
                raise ValueError(f"max_size = {max_size} must be strictly greater than the requested size {new_short}")
            if new_long > max_size:
                new_short, new_long = int(max_size * new_short / new_long), max_size
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if max_size is not None:
        raise ValueError("max_size is only supported when size is a single int")
    return int(size[0]), int(size[1])


class Resize:
    """Resize a PIL image (bilinear by default). Tensor input is not supported by this shim."""

    def __init__(
        self,
        size: Union[int, Sequence[int]],
        interpolation: Union[InterpolationMode, int] = InterpolationMode.BILINEAR,
        max_size: Optional[int] = None,
        antialias: Optional[bool] = True,
    ):
        if isinstance(size, numbers.Integral):
            size = [int(size)]
        elif isinstance(size, Sequence) and len(size) in (1, 2):
            size = [int(s) for s in size]
        else:
            raise TypeError(f"size should be an int or a sequence of length 1 or 2, got {size!r}")
        if isinstance(interpolation, InterpolationMode):
            resample = _PIL_RESAMPLE[interpolation]
        else:  # a PIL resampling constant, accepted by older torchvision too
            resample = int(interpolation)
        self.size = size
        self.interpolation = interpolation
        self.max_size = max_size
        self.antialias = antialias
        self._resample = resample

    def __call__(self, img):
        if not isinstance(img, Image.Image):
            raise TypeError(f"reference_shim Resize supports PIL images only, got {type(img)}")
        width, height = img.size
        out_h, out_w = _resized_output_size(height, width, self.size, self.max_size)
        if (out_h, out_w) == (height, width):
            return img
        return img.resize((out_w, out_h), self._resample)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(size={self.size}, interpolation={self.interpolation}, max_size={self.max_size}, antialias={self.antialias})"


class ToTensor:
    """PIL image or HxW(xC) ndarray -> float CxHxW tensor; uint8 data is scaled to [0, 1]."""

    def __call__(self, pic):
        if isinstance(pic, np.ndarray):
            arr = pic
        elif isinstance(pic, Image.Image):
            if pic.mode == "1":
                arr = 255 * np.array(pic, dtype=np.uint8)
            else:
                arr = np.array(pic, copy=True)
        else:
            raise TypeError(f"pic should be a PIL Image or ndarray, got {type(pic)}")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"pic should be 2 or 3 dimensional, got {arr.ndim} dimensions")
        t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        if t.dtype == torch.uint8:
            return t.to(torch.get_default_dtype()).div(255)
        return t

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class Normalize:
    """Per-channel ``(x - mean) / std`` on a float CxHxW (or ...xCxHxW) tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False):
        self.mean = mean
        self.std = std
        self.inplace = inplace

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"Input tensor should be a torch tensor, got {type(tensor)}")
        if not tensor.is_floating_point():
            raise TypeError(f"Input tensor should be a float tensor, got {tensor.dtype}")
        if tensor.ndim < 3:
            raise ValueError(f"Expected tensor to be a tensor image of size (..., C, H, W), got {tuple(tensor.shape)}")
        if not self.inplace:
            tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device)
        if (std == 0).any():
            raise ValueError(f"std evaluated to zero after conversion to {tensor.dtype}, leading to division by zero.")
        if mean.ndim == 1:
            mean = mean.view(-1, 1, 1)
        if std.ndim == 1:
            std = std.view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mean={self.mean}, std={self.std})"
