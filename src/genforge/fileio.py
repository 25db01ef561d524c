"""Atomic file writes: the one way genforge replaces a file, so a crash never leaves half of one.

Every writer goes to a hidden temporary file beside the target (same directory, so the rename cannot cross file
systems), flushes it to disk and renames it over the target. A reader sees the old file or the new one, never a
mix. The temporary name carries the writer's PID, so two processes never write the same temporary file, and
leftovers of a killed process can be told apart from a live writer's (`genforge.checkpoint` cleans them).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from genforge.errors import UserError


def temporary_path(path: Path) -> Path:
    """The hidden temporary file `atomic_write` fills before renaming it to `path` (the suffix is kept, so
    libraries that pick a format by suffix, e.g. PIL and numpy, still do)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """`with atomic_write(p) as tmp:` write the file `tmp`; on success it is synced and renamed to `p`; on an
    exception it is removed and `p` is left as it was. Parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def read_utf8(path: Path, where: str, expected: str) -> str:
    """The text of a file a user named (a config, a samples file). A binary file or one that cannot be read is a
    UserError that starts with `where` (the file or flag) and, for binary files, says what was `expected`."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 text (byte {exc.start}); {expected}") from exc
    except OSError as exc:
        raise UserError(f"{where}: cannot be read ({exc.strerror or exc})") from exc
