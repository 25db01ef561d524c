"""Run config schema: typed sections, YAML loading, `--set key=value` overrides, all errors reported at once.

A run config has six sections: `run`, `model`, `data`, `train`, `sample`, `eval`. Every section rejects unknown
keys. The `model` section is validated by the model family's own config class (`registry.MODELS[family].Config`),
so a family owns its hyper-parameters in its one file. `model.preset: debug` (or any preset a family defines)
fills defaults before the keys given in the file.
"""
from __future__ import annotations

import copy
import importlib.resources
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from genforge import registry
from genforge.errors import UserError
from genforge.fileio import read_utf8


class Section(BaseModel):
    # allow_inf_nan=False: every float of every section (and of each family's config) must be finite
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _whole_number(value: Any) -> Any:
    """Before pydantic reads a count: `true` is not 1 (YAML reads `steps: true` as a bool, which pydantic would
    take as 1), and a float counts only when it is an exact whole number, so `--set train.steps=1e3` is 1000 but
    2.5 and 1e23 (a float far past 2**53, where floats skip integers) are refused."""
    if isinstance(value, bool):
        raise PydanticCustomError("whole_number", "must be a whole number (e.g. 100), not true/false")
    if isinstance(value, float) and math.isfinite(value):
        if abs(value) >= 2**53:
            raise PydanticCustomError("whole_number", "must be a whole number (e.g. 100), written without an "
                                      "exponent or fraction (this float is too large to be exact)")
        if not value.is_integer():
            raise PydanticCustomError("whole_number", "must be a whole number (e.g. 100), not {value}",
                                      {"value": value})
        return int(value)
    return value


Count = Annotated[int, BeforeValidator(_whole_number)]  # a number of steps, examples, samples, ...
OptionalCount = Annotated[int | None, BeforeValidator(_whole_number)]  # the same, or None
Seed = Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=2**63 - 1)]  # what torch.manual_seed takes
MAX_STEPS = 10**9  # train.steps; more would take years at any speed
MAX_BATCH_SIZE = 65536  # train.batch_size; the per-model memory check (check_run) is usually lower
MAX_THREADS = 256  # train.threads; far larger counts crash libgomp (OpenMP) instead of failing cleanly


class RunSection(Section):
    name: str = "run"  # run directory name; the run lives in `<dir>/<name>/` unless --run-dir says otherwise
    dir: str = "runs"  # parent folder of run directories
    seed: Seed = 0  # seeds python, numpy and torch; the data order derives from it too


class DataSection(Section):
    name: str = "mnist-mini"  # dataset registry name (`genforge list datasets`)
    root: str | None = None  # data root; None -> env GENFORGE_DATA -> ~/.cache/genforge/data
    path: str | None = None  # folder of images for `imagefolder`; the caption file (COCO/Karpathy JSON, CSV) for
    #                          `captions`; a text file for `text`, `lines`, `imdb`
    images: str | None = None  # captions: the image folder (None -> images/ beside data.path, else its folder)
    split: str = "train"  # which split to train on
    image_size: OptionalCount = Field(default=None, ge=8, le=1024)  # resize to this square size; None keeps native
    channels: Literal[1, 3] | None = None  # convert to grayscale (1) or RGB (3); None keeps native
    limit: OptionalCount = Field(default=None, ge=1)  # use only the first N examples (text: characters)
    val_fraction: float = Field(default=0.1, ge=0, lt=1)  # text: the last fraction of the corpus is the val split;
    #                                                       captions: the share of images held out for val
    test_fraction: float = Field(default=0.1, ge=0, lt=1)  # captions: the share of images held out for test
    objects: OptionalCount = Field(default=None, ge=1, le=3)  # shapes: objects per scene; None = 1 to 3 at random
    tokenizer: Literal["char", "word", "bpe", "phonemes"] = "char"  # text: characters, words (lower case,
    #          punctuation apart), or byte-level BPE; word and bpe are fitted on the train split; speech: characters
    #          or phonemes (espeak-ng)
    vocab_size: int | None = Field(default=None, ge=256)  # text: BPE vocabulary size (None -> 4096); word: a cap on
    #                                                      the vocabulary, most frequent first (None -> no cap)
    min_freq: Count = Field(default=1, ge=1)  # word tokenizer: words seen fewer times in the train split are <unk>
    unit: Literal["sentence", "review"] = "sentence"  # sentence data sets (imdb): one example per sentence, or per
    #                                                  whole document cut at max_length tokens
    max_length: Count = Field(default=64, ge=1, le=4096)  # sentence data sets: tokens per example; longer sentences
    #                                                     are left out, longer documents (unit: review) are cut


