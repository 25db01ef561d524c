"""Property-based fuzz (hypothesis) of what users hand genforge: config files with `--set` overrides, and the
files `genforge eval --samples` reads. Whatever the input, the answer is a valid result or a `UserError` (which the
CLI prints and exits 2 with), never another exception and never a hang.

The default tier is derandomized (the same examples on every run, so CI is repeatable) and takes a few seconds;
`pytest -m slow tests/test_fuzz.py` draws many more, fresh examples each run.
"""
from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as _event
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel

from genforge import config, media, registry
from genforge.config import RunConfig, SampleSection
from genforge.errors import UserError

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
FAST = settings(max_examples=100, deadline=timedelta(seconds=2), derandomize=True, suppress_health_check=HEALTH,
                database=None)
SLOW = settings(max_examples=4000, deadline=timedelta(seconds=5), suppress_health_check=HEALTH)
HANG_SECONDS = 20  # one example taking this long is a hang (the deadline only reports examples that return)


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Fail an example that runs longer than `seconds` (SIGALRM; pytest runs tests in the main thread)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def event(outcome: str) -> None:
    """Count an outcome for `--hypothesis-show-statistics` (a no-op when a check runs outside a fuzz)."""
    if currently_in_test_context():
        _event(outcome)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------------------------------------------
# Config files and --set overrides


def _dotted_keys(schema: type[BaseModel], prefix: str) -> list[str]:
    """Every dotted key a schema takes, nested sections included (train.groups.<group>.* for two group names)."""
    keys = []
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _dotted_keys(annotation, f"{prefix}{name}.")
        elif name == "groups":
            for group in ("generator", "discriminator"):
                keys += _dotted_keys(config.OptimOverride, f"{prefix}{name}.{group}.")
        keys.append(prefix + name)
    return keys


FAMILIES = {name: registry.model_class(name) for name in registry.MODELS}  # imported now, not in a timed example
KEYS = sorted({
    *(k for section in ("run", "data", "train", "eval") for k in _dotted_keys(RunConfig.model_fields[section]
                                                                              .annotation, f"{section}.")),
    *(f"sample.{k}" for k in config.SHARED_SAMPLE_KEYS),
    *(f"model.{k}" for cls in FAMILIES.values() for k in cls.Config.model_fields),
    *(f"sample.{k}" for cls in FAMILIES.values() for k in getattr(cls, "SampleOptions", SampleSection).model_fields),
})
FIELD_NAMES = sorted({k.rsplit(".", 1)[-1] for k in KEYS})
PRESETS = sorted({p for cls in FAMILIES.values() for p in cls.Config.PRESETS})
TRICKY = ["true", "false", "null", "~", "1e3", "1e23", "-1e23", ".inf", "-.inf", ".nan", "0", "-1", "1.5",
          str(2**63), str(2**64), "100000", "[]", "{}", "[0.9, 0.99]", "[1, [2]]", "{a: 1}", "abc", "'1'",
          '"x"', "&a [*a]", "*a", "!!python/object:os.system", "!!binary aGk=", "[", "{", ":", "- 1", "'",
          "2001-12-14", "0x10", "0o17", "1_000", "+1", "é", "\t", "\x00", "\ud7ff", "debug"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30]),
                    st.floats(), st.text(max_size=12), st.sampled_from(TRICKY), st.sampled_from(PRESETS))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8)), inner, max_size=4),
    max_leaves=16)
sections = st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=6)
model_sections = st.fixed_dictionaries(
    {"family": st.sampled_from([*registry.MODELS, "nope"])},
    optional={"preset": st.sampled_from([*PRESETS, "nope"]), **{k: values for k in ("n_layer", "vocab_size")}})
config_like = st.fixed_dictionaries(
    {}, optional={"model": model_sections | values, **{s: sections | values for s in
                                                       ("run", "data", "train", "sample", "eval")}})
