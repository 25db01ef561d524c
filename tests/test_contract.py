"""Every registered model family through one shared tester at its `debug` preset (STYLE.md: "tests run every model
through one shared tester on a tiny config"): finite losses, a gradient for every parameter of the stepped group,
sample shape and range, and save -> load giving identical samples for the same seed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genforge import checkpoint, config, registry, sampling
from genforge.data.phonemes import PhonemeTokenizer
from genforge.models._protocol import GenerativeModel, train_schedule


def speech_table() -> PhonemeTokenizer:
    """The symbol table of a speech model's debug run: characters, which need no espeak-ng."""
    return PhonemeTokenizer(mode="chars")


def debug_run_config(family: str) -> config.RunConfig:
    model = {"family": family, "preset": "debug"}
    cls = registry.model_class(family)
    if getattr(cls, "conditioning", None) == "text":  # speaks text through its symbol table
        model["vocab_size"] = speech_table().vocab_size
    elif "vocab_size" in cls.Config.model_fields:
        model["vocab_size"] = 11
    image_size = cls.Config.model_fields.get("image_size")
    if image_size is not None and image_size.default is None:  # set from the data in training (a captioner's CNN)
        model["image_size"] = 16
    if "num_classes" in cls.Config.model_fields and family != "classifier":
        model["num_classes"] = 3  # exercise the conditional path as well
    if cls.output_kind == "audio":  # speech data: generated letter tones, no files
        return config.from_dict({"model": model, "data": {"name": "speech-mini", "tokenizer": "char"}})
    return config.from_dict({"model": model})


