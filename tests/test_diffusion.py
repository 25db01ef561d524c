"""Diffusion family specifics: the noise schedules, the samplers against denoisers whose answer is known, the
ε/v conversions, classifier-free guidance, the invalid combinations, and the CLI path."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from genforge import sampling
from genforge.cli import main
from genforge.config import from_dict
from genforge.errors import UserError
from genforge.models import samplers
from genforge.models.diffusion import Diffusion, DiffusionConfig, make_alphas_cumprod

LINEAR = make_alphas_cumprod("linear", 1000)


def test_schedules_match_the_papers() -> None:
    # Ho et al.: β_1 = 1e-4 ... β_T = 0.02, so ᾱ_0 = 1 - 1e-4 and ᾱ_T = Π(1 - β_t) ≈ 4.04e-5
    assert LINEAR[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)
    assert LINEAR[-1].item() == pytest.approx(4.0358e-05, rel=1e-3)
    cosine = make_alphas_cumprod("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cosine[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)  # eq. 17 where no β is clipped
    assert (cosine[1:] < cosine[:-1]).all() and cosine[-1].item() < 1e-4
    assert samplers.timestep_schedule(LINEAR, 5) == [999, 749, 500, 250, 0]
    assert samplers.timestep_schedule(LINEAR[:10], 10) == list(range(9, -1, -1))
    assert samplers.timestep_schedule(LINEAR, 5, "logsnr") == [999, 722, 302, 30, 0]


def gaussian_denoiser(alphas_cumprod: torch.Tensor, s: float):
    """The exact denoiser of data x0 ~ N(0, s²): E[x0 | x_t] = sqrt(ᾱ) s² x_t / (ᾱ s² + 1 - ᾱ)."""
    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = float(alphas_cumprod[t])
        x0 = math.sqrt(a) * s**2 * x / (a * s**2 + 1 - a)
        return (x - math.sqrt(a) * x0) / math.sqrt(1 - a), x0
    return denoise


@pytest.mark.parametrize("name, steps, spacing, options, tolerance", [
    ("ddpm", 1000, "uniform", {}, 0.02), ("ddpm", 1000, "uniform", {"variance": "large"}, 0.02),
    ("ddim", 200, "uniform", {}, 0.02), ("ddim", 1000, "uniform", {"eta": 1.0}, 0.02),
    ("dpm++2m", 20, "logsnr", {}, 0.04), ("dpm++2m", 200, "uniform", {}, 0.02)])
def test_samplers_turn_noise_into_the_data_distribution(name: str, steps: int, spacing: str, options: dict,
                                                        tolerance: float) -> None:
    """With the exact denoiser of N(0, 0.5²) data, every sampler must map N(0, I) noise onto N(0, 0.5²)."""
    s = 0.5
    x = torch.randn(20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = samplers.timestep_schedule(LINEAR, steps, spacing)
    out = samplers.get(name)(gaussian_denoiser(LINEAR, s), LINEAR, timesteps, x,
                             generator=torch.Generator().manual_seed(1), **options)
    assert out.std().item() == pytest.approx(s, rel=tolerance), name
    assert abs(out.mean().item()) < 0.02


def test_the_two_ddpm_variances_bracket_the_data_spread_at_few_steps() -> None:
    """β̃ (small) and β (large) are the lower and upper bounds of Ho et al. sec. 3.2: with 25 respaced steps and
    the exact denoiser of N(0, 0.5²) data, the small one under-disperses the samples and the large one over-disperses
    them (at 1,000 steps both are within 2%, above)."""
    x = torch.randn(20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = samplers.timestep_schedule(LINEAR, 25)
    std = {v: samplers.get("ddpm")(gaussian_denoiser(LINEAR, 0.5), LINEAR, timesteps, x, variance=v,
                                   generator=torch.Generator().manual_seed(1)).std().item() for v in ("small", "large")}
    assert std == pytest.approx({"small": 0.407010, "large": 0.538619}, abs=1e-5)


def test_the_second_order_solver_beats_ddim_at_ten_steps() -> None:
    x = torch.randn(20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = samplers.timestep_schedule(LINEAR, 10, "logsnr")
    errors = {name: abs(samplers.get(name)(gaussian_denoiser(LINEAR, 0.5), LINEAR, timesteps, x).std().item() - 0.5)
              for name in ("ddim", "dpm++2m")}
    assert errors["dpm++2m"] < errors["ddim"] / 3, errors


def test_point_mass_data_is_recovered_exactly_by_the_deterministic_samplers() -> None:
    target = 0.3
    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = float(LINEAR[t])
        x0 = torch.full_like(x, target)
        return (x - math.sqrt(a) * x0) / math.sqrt(1 - a), x0
    x = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name in ("ddim", "dpm++2m", "ddpm"):
        out = samplers.get(name)(denoise, LINEAR, samplers.timestep_schedule(LINEAR, 10), x,
                                 generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out, torch.full_like(x, target))


@pytest.mark.parametrize("name, expected", [("ddpm", 1.42842), ("ddim", 0.818532), ("dpm++2m", 0.395282)])
def test_golden_sampler_loops_over_a_fixed_tiny_denoiser(name: str, expected: float) -> None:
    alphas = make_alphas_cumprod("cosine", 100)

    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:  # a fixed, t-dependent linear map
        a = float(alphas[t])
        x0 = (0.5 * x + 0.1 * t / 100).clamp(-1, 1)
        return (x - math.sqrt(a) * x0) / math.sqrt(1 - a), x0

    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = samplers.get(name)(denoise, alphas, samplers.timestep_schedule(alphas, 10), x,
                             generator=torch.Generator().manual_seed(1))
    assert out.sum().item() == pytest.approx(expected, abs=1e-5)


def _model(**overrides: object) -> Diffusion:
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig.from_dict({"preset": "debug", **overrides}))


def _target(prediction: str, eps: torch.Tensor, x0: torch.Tensor, s: Any, n: Any) -> torch.Tensor:
    """What a perfect network outputs: ε, v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x0, or x0 (s = sqrt(ᾱ), n = sqrt(1 - ᾱ))."""
    return {"epsilon": eps, "v": s * eps - n * x0, "x0": x0}[prediction]


def test_every_prediction_recovers_x0_and_noise() -> None:
    x0 = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    eps = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for prediction in ("epsilon", "v", "x0"):
        model = _model(prediction=prediction)
        t = 37
        a = float(model.alphas_cumprod[t])
        x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        truth = _target(prediction, eps, x0, math.sqrt(a), math.sqrt(1 - a))
        model.denoiser.forward = lambda x, steps, labels=None: truth  # an oracle network
        got_eps, got_x0 = model.predict(x_t, t, None, 1.0, clip_x0=False)
        torch.testing.assert_close(got_x0, x0, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_eps, eps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_min_snr_weights_each_image_by_its_clipped_snr(prediction: str) -> None:
    model = _model(prediction=prediction, loss_weighting="min-snr", min_snr_gamma=0.5)
    seen = {}

    def zero_network(x: torch.Tensor, steps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        seen["x_t"], seen["t"] = x, steps
        return torch.zeros_like(x)

    model.denoiser.forward = zero_network
    x0 = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(3)
    loss = model.loss({"image": x0}, "model")["loss"]
    a = model.alphas_cumprod[seen["t"]].float()
    s, n = a.sqrt().view(-1, 1, 1, 1), (1 - a).sqrt().view(-1, 1, 1, 1)
    eps = (seen["x_t"] - s * x0) / n
    target = _target(prediction, eps, x0, s, n)
    snr = a / (1 - a)
    weight = snr.clamp(max=0.5) / {"epsilon": snr, "v": snr + 1, "x0": 1}[prediction]  # Hang et al. eq. 8, sec. 3.4
    assert (snr > 0.5).any() and (snr < 0.5).any()  # the draw covers both sides of γ
    torch.testing.assert_close(loss, (weight * target.pow(2).flatten(1).mean(1)).mean(), rtol=1e-5, atol=0)
    uniform = _model(prediction=prediction)
    uniform.denoiser.forward = zero_network
    torch.manual_seed(3)
    torch.testing.assert_close(uniform.loss({"image": x0}, "model")["loss"], target.pow(2).mean(), rtol=1e-5, atol=0)


def test_guidance_mixes_the_conditional_and_unconditional_predictions() -> None:
    model = _model(num_classes=3).eval()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    for p in model.denoiser.parameters():  # weights where the zero-initialized convs leave the labels no effect
        torch.nn.init.normal_(p, std=0.1, generator=g)
    labels = torch.tensor([0, 2])
    null = torch.full_like(labels, 3)
    eps_c, _ = model.predict(x, 10, labels, 1.0, clip_x0=False)
    eps_u, _ = model.predict(x, 10, null, 1.0, clip_x0=False)
    eps_g, _ = model.predict(x, 10, labels, 3.0, clip_x0=False)
    assert not torch.allclose(eps_c, eps_u)
    torch.testing.assert_close(eps_g, eps_u + 3.0 * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


def test_guidance_interval_guides_only_the_steps_whose_noise_level_lies_inside_it() -> None:
    """Kynkäänniemi et al. 2024: the doubled (conditional + null) batch only where σ_lo < σ_t <= σ_hi."""
    model = _model(num_classes=3).eval()
    batches: list[int] = []
    forward = model.denoiser.forward
    model.denoiser.forward = lambda x, t, labels: batches.append(len(x)) or forward(x, t, labels)
    # the debug model's 10 DDPM steps have σ_t = 221.5, 69.5, 25.3, 10.59, 5.05, 2.68, 1.51, 0.85, 0.40, 0.03
    model.sample(2, sampler="ddpm", steps=10, guidance=2.0, guidance_interval=(0.4, 6.0))
    assert batches == [2, 2, 2, 2, 4, 4, 4, 4, 2, 2]  # 0.396 lies just below σ_lo
    batches.clear()
    model.sample(2, sampler="ddpm", steps=10, guidance=2.0)
    assert batches == [4] * 10
    options = {"sampler": "ddpm", "steps": 10, "guidance": 2.0}
    assert model.sample(2, generator=torch.Generator().manual_seed(0), guidance_interval=(0.0, 1e9), **options).equal(
        model.sample(2, generator=torch.Generator().manual_seed(0), **options))
    with pytest.raises(UserError, match=r"sample.guidance_interval must be \[σ_lo, σ_hi\] with 0 <= σ_lo < σ_hi"):
        model.sample(1, guidance=2.0, guidance_interval=(5.0, 0.3))
    with pytest.raises(UserError, match="sample.guidance is 1"):
        model.sample(1, guidance_interval=(0.3, 5.0))


def test_golden_unet_slice_after_two_steps() -> None:
    model = _model(num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 1, 28, 28, generator=g) * 2 - 1, "label": torch.randint(0, 3, (4,), generator=g)}
    losses = []
    for _ in range(2):
        torch.manual_seed(1)
        loss = model.loss(batch, "model")["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 6))
    out = model.denoiser(batch["image"], torch.tensor([5, 50, 90, 99]), batch["label"])
    assert losses == pytest.approx([0.937145, 0.794421], abs=1e-5)
    expected = torch.tensor([[0.004867, 0.123573, -0.079602], [-0.07398, -0.112509, -0.017355],
                             [0.074319, -0.243021, -0.218561]])
    torch.testing.assert_close(out[0, 0, :3, :3].detach(), expected, atol=1e-5, rtol=0)


def test_invalid_combinations_are_clear_errors() -> None:
    model = _model().eval()
    with pytest.raises(UserError, match=r"`sample.steps` \(101\) exceeds the 100 steps"):
        model.sample(1, steps=101)
    with pytest.raises(UserError, match="needs a class-conditional model"):
        model.sample(1, guidance=2.0)
    with pytest.raises(UserError, match="sample.sampler"):
        model.sample(1, sampler="euler")
    with pytest.raises(UserError, match="sample.eta applies to sampler ddim only"):
        model.sample(1, sampler="ddpm", eta=0.5)
    with pytest.raises(UserError, match="sample.variance applies to sampler ddpm only"):
        model.sample(1, sampler="ddim", variance="large")
    with pytest.raises(UserError, match="unconditional"):
        model.sample(1, cond=1)
    no_dropout = _model(num_classes=3, label_dropout=0.0).eval()
    with pytest.raises(UserError, match="label dropout"):
        no_dropout.sample(1, guidance=2.0)
    with pytest.raises(UserError, match="patch"):
        from_dict({"model": {"family": "diffusion", "image_size": 28, "patch": 2, "channel_mult": [1, 2, 2]}})


def test_cli_trains_samples_with_every_sampler_and_guidance(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "debug/diffusion", "--run-dir", str(run), "--set", "train.progress=false",
                 "--set", "train.threads=1", "--set", "model.num_classes=10"]) == 0
    assert sorted(p.name for p in run.glob("step-*")) == ["step-2", "step-4"]
    for sampler in ("ddpm", "ddim", "dpm++2m"):
        out = tmp_path / f"{sampler}.npz"
        assert main(["sample", str(run), "--n", "3", "--class", "3", "--set", f"sample.sampler={sampler}",
                     "--set", "sample.steps=4", "--set", "sample.guidance=2", "--out", str(out)]) == 0
        assert out.is_file()
    assert main(["sample", str(run), "--n", "2", "--set", "sample.steps=1000"]) == 2


def test_a_channels_last_run_samples_in_channels_last_and_draws_the_same_images(tmp_path: Path) -> None:
    """`train.channels_last` is also the layout the loaded model samples in (NHWC convolutions are faster here);
    the layout changes the speed, not the images."""
    run = tmp_path / "run"
    assert main(["train", "debug/diffusion", "--run-dir", str(run), "--set", "train.progress=false",
                 "--set", "train.threads=1", "--set", "train.channels_last=true"]) == 0
    module = sampling.load(run).module
    convs = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    nhwc = module.sample(2, generator=torch.Generator().manual_seed(0), steps=4)
    module.to(memory_format=torch.contiguous_format)
    nchw = module.sample(2, generator=torch.Generator().manual_seed(0), steps=4)
    assert nhwc.shape == (2, 1, 28, 28) and nhwc.std() > 0.1
    assert torch.allclose(nhwc, nchw, atol=1e-5)