class OptimSection(Section):
    name: Literal["adam", "adamw", "sgd", "muon"] = "adam"  # torch.optim algorithm; muon: torch.optim.Muon for the
    #                       model's hidden weight matrices and AdamW (lr, betas, eps, weight_decay) for the rest
    lr: float = Field(default=2e-4, gt=0)  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam(W) betas; SGD uses betas[0] as momentum
    eps: float = Field(default=1e-8, gt=0)  # Adam(W) epsilon
    weight_decay: float = Field(default=0.0, ge=0)  # decoupled for adamw, L2 for adam/sgd
    schedule: Literal["constant", "cosine", "linear"] = "constant"  # LR decay after warmup, down to min_lr
    warmup_steps: Count = Field(default=0, ge=0)  # linear warmup from 0 to lr over this many optimizer steps
    decay_steps: OptionalCount = Field(default=None, ge=1)  # decay length; None -> train.steps
    min_lr: float = Field(default=0.0, ge=0)  # floor of cosine/linear decay
    muon_lr: float = Field(default=0.02, gt=0)  # muon: peak learning rate of the matrices (scheduled like lr)
    muon_momentum: float = Field(default=0.95, ge=0, lt=1)  # muon: Nesterov momentum of the matrices


class OptimOverride(Section):
    """Per-group changes to `train.optim`, e.g. `train.groups.discriminator.lr: 4e-4` (two-timescale updates)."""

    name: Literal["adam", "adamw", "sgd", "muon"] | None = None
    lr: float | None = Field(default=None, gt=0)
    betas: tuple[float, float] | None = None
    eps: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)
    schedule: Literal["constant", "cosine", "linear"] | None = None
    warmup_steps: OptionalCount = Field(default=None, ge=0)
    decay_steps: OptionalCount = Field(default=None, ge=1)
    min_lr: float | None = Field(default=None, ge=0)
    muon_lr: float | None = Field(default=None, gt=0)
    muon_momentum: float | None = Field(default=None, ge=0, lt=1)