def example_batch(model: torch.nn.Module, n: int = 4) -> dict[str, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    if model.output_kind in ("image", "label"):
        batch = {"image": torch.rand(n, cfg.channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1}
        if getattr(cfg, "num_classes", 0) or model.output_kind == "label":
            batch["label"] = torch.randint(0, cfg.num_classes, (n,), generator=g)
        return batch
    if model.output_kind == "text":
        tokens = torch.randint(0, cfg.vocab_size, (n, 9), generator=g)
        batch = {"x": tokens[:, :-1], "y": tokens[:, 1:]}
        if getattr(cfg, "num_classes", 0):  # a sentence CVAE
            batch["label"] = torch.randint(0, cfg.num_classes, (n,), generator=g)
        return batch
    if model.output_kind == "caption":  # images and a caption of each: its start token 1, words, end token 1
        tokens = torch.randint(2, cfg.vocab_size, (n, 8), generator=g)
        tokens[:, 0] = tokens[:, -1] = 1
        return {"image": torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1,
                "x": tokens[:, :-1], "y": tokens[:, 1:]}
    if model.output_kind == "audio" and getattr(model, "conditioning", None) == "text":  # clips and their texts
        lengths = torch.tensor([5, 3, 4, 2][:n])
        text = torch.randint(1, cfg.vocab_size, (n, 5), generator=g) * (torch.arange(5) < lengths[:, None])
        samples = torch.tensor([4000, 2500, 3200, 1900][:n])
        wave = torch.randn(n, 4000, generator=g) * 0.1 * (torch.arange(4000) < samples[:, None])
        return {"text": text, "text_lengths": lengths, "audio": wave, "audio_lengths": samples}
    if model.output_kind == "audio":  # a vocoder: crops of waveforms
        return {"audio": torch.rand(n, cfg.segment_size, generator=g) * 2 - 1}
    raise AssertionError(f"no example batch for {model.output_kind}")


def sample_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, object]:
    """What `sample` is given in these tests: the images of a captioner, a text to speak, a vocoder's clips to
    resynthesize (the run's data set, as the sampling pipeline passes it), else nothing."""
    conditioning = getattr(model, "conditioning", None)
    if conditioning == "image":
        return {"cond": batch["image"]}
    if conditioning == "text":
        model.tokenizer = speech_table()
        return {"cond": "a bad cab"}
    if model.output_kind == "audio":
        from genforge.data.speech import build_speech_mini

        return {"data": build_speech_mini(config.DataSection(name="speech-mini", tokenizer="char"), "test")}
    return {"cond": None}


FAMILIES = sorted(registry.MODELS)


@pytest.mark.parametrize("family", FAMILIES)
def test_protocol_and_gradients(family: str) -> None:
    torch.manual_seed(0)
    cfg = debug_run_config(family)
    model = registry.model_class(family)(cfg.model)
    assert isinstance(model, GenerativeModel)
    assert model.output_kind in ("image", "text", "audio", "label", "caption")
    groups = model.param_groups()
    all_params = {id(p) for p in model.parameters()}
    assert {id(p) for ps in groups.values() for p in ps} == all_params, "groups must cover every parameter once"
    batch = example_batch(model)
    for group, _, _ in train_schedule(model):
        model.zero_grad(set_to_none=True)
        out = model.loss(batch, group)
        assert "loss" in out and torch.isfinite(out["loss"]), (group, out)
        out["loss"].backward()
        missing = [n for n, p in model.named_parameters() if id(p) in {id(q) for q in groups[group]} and p.grad is None]
        assert not missing, f"{family}/{group}: parameters without gradient: {missing}"


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_and_save_load_roundtrip(family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = debug_run_config(family)
    model = registry.model_class(family)(cfg.model)
    model.eval()
    g = torch.Generator().manual_seed(3)
    inputs = sample_inputs(model, example_batch(model))
    first = model.sample(4, generator=g, **inputs)
    if model.output_kind == "image":
        c, s = cfg.model.channels, cfg.model.image_size
        assert first.shape == (4, c, s, s)
        assert first.min() >= -1 and first.max() <= 1
    else:
        assert len(first) == 4
    checkpoint.save(tmp_path / "run", 1, model=model, config_yaml=cfg.to_yaml(),
                    tokenizer=getattr(model, "tokenizer", None))
    loaded = sampling.load(tmp_path / "run")
    again = loaded.sample(4, cond=inputs.get("cond"), generator=torch.Generator().manual_seed(3))
    if model.output_kind == "label":
        assert first.shape == (4,) and first.dtype == torch.int64
        assert torch.equal(first, again)
    elif model.output_kind == "image":
        assert torch.equal(first, again)
    elif model.output_kind == "audio":
        assert first.sample_rate == again.sample_rate and first.texts == again.texts
        assert all(np.array_equal(a, b) for a, b in zip(first.waves, again.waves))
    else:
        assert first == again


# Golden values per family at the debug preset (seed 0 for the weights, seed 1 for a loss's own noise, generator
# seed 3 for sampling): the loss of each group on `example_batch`, and the first values of 4 samples (image
# pixels, label ids, or the first sample's token ids, prompt token 0 included). A change to a family's math,
# init or sampling order shows up here.
GOLDEN: dict[str, tuple[dict[str, float], list]] = {
    "captioner": ({"model": 2.433033}, []),  # greedy: an untrained decoder ends at once (test_captioner pins draws)
    "classifier": ({"model": 2.361357}, [0, 5, 2, 2]),
    # an untrained U-Net predicts ε = 0 (zero-initialized output conv), so its x0 = x_T / sqrt(ᾱ_T) is clipped
    "diffusion": ({"model": 0.937145}, [-1.0, 1.0, -1.0]),
    "gan": ({"discriminator": 1.307306, "generator": 0.701237}, [0.000112, 0.000107, 4.3e-05]),
    "gpt": ({"model": 2.425709}, [0, 5, 5, 5, 5, 4]),
    "text_vae": ({"model": 19.057146}, [2, 9, 9, 9, 9, 9]),  # a CVAE: the first sample is class 0's
    # resynthesized test clips of the generated speech
    "vocoder": ({"discriminator": 6.737061, "generator": 218.457245}, [-0.226725, -0.160601, -0.128858]),
    "tts": ({"model": 13.201299}, [-0.436176, -1.0, 0.950506]),  # Griffin-Lim of the untrained decoder's frames
    "vae": ({"model": 544.250793}, [0.049253, 0.034075, 0.043334]),
}


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_golden_values(family: str) -> None:
    losses, first = GOLDEN[family]
    torch.manual_seed(0)
    cfg = debug_run_config(family)
    model = registry.model_class(family)(cfg.model)
    batch = example_batch(model)
    for group, _, _ in train_schedule(model):
        torch.manual_seed(1)
        # rel: a float32 sum of ~1e2 differs in its 7th digit between CPUs with and without AVX-512
        assert model.loss(batch, group)["loss"].item() == pytest.approx(losses[group], rel=1e-6, abs=1e-5), group
    model.eval()
    samples = model.sample(4, generator=torch.Generator().manual_seed(3), **sample_inputs(model, batch))
    if model.output_kind == "image":
        assert samples.flatten()[:3].tolist() == pytest.approx(first, abs=1e-6)
    elif model.output_kind == "label":
        assert samples.tolist() == first
    elif model.output_kind == "audio":  # the first samples of the first clip (Griffin-Lim's 32 iterations carry
        #                                  float32 rounding that differs between CPUs to the 5th digit)
        assert samples.waves[0][:3].tolist() == pytest.approx(first, abs=1e-4)
    elif model.output_kind == "caption":  # no tokenizer: each caption is its token ids, the end token left out
        assert samples[0]["caption"][:6] == first
    else:
        assert samples[0][:6] == first


def test_every_registered_family_has_golden_values() -> None:
    assert sorted(GOLDEN) == FAMILIES
