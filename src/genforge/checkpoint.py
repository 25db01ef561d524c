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

import fcntl
import logging
import os
import pickle
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


class CheckpointUnreadable(UserError):
    """A checkpoint file exists but this process may not read it (permissions): not a corrupt checkpoint, so
    nothing falls back past it and nobody is told to delete it."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, read-only, permissions); earlier checkpoints are intact."""


def _unreadable(path: Path, exc: OSError) -> CheckpointUnreadable:
    return CheckpointUnreadable(f"{path} cannot be read: {exc.strerror or exc} (owner/mode of the file or its "
                                "folder); fix the permissions, e.g. chmod u+r, then run again. The file itself is "
                                "not known to be damaged: do not delete it")


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
    (never deleting the names in `protect`, e.g. the best checkpoint). Files get the mode the umask gives (as any
    file the user writes), not safetensors' 0600. A failed write (disk full, read-only) removes its temporary dir
    and raises CheckpointWriteError; the checkpoints already there are untouched."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step}"
    tmp = run_dir / f".tmp-step-{step}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        metadata = {"format": "pt", "step": str(step)}
        save_file(_plain_state(model), str(tmp / MODEL_FILE), metadata=metadata)
        if ema_state is not None:
            ema_plain = {k: v.detach().cpu().contiguous() for k, v in ema_state.items()}
            save_file(ema_plain, str(tmp / EMA_FILE), metadata)
        (tmp / CONFIG_FILE).write_text(config_yaml)
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        if train_state is not None:
            torch.save({**train_state, "has_ema": ema_state is not None}, tmp / STATE_FILE)
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():
            os.chmod(f, mode)
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    except (OSError, SafetensorError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CheckpointWriteError(f"could not write checkpoint {final} ({reason}); the earlier checkpoints in "
                                   f"{run_dir} are intact: free space or fix permissions, then resume with "
                                   f"--resume {run_dir}") from exc
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


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def prune(run_dir: Path, keep_last: int, protect: tuple[str, ...] = ()) -> None:
    """Delete all but the newest `keep_last` checkpoints. Each is first renamed to a hidden `.stale-` name, so a
    kill in the middle of deleting never leaves a half-deleted `step-N/` that looks like a checkpoint."""
    dirs = step_dirs(run_dir)
    for old in dirs[: max(0, len(dirs) - keep_last)]:
        if old.name not in protect:
            stale = run_dir / f".stale-{old.name}-{os.getpid()}"
            os.replace(old, stale)
            shutil.rmtree(stale, ignore_errors=True)


def read_pointer(pointer: Path) -> Path:
    """The step dir a `latest` or `best` file names. It must name a `step-N` dir of the same run: anything else (a
    path to another run, binary junk) is refused with the file's name, never followed."""
    try:
        text = pointer.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    except OSError as exc:
        raise _unreadable(pointer, exc) from exc
    if text is None or not STEP_DIR.match(text):
        raise UserError(f"{pointer} should name one step-N dir of its run but holds {text!r}"[:300] +
                        f"; delete {pointer} (the newest step-N/ is then used) or pass a step dir")
    target = pointer.parent / text
    if not target.is_dir():
        raise UserError(f"{pointer} names {text}, which does not exist in {pointer.parent}; delete {pointer} (the "
                        "newest step-N/ is then used) or pass a step dir")
    return target


def is_step_dir(path: Path) -> bool:
    return bool(STEP_DIR.match(path.name)) and path.is_dir() and (
        (path / MODEL_FILE).exists() or (path / CONFIG_FILE).exists())


def resolve(path: str | Path) -> Path:
    """A run dir (-> its `latest`, else its newest step dir), a step dir, or a run's `latest`/`best` file -> the
    step dir."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint path {str(path)!r} does not exist; pass a run dir or one of its step-N/ dirs")
    if path.is_file() and path.name in (LATEST_FILE, "best"):  # runs/x/best -> the step dir it names
        return read_pointer(path)
    if is_step_dir(path):
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        return read_pointer(latest)
    dirs = step_dirs(path)
    if not dirs:
        raise UserError(f"{path} holds no checkpoint (no step-N/ dir with {MODEL_FILE}); train first or pass a step dir")
    return dirs[-1]


def read_config_text(step_dir: Path) -> str:
    path = step_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; this directory is not a complete genforge checkpoint")
    try:
        text = path.read_bytes().decode("utf-8")
        yaml.safe_load(text)
    except PermissionError as exc:
        raise _unreadable(path, exc) from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is corrupt (not UTF-8 text, byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path} is corrupt (not valid YAML: {exc})") from exc
    return text


def load_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except PermissionError as exc:
        raise _unreadable(path, exc) from exc
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc}); delete it or resume from an older step") from exc


def load_train_state(step_dir: Path) -> dict[str, Any]:
    path = step_dir / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; this checkpoint cannot resume training (it can still sample)")
    try:
        # weights_only: only tensors and plain containers are unpickled; a file that tries more is rejected.
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise _unreadable(path, exc) from exc
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a refused class or function: the bytes themselves are damaged
            raise CheckpointError(f"{path} is truncated or corrupt (not a readable train state)") from exc
        # PyTorch's message suggests weights_only=False: for a file that asks to run code, that is the one thing
        # never to do, so it is not repeated here
        raise CheckpointError(f"{path} asks to load objects other than tensors and plain values, which genforge "
                              "never writes; it was refused because loading it could run code. Do not load it "
                              "with weights_only=False: delete it, or resume from an older step") from exc
    except Exception as exc:  # noqa: BLE001 - any other failure to read means the file is unusable
        raise CheckpointError(f"{path} is truncated or corrupt ({type(exc).__name__})") from exc


def load_model_state(model: nn.Module, step_dir: Path, *, use_ema: bool) -> bool:
    """Load weights into `model` (strict); overlay EMA weights when asked and present. Returns whether EMA was used."""
    state = load_weights(step_dir / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{step_dir / MODEL_FILE} does not match the model built from its config.yaml: {exc}")
    ema_path = step_dir / EMA_FILE
    if use_ema and not ema_path.exists() and _expects_ema(step_dir):
        raise CheckpointError(f"{ema_path} is missing, but this run trained with an EMA (train.ema_decay > 0) and "
                              "samples with it; restore the file, or sample the raw weights with --set "
                              "sample.use_ema=false")
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


def _expects_ema(step_dir: Path) -> bool:
    """Whether the run that wrote this checkpoint kept an EMA (its config's train.ema_decay > 0)."""
    try:
        raw = yaml.safe_load(read_config_text(step_dir))
        return float(((raw or {}).get("train") or {}).get("ema_decay") or 0) > 0
    except (CheckpointError, TypeError, ValueError, AttributeError):
        return False


def verify(step_dir: Path) -> None:
    """Read every file of a checkpoint fully; raise CheckpointError naming the first bad file."""
    read_config_text(step_dir)
    load_weights(step_dir / MODEL_FILE)
    state = load_train_state(step_dir)
    if (step_dir / EMA_FILE).exists():
        load_weights(step_dir / EMA_FILE)
    elif state.get("has_ema"):
        raise CheckpointError(f"{step_dir / EMA_FILE} is missing (the run saved an EMA with this checkpoint)")


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


LOCK_FILE = ".lock"
# Temporary names of writers that died before renaming them into place: checkpoint dirs being written or deleted
# (`.tmp-step-N-PID`, `.stale-step-N-PID`) and atomic file writes (`genforge.fileio`: `.NAME.tmp-PID[.suffix]`)
TEMPORARY = re.compile(r"^\.(tmp-step-\d+|stale-step-\d+)-\d+$|^\..+\.tmp-\d+(\.[^.]+)?$")


class RunDir:
    """A run directory: `open` it for a new run or a resume, save checkpoints into it, `close` it.

    While open, the process holds an exclusive lock on `<run>/.lock` (flock: the kernel releases it when the
    process dies, even by SIGKILL), so a second trainer on the same run is refused with the PID holding it, and
    the temporary files of killed writers can be removed safely."""

    def __init__(self, path: str | Path, *, resume_step: Path | None = None):
        self.path = Path(path)
        self.resume_step = resume_step  # `--resume RUN/step-N`: must be the run's newest good checkpoint
        self._lock: Any = None

    def open(self, resume: bool) -> Path | None:
        """Create and lock the run dir, and remove dead writers' temporary files; on resume return the checkpoint
        to continue from. Never overwrites a run's data."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            return self._prepare(resume, self.resume_step)
        except BaseException:
            self.close()
            raise

    def _prepare(self, resume: bool, from_step: Path | None) -> Path | None:
        removed = self.clean_temporary()
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run: %s", len(removed), ", ".join(removed))
        existing = step_dirs(self.path)
        if not resume:
            if existing:
                raise UserError(
                    f"run dir {self.path} already has checkpoints (newest: {existing[-1].name}); pass --resume to "
                    f"continue it, or --run-dir NEW_DIR (or --set run.name=...) to start a new run")
            return None
        if not existing:
            log.warning("--resume: %s has no checkpoint yet; starting from step 0", self.path)
            return None
        good = latest_good(self.path)
        if good is None:
            raise UserError(f"--resume: every checkpoint in {self.path} is corrupt (see the warnings above); "
                            "nothing to resume from")
        latest = self.path / LATEST_FILE
        if not latest.is_file() or latest.read_bytes().strip() != good.name.encode():
            # a kill between a checkpoint's rename and the `latest` update (or a corrupt newest checkpoint)
            log.info("pointing %s at %s, the newest good checkpoint", latest, good.name)
            write_text(latest, good.name + "\n")
        if from_step is not None and from_step.name != good.name:
            raise UserError(f"--resume {from_step}: the newest good checkpoint of {self.path} is {good.name}; "
                            f"resuming from the older {from_step.name} would overwrite the newer ones. Resume the "
                            f"run with --resume {self.path}, or copy {from_step} into a new run dir to branch off it")
        return good

    def _acquire_lock(self) -> None:
        handle = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(f"run dir {self.path} is in use by another genforge process (PID {holder}, lock "
                            f"{self.path / LOCK_FILE}); wait for it to finish or stop it, or train into another "
                            "--run-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def clean_temporary(self) -> list[str]:
        """Remove the temporary files and dirs of writers that died (this process holds the run's lock, so no
        other writer is alive); returns their names."""
        removed = []
        for folder in (self.path, self.path / "samples"):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if TEMPORARY.match(entry.name):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed.append(entry.name)
        return sorted(removed)

    def close(self) -> None:
        """Release the run's lock (the lock file stays; it holds no state)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

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
