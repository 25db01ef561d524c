"""The FID Inception-v3 detector rewritten as eager PyTorch for speed, from the weights of its TorchScript `layers`.

It computes the same function as the TorchScript graph (`inception.py` documents the network), in a different
order of floating-point operations; features agree to about 1e-6 relative (tests/test_inception.py checks 1e-5).
What changes:

1. Batch norm (no scale, eps 1e-3, inference statistics) is folded into each convolution:
   w' = w / sqrt(var + eps), b' = beta - mean / sqrt(var + eps). conv + bias + ReLU is then one oneDNN call.
2. The 1x1 convolutions of a block that read the same input are one convolution with their output channels
   stacked, then split: one large matrix product instead of three or four small ones.
3. "3x3 average pool (padding excluded), then 1x1 conv" becomes "1x1 conv, then the pool": both are linear, and
   the pool averages each channel over the same valid neighbours, so pool(W x) = W pool(x) exactly in real
   arithmetic. The conv then joins the block's stacked 1x1 convolution, and the pool runs on 32-192 channels
   instead of 192-1280. The bias is added and the ReLU applied after the pool. (mixed_10's pool branch is a
   *max* pool, which does not commute, and stays as it is.)
4. Everything stays channels_last: the TorchScript graph calls `.contiguous()` on every branch output, which
   turns channels_last tensors back into NCHW in each block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3  # the graph's batch_norm(..., eps=0.001)


class FoldedConv(nn.Module):
    """conv -> batch norm (no scale) -> ReLU of the graph, as one conv with bias, then ReLU."""

    def __init__(self, unit: torch.jit.ScriptModule):
        super().__init__()
        scale = torch.rsqrt(unit.var.double() + BN_EPS)
        self.weight = nn.Parameter((unit.weight.double() * scale[:, None, None, None]).float(), requires_grad=False)
        self.bias = nn.Parameter((unit.beta.double() - unit.mean.double() * scale).float(), requires_grad=False)
        padding = unit.padding
        self.padding = tuple(padding) if isinstance(padding, (list, tuple)) else (padding, padding)
        self.stride = unit.stride

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding), inplace=True)


class Stacked1x1(nn.Module):
    """Several 1x1 FoldedConvs on the same input as one conv. The last one may be `pooled`: its output (before
    bias and ReLU) is average-pooled 3x3, stride 1, padding 1, padding excluded (see the module docstring, 3)."""

    def __init__(self, units: list[torch.jit.ScriptModule], pooled: torch.jit.ScriptModule | None = None):
        super().__init__()
        convs = [FoldedConv(u) for u in units + ([pooled] if pooled is not None else [])]
        self.sizes = [c.weight.shape[0] for c in convs]
        self.weight = nn.Parameter(torch.cat([c.weight for c in convs]), requires_grad=False)
        plain = torch.cat([c.bias for c in convs[: len(units)]])
        self.bias = nn.Parameter(torch.cat([plain, torch.zeros(self.sizes[-1])]) if pooled is not None else plain,
                                 requires_grad=False)
        self.pool_bias = nn.Parameter(convs[-1].bias.clone(), requires_grad=False) if pooled is not None else None

    def forward(self, x: Tensor) -> list[Tensor]:
        y = F.conv2d(x, self.weight, self.bias)
        parts = list(torch.split(y, self.sizes, dim=1))
        if self.pool_bias is not None:
            pooled = F.avg_pool2d(parts[-1], 3, 1, 1, count_include_pad=False)
            parts[-1] = pooled + self.pool_bias[None, :, None, None]
        return [F.relu(p) for p in parts]


def _chain(*units: torch.jit.ScriptModule) -> nn.Sequential:
    return nn.Sequential(*(FoldedConv(u) for u in units))


def _tower(module: torch.jit.ScriptModule, first: int = 1) -> nn.Sequential:
    """A tower's convs `conv`, `conv_1`, `conv_2`, ... from index `first` (the first one is usually stacked)."""
    names = sorted((n for n, _ in module.named_children() if n.startswith("conv")),
                   key=lambda n: int(n.partition("_")[2] or 0))
    return _chain(*(getattr(module, n) for n in names[first:]))


