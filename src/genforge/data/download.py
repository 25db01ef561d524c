"""The data root, and `genforge data fetch`: download with checksums when online, or import local files (`--from DIR`).

A fetched data set lives in `<data root>/<name>/raw/` under the names its publisher uses, so the same folder also
works for other tools (torchvision's `MNIST/raw/` has the same files). Every file is checked against an MD5 from the
table below before it is put in place; a file is written to a temporary name in the destination folder and renamed
only once verified, so an interrupted fetch never leaves a half-written file that looks complete.

`download()` is generic (URLs to try, MD5, destination) so that later entries (Inception weights for FID, text
corpora) reuse it; `FETCHABLE` is the table that `genforge data list` shows and `genforge data fetch NAME` reads.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from genforge import registry
from genforge.errors import UserError

log = logging.getLogger(__name__)

ENV_VAR = "GENFORGE_DATA"
DEFAULT_ROOT = "~/.cache/genforge/data"

# urlopen has one timeout for connecting and for each read. Connecting is kept short so that an offline machine (or
# a dead mirror) fails within seconds; once connected, a slow mirror gets longer between bytes.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
_CHUNK = 1 << 20  # bytes per read/write/hash step
_USER_AGENT = "genforge (python urllib)"  # some mirrors refuse urllib's default agent string
_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------------------------------------------
# Data root


def data_root(config_root: str | None) -> Path:
    """Where data sets live: config `data.root` > env GENFORGE_DATA > ~/.cache/genforge/data (empty = unset)."""
    if config_root:
        return Path(config_root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_ROOT).expanduser()


def data_root_origin(config_root: str | None) -> str:
    """Which rule chose `data_root(config_root)`, for error messages that must say how to point elsewhere."""
    if config_root:
        return "set by `data.root`"
    if os.environ.get(ENV_VAR):
        return f"set by env {ENV_VAR}"
    return f"the default, as neither `data.root` nor env {ENV_VAR} is set"


# --------------------------------------------------------------------------------------------------------------
# What can be fetched


@dataclass(frozen=True)
class RemoteFile:
    name: str  # the published file name, also its name on disk
    md5: str  # MD5 of the published file: what a download must match
    # For .gz files: MD5 of the uncompressed bytes. Copies recompressed by other tools (a different gzip header) and
    # un-gzipped copies are verified with it, so `--from` accepts both.
    content_md5: str | None = None

    @property
    def plain_name(self) -> str:
        """The name of the un-gzipped file (`train-images-idx3-ubyte` for `train-images-idx3-ubyte.gz`)."""
        return self.name.removesuffix(".gz")


@dataclass(frozen=True)
class Fetchable:
    name: str  # `genforge data fetch NAME`; files land in `<data root>/<name>/raw/`
    description: str  # one line for `genforge data list`
    mirrors: tuple[str, ...]  # base URLs tried in order; a file's URL is mirror + file name
    files: tuple[RemoteFile, ...]
    license: str


FETCHABLE: dict[str, Fetchable] = {
    "mnist": Fetchable(
        name="mnist",
        description="MNIST handwritten digits, 60k train + 10k test, 28x28 grayscale (four gzipped IDX files, 11 MB)",
        # the mirrors torchvision uses, in its order; yann.lecun.com often refuses downloads now, so it comes last
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        files=(  # published name; MD5 of the .gz; MD5 of the uncompressed IDX file
            RemoteFile("train-images-idx3-ubyte.gz",
                       "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            RemoteFile("train-labels-idx1-ubyte.gz",
                       "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
            RemoteFile("t10k-images-idx3-ubyte.gz",
                       "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            RemoteFile("t10k-labels-idx1-ubyte.gz",
                       "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        ),
        license="CC BY-SA 3.0",
    ),
    "tinyshakespeare": Fetchable(
        name="tinyshakespeare",
        description="Tiny Shakespeare (Karpathy's char-rnn), 1,115,394 characters, 65 distinct (input.txt, 1.1 MB)",
        mirrors=("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/",),
        files=(RemoteFile("input.txt", "6fb458f1232090904fb40fe944165e91"),),
        license="public domain",
    ),
}


def fetchable() -> list[str]:
    """Names that `genforge data fetch NAME` accepts."""
    return sorted(FETCHABLE)


def raw_dir(name: str, root: Path) -> Path:
    """The folder that `fetch(name, root)` fills and the data set's builder reads."""
    return Path(root) / name / "raw"


