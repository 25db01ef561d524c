"""The one training loop. It knows nothing about GANs, VAEs or GPTs: it walks the model's parameter groups.

One training step runs the model's `train_schedule` (default: every group once): for each (group, repeats,
fresh_batch) it takes `repeats` optimizer steps of that group, each summing `grad_accum` micro-batches. While a
group steps, the other groups' parameters are frozen (requires_grad=False), so a GAN's generator step does not
waste time on discriminator weight gradients.

Exact resume: the checkpoint after step k holds the weights, EMA, optimizer states, the torch/numpy/python RNG
states and the data position at that moment. The LR is a pure function of the step. Periodic sampling and
logging use their own generators and never touch the global RNG. So a run killed at any point and resumed from
its last checkpoint computes exactly what the uninterrupted run computes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from genforge import checkpoint, media, registry
from genforge.config import RunConfig, validate
from genforge.errors import UserError
from genforge.models._protocol import ema_modules, train_schedule
from genforge.train.ema import EMA
from genforge.train.optim import build_optimizer, group_settings, learning_rate, set_lr

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(UserError):
    """A loss became NaN or Inf. The run dir keeps every checkpoint written before it."""

    exit_code = 1  # not a bad input: the run itself failed


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
# Setup helpers


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
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "bf16" and not native_bf16(device):
        log.warning("train.precision=bf16 on a %s without native bf16: expect it to be slower than fp32", device.type)
    return name


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


def build_model(cfg: RunConfig) -> nn.Module:
    return registry.model_class(cfg.model.family)(cfg.model)


def build_data(cfg: RunConfig, split: str | None = None, tokenizer: Any = None) -> Any:
    """The configured data set. Text data sets take the tokenizer of a checkpoint (resume, evaluation) so the ids
    stay those the model was trained on; without one they fit their own."""
    builder = registry.dataset_builder(cfg.data.name)
    if tokenizer is not None:
        return builder(cfg.data, split or cfg.data.split, tokenizer=tokenizer)
    return builder(cfg.data, split or cfg.data.split)


def adapt_to_data(cfg: RunConfig, dataset: Any) -> None:
    """Settings the data decides: a text model's vocab_size is its tokenizer's (written into config.yaml, so the
    checkpoint rebuilds the model without the data)."""
    tokenizer = getattr(dataset, "tokenizer", None)
    if tokenizer is None or "vocab_size" not in type(cfg.model).model_fields:
        return
    given = cfg.model.vocab_size
    if given is not None and given != tokenizer.vocab_size:
        raise UserError(f"`model.vocab_size` is {given} but the {tokenizer.kind} tokenizer of {dataset.name} has "
                        f"{tokenizer.vocab_size} tokens; remove model.vocab_size (it is set from the tokenizer)")
    object.__setattr__(cfg, "model", cfg.model.model_copy(update={"vocab_size": tokenizer.vocab_size}))


def batch_options(cfg: RunConfig) -> dict[str, Any]:
    """Keyword arguments a data set's `batches()` needs from the model config (text: the context length)."""
    block_size = getattr(cfg.model, "block_size", None)
    return {"block_size": block_size} if block_size is not None else {}


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[dict[str, Tensor]], group: str, autocast: Any) -> float:
    """Mean loss of `group` over fixed batches, in eval mode (no dropout), restoring the mode afterwards. Random
    draws inside the loss (a GAN's noise) come from a fixed seed, so every validation sees the same ones, and the
    global RNG is left as it was: validating does not change the training run."""
    was_training = model.training
    state = rng_state()
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
        set_rng_state(state)


VALIDATION_SEED = 1234


def _count(batch: dict[str, Tensor]) -> int:
    """Examples in a batch for throughput: tokens for text (x is (B, T)), else the batch size."""
    if "x" in batch:
        return batch["x"].numel()
    return next(iter(batch.values())).shape[0]