class TrainSection(Section):
    steps: Count = Field(default=1000, ge=1, le=MAX_STEPS)  # training steps (one step = one update of every group)
    max_minutes: float | None = Field(default=None, gt=0)  # also stop once the training steps themselves (not
    #                  sampling, checkpoints or evaluation) took this long; that step is then the last one. LR
    #                  schedules still run over `steps`. For fixed-budget comparisons; None = no time limit
    batch_size: Count = Field(default=64, ge=1, le=MAX_BATCH_SIZE)  # examples per micro-batch
    grad_accum: Count = Field(default=1, ge=1)  # micro-batches summed per optimizer step
    grad_clip: float | None = Field(default=None, gt=0)  # clip the global grad norm of each group; None = off
    optim: OptimSection = OptimSection()  # optimizer shared by all groups ...
    groups: dict[str, OptimOverride] = {}  # ... with per-group overrides, keyed by param group name
    ema_decay: float = Field(default=0.0, ge=0, lt=1)  # EMA of the model's `ema_modules`; 0 disables
    ema_start: Count = Field(default=0, ge=0)  # copy weights into the EMA until this step, then average
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # bf16: autocast (weights stay fp32); fp16:
    #        autocast with a loss scaler (CUDA); auto = bf16 where the hardware has native bf16, else fp32
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available, else cpu
    channels_last: bool = False  # NHWC memory format for conv models (faster oneDNN kernels on CPU)
    dist_timeout_minutes: float = Field(default=30.0, gt=0)  # torchrun runs: how long a rank waits for the others
    #        in a collective (a hung peer) before failing; longer than the slowest rank-0-only pause (evaluation)
    sync_batchnorm: bool = True  # torchrun runs: BatchNorm statistics over the global batch (as one process
    #        computes them; one all-reduce per BatchNorm call, which gloo makes slow on CPUs), else over each rank's
    #        slice (PyTorch DDP's default: faster, but not what one process computes)
    find_unused_parameters: bool = False  # torchrun runs: DDP's find_unused_parameters, for models whose loss
    #        leaves some of a group's parameters unused in a step (DDP then says so in its error)
    threads: OptionalCount = Field(default=None, ge=1, le=MAX_THREADS)  # torch intra-op threads; None = torch's default
    log_every: Count = Field(default=50, ge=1)  # steps between metrics.jsonl / TensorBoard scalar records
    val_every: Count = Field(default=0, ge=0)  # steps between validation losses on the val split; 0 = off
    val_batches: Count = Field(default=20, ge=1)  # batches averaged per validation loss (the same batches each time)
    eval_every: Count = Field(default=0, ge=0)  # steps between evaluations with the `eval` section's metrics on
    #                                            eval.n samples (EMA weights when sample.use_ema); 0 = off
    keep_best: bool = False  # checkpoint whenever `best_metric` improves; the `best` pointer names it, never pruned
    best_metric: str = "val/loss"  # what keep_best tracks: val/loss (needs val_every), or a result of eval.metrics
    #                                (needs eval_every), by its full key or a prefix, e.g. fd-fast
    best_mode: Literal["min", "max"] = "min"  # min for losses and distances, max for e.g. accuracy or recall
    sample_every: Count = Field(default=500, ge=0)  # steps between sample grids in samples/; 0 = only at the end
    checkpoint_every: Count = Field(default=500, ge=0)  # steps between checkpoints; 0 = only at the end
    keep_last: Count = Field(default=3, ge=1)  # checkpoints to keep (older step-N/ dirs are deleted)
    progress: bool = True  # rich progress bar on the terminal
    tensorboard: bool = True  # write TensorBoard event files into the run dir


class SampleOptions(Section):
    """Base of each family's own sampling options (`GAN.SampleOptions`, `GPT.SampleOptions`, ...): the keys of the
    `sample:` section that only that family understands, typed and commented in the family's file. They are
    written flat into `sample:` beside the shared keys (`--set sample.top_p=0.9`) and passed to `model.sample` as
    keyword arguments."""

    # Keys that name files or data on this machine (a vocoder checkpoint, a data split): `genforge serve` fixes them
    # when it starts and refuses them in requests, so clients never pass paths.
    SERVER_FIXED: ClassVar[tuple[str, ...]] = ()
    # Keys whose value names another checkpoint (a run dir or step dir), with the values that are built-in names
    # instead: the sampling pipeline loads that checkpoint once and passes the loaded pipeline to `model.sample`.
    CHECKPOINT_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {}

    def chunk_size(self, preferred: int) -> int:
        """How many samples to generate per call when many are needed (evaluation): `preferred`, unless the
        family's options need another granularity (e.g. whole BatchNorm batches)."""
        return preferred

    def data_split(self) -> str | None:
        """The split of the run's data set these options work on, or None (the default). Options that start from
        real examples (a VAE's reconstructions and interpolations of test images) name one; the pipeline then builds
        that data set and passes it to `model.sample` as `data=`."""
        return None

    def grid_columns(self, count: int, nrow: int | None) -> int | None:
        """Images per row when `count` samples made with these options are saved as one grid: `sample.nrow`,
        unless the options produce a layout of their own (inputs above their reconstructions, strips)."""
        return nrow

    @classmethod
    def parse(cls, options: dict[str, Any]) -> Any:
        """Keyword arguments of `model.sample` -> the validated options; problems are one UserError naming each
        key as `sample.<key>`, so a Python caller gets the same message as the CLI."""
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            problems = format_errors(exc, cls, prefix="sample.")
            raise UserError("invalid sample option(s):\n" + "\n".join(f"  - {p}" for p in problems)) from exc


