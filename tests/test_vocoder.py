"""Vocoder family specifics: Griffin-Lim's framing and quality, HiFi-GAN's config checks, sizes and pinned losses,
resynthesis samples, and a trained vocoder behind text-to-speech."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from genforge import audio, checkpoint, config
from genforge.audio import MelConfig
from genforge.errors import UserError
from genforge.models.vocoder import (
    DEBUG_MEL,
    Vocoder,
    VocoderConfig,
    griffin_lim,
    mel_to_magnitudes,
)

MEL = MelConfig(**DEBUG_MEL)  # 8 kHz, hop 64, 20 bands


def sine(freq: float = 440.0, samples: int = 8000, amplitude: float = 0.5) -> torch.Tensor:
    return amplitude * torch.sin(2 * math.pi * freq * torch.arange(samples) / MEL.sample_rate)


def spectral_convergence(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """||S - S_hat||_F / ||S||_F of the STFT magnitudes (on log_mel's framing)."""
    s, s_hat = audio.magnitudes(reference, MEL), audio.magnitudes(estimate, MEL)
    return float((s - s_hat).norm() / s.norm())


# --------------------------------------------------------------------------------------------------------------
# Griffin-Lim


def test_griffin_lim_makes_exactly_frames_times_hop_samples() -> None:
    wave = sine(samples=8000 + 37)  # not a whole number of hops: log_mel drops the rest
    log_mel = audio.log_mel(wave, MEL)  # (20, 125)
    assert log_mel.shape == (20, 125)
    assert griffin_lim(log_mel, MEL, n_iter=2).shape == (125 * 64,)
    batch = torch.stack([log_mel, log_mel[:, :]])
    out = griffin_lim(batch, MEL, n_iter=2)
    assert out.shape == (2, 125 * 64) and out.abs().max() <= 1
    assert audio.log_mel(out, MEL).shape == batch.shape  # frames line up with log_mel's framing
    with pytest.raises(UserError, match="n_mels = 20"):
        griffin_lim(torch.zeros(40, 10), MEL)


def test_griffin_lim_reconstructs_a_sine() -> None:
    wave = sine()
    log_mel = audio.log_mel(wave, MEL)
    fast = griffin_lim(log_mel, MEL)  # 32 iterations, momentum 0.99, seeded random phases
    plain = griffin_lim(log_mel, MEL, momentum=0.0)
    # measured: momentum (Perraudin et al. 2013) converges faster than plain Griffin-Lim at 32 iterations
    assert spectral_convergence(wave, fast) == pytest.approx(0.1397, abs=2e-3)
    assert spectral_convergence(wave, plain) == pytest.approx(0.2129, abs=2e-3)
    assert float((audio.log_mel(fast, MEL) - log_mel).abs().mean()) == pytest.approx(0.2407, abs=5e-3)
    assert torch.equal(griffin_lim(log_mel, MEL), fast)  # deterministic without a generator


def test_mel_to_magnitudes_fits_the_mel_energies() -> None:
    log_mel = audio.log_mel(sine(), MEL)
    basis = audio.mel_filterbank(MEL)

    def misfit(magnitudes: torch.Tensor) -> float:
        assert magnitudes.min() >= 0
        return float((torch.log((basis @ magnitudes).clamp(min=audio.LOG_FLOOR)) - log_mel).abs().mean())

    assert misfit(mel_to_magnitudes(log_mel, MEL, n_iter=0)) == pytest.approx(1.2639, abs=1e-3)  # pinv, clamped
    assert misfit(mel_to_magnitudes(log_mel, MEL)) == pytest.approx(0.0140, abs=1e-3)  # + 50 NNLS updates


# --------------------------------------------------------------------------------------------------------------
# Config


def test_upsampling_must_multiply_to_the_hop() -> None:
    with pytest.raises(ValidationError) as info:
        VocoderConfig.from_dict({"preset": "debug", "upsample_rates": [4, 4, 2]})
    text = str(info.value)
    assert "model.upsample_rates [4, 4, 2] multiply to 32, but model.mel.hop_length is 64" in text
    assert "one hop of samples per mel frame" in text


def test_segment_must_be_a_multiple_of_the_hop() -> None:
    with pytest.raises(ValidationError, match=r"model.segment_size 1000 is not a multiple of model.mel.hop_length 64; "
                                              r"use e.g. 1024"):
        VocoderConfig.from_dict({"preset": "debug", "segment_size": 1000})


def test_all_config_problems_are_reported_together() -> None:
    with pytest.raises(ValidationError) as info:
        VocoderConfig.from_dict({"preset": "debug", "upsample_kernel_sizes": [8, 8, 7], "segment_size": 100,
                                 "resblock_dilation_sizes": [[1, 2, 3]]})
    text = str(info.value)
    assert "upsampling rate 4 with kernel 7" in text
    assert "resblock type 2 takes 2 dilations per block" in text
    assert "model.segment_size 100" in text


def test_presets() -> None:
    v1 = VocoderConfig.from_dict({"preset": "v1"})
    assert (v1.mel.sample_rate, v1.mel.hop_length, v1.mel.n_mels) == (22050, 256, 80)
    debug = VocoderConfig.from_dict({"preset": "debug"})
    assert debug.mel == MEL and debug.segment_size == 1024
    # a mel key of the user's joins the preset's mel instead of replacing it
    merged = VocoderConfig.from_dict({"preset": "debug", "mel": {"fmin": 50.0}})
    assert merged.mel == MEL.model_copy(update={"fmin": 50.0})


@pytest.mark.parametrize("preset, generator, discriminators", [
    ("debug", 4_234, 3_731),
    ("tiny-cpu", 119_170, 297_719),
    ("v3", 1_464_322, 70_724_591),  # the paper's Table 1: V3 1.46 M generator weights
    ("v2", 928_514, 70_724_591),  # 0.92 M
    ("v1", 13_936_130, 70_724_591),  # 13.92 M
])
def test_parameter_counts(preset: str, generator: int, discriminators: int) -> None:
    model = Vocoder(VocoderConfig.from_dict({"preset": preset}))
    groups = model.param_groups()
    assert sum(p.numel() for p in groups["generator"]) == generator
    assert sum(p.numel() for p in groups["discriminator"]) == discriminators


def test_adapt_to_data_takes_the_sample_rate() -> None:
    cfg = VocoderConfig.from_dict({"preset": "debug"})

    class Speech:
        sample_rate = 16000

    adapted = cfg.adapt_to_data(Speech())
    assert adapted.mel == MEL.model_copy(update={"sample_rate": 16000})
    with pytest.raises(UserError, match="has no sample rate"):
        cfg.adapt_to_data(object())
    assert cfg.batch_options() == {"segment": 1024}


# --------------------------------------------------------------------------------------------------------------
# HiFi-GAN


def fixed_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    freqs = torch.tensor([220.0, 330.0, 440.0, 550.0])[:, None]
    waves = 0.5 * torch.sin(2 * math.pi * freqs * torch.arange(1024) / 8000) + 0.05 * torch.randn(4, 1024, generator=g)
    return {"audio": waves}  # (4, 1024), what the speech data set yields with batch_options()


def debug_model() -> Vocoder:
    torch.manual_seed(0)
    return Vocoder(VocoderConfig.from_dict({"preset": "debug"}))


def test_generator_output_shape() -> None:
    model = debug_model()
    out = model.generator(torch.randn(3, 20, 7))
    assert out.shape == (3, 1, 7 * 64)
    assert out.abs().max() <= 1
    wave = model.vocode(torch.randn(20, 7))
    assert wave.shape == (7 * 64,) and model.training  # eval for vocoding, the mode restored
    with pytest.raises(UserError, match="n_mels = 20"):
        model.vocode(torch.randn(1, 80, 7))


def test_schedule_groups_and_seconds() -> None:
    model = debug_model()
    assert model.train_schedule == [("discriminator", 1, True), ("generator", 1, False)]
    groups = model.param_groups()
    assert {id(p) for ps in groups.values() for p in ps} == {id(p) for p in model.parameters()}
    assert model.count_examples(fixed_batch()) == pytest.approx(4 * 1024 / 8000)


def test_training_steps_have_pinned_losses() -> None:
    """Two steps of the trainer's schedule (AdamW, HiFi-GAN's betas), each group stepped with the other frozen."""
    model = debug_model()
    batch = fixed_batch()
    groups = model.param_groups()
    optimizers = {g: torch.optim.AdamW(ps, lr=2e-4, betas=(0.8, 0.99)) for g, ps in groups.items()}
    expected = [
        ("discriminator", {"loss": 6.736028, "mpd": 4.748948, "msd": 1.98708}),
        ("generator", {"loss": 111.545387, "adv": 6.520103, "fm": 1.234736, "mel": 2.279018}),
        ("discriminator", {"loss": 6.727498, "mpd": 4.743398, "msd": 1.9841}),
        ("generator", {"loss": 108.926064, "adv": 6.510915, "fm": 1.235418, "mel": 2.220985}),
    ]
    for group, values in expected:
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name == group)
        optimizers[group].zero_grad()
        out = model.loss(batch, group)
        out["loss"].backward()
        optimizers[group].step()
        got = {k: float(v.detach()) for k, v in out.items()}
        assert got == pytest.approx(values, rel=1e-5, abs=1e-4), group  # rel: thread counts reorder float sums
    # eq. 6 of the paper: adversarial + 2 x feature matching + 45 x mel L1
    assert float(out["loss"].detach()) == pytest.approx(float(out["adv"] + 2 * out["fm"] + 45 * out["mel"]), rel=1e-6)


