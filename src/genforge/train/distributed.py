"""Data-parallel training on PyTorch's own engine: `torchrun` starts one process per device, each process builds the
same run, and DistributedDataParallel averages the gradients. The trainer calls these helpers; with one process
(no torchrun, or `--nproc-per-node 1`) none of them does anything.

What keeps N processes equal to one process with the same global batch (`train.batch_size`):

- **Data**: every rank walks the same global batch stream (same seed, same position) and keeps its contiguous
  slice of each batch (`shard`). The data position is therefore one state for any number of ranks: a checkpoint of
  a 2-process run resumes in 1 or 4 processes, as long as the global batch divides by the world size. (Each rank
  builds the whole global batch and slices it: an index copy for the in-memory data sets genforge ships.)
- **Randomness**: every rank seeds the global RNG alike; per-example draws inside a loss go through
  `genforge.models._draws.draw_rows`, which draws the global batch's rows and keeps this rank's.
- **Gradients**: one DDP wrapper per parameter group, built while the other groups are frozen, so a GAN's
  generator step all-reduces only generator gradients; `no_sync` on all but the last accumulation micro-batch.
- **BatchNorm**: batch statistics over the global batch (`SyncedBatchNorm`, differentiable all-reduce, CPU and
  CUDA), only inside the training step, so rank 0's periodic samples never wait on the other ranks.
- **Losses and metrics** logged are means over the ranks; only rank 0 writes checkpoints, samples, TensorBoard and
  metrics.jsonl, and holds the run dir's lock. Evaluation during training shards the sample generation over the
  ranks (rank r draws its share with seed eval.seed + r) and gathers the samples on rank 0, which scores them.

Randomness that is not per example (dropout masks) repeats across ranks, and a loss averaged over a
rank-dependent count (tokens of padded sentences) is a mean of rank means: such runs match one process in
distribution, not bit for bit.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from genforge.errors import UserError
from genforge.models._draws import data_shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run started by torchrun."""

    rank: int  # 0..size-1 over all nodes
    size: int  # processes in all
    local_rank: int  # this process's index on its node (its CUDA device)
    bn_group: Any = None  # process group of the BatchNorm statistics (apart from DDP's gradient traffic)

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or None when not started by torchrun (or with
    one process)."""
    size = os.environ.get("WORLD_SIZE")
    if size is None or int(size) <= 1:
        return None
    try:
        return int(os.environ["RANK"]), int(size), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as exc:
        raise UserError(f"WORLD_SIZE={size} is set but RANK is missing or not a number ({exc}); start data-parallel "
                        "runs with torchrun (or `genforge train CONFIG --nproc N`)") from None


def start(device: torch.device, timeout_minutes: float) -> tuple[World | None, torch.device]:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); returns this rank's world and device
    (cuda:LOCAL_RANK on CUDA). (None, device) for a one-process run."""
    env = from_env()
    if env is None:
        return None, device
    rank, size, local_rank = env
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices here; use "
                            f"--nproc-per-node <= {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    bn_group = dist.new_group(backend=backend, timeout=timeout)
    world = World(rank, size, local_rank, bn_group)
    if world.main:
        log.info("data-parallel training: %d processes (%s)", size, backend)
    return world, device


def stop(world: World | None, synchronize: bool = False) -> None:
    """Leave the process group. With `synchronize` (every rank finished normally) the ranks first meet at a barrier,
    so none tears down its gloo connections while a slower peer (rank 0 still writing the last checkpoint) may yet
    touch them: a rank torn down first can abort the other inside gloo (SIGABRT in `Address::fromPeerName`,
    pytorch/pytorch#188266; seen once in this project's CI). After a failure there is nobody to meet: no barrier."""
    if world is None or not dist.is_initialized():
        return
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether a RuntimeError came from a collective whose peer died or timed out (gloo: "Connection reset by
    peer", "Timed out"; NCCL: watchdog errors), rather than from the model."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    marks = ("gloo", "Gloo", "NCCL", "ProcessGroup", "Connection reset", "Connection closed")
    return any(mark in text for mark in marks)


def check_batch_size(batch_size: int, processes: int, where: str) -> None:
    """The global batch must split into equal slices; `where` names what set the process count."""
    if processes > 1 and batch_size % processes:
        raise UserError(f"{where}: `train.batch_size` ({batch_size}) is the global batch and must divide evenly over "
                        f"the processes; use a multiple of {processes}, e.g. --set train.batch_size="
                        f"{max(processes, batch_size // processes * processes)}")


def shard(batch: dict[str, Tensor], world: World | None) -> dict[str, Tensor]:
    """This rank's contiguous slice of a global batch (every tensor split along its first dim)."""
    if world is None:
        return batch
    out = {}
    for key, value in batch.items():
        n = value.shape[0] // world.size
        out[key] = value[world.rank * n:(world.rank + 1) * n]
    return out


def broadcast(obj: Any, world: World | None) -> Any:
    """Rank 0's `obj` on every rank (a picklable object)."""
    if world is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree_max(values: list[float], world: World | None) -> list[float]:
    """The largest of each value over the ranks: every rank takes the same decision (stop, last step)."""
    if world is None:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def mean_over_ranks(values: dict[str, float], world: World | None) -> dict[str, float]:
    """Each value averaged over the ranks (the ranks' dicts have the same keys)."""
    if world is None or not values:
        return values
    keys = list(values)  # the same order on every rank: the same code built the dicts
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: v / world.size for k, v in zip(keys, t.tolist())}


