"""GAN family specifics: the exact fast upsample-conv, the losses' math, fake reuse, conditioning errors."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genforge.models._layers import class_ids
from genforge.errors import UserError
from genforge.models.gan import GAN, GANConfig, UpsampleConv2d


def test_upsample_conv_equals_upsample_then_conv() -> None:
    torch.manual_seed(0)
    layer = UpsampleConv2d(6, 5)
    x = torch.randn(3, 6, 7, 9, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    got = layer(x)
    ref = F.conv2d(F.interpolate(x_ref, scale_factor=2, mode="nearest"), layer.weight, layer.bias, padding=1)
    assert got.shape == (3, 5, 14, 18)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(ref)
    (got * grad).sum().backward()
    weight_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    (ref * grad).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight_grad, layer.weight.grad, rtol=1e-4, atol=1e-4)
    channels_last = layer(x.detach().contiguous(memory_format=torch.channels_last))
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(channels_last, got.detach())


def _batch(cfg: GANConfig, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(n, cfg.channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1}
    if cfg.num_classes:
        batch["label"] = torch.randint(0, cfg.num_classes, (n,), generator=g)
    return batch


def test_gradient_penalty_is_per_sample_over_all_pixels() -> None:
    cfg = GANConfig.from_dict({"preset": "debug", "loss": "wgan-gp", "d_norm": "none", "discriminator": "mlp"})
    model = GAN(cfg)
    real = torch.randn(5, 1, 28, 28)
    fake = torch.randn(5, 1, 28, 28)
    torch.manual_seed(0)
    gp = model._gradient_penalty(real, fake, None)
    torch.manual_seed(0)  # same eps draw, penalty recomputed sample by sample
    eps = torch.rand(5, 1, 1, 1)
    norms = []
    for i in range(5):
        x_hat = (eps[i] * real[i : i + 1] + (1 - eps[i]) * fake[i : i + 1]).requires_grad_(True)
        (grad,) = torch.autograd.grad(model.discriminator(x_hat).sum(), x_hat)
        norms.append(grad.flatten().norm())
    expected = torch.stack([(n - 1) ** 2 for n in norms]).mean()
    torch.testing.assert_close(gp, expected)


@pytest.mark.parametrize("loss", ["ns", "hinge", "wgan-gp"])
def test_losses_match_their_formulas(loss: str) -> None:
    cfg = GANConfig.from_dict({"preset": "debug", "loss": loss, "d_norm": "none", "gp_weight": 0.0})
    model = GAN(cfg)
    real, fake = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    out = model._discriminator_loss(real, fake, None)
    d_real, d_fake = model.discriminator(real), model.discriminator(fake)
    expected = {
        "ns": -(torch.sigmoid(d_real).log().mean() + (1 - torch.sigmoid(d_fake)).log().mean()),
        "hinge": torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean(),
        "wgan-gp": d_fake.mean() - d_real.mean(),
    }[loss]
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)


def test_reuse_fakes_runs_generator_first_and_reuses_its_output() -> None:
    cfg = GANConfig.from_dict({"preset": "debug", "reuse_fakes": True})
    model = GAN(cfg)
    assert model.train_schedule == [("generator", 1, True), ("discriminator", 1, False)]
    calls = []
    model.generator.register_forward_hook(lambda *a: calls.append(1))
    batch = _batch(cfg)
    model.loss(batch, "generator")
    model.loss(batch, "discriminator")
    assert len(calls) == 1  # one generator pass for the whole step
    model.loss(batch, "discriminator")  # nothing cached any more: a fresh generator pass
    assert len(calls) == 2
    with pytest.raises(ValueError, match="n_critic 1"):
        GANConfig.from_dict({"preset": "debug", "reuse_fakes": True, "n_critic": 2})


def test_wgan_gp_rejects_batch_norm_in_the_critic() -> None:
    with pytest.raises(ValueError, match="d_norm"):
        GANConfig(loss="wgan-gp", d_norm="batch")


def test_conditional_sampling() -> None:
    model = GAN(GANConfig.from_dict({"preset": "debug", "num_classes": 10}))
    g = torch.Generator().manual_seed(0)
    assert model.sample(12, generator=g).shape == (12, 1, 28, 28)
    assert class_ids(12, None, 10, torch.device("cpu"), "GAN").tolist() == [i % 10 for i in range(12)]
    with pytest.raises(UserError, match="--class 10 is out of range"):
        model.sample(2, cond=10)
    with pytest.raises(UserError, match="expected one class id or 3 ids"):
        model.sample(3, cond=[1, 2])
    with pytest.raises(UserError, match="unconditional"):
        GAN(GANConfig.from_dict({"preset": "debug"})).sample(2, cond=1)


@pytest.mark.parametrize("generator,discriminator,size", [("dcgan", "dcgan", 32), ("upconv", "strided", 28),
                                                          ("mlp", "mlp", 32), ("upconv", "dcgan", 64)])
def test_architectures_make_the_configured_size(generator: str, discriminator: str, size: int) -> None:
    stages = 3 if size == 64 else 2
    cfg = GANConfig.from_dict({"preset": "debug", "generator": generator, "discriminator": discriminator,
                               "image_size": size, "channels": 3, "g_stages": stages, "spectral_norm": True})
    model = GAN(cfg)
    images = model.sample(2)
    assert images.shape == (2, 3, size, size)
    assert model.loss(_batch(cfg, 2), "discriminator")["loss"].isfinite()


def test_batch_statistics_sampling_leaves_running_statistics_alone() -> None:
    """sample.bn_stats = batch: each chunk of bn_batch images is normalized with its own statistics (what a
    generator in train mode does), and the BatchNorm buffers do not move."""
    from genforge import config

    cfg = config.load_config(Path(__file__).resolve().parents[1] / "configs" / "debug" / "gan.yaml").model
    torch.manual_seed(0)
    model = GAN(cfg).eval()
    buffers = {k: v.clone() for k, v in model.generator.state_dict().items()}
    batch = model.sample(6, generator=torch.Generator().manual_seed(0), bn_stats="batch", bn_batch=3)
    running = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(v, model.generator.state_dict()[k]) for k, v in buffers.items())
    assert not model.generator.training and not torch.allclose(batch, running)
    z = model._noise(6, torch.device("cpu"), torch.Generator().manual_seed(0))
    reference = copy.deepcopy(model.generator).train()  # train mode on a copy: its buffers may move
    with torch.no_grad():
        want = torch.cat([reference(z[:3], None), reference(z[3:], None)]).clamp(-1, 1)
    torch.testing.assert_close(batch, want)
    with pytest.raises(UserError, match="unknown key `sample.temperature`; allowed here: bn_stats, bn_batch"):
        model.sample(2, temperature=1.0)


def test_batch_statistics_never_normalize_a_single_image() -> None:
    from genforge import config

    cfg = config.load_config(Path(__file__).resolve().parents[1] / "configs" / "debug" / "gan.yaml").model
    model = GAN(cfg).eval()
    assert model.sample(7, bn_stats="batch", bn_batch=3).shape[0] == 7  # chunks 3 + 4, not 3 + 3 + 1
    with pytest.raises(UserError, match="at least 2 images"):
        model.sample(1, bn_stats="batch")
