"""Build the configured data set: the one entry point the trainer and the metrics use.

A builder in `registry.DATASETS` is `build(data_config, split) -> dataset`. A data set that fits something on its
training split that the model's ids depend on (a text tokenizer) exposes it as `dataset.tokenizer`, and its builder
takes `tokenizer=` to reuse a saved one: a resumed run and an evaluation must see the ids the model was trained on.
"""
from __future__ import annotations

from typing import Any

from genforge import registry
from genforge.config import DataSection


def build_dataset(data: DataSection, split: str | None = None, *, tokenizer: Any = None) -> Any:
    """The data set `data` names, for `split` (default: `data.split`), encoded with `tokenizer` when given."""
    builder = registry.dataset_builder(data.name)
    if tokenizer is not None:
        return builder(data, split or data.split, tokenizer=tokenizer)
    return builder(data, split or data.split)
