"""The one training loop. It knows no family: it walks the model's parameter groups, and asks the output-kind table
(`genforge.kinds`) what a batch counts, which split validates and how samples are saved and logged.

One training step runs the model's `train_schedule` (default: every group once): for each (group, repeats,
fresh_batch) it takes `repeats` optimizer steps of that group, each summing `grad_accum` micro-batches. While a
group steps, the other groups' parameters are frozen (requires_grad=False), so a GAN's generator step does not
waste time on discriminator weight gradients.

Exact resume: the checkpoint after step k holds the weights, EMA, optimizer states, the torch/numpy/python RNG
states and the data position at that moment. The LR is a pure function of the step. Periodic sampling, validation
and evaluation use their own generators and leave the global RNG as it was. So a run killed at any point and
resumed from its last checkpoint computes exactly what the uninterrupted run computes.

The trainer writes checkpoints through a `RunStore` it is given (`genforge.checkpoint.RunDir`), so it imports
nothing from the checkpoint layer (DESIGN.md: data flows config -> data -> models -> train -> checkpoint).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from genforge import kinds, registry
from genforge.config import ConfigError, RunConfig
from genforge.data.build import build_dataset, examples_for_sampling
from genforge.errors import UserError
from genforge.fileio import write_text
from genforge.models._protocol import ema_modules, train_schedule
from genforge.train import distributed
from genforge.train.ema import EMA
from genforge.train.optim import build_optimizer, group_settings, learning_rate, set_lr

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
VALIDATION_SEED = 1234  # the noise a validation loss draws (a GAN's z): the same every time


class TrainingDiverged(UserError):
    """A loss became NaN or Inf. The run dir keeps every checkpoint written before it."""

    exit_code = 1  # not a bad input: the run itself failed


class Interrupted(UserError):
    """SIGINT or SIGTERM stopped training after a checkpoint of the last finished step was written."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path):
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped after step {step}, checkpoint {checkpoint} written; continue "
                         f"with --resume {run_dir}")


@dataclass
class StopRequest:
    signal: int | None = None  # the first SIGINT/SIGTERM received, if any


@contextlib.contextmanager
def stop_on_signals() -> Any:
    """While training: the first SIGINT or SIGTERM only records itself (the loop finishes the step, checkpoints
    and stops); a second SIGINT interrupts at once (KeyboardInterrupt). Outside the main thread signals cannot be
    caught, and nothing changes."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def first(signum: int, frame: Any) -> None:
        stop.signal = signum
        log.warning("%s received: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {s: signal.signal(s, first) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class RunStore(Protocol):
    """Where a run lives: `genforge.checkpoint.RunDir` implements it."""

    path: Path

    def open(self, resume: bool) -> Path | None: ...  # prepare and lock the dir; on resume, the checkpoint to use
    def close(self) -> None: ...  # release the dir
    def write_config(self, config_yaml: str) -> None: ...
    def save(self, step: int, **parts: Any) -> Path: ...  # a checkpoint step-<step>/; returns its dir
    def mark_best(self, step: int) -> None: ...
    def load_tokenizer(self, step_dir: Path) -> Any: ...
    def load_model(self, model: nn.Module, step_dir: Path) -> None: ...
    def load_ema(self, step_dir: Path) -> dict[str, Tensor] | None: ...
    def load_train_state(self, step_dir: Path) -> dict[str, Any]: ...


class Evaluator(Protocol):
    """Runs every train.eval_every steps: `evaluator(model, cfg) -> {result key: value}` (the CLI passes
    `genforge.evaluation.protocols.training_evaluator(cfg)`; the trainer itself knows no metrics). An evaluator
    with `shards = True` runs on every rank of a data-parallel run, called with `shard=` (an
    `distributed.EvalShard`), and returns its results on rank 0; any other runs on rank 0 alone."""

    def __call__(self, model: nn.Module, cfg: RunConfig) -> dict[str, float]: ...


class ProgressHook(Protocol):
    def start(self, total_steps: int, start_step: int, unit: str) -> None: ...
    def update(self, step: int, info: dict[str, float]) -> None: ...
    def finish(self) -> None: ...


class LogProgress:
    """Default progress reporting through `logging` (the CLI swaps in a rich progress bar)."""

    def start(self, total_steps: int, start_step: int, unit: str) -> None:
        self.total, self.unit = total_steps, unit
        log.info("training steps %d..%d", start_step + 1, total_steps)

    def update(self, step: int, info: dict[str, float]) -> None:
        losses = " ".join(f"{k}={v:.4g}" for k, v in info.items() if k.endswith("loss") or k.startswith("eval/"))
        log.info("step %d/%d %s %.1f %s/s", step, self.total, losses, info.get("throughput", 0.0), self.unit)

    def finish(self) -> None:
        pass


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # steps completed
    checkpoint: Path  # the final checkpoint dir
    last_samples: Path | None  # the last periodic sample file
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged record


# --------------------------------------------------------------------------------------------------------------
# Setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("`train.device` is 'cuda' but no CUDA device is available; use --set train.device=cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 math runs on native instructions (on CPUs without avx512_bf16/AMX it is a slow fallback)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32, bf16 or fp16 for `train.precision` on `device`; says once why `auto` chose fp32."""
    if name == "auto":
        if native_bf16(device):
            return "bf16"
        log.info("train.precision=auto: fp32, because this %s has no native bf16 (on CPUs it needs avx512_bf16 or "
                 "AMX; emulated bf16 is slower than fp32)", "GPU" if device.type == "cuda" else "CPU")
        return "fp32"
    if name == "bf16" and not native_bf16(device):
        log.warning("train.precision=bf16 on a %s without native bf16: expect it to be slower than fp32", device.type)
    if name == "fp16" and device.type != "cuda":
        log.warning("train.precision=fp16 on a CPU: autocast and the loss scaler run, but CPUs have no fast fp16 "
                    "matmul; use bf16 (native bf16 CPUs) or fp32")
    return name