SHIPPED = [p.read_text() for p in sorted(config.shipped_configs_dir().rglob("*.yaml"))]
documents = st.one_of(
    st.sampled_from(SHIPPED),  # real configs, which the overrides then change
    config_like.map(lambda d: yaml.safe_dump(d, sort_keys=False)),  # valid YAML shaped like a config
    values.map(yaml.safe_dump),  # any YAML document
    st.text(max_size=200),  # arbitrary text, mostly invalid YAML
    st.binary(max_size=200),  # arbitrary bytes, mostly not UTF-8
)
override_values = st.one_of(st.sampled_from(TRICKY), st.text(max_size=16), st.integers(-2, 70).map(str),
                            values.map(lambda v: json.dumps(v, allow_nan=True)))
overrides = st.lists(st.one_of(
    st.builds(lambda key, value: f"{key}={value}", st.sampled_from(KEYS), override_values),
    st.builds(lambda key, value: f"{key}={value}", st.text(max_size=12), override_values),
    st.text(max_size=30),
), max_size=4)
plausible_values = st.one_of(st.integers(0, 70).map(str), st.floats(0, 1).map(str),
                             st.sampled_from(["true", "false", "null", "1e3", "2.0", "[0.5, 0.9]", "debug", "adamw"]))
config_cases = st.one_of(
    st.tuples(documents, overrides),  # anything
    st.tuples(st.sampled_from(SHIPPED), st.lists(  # a real config with a few plausible changes: often valid
        st.builds(lambda key, value: f"{key}={value}", st.sampled_from(KEYS), plausible_values), max_size=2)),
)


def check_config_loader(workdir: Path, document: str | bytes, sets: list[str]) -> None:
    path = workdir / "fuzz.yaml"
    path.write_bytes(document if isinstance(document, bytes) else document.encode("utf-8", "surrogatepass"))
    with no_hang():
        try:
            cfg = config.load_config(path, sets)
        except UserError as exc:
            assert str(exc)  # the message is what the user sees
            event("refused")
            return
        event("valid config")
        assert isinstance(cfg, RunConfig)
        # a valid config is what the trainer writes as config.yaml; that file must load as the same config
        again = config.from_dict(yaml.safe_load(cfg.to_yaml()))
        assert again.to_dict() == cfg.to_dict()


@FAST
@given(case=config_cases)
@example(case=("{}\n", ["data.channels=\x1b"]))  # found by this fuzz: a ReaderError had no `problem` to print
@example(case=("run: {name: " + "[" * 700 + "]" * 700 + "}\n", []))  # PyYAML's RecursionError, in a file ...
@example(case=("{}\n", ["run.name=" + "[" * 700 + "]" * 700]))  # ... and in an override
def test_config_loader_answers_a_config_or_a_user_error(workdir: Path, case: tuple[str | bytes, list[str]]) -> None:
    check_config_loader(workdir, *case)


@pytest.mark.slow
@SLOW
@given(case=config_cases)
def test_config_loader_fuzz_long(workdir: Path, case: tuple[str | bytes, list[str]]) -> None:
    check_config_loader(workdir, *case)


def test_the_fuzz_reaches_valid_configs(workdir: Path) -> None:
    """The strategies are not all noise: a real config plus generated-style overrides validates."""
    document = yaml.safe_dump({"model": {"family": "gpt", "preset": "debug"}, "data": {"name": "shakespeare-mini"}})
    check_config_loader(workdir, document, ["train.steps=1e3", "sample.top_k=5"])
    assert config.load_config(workdir / "fuzz.yaml", ["train.steps=1e3"]).train.steps == 1000
    assert len(KEYS) > 80 and "train.groups.generator.lr" in KEYS and "sample.top_p" in KEYS


# --------------------------------------------------------------------------------------------------------------
# `eval --samples` files: .npz images, .jsonl / .txt texts

dtypes = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(max_len=3), hnp.unicode_string_dtypes(max_len=3),
                   st.just(np.dtype(np.uint8)), st.just(np.dtype(np.uint8)))  # uint8 twice: the valid case
shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)
arrays = st.one_of(
    hnp.arrays(dtypes, shapes),
    hnp.arrays(np.uint8, st.sampled_from([(2, 6, 6, 3), (2, 3, 6, 6), (2, 1, 6, 6), (2, 6, 6, 1), (2, 6, 6),
                                          (1, 3, 3, 3), (0, 6, 6, 3), (2, 6, 6, 4), (2, 4, 6, 6)])),
    hnp.arrays(np.dtype(object), hnp.array_shapes(max_dims=2, max_side=3), elements=st.integers(0, 255)),
)
npz_members = st.dictionaries(st.sampled_from(["images", "labels", "x"]), arrays, max_size=2)
damage = st.one_of(
    st.none(),
    st.tuples(st.just("truncate"), st.floats(0, 1)),  # keep this fraction of the bytes
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),  # xor one byte
    st.tuples(st.just("replace"), st.binary(max_size=300)),  # random bytes
)


def _damaged(data: bytes, how: Any) -> bytes:
    if how is None:
        return data
    if how[0] == "truncate":
        return data[: int(len(data) * how[1])]
    if how[0] == "flip":
        if not data:
            return data
        i = min(int(len(data) * how[1]), len(data) - 1)
        return data[:i] + bytes([data[i] ^ how[2]]) + data[i + 1 :]
    return how[1]


def check_npz(workdir: Path, members: dict[str, np.ndarray], how: Any, compressed: bool) -> None:
    path = workdir / "samples.npz"
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **members)
    path.write_bytes(_damaged(path.read_bytes(), how))
    with no_hang():
        try:
            images = media.load_images_npz(path)
        except UserError as exc:
            assert str(path) in str(exc)
            event("refused")
            return
    event("images")
    assert images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] in (1, 3), images.shape
    assert images.numel() > 0 and images.is_contiguous()


@FAST
@given(members=npz_members, how=damage, compressed=st.booleans())
def test_npz_loader_answers_images_or_a_user_error(workdir: Path, members: dict[str, np.ndarray], how: Any,
                                                   compressed: bool) -> None:
    check_npz(workdir, members, how, compressed)


@pytest.mark.slow
@SLOW
@given(members=npz_members, how=damage, compressed=st.booleans())
def test_npz_loader_fuzz_long(workdir: Path, members: dict[str, np.ndarray], how: Any, compressed: bool) -> None:
    check_npz(workdir, members, how, compressed)


json_lines = st.lists(st.one_of(
    st.builds(lambda t: json.dumps({"text": t}), st.text(max_size=20)),
    values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.text(max_size=20),
), max_size=5).map("\n".join)
text_files = st.one_of(json_lines.map(lambda s: s.encode("utf-8", "surrogatepass")), st.text(max_size=100).map(
    lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=100))


def check_texts(workdir: Path, data: bytes, suffix: str, how: Any) -> None:
    path = workdir / f"samples{suffix}"
    path.write_bytes(_damaged(data, how))
    with no_hang():
        try:
            texts = media.load_texts(path)
        except UserError as exc:
            assert str(path) in str(exc)
            event("refused")
            return
    event("texts")
    assert texts and all(isinstance(t, str) for t in texts)
    for text in texts:
        text.encode("utf-8")  # every text can be tokenized: no lone surrogates


@FAST
@given(data=text_files, suffix=st.sampled_from([".jsonl", ".txt"]), how=damage)
def test_text_loader_answers_texts_or_a_user_error(workdir: Path, data: bytes, suffix: str, how: Any) -> None:
    check_texts(workdir, data, suffix, how)


@pytest.mark.slow
@SLOW
@given(data=text_files, suffix=st.sampled_from([".jsonl", ".txt"]), how=damage)
def test_text_loader_fuzz_long(workdir: Path, data: bytes, suffix: str, how: Any) -> None:
    check_texts(workdir, data, suffix, how)