class NoSampleOptions(SampleOptions):
    """A family without sampling options of its own."""


class SampleSection(Section):
    n: Count = Field(default=64, ge=1, le=4096)  # how many samples `genforge sample` and periodic grids make
    seed: Seed = 0  # seed of the sampling generator
    class_label: OptionalCount = Field(default=None, ge=0)  # class to generate for conditional models; None = mixed
    prompt: str | None = None  # text to continue / condition on (text families); None = the family's default start
    text: str | None = Field(default=None, max_length=5000)  # text to speak (speech families); None = held-out
    #                                                          sentences of the run's data set
    nrow: OptionalCount = Field(default=None, ge=1)  # images per grid row; None -> ceil(sqrt(n))
    use_ema: bool = True  # sample with the EMA weights when the checkpoint has them
    options: Any = Field(default=None, exclude=True)  # the family's SampleOptions: its keys sit flat in `sample:`

    def kwargs(self) -> dict[str, Any]:
        """The family's options as keyword arguments for `model.sample`."""
        return self.options.model_dump() if self.options is not None else {}

    def cond_for(self, model: Any) -> Any:
        """The `cond` this section gives `model.sample`, by what the family is conditioned on (its `conditioning`
        attribute): class_label for "class", prompt for "prompt", text for "text"; None for anything else."""
        given = {"class": self.class_label, "prompt": self.prompt, "text": self.text}
        return given.get(getattr(model, "conditioning", None))


SHARED_SAMPLE_KEYS = tuple(k for k in SampleSection.model_fields if k != "options")

# Keys of the sample section before families owned their options (genforge 0.1), with the values that meant "the
# default". A checkpoint written then names them all; those still at the default are dropped when it is read.
LEGACY_SAMPLE_DEFAULTS: dict[str, Any] = {
    "bn_stats": "running", "bn_batch": 64, "max_new_tokens": None, "temperature": None, "top_k": None,
    "top_p": None, "min_p": None, "repetition_penalty": None, "no_repeat_ngram_size": None, "num_beams": None,
    "length_penalty": None, "early_stopping": None, "stop_strings": None, "window_keep": None,
}


class EvalSection(Section):
    metrics: list[str] = []  # metric names for `genforge eval` and train.eval_every; [] = the output kind's
    #                         defaults (eval: fid,kid,pr for images; training: the fast fd-fast,pr-fast,coverage)
    n: OptionalCount = Field(default=None, ge=1, le=100_000)  # samples per evaluation; None = 2000 images / 64 texts
    seed: Seed = 0  # seed of the evaluation samples (the same samples every time)
    ref: str | None = None  # reference images: DATASET:SPLIT, a folder or an .npz; None = the data set's test split
    classifier: str | None = None  # classifier run dir for the fast metrics (else env GENFORGE_CLASSIFIER)
    inception: str | None = None  # FID Inception weights (else env GENFORGE_INCEPTION, then the data root)
    iw_samples: OptionalCount = Field(default=None, ge=1, le=100_000)  # nll, sentence-nll: importance samples per
    #                                       example (None = 5000 per image, as the literature reports; 100 per sentence)
    test_limit: OptionalCount = Field(default=None, ge=1)  # likelihood metrics: only the first N held-out examples
    test_sample: OptionalCount = Field(default=None, ge=1)  # likelihood metrics: N held-out examples drawn at random
    #                                                       with the eval seed (an unbiased estimate of the full
    #                                                       set's mean; `nll` reports its standard error)


class RunConfig(Section):
    run: RunSection = RunSection()
    model: Any  # the family's config object (validated by `registry.MODELS[model.family].Config`)
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    sample: SampleSection = SampleSection()
    eval: EvalSection = EvalSection()

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, in the order of the YAML files: the family's sample options flat in `sample`."""
        data = self.model_dump(mode="json", exclude={"model"})
        if self.sample.options is not None:
            data["sample"].update(self.sample.options.model_dump(mode="json"))
        return {"run": data["run"], "model": self.model.model_dump(mode="json"), **{k: data[k] for k in data if k != "run"}}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


