"""Name -> "module:attr" tables, imported lazily so that `genforge list` and config validation stay fast.

Adding a model family is one file in `models/` and one line in MODELS. An unknown name is a `UserError` that
lists what exists and suggests the closest name.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

from genforge.errors import UserError

# family name -> the top-level nn.Module class; its `Config` attribute is the pydantic config of the `model:` section
MODELS: dict[str, str] = {
    "gan": "genforge.models.gan:GAN",
    "gpt": "genforge.models.gpt:GPT",
    "classifier": "genforge.models.classifier:Classifier",  # p(y|x): the feature space of the fast metrics
}

# dataset name -> a builder function `build(data_config, split) -> dataset`
DATASETS: dict[str, str] = {
    "mnist": "genforge.data.images:build_mnist",
    "mnist-mini": "genforge.data.images:build_mnist_mini",
    "imagefolder": "genforge.data.images:build_imagefolder",
    "text": "genforge.data.text:build_text",
    "tinyshakespeare": "genforge.data.text:build_shakespeare",
    "shakespeare-mini": "genforge.data.text:build_shakespeare_mini",
}

# metric name -> `fn(ctx: EvalContext) -> dict[str, float]` (see genforge.evaluation.protocols)
METRICS: dict[str, str] = {
    "fid": "genforge.evaluation.fid:metric_fid",
    "kid": "genforge.evaluation.fid:metric_kid",
    "pr": "genforge.evaluation.fid:metric_pr",
    "fd-fast": "genforge.evaluation.fast:metric_fd_fast",
    "pr-fast": "genforge.evaluation.fast:metric_pr_fast",
    "coverage": "genforge.evaluation.fast:metric_coverage",
    "class-acc": "genforge.evaluation.fast:metric_class_acc",
    "accuracy": "genforge.evaluation.fast:metric_accuracy",
    "ppl": "genforge.evaluation.text:metric_likelihood",
    "distinct": "genforge.evaluation.text:metric_distinct",
    "self-bleu": "genforge.evaluation.text:metric_self_bleu",
    "repetition": "genforge.evaluation.text:metric_repetition",
}

TABLES: dict[str, dict[str, str]] = {"models": MODELS, "datasets": DATASETS, "metrics": METRICS}


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest known name to `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, choices: list[str] | tuple[str, ...]) -> str:
    message = f"unknown {kind} {name!r}; known: {', '.join(sorted(choices))}"
    suggestion = closest(name, choices)
    if suggestion:
        message += f" (did you mean {suggestion!r}?)"
    return message


def import_target(target: str) -> Any:
    """Import "package.module:attr" and return attr. An ImportError here is a bug, never swallowed."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def lookup(table: str, name: str) -> Any:
    entries = TABLES[table]
    if name not in entries:
        raise UserError(unknown_name_message(table.rstrip("s"), name, list(entries)))
    return import_target(entries[name])


def model_class(name: str) -> Any:
    return lookup("models", name)


def dataset_builder(name: str) -> Any:
    return lookup("datasets", name)
