"""Self-describing checkpoint directories, written atomically, with retention and resume state.

    runs/<name>/step-N/
        model.safetensors   the plain nn.Module state dict (never a compiled / DDP / EMA wrapper)
        ema.safetensors     EMA weights of the model's `ema_modules` (if EMA is on), same key names as the model
        config.yaml         the resolved run config: rebuilds the model without the original YAML
        tokenizer.json      text families only
        train_state.pt      optimizers, step, RNG states, data position: tensors and plain values only, read with
                            torch.load(weights_only=True), so loading never runs code from the file
    runs/<name>/latest      the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory and renamed into place, so a crash never leaves a
`step-N/` that looks complete; `latest` is replaced atomically after the rename.

`RunDir` is the run directory as the trainer sees it (`genforge.train.trainer.RunStore`): where it resumes from,
where checkpoints, config.yaml and the `best` pointer go. The trainer imports nothing from this module; whoever
starts training (the CLI, a script) hands it a `RunDir`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genforge.errors import UserError
from genforge.fileio import write_text

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.yaml"
STATE_FILE = "train_state.pt"
TOKENIZER_FILE = "tokenizer.json"
LATEST_FILE = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated or corrupt; the message names the file."""


def step_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoint dirs of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain_state(module: nn.Module) -> dict[str, Tensor]:
    # Clone so that tied weights (shared storage) become separate tensors that safetensors accepts.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}


def save(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    config_yaml: str,
    train_state: dict[str, Any] | None = None,
    ema_state: dict[str, Tensor] | None = None,
    tokenizer: Any = None,
    keep_last: int | None = None,
    protect: tuple[str, ...] = (),
) -> Path:
    """Write `run_dir/step-<step>/` atomically, point `latest` at it, and prune to `keep_last` checkpoints
    (never deleting the names in `protect`, e.g. the best checkpoint)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step}"
    tmp = run_dir / f".tmp-step-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    metadata = {"format": "pt", "step": str(step)}
    save_file(_plain_state(model), str(tmp / MODEL_FILE), metadata=metadata)
    if ema_state is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(tmp / EMA_FILE), metadata)
    (tmp / CONFIG_FILE).write_text(config_yaml)
    if tokenizer is not None:
        tokenizer.save(tmp / TOKENIZER_FILE)
    if train_state is not None:
        torch.save(train_state, tmp / STATE_FILE)
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():  # re-saving a step after a resume: move the old one out of the way first
        stale = run_dir / f".stale-{final.name}-{os.getpid()}"
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    write_text(run_dir / LATEST_FILE, final.name + "\n")
    if keep_last is not None:
        prune(run_dir, keep_last, protect=protect + (final.name,))
    return final


def prune(run_dir: Path, keep_last: int, protect: tuple[str, ...] = ()) -> None:
    dirs = step_dirs(run_dir)
    for old in dirs[: max(0, len(dirs) - keep_last)]:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """A run dir (-> its `latest`, else its newest step dir) or a step dir -> the step dir."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint path {str(path)!r} does not exist; pass a run dir or one of its step-N/ dirs")
    if path.is_file() and path.name in (LATEST_FILE, "best"):  # runs/x/best -> the step dir it names
        path = path.parent / path.read_text().strip()
        if not path.is_dir():
            raise UserError(f"{path} (named by {path.parent / 'best'}) does not exist")
        return path
    if (path / MODEL_FILE).exists() or ((path / CONFIG_FILE).exists() and STEP_DIR.match(path.name)):
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        candidate = path / latest.read_text().strip()
        if candidate.is_dir():
            return candidate
    dirs = step_dirs(path)
    if not dirs:
        raise UserError(f"{path} holds no checkpoint (no step-N/ dir with {MODEL_FILE}); train first or pass a step dir")
    return dirs[-1]


def read_config_text(step_dir: Path) -> str:
    path = step_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; this directory is not a complete genforge checkpoint")
    text = path.read_text()
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path} is corrupt (not valid YAML: {exc})") from exc
    return text


