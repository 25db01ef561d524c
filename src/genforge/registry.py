"""Name -> "module:attr" tables, imported lazily so that `genforge list` and config validation stay fast.

Adding a model family is one file in `models/` and one line in MODELS. A family (or dataset, or metric) that lives
outside the package registers itself the same way at run time, before the CLI or the trainer looks it up:

    from genforge import registry
    registry.register("models", "my-family", "my_package.my_family:MyFamily")   # or the class itself

For the command line, such a module is named in env `GENFORGE_PLUGINS` (comma-separated module names) or in a
package's entry points (group `genforge.plugins`); `load_plugins()` imports them before a command runs.

An unknown name is a `UserError` that lists what exists and suggests the closest name.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
from typing import Any

from genforge.errors import UserError

# family name -> the top-level nn.Module class; its `Config` attribute is the pydantic config of the `model:` section
# and its `SampleOptions` the family's options of the `sample:` section
MODELS: dict[str, Any] = {
    "gan": "genforge.models.gan:GAN",
    "gpt": "genforge.models.gpt:GPT",
    "vae": "genforge.models.vae:VAE",
    "diffusion": "genforge.models.diffusion:Diffusion",
    "text_vae": "genforge.models.text_vae:TextVAE",
    "captioner": "genforge.models.captioner:Captioner",
    "tts": "genforge.models.tts:TTS",  # text -> log-mel frames -> waveform (with a vocoder)
    "classifier": "genforge.models.classifier:Classifier",  # p(y|x): the feature space of the fast metrics
    "vocoder": "genforge.models.vocoder:Vocoder",  # HiFi-GAN: log-mel frames -> waveforms
}

# dataset name -> a builder function `build(data_config, split) -> dataset`
DATASETS: dict[str, Any] = {
    "mnist": "genforge.data.images:build_mnist",
    "mnist-mini": "genforge.data.images:build_mnist_mini",
    "imagefolder": "genforge.data.images:build_imagefolder",
    "text": "genforge.data.text:build_text",
    "tinyshakespeare": "genforge.data.text:build_shakespeare",
    "shakespeare-mini": "genforge.data.text:build_shakespeare_mini",
    "imdb": "genforge.data.sentences:build_imdb",  # movie-review sentences with their sentiment (neg/pos)
    "lines": "genforge.data.sentences:build_lines",  # one sentence per line of a text file (default: embedded)
    "captions": "genforge.data.captions:build_captions",  # captioned images: COCO JSON, Karpathy JSON or CSV
    "shapes": "genforge.data.captions:build_shapes",  # synthetic scenes of colored shapes with grammar captions
    "ljspeech": "genforge.data.speech:build_ljspeech",  # an LJ Speech-format folder: metadata.csv + wavs/
    "speech-mini": "genforge.data.speech:build_speech_mini",  # generated letter-tone "speech", for tests and debug
}

# metric name -> `fn(ctx: EvalContext) -> dict[str, float]` (see genforge.evaluation.context)
METRICS: dict[str, Any] = {
    "fid": "genforge.evaluation.fid:metric_fid",
    "kid": "genforge.evaluation.fid:metric_kid",
    "pr": "genforge.evaluation.fid:metric_pr",
    "fd-fast": "genforge.evaluation.fast:metric_fd_fast",
    "pr-fast": "genforge.evaluation.fast:metric_pr_fast",
    "coverage": "genforge.evaluation.fast:metric_coverage",
    "class-acc": "genforge.evaluation.fast:metric_class_acc",
    "accuracy": "genforge.evaluation.fast:metric_accuracy",
    "elbo": "genforge.evaluation.likelihood:metric_elbo",
    "nll": "genforge.evaluation.likelihood:metric_nll",
    "ppl": "genforge.evaluation.text:metric_likelihood",
    "distinct": "genforge.evaluation.text:metric_distinct",
    "self-bleu": "genforge.evaluation.text:metric_self_bleu",
    "repetition": "genforge.evaluation.text:metric_repetition",
    "sentence-elbo": "genforge.evaluation.sentence:metric_sentence_elbo",
    "sentence-nll": "genforge.evaluation.sentence:metric_sentence_nll",
    "sentiment": "genforge.evaluation.sentence:metric_sentiment",
    "speech": "genforge.evaluation.speech:metric_speech",  # MCD, recognizer WER (synthesized, real), real-time factor
    "captions": "genforge.evaluation.captioning:metric_captions",  # BLEU/ROUGE-L/CIDEr-D, exact, novel, vocab
}

TABLES: dict[str, dict[str, Any]] = {"models": MODELS, "datasets": DATASETS, "metrics": METRICS}


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


def import_target(target: Any) -> Any:
    """Import "package.module:attr" and return attr (an object registered directly is returned as it is). An
    ImportError here is a bug, never swallowed."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def register(table: str, name: str, target: Any) -> None:
    """Add (or replace) `name` in a table: `target` is a "module:attr" string, imported when first used, or the
    object itself (a model class, a dataset builder, a metric function)."""
    if table not in TABLES:
        raise ValueError(f"unknown registry table {table!r}; tables: {', '.join(TABLES)}")
    TABLES[table][name] = target


def lookup(table: str, name: str) -> Any:
    entries = TABLES[table]
    if name not in entries:
        raise UserError(unknown_name_message(table.rstrip("s"), name, list(entries)))
    return import_target(entries[name])


def model_class(name: str) -> Any:
    return lookup("models", name)


def dataset_builder(name: str) -> Any:
    return lookup("datasets", name)


PLUGINS_ENV = "GENFORGE_PLUGINS"
PLUGINS_GROUP = "genforge.plugins"


def load_plugins() -> list[str]:
    """Import the modules that register a user's own families, datasets, metrics or output kinds: those named in
    env GENFORGE_PLUGINS (comma-separated) and in the `genforge.plugins` entry points. Returns their names."""
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for entry in importlib.metadata.entry_points(group=PLUGINS_GROUP):
        names.append(entry.value)
    for name in names:
        module = name.partition(":")[0]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise  # the plugin itself failed to import something: a bug, shown with its traceback
            raise UserError(f"plugin module {name!r} (from env {PLUGINS_ENV} or the {PLUGINS_GROUP} entry points) "
                            "cannot be imported; check its name and that it is on PYTHONPATH") from exc
    return names
