"""Shared test setup: one torch thread (the 2-core CI machines are shared; two threads waiting on each other make
tiny ops 100x slower), and helpers to build tiny configs."""
from __future__ import annotations

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