class ConfigError(UserError):
    """All problems found in a config, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


# --------------------------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.optim.lr=1e-3' -> (['train', 'optim', 'lr'], 0.001). The value is parsed as YAML, so 'true',
    '[0.5, 0.9]' and 'null' mean what they look like; pydantic then coerces to the field type."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set train.steps=100")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise UserError(f"--set {text!r}: empty part in dotted key {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc  # a ReaderError (a control character) has no `problem`
        raise UserError(f"--set {text!r}: the value is not valid YAML ({problem})") from exc
    except RecursionError as exc:  # PyYAML parses nested lists recursively: [[[...]]] hundreds of levels deep
        raise UserError(f"--set {text[:40]!r}...: the value is nested too deeply to be a config value") from exc
    if isinstance(parsed, str) and _EXPONENT_FLOAT.fullmatch(parsed.strip()):
        parsed = float(parsed)  # YAML 1.1 reads '1e-3' as a string; users mean a number
    return parts, parsed


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    result = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                dotted = ".".join(parts[: i + 1])
                raise UserError(f"--set {text!r}: `{dotted}` is a value ({child!r}), not a section")
            node = child
        node[parts[-1]] = value
    return result


# --------------------------------------------------------------------------------------------------------------
# Validation with every problem reported at once


def _fields_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model that `loc` (a pydantic error location, without the last item) points to."""
    current: Any = schema
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            # a dict value (e.g. train.groups.<name>): its annotation's value type
            args = getattr(current, "__args__", ())
            current = args[-1] if args else None
            continue
        current = field.annotation
        args = getattr(current, "__args__", None)
        if args and not (isinstance(current, type) and issubclass(current, BaseModel)):
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            current = models[0] if models else current
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_errors(exc: ValidationError, schema: type[BaseModel], prefix: str = "") -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = prefix + ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(schema, loc[:-1])
            message = f"unknown key `{dotted}`"
            suggestion = registry.closest(str(loc[-1]), allowed)
            if suggestion:
                message += f" (did you mean `{prefix + '.'.join(str(p) for p in loc[:-1] + (suggestion,))}`?)"
            if allowed:
                message += f"; allowed here: {', '.join(allowed)}"
            problems.append(message)
        elif err["type"] == "missing":
            problems.append(f"`{dotted}` is required")
        else:
            problems.append(_value_problem(dotted, err))
    return problems


def _value_problem(dotted: str, err: Any) -> str:
    """One invalid value: the key, the value and pydantic's message; a check of the whole section (no key) gives its
    message alone, and a mapping where a string belongs gets the likely cause: YAML read `a: b` as a mapping."""
    if not dotted or dotted.endswith("."):
        return str(err["msg"]).removeprefix("Value error, ")
    problem = f"`{dotted}` = {err['input']!r}: {err['msg']}"
    if err["type"] == "string_type" and isinstance(err["input"], dict):
        problem += (f" (the value was read as YAML, where `a: b` is a mapping; quote it: --set '{dotted}=\"...\"')")
    return problem