def load_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc}); delete it or resume from an older step") from exc


def load_train_state(step_dir: Path) -> dict[str, Any]:
    path = step_dir / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; this checkpoint cannot resume training (it can still sample)")
    try:
        # weights_only: only tensors and plain containers are unpickled; a file that tries more is rejected.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc})") from exc


def load_model_state(model: nn.Module, step_dir: Path, *, use_ema: bool) -> bool:
    """Load weights into `model` (strict); overlay EMA weights when asked and present. Returns whether EMA was used."""
    state = load_weights(step_dir / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{step_dir / MODEL_FILE} does not match the model built from its config.yaml: {exc}")
    ema_path = step_dir / EMA_FILE
    if use_ema and ema_path.exists():
        ema = load_weights(ema_path)
        current = model.state_dict()
        unknown = [k for k in ema if k not in current]
        if unknown:
            raise CheckpointError(f"{ema_path} has keys the model lacks, e.g. {unknown[:3]}")
        model.load_state_dict({**current, **ema}, strict=True)
        return True
    return False


def load_tokenizer(step_dir: Path) -> Any:
    """The checkpoint's tokenizer, or None for families without one."""
    path = step_dir / TOKENIZER_FILE
    if not path.exists():
        return None
    from genforge.data import tokenizers

    return tokenizers.load_tokenizer(path)


def verify(step_dir: Path) -> None:
    """Read every file of a checkpoint fully; raise CheckpointError naming the first bad file."""
    read_config_text(step_dir)
    load_weights(step_dir / MODEL_FILE)
    if (step_dir / EMA_FILE).exists():
        load_weights(step_dir / EMA_FILE)
    load_train_state(step_dir)


def latest_good(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files all read back; corrupt ones are reported by file name and skipped."""
    for step_dir in reversed(step_dirs(run_dir)):
        try:
            verify(step_dir)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", step_dir.name, exc)
            continue
        return step_dir
    return None


# --------------------------------------------------------------------------------------------------------------
# The run directory the trainer writes


class RunDir:
    """A run directory: `open` it for a new run or a resume, then save checkpoints into it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def open(self, resume: bool) -> Path | None:
        """Create the run dir; on resume return the checkpoint to continue from. Never overwrites a run's data."""
        existing = step_dirs(self.path)
        if not resume:
            if existing:
                raise UserError(
                    f"run dir {self.path} already has checkpoints (newest: {existing[-1].name}); pass --resume to "
                    f"continue it, or --run-dir NEW_DIR (or --set run.name=...) to start a new run")
            self.path.mkdir(parents=True, exist_ok=True)
            return None
        if not existing:
            log.warning("--resume: %s has no checkpoint yet; starting from step 0", self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            return None
        good = latest_good(self.path)
        if good is None:
            raise UserError(f"--resume: every checkpoint in {self.path} is corrupt (see the warnings above); "
                            "nothing to resume from")
        return good

    def write_config(self, config_yaml: str) -> None:
        write_text(self.path / CONFIG_FILE, config_yaml)

    def mark_best(self, step: int) -> None:
        write_text(self.path / "best", f"step-{step}\n")

    def save(self, step: int, **parts: Any) -> Path:
        """`checkpoint.save` into this run dir (model, config_yaml, train_state, ema_state, tokenizer, keep_last,
        protect)."""
        return save(self.path, step, **parts)

    # -- what a resume reads back

    def load_tokenizer(self, step_dir: Path) -> Any:
        return load_tokenizer(step_dir)

    def load_model(self, model: nn.Module, step_dir: Path) -> None:
        load_model_state(model, step_dir, use_ema=False)

    def load_ema(self, step_dir: Path) -> dict[str, Tensor] | None:
        path = step_dir / EMA_FILE
        return load_weights(path) if path.exists() else None

    def load_train_state(self, step_dir: Path) -> dict[str, Any]:
        return load_train_state(step_dir)