class BlockA(nn.Module):
    """mixed_0..2 (35x35) and mixed_4..7 (17x17): 1x1 | 1x1 -> tower | 1x1 -> tower_1 | avg pool -> 1x1."""

    def __init__(self, m: torch.jit.ScriptModule):
        super().__init__()
        self.stack = Stacked1x1([m.conv, m.tower.conv, m.tower_1.conv], pooled=m.tower_2.conv)
        self.tower, self.tower_1 = _tower(m.tower), _tower(m.tower_1)

    def forward(self, x: Tensor) -> Tensor:
        b0, t, t1, pool = self.stack(x)
        return torch.cat([b0, self.tower(t), self.tower_1(t1), pool], 1)


class BlockB(nn.Module):
    """mixed_3 (35 -> 17): 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool 3x3 stride 2."""

    def __init__(self, m: torch.jit.ScriptModule):
        super().__init__()
        self.conv, self.tower = FoldedConv(m.conv), _tower(m.tower, first=0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class BlockD(nn.Module):
    """mixed_8 (17 -> 8): 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max pool 3x3 stride 2."""

    def __init__(self, m: torch.jit.ScriptModule):
        super().__init__()
        self.stack = Stacked1x1([m.tower.conv, m.tower_1.conv])
        self.tower, self.tower_1 = _tower(m.tower), _tower(m.tower_1)

    def forward(self, x: Tensor) -> Tensor:
        t, t1 = self.stack(x)
        return torch.cat([self.tower(t), self.tower_1(t1), F.max_pool2d(x, 3, 2)], 1)


class BlockE(nn.Module):
    """mixed_9 / mixed_10 (8x8): 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1, where the pool is
    an average in mixed_9 and a max (stride 1, padding 1) in mixed_10 (pytorch-fid's FIDInceptionE_2)."""

    def __init__(self, m: torch.jit.ScriptModule, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        units = [m.conv, m.tower_conv, m.tower_1_conv]
        self.stack = Stacked1x1(units, pooled=None if max_pool else m.tower_2_conv)
        self.pool_conv = FoldedConv(m.tower_2_conv) if max_pool else None
        self.a1, self.a2 = FoldedConv(m.tower_mixed_conv), FoldedConv(m.tower_mixed_conv_1)
        self.b0 = FoldedConv(m.tower_1_conv_1)
        self.b1, self.b2 = FoldedConv(m.tower_1_mixed_conv), FoldedConv(m.tower_1_mixed_conv_1)

    def forward(self, x: Tensor) -> Tensor:
        parts = self.stack(x)
        if self.pool_conv is not None:
            pool = self.pool_conv(F.max_pool2d(x, 3, 1, 1))
            b0, a, b = parts
        else:
            b0, a, b, pool = parts
        b = self.b0(b)
        return torch.cat([b0, self.a1(a), self.a2(a), self.b1(b), self.b2(b), pool], 1)


class FusedInception(nn.Module):
    """(N, 3, 299, 299) in [-1, 1] -> (N, 2048, 1, 1), like the detector's `layers`, channels_last throughout; with
    pool=False the 8x8 grid of `mixed_10` before the average pool, (N, 2048, 8, 8) (the captioner's image tokens)."""

    def __init__(self, layers: torch.jit.ScriptModule):
        super().__init__()
        self.stem_a = _chain(layers.conv, layers.conv_1, layers.conv_2)  # then max pool 3x3 stride 2
        self.stem_b = _chain(layers.conv_3, layers.conv_4)  # then max pool 3x3 stride 2
        blocks: list[nn.Module] = [BlockA(layers.mixed), BlockA(layers.mixed_1), BlockA(layers.mixed_2),
                                   BlockB(layers.mixed_3)]
        blocks += [BlockA(getattr(layers, f"mixed_{i}")) for i in (4, 5, 6, 7)]
        blocks += [BlockD(layers.mixed_8), BlockE(layers.mixed_9, max_pool=False), BlockE(layers.mixed_10, max_pool=True)]
        self.blocks = nn.Sequential(*blocks)
        self.to(memory_format=torch.channels_last)

    @staticmethod
    def supports(layers: nn.Module) -> bool:
        """Whether `layers` has the Inception-v3 structure this rewrite reads (the FID detectors do)."""
        return all(hasattr(layers, name) for name in ("conv", "conv_4", "mixed", "mixed_3", "mixed_8", "mixed_10"))

    def forward(self, x: Tensor, pool: bool = True) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(self.stem_a(x), 3, 2)
        x = F.max_pool2d(self.stem_b(x), 3, 2)
        grid = self.blocks(x)  # (N, 2048, 8, 8)
        return F.avg_pool2d(grid, 8) if pool else grid