def validate(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a raw dict (from YAML plus overrides) into a RunConfig, raising one ConfigError with every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"the top level must be a mapping of sections, got {type(raw).__name__}"])
    problems: list[str] = []
    raw = dict(raw)
    model_raw = raw.pop("model", None)
    sample_raw = raw.pop("sample", None)
    if sample_raw is not None and not isinstance(sample_raw, dict):
        problems.append(f"`sample` must be a mapping of sample options, got {type(sample_raw).__name__}")
        sample_raw = None
    sample_raw = dict(sample_raw or {})
    shared_sample = {k: sample_raw.pop(k) for k in SHARED_SAMPLE_KEYS if k in sample_raw}

    # 1. the shared sections
    top: RunConfig | None = None
    try:
        top = RunConfig.model_validate({**raw, "sample": shared_sample, "model": None})
    except ValidationError as exc:
        problems += format_errors(exc, RunConfig)

    # 2. the model section and the family's sample options, by the family's own classes
    model_cfg = options = None
    family = model_raw.get("family") if isinstance(model_raw, dict) else None
    if not isinstance(model_raw, dict):
        problems.append("`model` is required: a mapping with at least `family` (see `genforge list models`)")
    elif "family" not in model_raw:
        problems.append(f"`model.family` is required; known: {', '.join(sorted(registry.MODELS))}")
    elif not isinstance(family, str) or family not in registry.MODELS:
        problems.append("`model.family`: " + registry.unknown_name_message("model family", str(family), list(registry.MODELS)))
    else:
        family_cls = registry.model_class(family)
        config_cls = family_cls.Config
        try:
            model_cfg = config_cls.from_dict(model_raw)
        except ValidationError as exc:
            problems += format_errors(exc, config_cls, prefix="model.")
        except UserError as exc:
            problems.append(str(exc))
        options_cls = getattr(family_cls, "SampleOptions", NoSampleOptions)
        try:
            options = options_cls.model_validate(_drop_legacy_defaults(sample_raw, options_cls))
        except ValidationError as exc:
            problems += _sample_option_errors(exc, options_cls, family)

    # 3. cross-section checks
    if top is not None:
        problems += _train_checks(top)
    if top is not None and model_cfg is not None:
        problems += _cross_checks(top, model_cfg)
    if top is not None and top.data.name not in registry.DATASETS:
        problems.append("`data.name`: " + registry.unknown_name_message("dataset", top.data.name, list(registry.DATASETS)))

    if problems:
        raise ConfigError(source, problems)
    assert top is not None
    return top.model_copy(update={"model": model_cfg,
                                  "sample": top.sample.model_copy(update={"options": options})})


def _drop_legacy_defaults(sample_raw: dict[str, Any], options_cls: type[SampleOptions]) -> dict[str, Any]:
    """A genforge 0.1 checkpoint lists every family's sample keys; those this family does not take, or that are
    None ("the model's default"), are dropped when they still hold the value that meant the default."""
    kept = {}
    for key, value in sample_raw.items():
        legacy = key in LEGACY_SAMPLE_DEFAULTS and value == LEGACY_SAMPLE_DEFAULTS[key]
        if legacy and (value is None or key not in options_cls.model_fields):
            continue
        kept[key] = value
    return kept


def _sample_option_errors(exc: ValidationError, options_cls: type[SampleOptions], family: str) -> list[str]:
    """Errors of a family's sample options, worded like the rest: `sample.<key>`, and for an unknown key every
    key the `sample` section takes for this family."""
    problems = []
    allowed = [*SHARED_SAMPLE_KEYS, *options_cls.model_fields]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            message = f"unknown key `sample.{key}` for a {family} model"
            suggestion = registry.closest(key, allowed)
            if suggestion:
                message += f" (did you mean `sample.{suggestion}`?)"
            problems.append(message + f"; allowed here: {', '.join(allowed)}")
        else:
            problems.append(_value_problem(f"sample.{key}", err))
    return problems


def _train_checks(top: RunConfig) -> list[str]:
    """What keep_best needs to have something to track."""
    t = top.train
    if not t.keep_best:
        return []
    if t.best_metric == "val/loss" and not t.val_every:
        return ["`train.keep_best` tracks train.best_metric = val/loss, but `train.val_every` is 0: set "
                "train.val_every (e.g. 500), or track an evaluation metric with train.eval_every and "
                "train.best_metric (e.g. fd-fast)"]
    if t.best_metric != "val/loss" and not t.eval_every:
        return [f"`train.best_metric` = {t.best_metric!r} is an evaluation result, but `train.eval_every` is 0: set "
                f"train.eval_every (e.g. 500) so it is measured, or use train.best_metric=val/loss"]
    return []


