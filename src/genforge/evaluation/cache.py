"""Reference-statistics cache: Inception features of a reference set, stored under a hash of what produced them.

Computing the features of 10,000 reference images takes minutes on a laptop CPU, and every evaluation of every
checkpoint needs the same ones, so they are computed once. The cache key is a sha256 over *all* the inputs (as
stylegan2-ada does for its `gan-metrics` cache): the images' content hash, the data set and split, the count, the
extractor's weights hash and the preprocessing version (`InceptionFeatures.key_parts()`). Never the data set name
alone: `data.limit`, `data.image_size` or a re-fetched file changes the images without changing the name, and a
stale entry would silently give wrong FIDs. A changed part is a different key, so a miss and a recomputation; old
entries stay on disk until deleted (they are small next to the data, and switching back is then free).

One entry = two files in the cache folder (default `<data root>/eval-cache/`):

    <label>-<key[:20]>.npz    mu (D,) float64, sigma (D, D) float64, and, from `cached_features`, features (N, D)
                              float32 (KID and precision/recall need the features, not just mu/sigma; 10k x 2048
                              float32 is 80 MB, cheap next to the minutes they take to compute)
    <label>-<key[:20]>.json   {"key": full sha256, "parts": the key parts, "count": N, "dim": D, ...}: what made it

The .npz is written first and the .json last, each through a temporary file and a rename: an entry without its
.json is incomplete and counts as a miss. A hit also requires the .json's parts to equal the requested ones.

Typical use (the CLI's `genforge eval`):

    parts = reference_key_parts(dataset.images, dataset="mnist", split="test", extractor=inception.key_parts())
    ref = cached_features(parts, lambda: inception(dataset.images))
    fid = frechet_distance(ref.mu, ref.sigma, *feature_stats(inception(samples)))
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genforge.data.download import data_root
from genforge.fileio import atomic_write
from genforge.evaluation.stats import feature_stats

log = logging.getLogger(__name__)

CACHE_SUBDIR = "eval-cache"  # under the data root
_KEY_CHARS_IN_NAME = 20  # 80 bits of the key in the file name; the full key is checked in the .json


def default_cache_dir() -> Path:
    return data_root(None) / CACHE_SUBDIR


# --------------------------------------------------------------------------------------------------------------
# Keys


def _canonical(key_parts: dict[str, Any]) -> str:
    if not isinstance(key_parts, dict) or not key_parts:
        raise ValueError(f"cache key parts must be a non-empty dict, got {key_parts!r}")
    try:
        return json.dumps(key_parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cache key parts must be JSON values (str, int, float, bool, None, lists, dicts): "
                         f"{exc}") from exc


def stats_key(key_parts: dict[str, Any]) -> str:
    """sha256 (hex) of the key parts as canonical JSON (sorted keys): equal parts <-> equal key."""
    return hashlib.sha256(_canonical(key_parts).encode()).hexdigest()


def content_hash(images: torch.Tensor | np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes: identifies the exact images that were measured."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return "sha256:" + digest.hexdigest()


def reference_key_parts(
    images: torch.Tensor | np.ndarray, *, dataset: str, split: str, extractor: dict[str, Any]
) -> dict[str, Any]:
    """Key parts for the features of a reference image set: what the images are (content hash, and for people the
    data set, split and count) and how they were measured (`extractor`, e.g. `InceptionFeatures.key_parts()`)."""
    return {"kind": "reference-features", "dataset": dataset, "split": split, "count": int(len(images)),
            "content": content_hash(images), **extractor}


# --------------------------------------------------------------------------------------------------------------
# Entries


@dataclass
class CachedStats:
    mu: np.ndarray  # float64 (D,)
    sigma: np.ndarray  # float64 (D, D)
    features: np.ndarray | None  # float32 (N, D); None for an entry made by cached_stats
    key: str  # the full sha256
    path: Path  # the .npz


def _paths(key_parts: dict[str, Any], key: str, cache_dir: Path) -> tuple[Path, Path]:
    label = re.sub(r"[^A-Za-z0-9_.]+", "-", "-".join(str(key_parts.get(k, "")) for k in ("dataset", "split")))
    stem = f"{label.strip('-.') or 'stats'}-{key[:_KEY_CHARS_IN_NAME]}"
    return cache_dir / f"{stem}.npz", cache_dir / f"{stem}.json"


def _load(key_parts: dict[str, Any], key: str, cache_dir: Path, need_features: bool) -> CachedStats | None:
    npz_path, json_path = _paths(key_parts, key, cache_dir)
    if not (npz_path.is_file() and json_path.is_file()):
        return None
    try:
        meta = json.loads(json_path.read_text())
        if meta.get("key") != key or meta.get("parts") != json.loads(_canonical(key_parts)):
            log.warning("cache entry %s does not match its key; recomputing", json_path)
            return None
        with np.load(npz_path, allow_pickle=False) as arrays:
            if need_features and "features" not in arrays:
                return None  # an entry from cached_stats: recompute with features, which overwrites it
            mu, sigma = arrays["mu"], arrays["sigma"]
            features = arrays["features"] if "features" in arrays else None
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cache entry %s is unreadable (%s); recomputing", npz_path, exc)
        return None
    d = mu.shape[0]
    if mu.shape != (d,) or sigma.shape != (d, d) or (features is not None and features.shape[1:] != (d,)):
        log.warning("cache entry %s has inconsistent shapes; recomputing", npz_path)
        return None
    log.info("cache hit: %s", npz_path)
    return CachedStats(mu=mu, sigma=sigma, features=features, key=key, path=npz_path)


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _store(key_parts: dict[str, Any], key: str, cache_dir: Path, mu: np.ndarray, sigma: np.ndarray,
           features: np.ndarray | None) -> CachedStats:
    npz_path, json_path = _paths(key_parts, key, cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": mu, "sigma": sigma}
    if features is not None:
        arrays["features"] = features
    _write_atomic(npz_path, lambda f: np.savez(f, **arrays))
    meta = {"key": key, "parts": json.loads(_canonical(key_parts)), "dim": int(mu.shape[0]),
            "count": None if features is None else int(features.shape[0]), "has_features": features is not None}
    _write_atomic(json_path, lambda f: f.write((json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()))
    log.info("cache stored: %s", npz_path)
    return CachedStats(mu=mu, sigma=sigma, features=features, key=key, path=npz_path)


def cached_stats(
    key_parts: dict[str, Any],
    compute: Callable[[], tuple[np.ndarray, np.ndarray]],
    cache_dir: Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) for `key_parts`: from the cache, or `compute()` once and stored. Also reads entries made by
    `cached_features` (same key parts, same entry)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = stats_key(key_parts)
    hit = _load(key_parts, key, cache_dir, need_features=False)
    if hit is not None:
        return hit.mu, hit.sigma
    mu, sigma = compute()
    stored = _store(key_parts, key, cache_dir, np.asarray(mu, np.float64), np.asarray(sigma, np.float64), None)
    return stored.mu, stored.sigma


def cached_features(
    key_parts: dict[str, Any],
    compute: Callable[[], np.ndarray],
    cache_dir: Path | None = None,
) -> CachedStats:
    """Features (N, D) for `key_parts` with their FID statistics: from the cache, or `compute()` once and stored.

    mu and sigma are computed from the float64 features before they are stored as float32, so a cached FID equals
    an uncached one exactly; KID and precision/recall use the float32 features (Inception outputs are float32).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = stats_key(key_parts)
    hit = _load(key_parts, key, cache_dir, need_features=True)
    if hit is not None:
        return hit
    features = np.asarray(compute())
    mu, sigma = feature_stats(features)
    return _store(key_parts, key, cache_dir, mu, sigma, features.astype(np.float32))
