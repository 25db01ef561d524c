"""Shared test setup: one torch thread (the 2-core CI machines are shared; two threads waiting on each other make
tiny ops 100x slower), and helpers to build tiny configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


@pytest.fixture
def repo() -> Path:
    return REPO


def shared_data(*parts: str) -> Path:
    """A file or folder of the real data sets in ../shared/data (see its README). When it is missing the test is
    skipped with the path on a developer machine, but fails in CI (env CI set), where ../shared is always beside
    the clone: a real-data test must never pass by silently not running."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"{path} is missing: this test reads the real data in ../shared/data (see its README)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