def _cross_checks(top: RunConfig, model_cfg: Any) -> list[str]:
    problems = []
    check = getattr(model_cfg, "check_run", None)
    if check is not None:
        problems += check(top)
    return problems


def shipped_configs_dir() -> Path:
    """The run configs that ship inside the package (`genforge list configs`); a checkout's `configs/` is this."""
    return Path(str(importlib.resources.files("genforge").joinpath("configs")))


def shipped_configs() -> list[str]:
    """Names of the shipped configs, as `genforge train NAME` takes them: `mnist/dcgan`, `quickstart`, ..."""
    root = shipped_configs_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def resolve_config_path(name: str | Path) -> Path:
    """A config file path, or the name of a shipped config (`mnist/dcgan`, with or without `.yaml`): the file."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.as_posix().removesuffix(".yaml").removeprefix("configs/")
    shipped = shipped_configs_dir() / f"{stem}.yaml"
    if not path.exists() and shipped.is_file():
        return shipped
    if path.is_dir():
        raise UserError(f"config {str(path)!r} is a directory, not a YAML file")
    message = f"config file {str(path)!r} does not exist, and no shipped config has that name"
    suggestion = registry.closest(stem, shipped_configs())
    if suggestion:
        message += f" (did you mean {suggestion!r}?)"
    raise UserError(message + "; see `genforge list configs`")


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(f"key {key!r} appears twice in one mapping (lines {first_line} and {second_line}); "
                         f"YAML would silently keep the second: delete one of them")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last one
    silently, so a pasted second `train:` section would drop the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; explicit keys may override it
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key] + 1, key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (or a shipped config's name); an empty file is an empty mapping."""
    path = resolve_config_path(path)
    text = read_utf8(path, str(path), "a config is YAML text")
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise UserError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError as exc:  # PyYAML parses nested collections recursively
        raise UserError(f"{path}: nested too deeply (hundreds of levels of [ or {{) to be a config") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (run, model, data, train, sample, "
                        f"eval), got a YAML {type(raw).__name__}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config file (or a shipped config by name), apply `--set` overrides and validate."""
    path = resolve_config_path(path)
    raw = apply_overrides(load_yaml(path), overrides or [])
    return validate(raw, source=str(path))


def from_dict(raw: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> RunConfig:
    return validate(apply_overrides(raw, overrides or []), source=source)


# --------------------------------------------------------------------------------------------------------------
# Family config base: presets + `family` key


class ModelSection(Section):
    """Base of each family's config: `family` names the registry entry, `preset` fills defaults (e.g. `debug`)."""

    family: str
    preset: str | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}  # overridden per family; "debug" is required by the tests

    def adapt_to_data(self, dataset: Any) -> "ModelSection":
        """The config for this data set: check that the data fits (shapes, classes) and return a new, validated
        config with what the data decides filled in (a text model's vocab_size). The trainer calls it once, after
        loading the training split; the result is what config.yaml records. Default: the data decides nothing."""
        return self

    def batch_options(self) -> dict[str, Any]:
        """Keyword arguments the data set's `batches()` needs from the model (a text model's context length)."""
        return {}

    def check_training(self, run: Any) -> list[str]:
        """Problems that only matter when this config trains on this machine (e.g. memory for train.batch_size),
        one message each; the trainer refuses to start on any. Default: none."""
        return []

    def with_values(self, **values: Any) -> "ModelSection":
        """A copy with `values` changed, validated again like the YAML was."""
        return type(self).model_validate({**self.model_dump(), **values})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelSection":
        raw = dict(raw)
        preset = raw.get("preset")
        if preset is not None and not isinstance(preset, str):
            raise UserError(f"`model.preset` = {preset!r}: a preset is a name, one of {', '.join(cls.PRESETS)}")
        if preset is not None:
            presets = cls.PRESETS
            if preset not in presets:
                raise UserError("`model.preset`: " + registry.unknown_name_message("preset", str(preset), list(presets)))
            raw = {**presets[preset], **raw}
        return cls.model_validate(raw)
