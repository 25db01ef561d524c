"""VAE family specifics: the likelihoods are normalized, the KL is the closed form, the IWAE bound behaves as a bound,
the KL warm-up resumes exactly, the sampling modes and their errors, and the CLI path (train, eval elbo/nll, sample)."""
from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import pytest
import torch

from genforge.cli import main
from genforge.config import from_dict
from genforge.errors import UserError
from genforge.models._layers import gaussian_kl, log_normal
from genforge.models.vae import VAE, VAEConfig, bernoulli_log_prob, discretized_logistic_log_prob

REPO = Path(__file__).resolve().parents[1]


def test_discretized_logistic_sums_to_one_over_the_256_levels() -> None:
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # every 8-bit value in [-1, 1]
    for mean, log_scale in [(0.0, -2.0), (0.9, -4.0), (-1.2, -1.0), (0.3, -6.5)]:
        x = levels.view(256, 1, 1, 1)
        log_p = discretized_logistic_log_prob(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        # exact up to the bins below 1e-5 mass, which take the density at their center (Salimans et al.'s fallback)
        assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-5), (mean, log_scale)


def test_bernoulli_log_prob_is_the_summed_log_likelihood() -> None:
    logits = torch.tensor([[[[2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    expected = math.log(torch.sigmoid(torch.tensor(2.0)).item()) + math.log(1 - torch.sigmoid(torch.tensor(-1.0)).item())
    assert bernoulli_log_prob(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_gaussian_kl_is_the_closed_form() -> None:
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.2, -0.7]])
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    z = torch.tensor([[0.1, 0.2]])
    torch.testing.assert_close(log_normal(z, mu, logvar), q.log_prob(z).sum(-1))


def _model(**overrides: object) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig.from_dict({"preset": "debug", **overrides}))


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic", "gaussian"])
def test_importance_weighted_bound_tightens_with_k(likelihood: str) -> None:
    model = _model(likelihood=likelihood).eval()
    images = _images(1).expand(300, -1, -1, -1)  # one image, many draws: averages estimate expectations
    bounds = {k: model.log_likelihood_bounds(images, k=k, generator=torch.Generator().manual_seed(1))
              for k in (1, 50)}
    # E[L_1] is the ELBO (the analytic-KL estimate has the same expectation); E[L_k] rises with k (Burda et al.
    # theorem 1) and L_50 stays above the ELBO
    spread = bounds[1]["log_px_iw"].std().item() / math.sqrt(300)
    assert bounds[1]["log_px_iw"].mean().item() == pytest.approx(bounds[1]["elbo"].mean().item(), abs=4 * spread + 1e-3)
    assert bounds[50]["log_px_iw"].mean() > bounds[1]["log_px_iw"].mean()
    assert bounds[50]["log_px_iw"].mean() > bounds[50]["elbo"].mean()
    bounds = {1: model.log_likelihood_bounds(_images(), k=1, generator=torch.Generator().manual_seed(1))}
    assert bounds[1]["kl_per_dim"].shape == (4,) and bounds[1]["posterior_means"].shape == (6, 4)


def test_kl_warmup_ramps_and_resumes_from_the_saved_clock() -> None:
    model = _model(kl_weight=4.0, kl_warmup_steps=10)
    batch = {"image": _images(4).float() / 127.5 - 1}
    weights = []
    for _ in range(3):
        weights.append(model.loss(batch, "model")["kl_weight"].item())
    assert weights == pytest.approx([0.0, 0.4, 0.8])  # β = 4 * steps_seen / 10
    restored = _model(kl_weight=4.0, kl_warmup_steps=10)
    restored.load_state_dict(model.state_dict())  # the clock is a buffer: part of every checkpoint
    assert restored.kl_weight_now() == pytest.approx(1.2)
    model.eval()
    model.loss(batch, "model")  # validation losses do not advance the warm-up
    assert int(model.steps_seen) == 3


def test_golden_decoder_slice() -> None:
    model = _model().eval()
    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    mean = model.mean_image(model.decoder(z))
    expected = torch.tensor([[-0.086455, -0.061161, -0.105035], [-0.051036, -0.052089, -0.052097],
                             [-0.054278, -0.035745, -0.098486]])
    torch.testing.assert_close(mean[0, 0, :3, :3], expected, atol=1e-6, rtol=0)


class _Data:
    def __init__(self, n: int = 20) -> None:
        self.images = _images(n, seed=2)
        self.labels = torch.arange(n) % 3


def test_sample_modes_shapes_and_content() -> None:
    model = _model().eval()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    prior = model.sample(4, generator=g())
    assert prior.shape == (4, 1, 28, 28)
    colder = model.sample(4, generator=g(), temperature=0.1)
    assert not torch.equal(prior, colder)
    recon = model.sample(3, generator=g(), mode="reconstruct", data=_Data())
    assert recon.shape == (6, 1, 28, 28)
    pick = torch.randperm(20, generator=g())[:3]
    torch.testing.assert_close(recon[:3], _Data().images[pick].float() / 127.5 - 1)  # inputs first, then outputs
    strips = model.sample(2, generator=g(), mode="interpolate", steps=5, data=_Data())
    assert strips.shape == (10, 1, 28, 28)
    assert not torch.equal(strips[0], strips[4])
    drawn = model.sample(4, generator=g(), decode="sample")
    assert set(drawn.unique().tolist()) <= {-1.0, 1.0}  # Bernoulli draws are binary


def test_manifold_and_sample_errors() -> None:
    model2d = _model(latent_dim=2).eval()
    grid = model2d.sample(9, mode="manifold")
    assert grid.shape == (9, 1, 28, 28)
    with pytest.raises(UserError, match="n must be a square"):
        model2d.sample(8, mode="manifold")
    with pytest.raises(UserError, match="model.latent_dim = 4"):
        _model().sample(9, mode="manifold")
    with pytest.raises(UserError, match="needs input images"):
        _model().sample(2, mode="reconstruct")
    with pytest.raises(UserError, match="needs 40 input images"):
        _model().sample(20, mode="interpolate", data=_Data())
    with pytest.raises(UserError, match="sample.temperature"):
        _model().sample(2, temperature=0)
    with pytest.raises(UserError, match="unconditional"):
        _model().sample(2, cond=1)
    conditional = _model(num_classes=3).eval()
    assert conditional.sample(2, cond=2).shape == (2, 1, 28, 28)
    with pytest.raises(UserError, match="out of range"):
        conditional.sample(2, cond=3)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(UserError, match="stages"):
        from_dict({"model": {"family": "vae", "image_size": 30}})
    with pytest.raises(UserError, match="kl_weight"):
        from_dict({"model": {"family": "vae", "kl_weight": -1}})


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return struct.unpack(">II", data[16:24])


def test_cli_trains_evaluates_and_samples_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "debug/vae", "--run-dir", str(run), "--set", "train.progress=false",
                 "--set", "train.threads=1"]) == 0
    assert sorted(p.name for p in run.glob("step-*")) == ["step-2", "step-4"]
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--metrics", "elbo,nll", "--iw-samples", "20", "--test-limit", "50",
                 "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"neg-elbo-mnist-mini-test50", "recon-nll-mnist-mini-test50", "kl-mnist-mini-test50",
                            "active-units-mnist-mini-test50", "nll-iw20-mnist-mini-test50",
                            "nll-iw20-stderr-mnist-mini-test50",
                            *(f"kl-dim{j}-mnist-mini-test50" for j in range(4))}
    assert metrics["neg-elbo-mnist-mini-test50"] == pytest.approx(
        metrics["recon-nll-mnist-mini-test50"] + metrics["kl-mnist-mini-test50"], rel=1e-9)
    assert 400 < metrics["nll-iw20-mnist-mini-test50"] < metrics["neg-elbo-mnist-mini-test50"] + 1  # 4 steps in
    # grids: inputs above reconstructions (2 rows of n), one strip of `steps` per row
    assert main(["sample", str(run), "--n", "5", "--set", "sample.mode=reconstruct", "--out",
                 str(tmp_path / "r.png")]) == 0
    assert _png_size(tmp_path / "r.png") == (5 * 30 + 2, 2 * 30 + 2)
    assert main(["sample", str(run), "--n", "3", "--set", "sample.mode=interpolate", "--set", "sample.steps=4",
                 "--out", str(tmp_path / "i.png")]) == 0
    assert _png_size(tmp_path / "i.png") == (4 * 30 + 2, 3 * 30 + 2)
    capsys.readouterr()
    assert main(["sample", str(run), "--set", "sample.mode=manifold", "--n", "9"]) == 2
    assert "model.latent_dim = 4" in capsys.readouterr().err
    assert main(["eval", str(run), "--metrics", "nll", "--iw-samples", "0"]) == 2
    assert "--iw-samples 0 is out of range" in capsys.readouterr().err