# --------------------------------------------------------------------------------------------------------------
# Checksums


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _gunzipped_md5(path: Path) -> str | None:
    """MD5 of the decompressed bytes, or None when the file is not a valid gzip stream."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def check_file(path: Path, spec: RemoteFile) -> str | None:
    """None when `path` holds `spec`'s data (as published, recompressed or un-gzipped); else what is wrong."""
    if _is_gzip(path):
        actual = file_md5(path)
        if actual == spec.md5:
            return None
        if spec.content_md5 is None:
            return f"expected MD5 {spec.md5}, got {actual}"
        content = _gunzipped_md5(path)
        if content == spec.content_md5:
            return None
        got = "a corrupt gzip stream" if content is None else f"{content} uncompressed"
        return f"expected MD5 {spec.md5} (or {spec.content_md5} uncompressed), got {actual} ({got})"
    actual = file_md5(path)
    if not spec.name.endswith(".gz"):  # a plain published file: its own MD5
        return None if actual == spec.md5 else f"expected MD5 {spec.md5}, got {actual}"
    if spec.content_md5 is None:  # nothing to verify an un-gzipped copy against
        return f"expected the gzipped file (MD5 {spec.md5}); an uncompressed copy cannot be verified"
    if actual == spec.content_md5:
        return None
    return f"expected MD5 {spec.content_md5} (uncompressed), got {actual}"


# --------------------------------------------------------------------------------------------------------------
# Generic download


class DownloadError(UserError):
    """Every URL failed; `reasons` has one line per URL."""

    def __init__(self, file_name: str, reasons: list[str]):
        self.file_name = file_name
        self.reasons = reasons
        lines = "\n".join(f"  - {r}" for r in reasons)
        super().__init__(f"could not download {file_name}:\n{lines}")


class _ChecksumError(Exception):
    pass