@dataclass(frozen=True)
class EvalShard:
    """What a sharding evaluator needs: this rank, the world size, and `gather(obj)`: every rank's obj as a list
    on rank 0 (tensors moved to the CPU first), None on the others."""

    rank: int
    size: int

    def gather(self, obj: Any) -> list[Any] | None:
        obj = _to_cpu(obj)
        box: list[Any] | None = [None] * self.size if self.rank == 0 else None
        dist.gather_object(obj, box, dst=0)
        return box


def eval_shard(world: World) -> EvalShard:
    return EvalShard(world.rank, world.size)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, list):
        return [_to_cpu(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------------------------
# Gradients: one DDP wrapper per parameter group


class GroupLoss(nn.Module):
    """`model.loss(batch, group)` as a forward pass, so DistributedDataParallel can hook the group's gradients."""

    def __init__(self, model: nn.Module, group: str):
        super().__init__()
        self.model = model
        self.group = group

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.model.loss(batch, self.group)


def wrap_groups(model: nn.Module, groups: dict[str, list[nn.Parameter]], world: World | None,
                device: torch.device, find_unused: bool) -> dict[str, Any]:
    """{group: callable(batch) -> loss dict}: the model's own loss for one process; under torchrun a DDP wrapper
    per group, each built while the other groups are frozen, so DDP registers (and all-reduces) only that group's
    parameters."""
    if world is None:
        return {g: (lambda batch, g=g: model.loss(batch, g)) for g in groups}
    wrapped = {}
    for g in groups:
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name == g)
        wrapped[g] = nn.parallel.DistributedDataParallel(
            GroupLoss(model, g), device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused)
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)
    return wrapped


def no_sync(step_fn: Any, last_micro_batch: bool) -> Any:
    """DDP's no_sync on all but the last micro-batch of an accumulated step (gradients are all-reduced once)."""
    if last_micro_batch or not hasattr(step_fn, "no_sync"):
        return contextlib.nullcontext()
    return step_fn.no_sync()


# --------------------------------------------------------------------------------------------------------------
# BatchNorm over the global batch

_SYNCING: ContextVar[Any] = ContextVar("genforge_bn_sync", default=None)


@contextlib.contextmanager
def synced_step(world: World | None) -> Iterator[None]:
    """Inside: every rank runs the same training computation, so SyncedBatchNorm may all-reduce its statistics."""
    if world is None:
        yield
        return
    token = _SYNCING.set(world.bn_group)
    try:
        yield
    finally:
        _SYNCING.reset(token)


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch. The per-channel sum and sum of squares
    of this rank's slice (accumulated in float64, so E[x²] - E[x]² loses nothing to cancellation) are summed over
    the ranks in ONE differentiable all_reduce (PyTorch's `torch.distributed.nn.functional.all_reduce`, so the
    backward pass is exact and costs one all_reduce too); the slices are equal, so the count needs no collective.
    Collectives are latency-bound on a CPU: a DCGAN step makes about 15 of them. It syncs only inside
    `synced_step`; elsewhere (rank 0's periodic samples, eval mode) it is an ordinary BatchNorm. The state dict is
    nn.BatchNorm's: checkpoints load into plain models."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        group = _SYNCING.get()
        if group is None or not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * dist.get_world_size(group)
        sums = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64)])
        total, squares = all_reduce(sums, group=group).chunk(2)
        mean64 = total / count
        var64 = (squares / count - mean64 * mean64).clamp(min=0)  # biased, as BatchNorm normalizes
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean64.to(self.running_mean.dtype), alpha=m)
                unbiased = var64 * (count / max(count - 1, 1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module) -> int:
    """Swap every BatchNorm1d/2d/3d of `model` for a SyncedBatchNorm that shares its parameters and buffers (the
    optimizer's and EMA's references stay valid). Returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncedBatchNorm):
                synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats)
                if child.affine:
                    synced.weight, synced.bias = child.weight, child.bias
                if child.track_running_stats:
                    synced.running_mean, synced.running_var = child.running_mean, child.running_var
                    synced.num_batches_tracked = child.num_batches_tracked
                synced.train(child.training)
                setattr(parent, name, synced)
                swapped += 1
    return swapped


@contextlib.contextmanager
def training_step(world: World | None) -> Iterator[None]:
    """Around the computation every rank runs alike (the training step, validation): per-example draws take this
    rank's rows of the global batch, and BatchNorm uses the global batch's statistics."""
    if world is None:
        yield
        return
    with data_shard(world.rank, world.size), synced_step(world):
        yield


def barrier(world: World | None) -> None:
    if world is not None:
        dist.barrier()