def _to_device(batch: dict[str, Tensor], device: torch.device, channels_last: bool) -> dict[str, Tensor]:
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and value.ndim == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def write_samples(model: nn.Module, samples: Any, path_stem: Path, nrow: int | None) -> Path:
    kind = model.output_kind
    if kind == "image":
        return media.save_images(samples, path_stem.with_suffix(".png"), nrow=nrow)
    if kind == "text":
        return media.save_texts(list(samples), path_stem.with_suffix(".txt"))
    raise NotImplementedError(f"periodic samples for output kind {kind!r}")


# --------------------------------------------------------------------------------------------------------------
# The run directory


def prepare_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Create the run dir; on resume return the checkpoint to continue from. Never overwrites a run's data."""
    existing = checkpoint.step_dirs(run_dir)
    if not resume:
        if existing:
            raise UserError(
                f"run dir {run_dir} already has checkpoints (newest: {existing[-1].name}); pass --resume to continue "
                f"it, or --run-dir NEW_DIR (or --set run.name=...) to start a new run"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        return None
    if not existing:
        log.warning("--resume: %s has no checkpoint yet; starting from step 0", run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return None
    good = checkpoint.latest_good(run_dir)
    if good is None:
        raise UserError(f"--resume: every checkpoint in {run_dir} is corrupt (see the warnings above); "
                        "nothing to resume from")
    return good


def _truncate_metrics(path: Path, last_step: int) -> None:
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: ProgressHook | None = None,
    evaluator: Callable[[nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train `cfg` into `run_dir`. `evaluator(model) -> {key: value}` runs every train.eval_every steps (the CLI
    passes `evaluation.protocols.training_evaluator(cfg, kind)`; the trainer itself knows no metrics)."""
    tcfg = cfg.train
    if tcfg.eval_every and evaluator is None:
        raise UserError("train.eval_every is set but no evaluator was given: train with `genforge train`, or pass "
                        "evaluator=genforge.evaluation.protocols.training_evaluator(cfg, output_kind)")
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run.dir) / cfg.run.name
    resume_from = prepare_run_dir(run_dir, resume)
    if resume_from is not None:  # continue with the run's own config, plus what this call overrides
        log.info("resuming from %s", resume_from)

    # 1. seed, threads, device
    seed_everything(cfg.run.seed)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)

    # 2. data and model
    saved_tokenizer = None
    if resume_from is not None and (resume_from / checkpoint.TOKENIZER_FILE).exists():
        from genforge.data.tokenizers import load_tokenizer

        saved_tokenizer = load_tokenizer(resume_from / checkpoint.TOKENIZER_FILE)
    dataset = build_data(cfg, tokenizer=saved_tokenizer)
    check = getattr(cfg.model, "check_data", None)
    if check is not None:
        check(dataset)
    adapt_to_data(cfg, dataset)
    model = build_model(cfg)
    if getattr(dataset, "tokenizer", None) is not None:
        model.tokenizer = dataset.tokenizer
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    batches = dataset.batches(tcfg.batch_size, cfg.run.seed, **batch_options(cfg))
    val_batches: list[dict[str, Tensor]] = []
    if tcfg.val_every:
        val_data = build_data(cfg, "val" if model.output_kind == "text" else "test", getattr(dataset, "tokenizer", None))
        source = val_data.batches(tcfg.batch_size, cfg.run.seed + 1, **batch_options(cfg))
        val_batches = [_to_device(source.next_batch(), device, tcfg.channels_last) for _ in range(tcfg.val_batches)]

    # 3. optimizers per group, EMA
    groups = model.param_groups()
    settings = group_settings(tcfg.optim, tcfg.groups, list(groups))
    optimizers = {g: build_optimizer(model, g, params, settings[g]) for g, params in groups.items()}
    schedule = train_schedule(model)
    ema_names = ema_modules(model)
    ema = EMA(model, ema_names, tcfg.ema_decay, tcfg.ema_start) if tcfg.ema_decay > 0 and ema_names else None

    # 4. resume state
    start_step, seen, elapsed = 0, 0, 0.0
    sign = 1.0 if tcfg.best_mode == "min" else -1.0  # best["value"] is stored as sign * value: lower is better
    best: dict[str, Any] = {"value": math.inf, "step": 0, "metric": tcfg.best_metric, "mode": tcfg.best_mode}
    stale_best = 0  # the best step of a resumed run that tracked another metric: kept until a new best exists
    if resume_from is not None:
        checkpoint.load_model_state(model, resume_from, use_ema=False)
        state = checkpoint.load_train_state(resume_from)
        for g, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][g])
        if ema is not None:
            ema_path = resume_from / checkpoint.EMA_FILE
            ema.load_state_dict(checkpoint.load_weights(ema_path) if ema_path.exists() else ema.shadow)
        batches.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        start_step, seen, elapsed = state["step"], state["examples_seen"], state["elapsed"]
        saved = {"metric": "val/loss", "mode": "min", **state.get("best", {})}
        if (saved["metric"], saved["mode"]) == (tcfg.best_metric, tcfg.best_mode):
            best = saved
        else:  # another metric or direction: track it afresh, keeping the old best checkpoint on disk
            stale_best = saved.get("step", 0)
        _truncate_metrics(run_dir / METRICS_FILE, start_step)
    if start_step >= tcfg.steps:
        raise UserError(f"the run at {run_dir} already completed {start_step} steps (train.steps = {tcfg.steps}); "
                        f"raise it to continue, e.g. --set train.steps={start_step + tcfg.steps}")
    budget = tcfg.max_minutes * 60 if tcfg.max_minutes is not None else math.inf
    if elapsed >= budget:
        raise UserError(f"the run at {run_dir} already used its time budget ({elapsed / 60:.1f} min of training, "
                        f"train.max_minutes = {tcfg.max_minutes}); raise it to continue, e.g. --set "
                        f"train.max_minutes={math.ceil(elapsed / 60 + tcfg.max_minutes)}")

    config_yaml = cfg.to_yaml()
    checkpoint.write_atomic_text(run_dir / "config.yaml", config_yaml)
    writer = _tensorboard(run_dir, start_step) if tcfg.tensorboard else None
    tokenizer = getattr(model, "tokenizer", None)

    def save(step: int) -> Path:
        train_state = {
            "step": step,
            "optimizers": {g: opt.state_dict() for g, opt in optimizers.items()},
            "data": batches.state_dict(),
            "rng": rng_state(),
            "examples_seen": seen,
            "elapsed": elapsed,
            "best": dict(best),
        }
        protect = tuple(f"step-{s}" for s in (best["step"] or stale_best,) if s)
        return checkpoint.save(
            run_dir, step, model=model, config_yaml=config_yaml, train_state=train_state,
            ema_state=ema.state_dict() if ema is not None else None, tokenizer=tokenizer, keep_last=tcfg.keep_last,
            protect=protect,
        )

    def make_samples(step: int) -> Path:
        generator = torch.Generator(device).manual_seed(cfg.sample.seed)
        context = ema.applied(model) if ema is not None and cfg.sample.use_ema else contextlib.nullcontext()
        if model.output_kind == "text":
            cond, options = cfg.sample.prompt, cfg.sample.generation_options()
        else:
            cond, options = cfg.sample.class_label, cfg.sample.image_options()
        with context:
            samples = model.sample(cfg.sample.n, cond=cond, generator=generator, **options)
        path = write_samples(model, samples, run_dir / "samples" / f"step-{step}", cfg.sample.nrow)
        if writer is not None:
            _log_samples(writer, model.output_kind, samples, step, cfg.sample.nrow)
        return path

    def keep_if_best(results: dict[str, float], step: int) -> None:
        """train.keep_best: checkpoint `step` when its best_metric (a key of `results`, or a prefix) improved.
        `results` is {"val/loss": ...} or one evaluation's results; only the kind best_metric names counts."""
        nonlocal best, last_ckpt
        if not tcfg.keep_best or (tcfg.best_metric == "val/loss") != ("val/loss" in results):
            return
        name = tcfg.best_metric.removeprefix("eval/")
        key = name if name in results else next(
            (k for k in results if k.startswith(name) and not k.endswith("-std")), None)
        if key is None:
            raise UserError(f"train.best_metric = {tcfg.best_metric!r} matches no evaluation result; the results are "
                            f"{', '.join(results) or 'none'}: name one of them, or a prefix of one")
        if sign * results[key] < best["value"]:
            best = {"value": sign * results[key], "step": step, "metric": tcfg.best_metric, "mode": tcfg.best_mode}
            last_ckpt = save(step)
            checkpoint.write_atomic_text(run_dir / "best", f"step-{step}\n")

    def run_evaluation(step: int) -> dict[str, float]:
        """The evaluator on the sampling weights, in eval mode, leaving the global RNG as it was (exact resume)."""
        assert evaluator is not None
        state = rng_state()
        context = ema.applied(model) if ema is not None and cfg.sample.use_ema else contextlib.nullcontext()
        model.eval()
        try:
            with context, torch.no_grad():
                results = {f"eval/{k}": float(v) for k, v in evaluator(model).items()}
        finally:
            model.train()
            set_rng_state(state)
        return results

    # 5. the loop
    unit = "tokens" if model.output_kind == "text" else ("images" if model.output_kind == "image" else "examples")
    progress = progress or LogProgress()
    progress.start(tcfg.steps, start_step, unit)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    window_seen, window_time, window_steps = 0, 0.0, 0
    last_ckpt: Path | None = resume_from
    last_samples: Path | None = None
    record: dict[str, float] = {}
    done = start_step
    metrics_file = open(run_dir / METRICS_FILE, "a")

    def log_record(values: dict[str, float], **extra: Any) -> None:
        """One metrics.jsonl line for the current step (plus `extra` fields), and the values as TensorBoard scalars
        (keys without a section go under train/)."""
        metrics_file.write(json.dumps({"step": done, "elapsed": round(elapsed, 3), **extra,
                                       **{k: _round(v) for k, v in values.items()}}) + "\n")
        metrics_file.flush()
        if writer is not None:
            for key, value in values.items():
                writer.add_scalar(key if "/" in key else f"train/{key}", value, done)
    model.train()
    try:
        for step in range(start_step, tcfg.steps):
            t0 = time.perf_counter()
            batch: dict[str, Tensor] | None = None
            for group, repeats, fresh in schedule:
                opt, params = optimizers[group], groups[group]
                if len(groups) > 1:  # one group: nothing to freeze
                    _freeze_others(groups, group)
                for r in range(repeats):
                    set_lr(opt, learning_rate(settings[group], step * repeats + r, tcfg.steps * repeats))
                    opt.zero_grad(set_to_none=True)
                    for _ in range(tcfg.grad_accum):
                        if fresh or batch is None:
                            batch = _to_device(batches.next_batch(), device, tcfg.channels_last)
                            n = _count(batch)
                            seen += n
                            window_seen += n
                        with autocast:
                            out = model.loss(batch, group)
                        loss = out["loss"]
                        if not torch.isfinite(loss):
                            raise TrainingDiverged(
                                f"step {step + 1}: {group} loss is {loss.item()} (not finite); training stopped. "
                                f"The last good checkpoint is {last_ckpt or 'none (no checkpoint yet)'}. Lower "
                                f"train.optim.lr, set train.grad_clip, or use train.precision=fp32, then resume "
                                f"with --resume"
                            )
                        (loss / tcfg.grad_accum).backward()
                        for key, value in out.items():
                            sums[f"{group}/{key}"] += float(value.detach())
                            counts[f"{group}/{key}"] += 1
                    if tcfg.grad_clip is not None:
                        norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
                        sums[f"{group}/grad_norm"] += float(norm)
                        counts[f"{group}/grad_norm"] += 1
                    opt.step()
            if len(groups) > 1:
                _freeze_others(groups, None)
            if ema is not None:
                ema.update(model, step)
            dt = time.perf_counter() - t0
            elapsed += dt
            window_time += dt
            window_steps += 1
            done = step + 1
            last = done == tcfg.steps or elapsed >= budget  # the final step: log, sample and checkpoint it

            if done % tcfg.log_every == 0 or last:
                record = {k: sums[k] / counts[k] for k in sums}
                for g, opt in optimizers.items():
                    record[f"{g}/lr"] = opt.param_groups[0]["lr"]
                record["throughput"] = window_seen / max(window_time, 1e-9)
                record["step_time"] = window_time / window_steps
                log_record(record, **{unit + "_seen": seen})
                progress.update(done, record)
                sums.clear()
                counts.clear()
                window_seen, window_time, window_steps = 0, 0.0, 0
            if val_batches and (done % tcfg.val_every == 0 or last):
                group = schedule[0][0]
                record[f"val/{'loss' if group == 'model' else group + '_loss'}"] = val = validation_loss(
                    model, val_batches, group, autocast)
                log_record({"val/loss": val})
                progress.update(done, record)
                keep_if_best({"val/loss": val}, done)
            if evaluator is not None and tcfg.eval_every and (done % tcfg.eval_every == 0 or last):
                t_eval = time.perf_counter()
                results = run_evaluation(done)
                log_record(results, eval_seconds=round(time.perf_counter() - t_eval, 3))
                record.update(results)
                progress.update(done, record)
                keep_if_best({k.removeprefix("eval/"): v for k, v in results.items()}, done)
            sample_due = (tcfg.sample_every and done % tcfg.sample_every == 0) or last
            if sample_due and model.output_kind in ("image", "text"):  # a classifier has nothing to show
                last_samples = make_samples(done)
            if ((tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0) or last) and (
                    last_ckpt is None or last_ckpt.name != f"step-{done}"):
                last_ckpt = save(done)
            if last:
                if done < tcfg.steps:
                    log.info("time budget of %g min reached after %d steps", tcfg.max_minutes, done)
                break
    finally:
        _freeze_others(groups, None)
        metrics_file.close()
        if writer is not None:
            writer.close()
        progress.finish()
    assert last_ckpt is not None
    return TrainResult(run_dir=run_dir, step=done, checkpoint=last_ckpt, last_samples=last_samples,
                       metrics=record)


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


def _freeze_others(groups: dict[str, list[nn.Parameter]], active: str | None) -> None:
    """Only the active group's parameters need gradients (None: unfreeze everything)."""
    for name, params in groups.items():
        flag = active is None or name == active
        for p in params:
            p.requires_grad_(flag)


def _tensorboard(run_dir: Path, start_step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: it pulls in tensorboard

    # purge_step drops events after the resumed step, so TensorBoard shows no duplicated curve
    return SummaryWriter(log_dir=str(run_dir), purge_step=start_step if start_step else None)


def _log_samples(writer: Any, kind: str, samples: Any, step: int, nrow: int | None) -> None:
    if kind == "image":
        grid = media.make_grid(media.to_uint8(samples), nrow)
        writer.add_image("samples", grid, step, dataformats="HWC")
    elif kind == "text":
        writer.add_text("samples", "\n\n---\n\n".join(f"    {t}" for t in samples), step)


def config_for_resume(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's own config.yaml plus the given --set overrides (e.g. a larger train.steps)."""
    from genforge.config import apply_overrides, load_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no config.yaml there; is this a genforge run dir?")
    return validate(apply_overrides(load_yaml(path), overrides), source=str(path))