def autocast_for(precision: str, device: torch.device) -> Any:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def rng_state() -> dict[str, Any]:
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_untouched() -> Any:
    """Whatever runs inside leaves the global torch/numpy/python RNG states as they were (exact resume)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def build_model(cfg: RunConfig) -> nn.Module:
    return registry.model_class(cfg.model.family)(cfg.model)


def to_device(batch: dict[str, Tensor], device: torch.device, channels_last: bool) -> dict[str, Tensor]:
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and value.ndim == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def example_counter(model: nn.Module) -> Callable[[dict[str, Tensor]], int]:
    """What a batch counts for throughput: the family's own `count_examples(batch)` if it has one, else the kind's
    (images for images, tokens for text). Looked up once per run, not once per batch."""
    return getattr(model, "count_examples", None) or kinds.of(model).count


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[dict[str, Tensor]], group: str, autocast: Any) -> float:
    """Mean loss of `group` over fixed batches, in eval mode (no dropout), restoring the mode afterwards. Random
    draws inside the loss (a GAN's noise) come from a fixed seed, so every validation sees the same ones, and the
    global RNG is left as it was: validating does not change the training run."""
    was_training = model.training
    with rng_untouched():
        torch.manual_seed(VALIDATION_SEED)
        model.eval()
        try:
            total = 0.0
            for batch in batches:
                with autocast:
                    total += float(model.loss(batch, group)["loss"])
            return total / len(batches)
        finally:
            model.train(was_training)


def sampling_weights(model: nn.Module, ema: EMA | None, cfg: RunConfig) -> Any:
    """A context in which the model holds the weights samples come from: the EMA's when sample.use_ema."""
    return ema.applied(model) if ema is not None and cfg.sample.use_ema else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------------------
# Run logging: metrics.jsonl and TensorBoard


class NullLog:
    """What ranks other than 0 log: nothing (rank 0 logs the means over the ranks)."""

    def record(self, step: int, elapsed: float, values: dict[str, float], **extra: Any) -> None:
        pass

    def samples(self, kind: kinds.OutputKind, samples: Any, step: int, nrow: int | None) -> None:
        pass

    def close(self) -> None:
        pass


class RunLog:
    """One metrics.jsonl line per record and the same values as TensorBoard scalars (keys without a section go
    under train/); sample media to TensorBoard through the output kind."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool):
        path = run_dir / METRICS_FILE
        truncate_metrics(path, start_step)  # a killed run's records after its checkpoint (all, if it had none)
        self.file = open(path, "a")
        self.writer = _tensorboard(run_dir, start_step) if tensorboard else None

    def record(self, step: int, elapsed: float, values: dict[str, float], **extra: Any) -> None:
        self.file.write(json.dumps({"step": step, "elapsed": round(elapsed, 3), **extra,
                                    **{k: _round(v) for k, v in values.items()}}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def samples(self, kind: kinds.OutputKind, samples: Any, step: int, nrow: int | None) -> None:
        if self.writer is not None and kind.log is not None:
            kind.log(self.writer, "samples", samples, step, nrow)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records written after the checkpoint we resume from, so the log has no duplicated steps."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    write_text(path, "".join(line + "\n" for line in kept))


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


def _tensorboard(run_dir: Path, start_step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: it pulls in tensorboard

    # purge_step drops events after the resumed step (all, when a killed run left no checkpoint), so TensorBoard
    # shows no duplicated curve
    return SummaryWriter(log_dir=str(run_dir), purge_step=start_step)


# --------------------------------------------------------------------------------------------------------------
# Best checkpoint (train.keep_best)


class BestTracker:
    """train.keep_best: which step had the best train.best_metric so far. The value is stored as sign * value, so
    lower is always better; a resumed run that tracked another metric or direction starts afresh, but its old best
    checkpoint stays protected from pruning until a new best exists."""

    def __init__(self, tcfg: Any, saved: dict[str, Any] | None = None):
        self.tcfg = tcfg
        self.sign = 1.0 if tcfg.best_mode == "min" else -1.0
        self.state: dict[str, Any] = {"value": math.inf, "step": 0, "metric": tcfg.best_metric, "mode": tcfg.best_mode}
        self.stale_step = 0
        if saved is not None:
            saved = {"metric": "val/loss", "mode": "min", **saved}
            if (saved["metric"], saved["mode"]) == (tcfg.best_metric, tcfg.best_mode):
                self.state = saved
            else:
                self.stale_step = saved.get("step", 0)

    def protect(self) -> tuple[str, ...]:
        step = self.state["step"] or self.stale_step
        return (f"step-{step}",) if step else ()

    def improved(self, results: dict[str, float], step: int) -> bool:
        """Whether `results` ({"val/loss": ...} or one evaluation's results) improve the tracked metric; only the
        kind of result best_metric names counts."""
        tcfg = self.tcfg
        if not tcfg.keep_best or (tcfg.best_metric == "val/loss") != ("val/loss" in results):
            return False
        name = tcfg.best_metric.removeprefix("eval/")
        key = name if name in results else next(
            (k for k in results if k.startswith(name) and not k.endswith("-std")), None)
        if key is None:
            raise UserError(f"train.best_metric = {tcfg.best_metric!r} matches no evaluation result; the results are "
                            f"{', '.join(results) or 'none'}: name one of them, or a prefix of one")
        if self.sign * results[key] >= self.state["value"]:
            return False
        self.state = {"value": self.sign * results[key], "step": step, "metric": tcfg.best_metric,
                      "mode": tcfg.best_mode}
        return True


# --------------------------------------------------------------------------------------------------------------
# Loss and throughput averages between log records


class Meter:
    """Sums of the logged values and the examples and time of the steps since the last log record."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.seen, self.time, self.steps = 0, 0.0, 0

    def add(self, key: str, value: float) -> None:
        self.sums[key] += value
        self.counts[key] += 1

    def summary(self, extra: dict[str, float]) -> dict[str, float]:
        """Averages, then `extra` (the learning rates), throughput and mean step time; starts the next window."""
        record = {**{k: self.sums[k] / self.counts[k] for k in self.sums}, **extra,
                  "throughput": self.seen / max(self.time, 1e-9), "step_time": self.time / self.steps}
        self.reset()
        return record


# --------------------------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: RunConfig,
    store: RunStore,
    *,
    resume: bool = False,
    progress: ProgressHook | None = None,
    evaluator: Evaluator | None = None,
) -> TrainResult:
    """Train `cfg` into the run dir `store` (a `genforge.checkpoint.RunDir`), holding it (locked) until done. The
    first SIGINT or SIGTERM finishes the step, writes a checkpoint and raises `Interrupted`; a second SIGINT stops at
    once."""
    if cfg.train.eval_every and evaluator is None:
        raise UserError("train.eval_every is set but no evaluator was given: train with `genforge train`, or pass "
                        "evaluator=genforge.evaluation.protocols.training_evaluator(cfg)")
    problems = cfg.model.check_training(cfg)
    if problems:
        raise ConfigError("the run config", problems)
    # under torchrun: join the process group; rank 0 alone opens (and locks) the run dir and writes into it
    world, device = distributed.start(resolve_device(cfg.train.device), cfg.train.dist_timeout_minutes)
    finished = False  # this rank finished the loop, so the others will too (or fail, and torchrun stops this one)
    try:
        if world is not None:
            distributed.check_batch_size(cfg.train.batch_size, world.size, f"{world.size} torchrun processes")
        resume_from = open_store(store, resume, world)
        try:
            with stop_on_signals() as stop:
                result = run(cfg, store, resume_from, stop, progress, evaluator, world, device)
            finished = True
            return result
        except RuntimeError as exc:
            if world is None or not distributed.is_peer_failure(exc):
                raise
            raise PeerFailed(f"rank {world.rank}: lost contact with the other ranks of the data-parallel run "
                             f"({str(exc).splitlines()[0][:300]}); one of them died or hung (its own log says why). "
                             f"Checkpoints already written in {store.path} are kept: continue with `genforge train "
                             f"--resume {store.path}` (with --nproc N for any N that divides train.batch_size)"
                             ) from None
        finally:
            if world is None or world.main:
                store.close()
    finally:
        distributed.stop(world, synchronize=finished)


class PeerFailed(UserError):
    """Another rank of a data-parallel run failed; its own message says why."""

    exit_code = 1


def open_store(store: RunStore, resume: bool, world: distributed.World | None) -> Path | None:
    """Rank 0 opens the run dir (the lock, the checkpoint to resume from) and tells the other ranks what it found,
    or that it failed."""
    if world is None:
        return store.open(resume)
    if world.main:
        try:
            resume_from = store.open(resume)
        except UserError as exc:
            distributed.broadcast(("error", str(exc)), world)
            raise
        return distributed.broadcast(("ok", resume_from), world)[1]
    status, value = distributed.broadcast(None, world)
    if status == "error":
        raise PeerFailed(f"rank {world.rank}: stopped because rank 0 could not open the run dir: {value}")
    return value


class SilentProgress:
    """What ranks other than 0 report: nothing (rank 0 shows the progress of the whole run)."""

    def start(self, total_steps: int, start_step: int, unit: str) -> None:
        pass

    def update(self, step: int, info: dict[str, float]) -> None:
        pass

    def finish(self) -> None:
        pass


def run(cfg: RunConfig, store: RunStore, resume_from: Path | None, stop: StopRequest, progress: ProgressHook | None,
        evaluator: Evaluator | None, world: distributed.World | None = None,
        device: torch.device | None = None) -> TrainResult:
    """The training run itself, in an opened run dir: setup, restore, the loop. Under torchrun every rank runs it;
    only rank 0 (`main`) writes."""
    tcfg = cfg.train
    main = world is None or world.main
    if resume_from is not None and main:
        log.info("resuming from %s", resume_from)

    # 1. seed (alike on every rank: see distributed.py), threads, device
    seed_everything(cfg.run.seed)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = device or resolve_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)

    # 2. data, then the model the data decides the last settings of (a text model's vocab_size)
    saved_tokenizer = store.load_tokenizer(resume_from) if resume_from is not None else None
    dataset = build_dataset(cfg.data, tokenizer=saved_tokenizer)
    cfg = cfg.model_copy(update={"model": cfg.model.adapt_to_data(dataset)})
    model = build_model(cfg)
    kind = kinds.of(model)
    tokenizer = getattr(dataset, "tokenizer", None)
    if tokenizer is not None:
        model.tokenizer = tokenizer  # text families sample strings through it; it goes into every checkpoint
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if world is not None and tcfg.sync_batchnorm and distributed.sync_batchnorm(model) and main:
        log.info("BatchNorm layers normalize over the global batch (synchronized across the %d ranks)", world.size)
    count_examples = example_counter(model)
    batch_options = cfg.model.batch_options()
    batches = dataset.batches(tcfg.batch_size, cfg.run.seed, **batch_options)
    val_batches: list[dict[str, Tensor]] = []
    if tcfg.val_every:
        val_source = build_dataset(cfg.data, kind.val_split, tokenizer=tokenizer).batches(
            tcfg.batch_size, cfg.run.seed + 1, **batch_options)
        val_batches = [to_device(distributed.shard(val_source.next_batch(), world), device, tcfg.channels_last)
                       for _ in range(tcfg.val_batches)]

    # 3. optimizers per group, EMA
    groups = model.param_groups()
    settings = group_settings(tcfg.optim, tcfg.groups, list(groups))
    optimizers = {g: build_optimizer(model, g, params, settings[g]) for g, params in groups.items()}
    scalers = {g: torch.amp.GradScaler(device.type, enabled=precision == "fp16") for g in groups}
    group_loss = distributed.wrap_groups(model, groups, world, device, tcfg.find_unused_parameters)
    schedule = train_schedule(model)
    ema_names = ema_modules(model)
    ema = EMA(model, ema_names, tcfg.ema_decay, tcfg.ema_start) if tcfg.ema_decay > 0 and ema_names else None

    # 4. resume state
    step, seen, elapsed = 0, 0, 0.0
    best = BestTracker(tcfg)
    if resume_from is not None:
        state = restore(store, resume_from, model, optimizers, ema, batches, scalers)
        step, seen, elapsed = state["step"], state["examples_seen"], state["elapsed"]
        best = BestTracker(tcfg, state.get("best", {}))
    _check_not_done(store.path, tcfg, step, elapsed)
    budget = tcfg.max_minutes * 60 if tcfg.max_minutes is not None else math.inf

    config_yaml = cfg.to_yaml()
    if main:
        store.write_config(config_yaml)
    run_log: RunLog | NullLog = RunLog(store.path, step, tcfg.tensorboard) if main else NullLog()
    sample_data: dict[str, Any] = {}  # the data set sample options start from, built at the first periodic samples

    def save_checkpoint(at: int) -> Path:
        if not main:  # every rank holds the same state; rank 0 writes it
            return store.path / f"step-{at}"
        train_state = {"step": at, "optimizers": {g: opt.state_dict() for g, opt in optimizers.items()},
                       "data": batches.state_dict(), "rng": rng_state(), "examples_seen": seen, "elapsed": elapsed,
                       "best": dict(best.state)}
        if precision == "fp16":
            train_state["scalers"] = {g: scaler.state_dict() for g, scaler in scalers.items()}
        return store.save(at, model=model, config_yaml=config_yaml, train_state=train_state,
                          ema_state=ema.state_dict() if ema is not None else None, tokenizer=tokenizer,
                          keep_last=tcfg.keep_last, protect=best.protect())

    def keep_if_best(results: dict[str, float], at: int) -> None:
        nonlocal last_ckpt
        if best.improved(results, at):
            last_ckpt = save_checkpoint(at)
            if main:
                store.mark_best(at)

    # 5. the loop
    progress = (progress or LogProgress()) if main else SilentProgress()
    progress.start(tcfg.steps, step, kind.unit)
    autocast = autocast_for(precision, device)
    shards = world is not None and getattr(evaluator, "shards", False)  # every rank evaluates, rank 0 scores
    meter = Meter()
    last_ckpt: Path | None = resume_from
    last_samples: Path | None = None
    record: dict[str, float] = {}
    model.train()
    try:
        while step < tcfg.steps:
            # 5a. one step: every group of the schedule, each `repeats` optimizer steps of grad_accum micro-batches
            t0 = time.perf_counter()
            batch: dict[str, Tensor] | None = None
            with distributed.training_step(world):
                for group, repeats, fresh in schedule:
                    opt, params, scaler = optimizers[group], groups[group], scalers[group]
                    if len(groups) > 1:  # one group: nothing to freeze
                        _freeze_others(groups, group)
                    for r in range(repeats):
                        set_lr(opt, learning_rate(settings[group], step * repeats + r, tcfg.steps * repeats))
                        opt.zero_grad(set_to_none=True)
                        for micro in range(tcfg.grad_accum):
                            if fresh or batch is None:
                                full = batches.next_batch()  # the global batch; this rank trains on its slice
                                n = count_examples(full)
                                seen += n
                                meter.seen += n
                                batch = to_device(distributed.shard(full, world), device, tcfg.channels_last)
                            with distributed.no_sync(group_loss[group], micro == tcfg.grad_accum - 1):
                                with autocast:
                                    out = group_loss[group](batch)
                                _check_finite(out["loss"], group, step, last_ckpt)
                                scaler.scale(out["loss"] / tcfg.grad_accum).backward()
                            for key, value in out.items():
                                meter.add(f"{group}/{key}", float(value.detach()))
                        scaler.unscale_(opt)  # (no-op unless fp16) clipping and logging see the true gradients
                        if tcfg.grad_clip is not None:
                            meter.add(f"{group}/grad_norm",
                                      float(torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)))
                        scaler.step(opt)  # skipped by the fp16 scaler when a gradient overflowed
                        scaler.update()
            if len(groups) > 1:
                _freeze_others(groups, None)
            if ema is not None:
                ema.update(model, step)
            dt = time.perf_counter() - t0
            elapsed += dt
            meter.time += dt
            meter.steps += 1
            step += 1
            last = step == tcfg.steps or elapsed >= budget  # the final step: log, sample and checkpoint it
            stopping = stop.signal is not None  # a signal asked to stop: log and checkpoint this step, then stop
            if world is not None:  # all ranks stop at the same step: a signal or time budget seen by any rank
                signum, last_any = distributed.agree_max([float(stop.signal or 0), float(last)], world)
                stopping, last = signum > 0, last_any > 0
                if stopping and stop.signal is None:  # another rank's signal (never clear our own: the handler
                    stop.signal = int(signum)  # may have run since agree_max read it; the next step stops then)

            # 5b. what runs every so many steps
            if step % tcfg.log_every == 0 or last or stopping:
                record = distributed.mean_over_ranks(
                    meter.summary({f"{g}/lr": opt.param_groups[0]["lr"] for g, opt in optimizers.items()}), world)
                run_log.record(step, elapsed, record, **{kind.unit + "_seen": seen})
                progress.update(step, record)
            if val_batches and (step % tcfg.val_every == 0 or last) and not stopping:
                group = getattr(model, "validation_group", schedule[0][0])
                with distributed.training_step(world):
                    val = distributed.mean_over_ranks({"val": validation_loss(model, val_batches, group, autocast)},
                                                      world)["val"]
                record[f"val/{'loss' if group == 'model' else group + '_loss'}"] = val
                run_log.record(step, elapsed, {"val/loss": val})
                progress.update(step, record)
                keep_if_best({"val/loss": val}, step)
            if (evaluator is not None and tcfg.eval_every and (step % tcfg.eval_every == 0 or last) and not stopping
                    and (main or shards)):  # a rank that does not evaluate waits at the next step's collective
                t_eval = time.perf_counter()
                results = evaluate(model, ema, cfg, evaluator, distributed.eval_shard(world) if shards else None)
                if main:
                    run_log.record(step, elapsed, results, eval_seconds=round(time.perf_counter() - t_eval, 3))
                    record.update(results)
                    progress.update(step, record)
                    keep_if_best({k.removeprefix("eval/"): v for k, v in results.items()}, step)
            if (kind.shows_samples and ((tcfg.sample_every and step % tcfg.sample_every == 0) or last) and not stopping
                    and main):
                last_samples = write_periodic_samples(model, ema, cfg, store.path, step, run_log,
                                                      sample_data) or last_samples
            if ((tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0) or last or stopping) and (
                    last_ckpt is None or last_ckpt.name != f"step-{step}"):
                last_ckpt = save_checkpoint(step)
            if stopping:
                raise Interrupted(stop.signal, step, last_ckpt, store.path)
            if last:
                if step < tcfg.steps:
                    log.info("time budget of %g min reached after %d steps", tcfg.max_minutes, step)
                break
    finally:
        _freeze_others(groups, None)
        run_log.close()
        progress.finish()
    distributed.barrier(world)  # every rank returns once rank 0's final checkpoint is written
    assert last_ckpt is not None
    return TrainResult(run_dir=store.path, step=step, checkpoint=last_ckpt, last_samples=last_samples, metrics=record)