def test_likelihood_metrics_refuse_a_model_without_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "gan"
    assert main(["train", "debug/gan", "--run-dir", str(run), "--set", "train.steps=1", "--set",
                 "train.progress=false"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--metrics", "elbo"]) == 2
    assert "apply to models with a likelihood bound (vae); this is a gan model" in capsys.readouterr().err


def test_test_sample_scores_a_seeded_random_subset_and_reports_the_standard_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genforge import sampling
    from genforge.data.build import build_dataset

    run = tmp_path / "run"
    assert main(["train", "debug/vae", "--run-dir", str(run), "--set", "train.progress=false",
                 "--set", "train.threads=1"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--metrics", "nll", "--iw-samples", "4", "--test-sample", "12", "--seed", "3",
                 "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"nll-iw4-mnist-mini-test-rand12s3", "nll-iw4-stderr-mnist-mini-test-rand12s3"}
    # the same images, drawn as documented, scored directly: the mean and its standard error
    pipeline = sampling.load(run)
    test = build_dataset(pipeline.config.data.model_copy(update={"limit": None}), "test")  # as eval reads it
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(3))[:12].sort().values
    bounds = pipeline.module.log_likelihood_bounds(test.images[chosen], None, k=4,
                                                   generator=torch.Generator().manual_seed(3))
    nll = -bounds["log_px_iw"].double()
    assert metrics["nll-iw4-mnist-mini-test-rand12s3"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert metrics["nll-iw4-stderr-mnist-mini-test-rand12s3"] == pytest.approx(float(nll.std() / 12 ** 0.5), rel=1e-6)
    assert chosen.tolist() != list(range(12))  # a random subset, not the first 12
    capsys.readouterr()
    assert main(["eval", str(run), "--metrics", "nll", "--test-sample", "5", "--test-limit", "5"]) == 2
    err = capsys.readouterr().err
    assert "--test-limit and --test-sample both choose the held-out examples; give one of them" in err
    assert main(["eval", str(run), "--metrics", "nll", "--test-sample", str(len(test) + 1)]) == 2
    assert f"--test-sample {len(test) + 1} exceeds the {len(test)} held-out examples" in capsys.readouterr().err
    assert main(["eval", str(run), "--metrics", "nll", "--test-sample", "0"]) == 2
    assert "--test-sample 0 is out of range" in capsys.readouterr().err