class FakeSpeech:
    """What the speech data set offers `sample`: float32 mono waveforms at one rate."""

    def __init__(self, lengths: list[int], sample_rate: int = 8000):
        rng = np.random.default_rng(0)
        self.waves = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
        self.sample_rate = sample_rate


def test_sample_resynthesizes_the_first_clips() -> None:
    model = debug_model()
    clips = model.sample(2, data=FakeSpeech([1000, 2000, 3000]), split="test")
    assert isinstance(clips, audio.AudioClips) and clips.sample_rate == 8000 and clips.texts is None
    assert [len(w) for w in clips.waves] == [1000 // 64 * 64, 2000 // 64 * 64]
    with pytest.raises(UserError, match="holds 3; pass --n 3 or fewer"):
        model.sample(4, data=FakeSpeech([1000, 2000, 3000]))
    with pytest.raises(UserError, match="given no data set"):
        model.sample(1)
    with pytest.raises(UserError, match="16000 Hz, but this vocoder was trained at 8000 Hz"):
        model.sample(1, data=FakeSpeech([1000], sample_rate=16000))
    assert Vocoder.SampleOptions.parse({"split": "val"}).data_split() == "val"


# --------------------------------------------------------------------------------------------------------------
# A vocoder for text-to-speech: `sample.vocoder` names its run, the sampling pipeline loads it


def _tts_run(tmp_path: Path, mel: dict[str, object] | None = None) -> Path:
    from genforge.data.phonemes import PhonemeTokenizer
    from genforge.models.tts import TTS

    table = PhonemeTokenizer(mode="chars")
    model_cfg = {"family": "tts", "preset": "debug", "vocab_size": table.vocab_size, **({"mel": mel} if mel else {})}
    run = config.from_dict({"model": model_cfg, "data": {"name": "speech-mini", "tokenizer": "char"}})
    torch.manual_seed(0)
    checkpoint.save(tmp_path / "tts", 1, model=TTS(run.model), config_yaml=run.to_yaml(), tokenizer=table)
    return tmp_path / "tts"


def test_text_to_speech_through_a_trained_vocoder(tmp_path: Path) -> None:
    from genforge import sampling

    run = config.from_dict({"model": {"family": "vocoder", "preset": "debug"}, "data": {"name": "speech-mini"}})
    model = debug_model()
    checkpoint.save(tmp_path / "voc", 1, model=model, config_yaml=run.to_yaml())
    tts = sampling.load(_tts_run(tmp_path))
    clips = tts.sample(1, cond="a bad cab", vocoder=str(tmp_path / "voc"))
    mel, _ = tts.module.synthesize_mel(tts.tokenizer.encode("a bad cab"))
    assert np.array_equal(clips.waves[0], model.vocode(mel[None])[0].numpy())  # the vocoder's own output
    assert len(tts.links) == 1  # loaded once, kept for the next request
    greedy = tts.sample(1, cond="a bad cab")  # griffin-lim
    assert len(greedy.waves[0]) == len(clips.waves[0])


def test_a_vocoder_on_other_features_or_not_a_vocoder_is_refused(tmp_path: Path) -> None:
    from genforge import sampling
    from genforge.models.gan import GAN

    run = config.from_dict({"model": {"family": "vocoder", "preset": "debug"}, "data": {"name": "speech-mini"}})
    checkpoint.save(tmp_path / "voc", 1, model=debug_model(), config_yaml=run.to_yaml())
    gan = config.from_dict({"model": {"family": "gan", "preset": "debug"}})
    checkpoint.save(tmp_path / "gan", 1, model=GAN(gan.model), config_yaml=gan.to_yaml())
    tts = sampling.load(_tts_run(tmp_path, mel={"n_mels": 24}))
    with pytest.raises(UserError) as info:
        tts.sample(1, cond="a bad cab", vocoder=str(tmp_path / "voc"))
    assert "n_mels 24 here vs 20 in the vocoder" in str(info.value)
    assert "train the vocoder with this model's model.mel" in str(info.value)
    with pytest.raises(UserError, match="that checkpoint is a gan model, not a vocoder"):
        tts.sample(1, cond="a bad cab", vocoder=str(tmp_path / "gan"))
    with pytest.raises(UserError, match="sample.vocoder = '.*no-such-run'"):
        tts.sample(1, cond="a bad cab", vocoder=str(tmp_path / "no-such-run"))


def test_validation_measures_the_generator(tmp_path: Path) -> None:
    import json

    from genforge.cli import main

    debug = str(Path(__file__).resolve().parents[1] / "configs" / "debug" / "vocoder.yaml")
    assert main(["train", debug, "--run-dir", str(tmp_path / "run"), "--set", "train.val_every=2",
                 "--set", "train.val_batches=1", "--set", "train.threads=1"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in records if "val/loss" in r]
    generator = [r["generator/loss"] for r in records if "generator/loss" in r]
    discriminator = [r["discriminator/loss"] for r in records if "discriminator/loss" in r]
    assert val == pytest.approx([78.2222, 76.2946], abs=1e-3)  # the generator's loss on held-out crops, pinned
    assert all(abs(v - g) < 5 and v > 10 * d for v, g, d in zip(val, generator, discriminator))
