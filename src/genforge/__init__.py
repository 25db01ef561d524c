"""genforge: train, sample, evaluate and serve generative models with one trainer and one checkpoint format."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: Any, **kwargs: Any) -> Any:
    """Load a checkpoint (run dir or step dir) as a `genforge.sampling.Pipeline`, ready to sample:

    >>> pipe = genforge.load("runs/quickstart")
    >>> images = pipe.sample(16, seed=0)
    """
    from genforge.sampling import load as _load

    return _load(path, **kwargs)


__all__ = ["load", "__version__"]