def restore(store: RunStore, step_dir: Path, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
            ema: EMA | None, batches: Any, scalers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put everything back as it was after the checkpoint's step: weights, optimizer states, fp16 loss scales, EMA,
    data position and the RNG states. Returns the checkpoint's train state (step, examples seen, elapsed time,
    best)."""
    store.load_model(model, step_dir)
    state = store.load_train_state(step_dir)
    for g, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][g])
    for g, scaler in (scalers or {}).items():
        if scaler.is_enabled() and g in state.get("scalers", {}):
            scaler.load_state_dict(state["scalers"][g])
    if ema is not None:
        ema.load_state_dict(store.load_ema(step_dir) or ema.shadow)
    batches.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    return state


def write_periodic_samples(model: nn.Module, ema: EMA | None, cfg: RunConfig, run_dir: Path, step: int,
                           run_log: RunLog, sample_data: dict[str, Any] | None = None) -> Path | None:
    """samples/step-N.<the kind's suffix> from the sampling weights, with the run's sample section; also to
    TensorBoard. Options that start from real examples (`data_split()`) get the run's data set at that split, built
    on the first call and kept in `sample_data` for the later ones. Its own generator: the training RNG is
    untouched. Samples are a view of the run, not part of it:
    when the sample section cannot be honoured (e.g. a prompt the tokenizer cannot encode) the error is logged
    with its fix and training goes on (None is returned)."""
    kind = kinds.of(model)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(cfg.sample.seed)
    try:
        options = cfg.sample.kwargs()
        cache = sample_data if sample_data is not None else {}
        if "data" not in cache:  # None when the options need no real examples
            cache["data"] = examples_for_sampling(cfg.data, cfg.sample.options, getattr(model, "tokenizer", None))
        if cache["data"] is not None:
            options["data"] = cache["data"]
        with sampling_weights(model, ema, cfg):
            samples, path = kinds.generate_and_save(
                model, cfg.sample.n, run_dir / "samples" / f"step-{step}", cond=cfg.sample.cond_for(model),
                generator=generator, options=options, nrow=cfg.sample.nrow)
    except UserError as exc:
        log.error("step %d: no samples written: %s", step, exc)
        return None
    run_log.samples(kind, samples, step, cfg.sample.nrow)
    return path


def evaluate(model: nn.Module, ema: EMA | None, cfg: RunConfig, evaluator: Evaluator,
             shard: distributed.EvalShard | None = None) -> dict[str, float]:
    """The evaluator on the sampling weights, in eval mode, leaving the global RNG as it was (exact resume)."""
    model.eval()
    try:
        with rng_untouched(), sampling_weights(model, ema, cfg), torch.no_grad():
            results = evaluator(model, cfg, shard=shard) if shard is not None else evaluator(model, cfg)
            return {f"eval/{k}": float(v) for k, v in results.items()}
    finally:
        model.train()


def _check_not_done(run_dir: Path, tcfg: Any, step: int, elapsed: float) -> None:
    if step >= tcfg.steps:
        raise UserError(f"the run at {run_dir} already completed {step} steps (train.steps = {tcfg.steps}); "
                        f"raise it to continue, e.g. --set train.steps={step + tcfg.steps}")
    if tcfg.max_minutes is not None and elapsed >= tcfg.max_minutes * 60:
        raise UserError(f"the run at {run_dir} already used its time budget ({elapsed / 60:.1f} min of training, "
                        f"train.max_minutes = {tcfg.max_minutes}); raise it to continue, e.g. --set "
                        f"train.max_minutes={math.ceil(elapsed / 60 + tcfg.max_minutes)}")


def _check_finite(loss: Tensor, group: str, step: int, last_ckpt: Path | None) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"step {step + 1}: {group} loss is {loss.item()} (not finite); training stopped. The last good "
            f"checkpoint is {last_ckpt or 'none (no checkpoint yet)'}. Lower train.optim.lr, set train.grad_clip, "
            f"or use train.precision=fp32, then resume with --resume")


def _freeze_others(groups: dict[str, list[nn.Parameter]], active: str | None) -> None:
    """Only the active group's parameters need gradients (None: unfreeze everything)."""
    for name, params in groups.items():
        flag = active is None or name == active
        for p in params:
            p.requires_grad_(flag)


def config_for_resume(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's own config.yaml plus the given --set overrides (e.g. a larger train.steps)."""
    from genforge.config import apply_overrides, load_yaml, validate

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no config.yaml there; is this a genforge run dir?")
    return validate(apply_overrides(load_yaml(path), overrides), source=str(path))