def download(
    urls: Sequence[str],
    dest: Path,
    md5: str | None,
    *,
    progress: bool = True,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Path:
    """Download the first of `urls` that works to `dest`, verified against `md5` (None skips the check).

    Each attempt writes to a temporary file next to `dest` and renames it into place only after the checksum
    matched; a failed attempt removes its temporary file and the next URL is tried. Raises DownloadError (a
    UserError) naming every URL and why it failed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    reasons: list[str] = []
    for url in urls:
        try:
            _download_one(url, dest, md5, progress=progress, timeout=timeout)
            return dest
        except urllib.error.HTTPError as exc:
            reasons.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:
            reasons.append(f"{url}: {exc.reason}")
        except _ChecksumError as exc:
            reasons.append(f"{url}: {exc}")
        except OSError as exc:  # timeouts, resets mid-transfer, a full disk
            reasons.append(f"{url}: {exc}")
        log.info("download failed: %s", reasons[-1])  # the error raised below lists them all if no URL works
    raise DownloadError(dest.name, reasons)


def _download_one(url: str, dest: Path, md5: str | None, *, progress: bool, timeout: float) -> None:
    log.info("downloading %s -> %s", url, dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            _set_read_timeout(response, max(timeout, READ_TIMEOUT_S))
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest = hashlib.md5(usedforsecurity=False)
            with _progress_bar(progress, dest.name, total) as advance:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
        actual = digest.hexdigest()
        if md5 is not None and actual != md5:
            raise _ChecksumError(f"MD5 mismatch: expected {md5}, got {actual}")
        _publish(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename


def _publish(tmp: Path, dest: Path) -> None:
    # mkstemp creates files readable by the owner only; a data root is often shared, so use ordinary permissions.
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


def _set_read_timeout(response: object, seconds: float) -> None:
    # Best effort: only http(s) responses expose their socket (response.fp.raw._sock); file:// has none to set.
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(seconds)


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n_bytes)`; draws a rich bar on stderr when enabled, else does nothing."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# --------------------------------------------------------------------------------------------------------------
# fetch: the table entry -> verified files under <root>/<name>/raw/


def fetch(name: str, root: Path, source_dir: Path | None = None, progress: bool = True) -> Path:
    """Put data set `name`'s files, verified, in `<root>/<name>/raw/` and return that folder.

    With `source_dir` (`genforge data fetch NAME --from DIR`) the files are copied from DIR (or DIR/raw), gzipped or
    not, instead of downloaded. Files already present and verified are left alone, so fetching twice is cheap.
    """
    if name not in FETCHABLE:
        raise UserError(registry.unknown_name_message("fetchable data set", name, fetchable()))
    spec = FETCHABLE[name]
    dest_dir = raw_dir(name, root)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {dest_dir} ({exc.strerror}); point env {ENV_VAR} or `data.root` at a "
                        "writable folder") from exc

    todo = [f for f in spec.files if _present(dest_dir, f) is None]
    if not todo:
        log.info("%s: all %d files present and verified in %s", name, len(spec.files), dest_dir)
        return dest_dir
    if source_dir is not None:
        _import_files(spec, todo, Path(source_dir).expanduser(), dest_dir)
        return dest_dir
    for f in todo:
        try:
            download([mirror + f.name for mirror in spec.mirrors], dest_dir / f.name, f.md5, progress=progress)
        except DownloadError as exc:
            lines = "\n".join(f"  - {r}" for r in exc.reasons)
            raise UserError(
                f"could not download {f.name} for {name} from any mirror (offline?):\n{lines}\n"
                f"import local files with `genforge data fetch {name} --from DIR`"
            ) from exc
    return dest_dir


def _present(dest_dir: Path, spec: RemoteFile) -> Path | None:
    """The verified copy of `spec` in `dest_dir`, if any. A copy that fails verification is removed (it is in the
    folder that fetch owns, and leaving it would shadow the good copy that is about to be written)."""
    found = None
    for candidate in (dest_dir / spec.name, dest_dir / spec.plain_name):
        if not candidate.is_file():
            continue
        problem = check_file(candidate, spec)
        if problem is None:
            found = found or candidate
        else:
            log.warning("removing %s, which fails verification: %s", candidate, problem)
            candidate.unlink()
    return found


def _find_source(source_dir: Path, spec: RemoteFile) -> Path | None:
    for folder in (source_dir, source_dir / "raw"):
        for file_name in (spec.name, spec.plain_name):
            if (folder / file_name).is_file():
                return folder / file_name
    return None


def _import_files(spec: Fetchable, files: list[RemoteFile], source_dir: Path, dest_dir: Path) -> None:
    if not source_dir.is_dir():
        raise UserError(f"--from {source_dir}: not a directory; pass the folder that holds the {spec.name} files "
                        f"({', '.join(f.name for f in spec.files)})")
    sources = {f.name: _find_source(source_dir, f) for f in files}
    missing = [f"{f.name} (or {f.plain_name})" for f in files if sources[f.name] is None]
    if missing:
        raise UserError(f"--from {source_dir}: missing {', '.join(missing)}; looked in {source_dir} and "
                        f"{source_dir / 'raw'}")
    for f in files:
        source = sources[f.name]
        assert source is not None
        _import_one(source, f, dest_dir)


def _import_one(source: Path, spec: RemoteFile, dest_dir: Path) -> None:
    """Copy `source` to a temporary file in `dest_dir`, verify the copy, then rename it to its published name (or
    the un-gzipped name when the source is not gzipped)."""
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{spec.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
        problem = check_file(tmp, spec)
        if problem is not None:
            raise UserError(f"--from: {source} is not the expected {spec.name}: {problem}")
        dest = dest_dir / (spec.name if _is_gzip(tmp) else spec.plain_name)
        _publish(tmp, dest)
        log.info("imported %s -> %s", source, dest)
    finally:
        tmp.unlink(missing_ok=True)
