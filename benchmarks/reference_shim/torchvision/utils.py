"""Stand-in for ``torchvision.utils.make_grid`` / ``save_image``.

Semantics follow torchvision's documentation:

* ``make_grid(tensor, nrow=8, padding=2, normalize=False, value_range=None,
  scale_each=False, pad_value=0.0)`` tiles a (B, C, H, W) batch into one
  (C', H', W') image with ``min(nrow, B)`` columns and ``padding`` pixels of
  ``pad_value`` around every tile. Single-channel batches are repeated to three
  channels. With ``normalize=True`` values are clamped to ``value_range`` (default:
  the tensor's own min/max, per image if ``scale_each``) and shifted/scaled to [0, 1].
* ``save_image(tensor, fp, format=None, **grid_kwargs)`` builds the grid, maps
  [0, 1] to uint8 with ``x * 255 + 0.5`` clamped to [0, 255], and writes it with PIL.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from PIL import Image

__all__ = ["make_grid", "save_image"]


def _normalize_(t: torch.Tensor, value_range: Optional[Tuple[float, float]]) -> None:
    if value_range is not None:
        low, high = float(value_range[0]), float(value_range[1])
    else:
        low, high = float(t.min()), float(t.max())
    t.clamp_(min=low, max=high)
    t.sub_(low).div_(max(high - low, 1e-5))


@torch.no_grad()
def make_grid(
    tensor: Union[torch.Tensor, List[torch.Tensor]],
    nrow: int = 8,
    padding: int = 2,
    normalize: bool = False,
    value_range: Optional[Tuple[float, float]] = None,
    scale_each: bool = False,
    pad_value: float = 0.0,
) -> torch.Tensor:
    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack(list(tensor), dim=0)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor or list of tensors expected, got {type(tensor)}")
    if tensor.dim() == 2:  # single image H x W
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 3:  # single image C x H x W
        if tensor.size(0) == 1:
            tensor = torch.cat((tensor, tensor, tensor), 0)
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 4 and tensor.size(1) == 1:  # single-channel images
        tensor = torch.cat((tensor, tensor, tensor), 1)

    if normalize:
        tensor = tensor.clone()
        if scale_each:
            for t in tensor:
                _normalize_(t, value_range)
        else:
            _normalize_(tensor, value_range)

    if tensor.size(0) == 1:
        return tensor.squeeze(0)

    nmaps = tensor.size(0)
    xmaps = min(nrow, nmaps)
    ymaps = int(math.ceil(float(nmaps) / xmaps))
    height, width = int(tensor.size(2) + padding), int(tensor.size(3) + padding)
    num_channels = tensor.size(1)
    grid = tensor.new_full((num_channels, height * ymaps + padding, width * xmaps + padding), pad_value)
    k = 0
    for y in range(ymaps):
        for x in range(xmaps):
            if k >= nmaps:
                break
            grid.narrow(1, y * height + padding, height - padding).narrow(
                2, x * width + padding, width - padding
            ).copy_(tensor[k])
            k += 1
    return grid


@torch.no_grad()
def save_image(tensor, fp, format: Optional[str] = None, **kwargs) -> None:
    grid = make_grid(tensor, **kwargs)
    ndarr = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()
    Image.fromarray(ndarr).save(fp, format=format)
