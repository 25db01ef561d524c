"""Every shipped YAML validates and builds at debug size; config errors are all reported at once, each naming
the dotted key, the value, what is allowed and a close match."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genforge import config, registry
from genforge.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*REPO.glob("configs/**/*.yaml"), *REPO.glob("benchmarks/configs/*.yaml")])


def test_there_are_shipped_configs() -> None:
    names = {p.relative_to(REPO).as_posix() for p in SHIPPED}
    for expected in ["configs/quickstart.yaml", "configs/mnist/dcgan.yaml", "configs/mnist/wgan_gp.yaml",
                     "configs/mnist/sngan_hinge.yaml", "configs/mnist/cgan.yaml", "configs/debug/gan.yaml"]:
        assert expected in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_config_validates_and_builds_at_debug_size(path: Path) -> None:
    cfg = config.load_config(path)
    assert cfg.data.name in registry.DATASETS
    raw = yaml.safe_load(path.read_text())
    cls = registry.model_class(cfg.model.family)
    # the family's debug preset wins over the file's sizes, everything else (losses, arch, conditioning) stays
    debug = {**raw["model"], **cls.Config.PRESETS["debug"]}
    if "vocab_size" in cls.Config.model_fields and debug.get("vocab_size") is None:
        debug["vocab_size"] = 11
    image_size = cls.Config.model_fields.get("image_size")
    if image_size is not None and image_size.default is None and debug.get("image_size") is None:
        debug["image_size"] = cfg.data.image_size or 16  # set from the data in training (a captioner's CNN)
    model = cls(cls.Config.from_dict(debug))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_every_family_has_a_debug_preset_and_a_debug_config() -> None:
    for family in registry.MODELS:
        assert "debug" in registry.model_class(family).Config.PRESETS
        assert (REPO / "configs" / "debug" / f"{family}.yaml").is_file()


def _problems(raw: dict, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.from_dict(raw, overrides)
    return info.value.problems


BASE = {"model": {"family": "gan", "preset": "debug"}}


def test_unknown_key_suggests_the_closest() -> None:
    problems = _problems(BASE, ["train.stesp=10"])
    assert len(problems) == 1
    assert "unknown key `train.stesp`" in problems[0] and "did you mean `train.steps`" in problems[0]


def test_unknown_model_key_is_checked_by_the_family_config() -> None:
    (problem,) = _problems(BASE, ["model.z_dimm=8"])
    assert "`model.z_dimm`" in problem and "did you mean `model.z_dim`" in problem


def test_all_problems_are_reported_at_once() -> None:
    problems = _problems(BASE, ["train.steps=-1", "train.precision=fp8", "data.nmae=x", "model.loss=wgan"])
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert "`train.steps` = -1" in text and "greater than or equal to 1" in text
    assert "`train.precision` = 'fp8'" in text and "'bf16'" in text
    assert "did you mean `data.name`" in text
    assert "`model.loss` = 'wgan'" in text and "'wgan-gp'" in text


def test_unknown_family_and_dataset() -> None:
    problems = _problems({"model": {"family": "gna"}, "data": {"name": "mnsit"}})
    text = "\n".join(problems)
    assert "unknown model family 'gna'" in text and "did you mean 'gan'" in text
    assert "unknown dataset 'mnsit'" in text and "did you mean 'mnist'" in text


def test_missing_model_section() -> None:
    (problem,) = _problems({"train": {"steps": 3}})
    assert "`model` is required" in problem


def test_overrides_coerce_types() -> None:
    cfg = config.from_dict(BASE, ["train.optim.lr=1e-3", "train.channels_last=true", "train.optim.betas=[0.5, 0.9]",
                                  "train.grad_clip=null", "run.name=x1"])
    assert cfg.train.optim.lr == 1e-3 and cfg.train.channels_last is True
    assert cfg.train.optim.betas == (0.5, 0.9) and cfg.train.grad_clip is None and cfg.run.name == "x1"


@pytest.mark.parametrize("bad", ["train.steps", "=3", "train..steps=3"])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(config.UserError, match="--set"):
        config.from_dict(BASE, [bad])


def test_override_into_a_value_is_an_error() -> None:
    with pytest.raises(config.UserError, match="`train.steps` is a value"):
        config.from_dict(BASE, ["train.steps=3", "train.steps.x=1"])


def test_cross_section_check() -> None:
    (problem,) = _problems(BASE, ["data.image_size=32"])
    assert "`data.image_size` (32) differs from `model.image_size` (28)" in problem


def test_unknown_preset() -> None:
    (problem,) = _problems({"model": {"family": "gan", "preset": "debgu"}})
    assert "unknown preset 'debgu'" in problem and "did you mean 'debug'" in problem


def test_resolved_config_round_trips() -> None:
    cfg = config.from_dict(BASE, ["train.steps=7"])
    again = config.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again.to_dict() == cfg.to_dict()


# The sample section as genforge 0.1 wrote it into every checkpoint's config.yaml: every family's keys
LEGACY_SAMPLE = {"n": 16, "seed": 0, "class_label": None, "nrow": None, "use_ema": True, "bn_stats": "running",
                 "bn_batch": 64, "prompt": None, "max_new_tokens": None, "temperature": None, "top_k": None,
                 "top_p": None, "min_p": None, "repetition_penalty": None, "no_repeat_ngram_size": None,
                 "num_beams": None, "length_penalty": None, "early_stopping": None, "stop_strings": None,
                 "window_keep": None}


def test_checkpoints_of_genforge_0_1_still_validate() -> None:
    gan = config.from_dict({"model": {"family": "gan", "preset": "debug"}, "sample": LEGACY_SAMPLE})
    assert gan.sample.kwargs() == {"bn_stats": "running", "bn_batch": 64}
    gpt = config.from_dict({"model": {"family": "gpt", "preset": "debug"},
                            "sample": {**LEGACY_SAMPLE, "max_new_tokens": 16}})
    assert gpt.sample.kwargs()["max_new_tokens"] == 16 and gpt.sample.kwargs()["top_p"] is None
    # only values that meant "the default" are dropped; a real setting for another family is still an error
    with pytest.raises(ConfigError, match="unknown key `sample.top_p` for a gan model"):
        config.from_dict({"model": {"family": "gan", "preset": "debug"}, "sample": {**LEGACY_SAMPLE, "top_p": 0.9}})
