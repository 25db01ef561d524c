"""Random draws with one row per example, made the same way by one process and by N data-parallel ones.

Under data parallelism (`genforge.train.distributed`) each of `world` processes computes the loss of its slice of
the global batch: rank r holds rows [r*b, (r+1)*b). Every process keeps the same global RNG state, so if each drew
its own b rows of noise, all ranks would draw the *same* noise (the first b rows a single process draws), and a
2-process GAN would train on duplicated latents. Instead a loss draws per-example randomness through `draw_rows`:
it draws the rows of the whole global batch, exactly as one process with the global batch does, and keeps its own
slice. All ranks then stay in RNG lockstep and N processes compute what one process computes.

Randomness that is not one row per example (dropout masks) is drawn per rank as usual: ranks draw equal shapes, so
their RNG states stay in step, and their masks repeat across ranks (a known cost of keeping one RNG stream).

The trainer sets the shard with `data_shard(rank, world)` around the loss; outside it (one process, sampling,
evaluation) `draw_rows(draw, n)` is just `draw(n)`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from torch import Tensor

_SHARD: ContextVar[tuple[int, int]] = ContextVar("genforge_data_shard", default=(0, 1))


@contextlib.contextmanager
def data_shard(rank: int, world: int) -> Iterator[None]:
    """Inside: losses run on rank `rank`'s slice of a global batch split into `world` equal slices."""
    token = _SHARD.set((rank, world))
    try:
        yield
    finally:
        _SHARD.reset(token)


def current_shard() -> tuple[int, int]:
    """(rank, world) of the losses running now; (0, 1) outside data parallelism."""
    return _SHARD.get()


def draw_rows(draw: Callable[[int], Tensor], n: int) -> Tensor:
    """`draw(m)` makes m rows of random values (e.g. `lambda m: torch.randn(m, z_dim)`); returns the n rows of this
    rank's examples out of the global batch's draw."""
    rank, world = _SHARD.get()
    if world == 1:
        return draw(n)
    return draw(n * world)[rank * n:(rank + 1) * n]


def draw_rows_like(draw: Callable[[Tensor], Tensor], local: Tensor) -> Tensor:
    """For draws whose parameters are data (`torch.bernoulli(probabilities)`): `draw(t)` returns a random tensor
    shaped like t, each element depending only on its own parameter and its position. The other ranks' rows are
    filled with zeros (only their RNG consumption matters), and this rank's rows of the result are returned."""
    rank, world = _SHARD.get()
    if world == 1:
        return draw(local)
    n = local.shape[0]
    full = local.new_zeros((n * world, *local.shape[1:]))
    full[rank * n:(rank + 1) * n] = local
    return draw(full)[rank * n:(rank + 1) * n]
