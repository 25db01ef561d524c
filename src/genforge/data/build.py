"""Build the configured data set: the one entry point the trainer and the metrics use.

A builder in `registry.DATASETS` is `build(data_config, split) -> dataset`. A data set that fits something on its
training split that the model's ids depend on (a text tokenizer) exposes it as `dataset.tokenizer`, and its builder
takes `tokenizer=` to reuse a saved one: a resumed run and an evaluation must see the ids the model was trained on.
"""
from __future__ import annotations

from typing import Any

import torch

from genforge import registry
from genforge.config import DataSection
from genforge.errors import UserError


def build_dataset(data: DataSection, split: str | None = None, *, tokenizer: Any = None) -> Any:
    """The data set `data` names, for `split` (default: `data.split`), encoded with `tokenizer` when given."""
    builder = registry.dataset_builder(data.name)
    if tokenizer is not None:
        return builder(data, split or data.split, tokenizer=tokenizer)
    return builder(data, split or data.split)


def examples_for_sampling(data: DataSection, options: Any, tokenizer: Any = None) -> Any:
    """The run's data set at the split sample options start from (`options.data_split()`: a VAE's inputs to
    reconstruct, a captioner's images), whole (no data.limit), or None when the options need no real examples."""
    split = options.data_split() if options is not None else None
    if split is None:
        return None
    return build_dataset(data.model_copy(update={"limit": None}), split, tokenizer=tokenizer)


class ShuffledOrder:
    """What batch sources that walk a shuffled order of examples share: their resumable state. A subclass sets
    `generator` (a torch.Generator), `order` (int64 indices of this epoch) and `position` (the next one to read),
    names its examples in `EXAMPLES` (for the message when a checkpoint holds another kind of state) and implements
    `next_batch()`."""

    EXAMPLES = "example"
    generator: torch.Generator
    order: torch.Tensor
    position: int

    def next_batch(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self) -> ShuffledOrder:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.clone(),
                "position": torch.tensor(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        generator, order = state.get("generator"), state.get("order")
        if not (isinstance(generator, torch.Tensor) and isinstance(order, torch.Tensor) and "position" in state):
            raise UserError(f"the checkpoint's data position is not a {self.EXAMPLES}-batch state; was it written by "
                            "a run on another kind of data set?")
        self.generator.set_state(generator)
        self.order = order
        self.position = int(state["position"])


def length_bucketed_order(lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                          pool_batches: int = 8) -> torch.Tensor:
    """One epoch's order of examples for variable-length batches: a shuffled permutation cut to whole batches, each
    run of `pool_batches` batches sorted by length (so a batch pads little) and the batches shuffled again (so the
    lengths do not come in order). Consecutive `batch_size` entries form a batch."""
    B = batch_size
    perm = torch.randperm(len(lengths), generator=generator)
    perm = perm[: len(perm) // B * B]  # whole batches only
    batches = []
    for start in range(0, len(perm), B * pool_batches):
        chunk = perm[start:start + B * pool_batches]
        batches += list(chunk[torch.argsort(lengths[chunk], stable=True)].view(-1, B))
    shuffle = torch.randperm(len(batches), generator=generator)
    return torch.cat([batches[i] for i in shuffle.tolist()])
