"""Variational autoencoders for images: the VAE, the β-VAE and the class-conditional VAE, in one file.

The model (Kingma & Welling 2014, arXiv:1312.6114): an encoder q(z|x) = N(μ(x), diag σ²(x)), a standard normal
prior p(z) = N(0, I) and a decoder p(x|z). Training maximises the evidence lower bound, per image

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))                                  (K&W 2014, eq. 3)

with one reparameterized sample z = μ + σ·ε (eq. 4) for the first term, the Gaussian KL in closed form for the second
(appendix B: KL = -½ Σ_j (1 + log σ_j² - μ_j² - σ_j²)), both summed over pixels and latent dimensions and averaged
over the batch. `kl_weight` is the β of the β-VAE (Higgins et al. 2017): loss = -(log p(x|z) - β·KL). It weighs the
KL term of one image; it is not a data-set-size factor (some code multiplies the KL by batch/N instead, which is a
different objective). `kl_warmup_steps` ramps β linearly from 0 (Bowman et al. 2016; Sønderby et al. 2016).

Decoders (`likelihood`):
    "bernoulli"  p(x|z) = Π Bernoulli(x_i; sigmoid(logit_i)) on binary pixels; with `binarize: dynamic` each training
                 image is binarized anew from its gray levels every time it is seen (the setting of the likelihood
                 literature: Burda et al. 2016, pythae); `binarize: none` uses the gray levels as soft targets
                 (pytorch/examples vae/main.py)
    "logistic"   discretized logistic over the 256 pixel levels (Salimans et al. 2017, PixelCNN++ eq. 2): a true
                 probability of 8-bit images, so the NLL is comparable across models
    "gaussian"   N(x; μ(z), σ²) with one learned σ for all pixels (σ-VAE, Rybkin et al. 2021); a density, not a
                 probability: its "NLL" is in nats of density and only comparable to other Gaussian decoders
Class conditioning (Sohn et al. 2015): the encoder sees the label with the image and the decoder with z.

`log_likelihood_bounds` gives the evaluation numbers: the test ELBO, the importance-weighted bound on log p(x) with k
samples (Burda et al. 2016, eq. 8: log (1/k) Σ p(x, z_i)/q(z_i|x)), the KL per latent dimension and the active units
(Burda et al. 2016, sec. 5.3: Cov_x(E_q[z_u]) > 0.01). `genforge eval --metrics elbo,nll` reports them.

Sampling (`sample.mode`): prior samples at a temperature, reconstructions (inputs above outputs), interpolation strips
between pairs of test images, and the decoded manifold of a 2-D latent (K&W 2014, fig. 4).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from genforge.config import ModelSection, SampleOptions
from genforge.errors import UserError
from genforge.models._draws import draw_rows, draw_rows_like
from genforge.models._layers import check_image_data, class_ids, gaussian_kl, image_size_problems, importance_weighted


class VAEConfig(ModelSection):
    family: Literal["vae"] = "vae"
    image_size: int = Field(default=28, ge=8, le=128)  # height = width of the images; must match the data
    channels: Literal[1, 3] = 1  # image channels; must match the data
    num_classes: int = Field(default=0, ge=0)  # > 0: class-conditional encoder and decoder (CVAE)
    embed_dim: int = Field(default=16, ge=1)  # size of the label embedding (conditional only)
    latent_dim: int = Field(default=32, ge=1)  # size of z; 2 makes the decoded manifold drawable
    arch: Literal["conv", "mlp"] = "conv"  # conv: stride-2 conv stacks; mlp: one hidden layer each way
    #                                        (pytorch/examples vae/main.py: mlp, hidden 400, latent 20)
    width: int = Field(default=32, ge=1)  # conv: channels of the first encoder stage (each next stage doubles)
    stages: int = Field(default=2, ge=1, le=5)  # conv: stride-2 stages (28 -> 14 -> 7 with 2)
    hidden: int = Field(default=512, ge=1)  # fully connected layer between the conv grid and z (mlp: its width)
    likelihood: Literal["bernoulli", "logistic", "gaussian"] = "bernoulli"  # decoder p(x|z), see module docstring
    binarize: Literal["dynamic", "none"] = "dynamic"  # bernoulli: binarize images by sampling each pixel from its
    #                                                   gray level (dynamic), or use gray levels as soft targets
    kl_weight: float = Field(default=1.0, ge=0)  # β: weight of one image's KL term against its reconstruction
    #                                              log-likelihood (1 = the ELBO; β-VAE: > 1); not a dataset factor
    kl_warmup_steps: int = Field(default=0, ge=0)  # ramp the KL weight linearly from 0 to kl_weight over these steps

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "debug": {"latent_dim": 4, "width": 4, "hidden": 16, "embed_dim": 4},
        "vae": {},
        "mlp": {"arch": "mlp", "hidden": 400, "latent_dim": 20},  # the pytorch/examples model
    }

    @model_validator(mode="after")
    def _check_sizes(self) -> "VAEConfig":
        if self.arch == "conv" and self.image_size % (2**self.stages):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**stages = {2 ** self.stages}; "
                             f"pick another model.stages or model.image_size")
        return self

    def check_run(self, run: Any) -> list[str]:
        return image_size_problems(run, self.image_size, self.channels)

    def adapt_to_data(self, dataset: Any) -> "VAEConfig":
        check_image_data(dataset, self.channels, self.image_size, self.num_classes)
        return self


class VAESampleOptions(SampleOptions):
    """The VAE's keys of the `sample:` section."""

    mode: Literal["prior", "reconstruct", "interpolate", "manifold"] = "prior"  # prior: n samples of p(z);
    #     reconstruct: n test images above their reconstructions; interpolate: n strips between pairs of test images;
    #     manifold: the decoder over a sqrt(n) x sqrt(n) grid of a 2-D latent
    temperature: float = Field(default=1.0, gt=0, le=10)  # prior: z ~ N(0, temperature² I)
    decode: Literal["mean", "sample"] = "mean"  # show the decoder's mean image, or a draw from p(x|z)
    steps: int = Field(default=10, ge=2, le=64)  # interpolate: images per strip, both ends included
    split: str = "test"  # reconstruct / interpolate: the data split the input images come from

    @model_validator(mode="after")
    def _check_split(self) -> "VAESampleOptions":
        if not self.split:
            raise ValueError("sample.split must name a data split, e.g. test")
        return self

    def data_split(self) -> str | None:
        """Reconstructions and interpolations start from real images of `split` of the run's data set."""
        return self.split if self.mode in ("reconstruct", "interpolate") else None

    def grid_columns(self, count: int, nrow: int | None) -> int | None:
        if self.mode == "reconstruct":
            return max(1, count // 2)  # row 1: the inputs, row 2: their reconstructions
        if self.mode == "interpolate":
            return self.steps  # one strip per row
        if self.mode == "manifold":
            return math.isqrt(count)
        return nrow


# --------------------------------------------------------------------------------------------------------------
# Encoder q(z|x) and decoder p(x|z)


class Encoder(nn.Module):
    """(B, C, H, W) in [-1, 1] [+ labels (B,)] -> μ, log σ² (B, latent_dim) each."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.label_embed = nn.Embedding(cfg.num_classes, cfg.embed_dim) if cfg.num_classes else None
        layers: list[nn.Module] = []
        if cfg.arch == "conv":
            c_in = cfg.channels
            for i in range(cfg.stages):
                c_out = cfg.width * 2**i
                layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.ReLU()]
                c_in = c_out
            features = c_in * (cfg.image_size // 2**cfg.stages) ** 2
        else:
            features = cfg.channels * cfg.image_size**2
        self.body = nn.Sequential(*layers, nn.Flatten())
        label_dim = cfg.embed_dim if cfg.num_classes else 0
        self.hidden = nn.Sequential(nn.Linear(features + label_dim, cfg.hidden), nn.ReLU())
        self.to_stats = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.body(x)  # (B, F)
        if self.label_embed is not None:
            h = torch.cat([h, self.label_embed(labels)], dim=1)
        mu, logvar = self.to_stats(self.hidden(h)).chunk(2, dim=1)  # (B, D) each
        return mu, logvar


class Decoder(nn.Module):
    """z (B, latent_dim) [+ labels (B,)] -> the parameters of p(x|z): (B, P, H, W) with P = C (Bernoulli logits or
    Gaussian means) or 2C (logistic means and log-scales)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.label_embed = nn.Embedding(cfg.num_classes, cfg.embed_dim) if cfg.num_classes else None
        out_channels = cfg.channels * (2 if cfg.likelihood == "logistic" else 1)
        in_dim = cfg.latent_dim + (cfg.embed_dim if cfg.num_classes else 0)
        self.out_shape = (out_channels, cfg.image_size, cfg.image_size)
        if cfg.arch == "conv":
            self.s0 = cfg.image_size // 2**cfg.stages
            self.c0 = cfg.width * 2 ** (cfg.stages - 1)
            layers: list[nn.Module] = []
            c_in = self.c0
            for i in reversed(range(cfg.stages)):  # mirror of the encoder: 2x upsampling transposed convs
                c_out = cfg.width * 2 ** (i - 1) if i else out_channels
                layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1))
                if i:
                    layers.append(nn.ReLU())
                c_in = c_out
            self.project = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.ReLU(),
                                         nn.Linear(cfg.hidden, self.c0 * self.s0**2), nn.ReLU())
            self.body = nn.Sequential(*layers)
        else:
            self.project = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.ReLU(),
                                         nn.Linear(cfg.hidden, math.prod(self.out_shape)))
            self.body = nn.Identity()
        self.conv = cfg.arch == "conv"
        # σ-VAE: one learned log σ of the Gaussian decoder, shared by all pixels (Rybkin et al. 2021)
        self.log_sigma = nn.Parameter(torch.zeros(())) if cfg.likelihood == "gaussian" else None

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.label_embed is not None:
            z = torch.cat([z, self.label_embed(labels)], dim=1)
        h = self.project(z)
        if self.conv:
            return self.body(h.view(-1, self.c0, self.s0, self.s0))  # (B, P, H, W)
        return h.view(-1, *self.out_shape)


# --------------------------------------------------------------------------------------------------------------
# Decoder likelihoods: log p(x|z) per image, summed over pixels


def bernoulli_log_prob(logits: Tensor, target: Tensor) -> Tensor:
    """Σ_pixels [t log σ(l) + (1 - t) log(1 - σ(l))] per image; target in [0, 1] (B, C, H, W) -> (B,)."""
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Σ_pixels log P(x) for 8-bit pixels x in [-1, 1] under a logistic(mean, scale) discretized into 256 bins of
    width 2/255, the outer bins extended to ±∞ (Salimans et al. 2017, eq. 2). (B, C, H, W) -> (B,)."""
    log_scale = log_scale.clamp(min=-7.0)
    centered = x - mean
    inv_scale = torch.exp(-log_scale)
    plus = inv_scale * (centered + 1.0 / 255)  # the bin's upper edge in standard units
    minus = inv_scale * (centered - 1.0 / 255)  # its lower edge
    log_cdf_plus = plus - F.softplus(plus)  # log σ(plus): the lowest bin (x = -1) takes all mass below its edge
    log_one_minus_cdf_minus = -F.softplus(minus)  # log(1 - σ(minus)): the highest bin (x = 1) all mass above
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    middle = inv_scale * centered
    # where the bin mass underflows, the density at the bin center times the bin width (2/255)
    log_pdf_mid = middle - log_scale - 2.0 * F.softplus(middle) + math.log(2.0 / 255)
    log_mass = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    log_prob = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mass))
    return log_prob.flatten(1).sum(1)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_sigma: Tensor) -> Tensor:
    """Σ_pixels log N(x; mean, σ²) (a density) per image, (B, C, H, W) -> (B,)."""
    log_density = -0.5 * ((x - mean) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
    return log_density.flatten(1).sum(1)


# --------------------------------------------------------------------------------------------------------------
# The model


class VAE(nn.Module):
    Config = VAEConfig
    SampleOptions = VAESampleOptions
    output_kind: ClassVar[Literal["image"]] = "image"
    conditioning: ClassVar[Literal["class"]] = "class"  # `cond` of sample(): class ids (--class)
    ema_modules: ClassVar[tuple[str, ...]] = ("encoder", "decoder")

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)  # each has its own label embedding, so EMA covers everything sampling uses
        self.decoder = Decoder(config)
        # training losses computed so far: the KL warm-up's clock, saved with the weights so a resumed run continues
        # the ramp exactly
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.parameters())}

    def kl_weight_now(self) -> float:
        """β at this point of training: kl_weight, ramped linearly over the first kl_warmup_steps steps."""
        cfg = self.config
        if not cfg.kl_warmup_steps:
            return cfg.kl_weight
        return cfg.kl_weight * min(1.0, float(self.steps_seen) / cfg.kl_warmup_steps)

    # -- the pieces of the ELBO --------------------------------------------------------------------------------

    def _labels(self, labels: Tensor | None) -> Tensor | None:
        """The labels a conditional model needs (None for an unconditional one)."""
        if not self.config.num_classes:
            return None
        if labels is None:
            raise UserError("model.num_classes > 0 needs a labelled dataset; this data has no labels")
        return labels

    def target(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """What the decoder models for images in [-1, 1]: binary pixels drawn from the gray levels (dynamic
        binarization), gray levels in [0, 1] (Bernoulli without binarization), or the images themselves."""
        if self.config.likelihood != "bernoulli":
            return images
        gray = (images + 1) / 2
        if self.config.binarize == "dynamic":
            return draw_rows_like(lambda p: torch.bernoulli(p, generator=generator), gray)
        return gray

    def log_px_given_z(self, params: Tensor, target: Tensor) -> Tensor:
        """log p(x|z) per image for the decoder's output `params` (B, P, H, W) -> (B,)."""
        cfg = self.config
        if cfg.likelihood == "bernoulli":
            return bernoulli_log_prob(params, target)
        if cfg.likelihood == "logistic":
            mean, log_scale = params.chunk(2, dim=1)
            return discretized_logistic_log_prob(target, mean, log_scale)
        assert self.decoder.log_sigma is not None
        return gaussian_log_prob(target, params, self.decoder.log_sigma)

    def mean_image(self, params: Tensor) -> Tensor:
        """The decoder's mean image in [-1, 1]."""
        cfg = self.config
        if cfg.likelihood == "bernoulli":
            return torch.sigmoid(params) * 2 - 1
        mean = params.chunk(2, dim=1)[0] if cfg.likelihood == "logistic" else params
        return mean.clamp(-1, 1)

    def draw_image(self, params: Tensor, generator: torch.Generator | None) -> Tensor:
        """One draw x ~ p(x|z) in [-1, 1]."""
        cfg = self.config
        if cfg.likelihood == "bernoulli":
            return torch.bernoulli(torch.sigmoid(params), generator=generator) * 2 - 1
        if cfg.likelihood == "logistic":
            mean, log_scale = params.chunk(2, dim=1)
            u = torch.rand(mean.shape, generator=generator, device=mean.device).clamp(1e-5, 1 - 1e-5)
            x = mean + torch.exp(log_scale.clamp(min=-7.0)) * (torch.log(u) - torch.log1p(-u))  # inverse logistic CDF
            return (torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1)  # onto the 256 pixel levels
        assert self.decoder.log_sigma is not None
        noise = torch.randn(params.shape, generator=generator, device=params.device)
        return (params + self.decoder.log_sigma.exp() * noise).clamp(-1, 1)

    # -- training ----------------------------------------------------------------------------------------------

    def loss(self, batch: dict[str, Tensor], group: str) -> dict[str, Tensor]:
        if group != "model":
            raise ValueError(f"unknown param group {group!r}")
        images = batch["image"]  # (B, C, H, W) in [-1, 1]
        labels = self._labels(batch.get("label"))
        mu, logvar = self.encoder(images, labels)  # (B, D) each
        eps = draw_rows(lambda m: torch.randn(m, *mu.shape[1:], device=mu.device, dtype=mu.dtype), mu.shape[0])
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterization (K&W 2014, eq. 4)
        log_px = self.log_px_given_z(self.decoder(z, labels), self.target(images))  # (B,)
        kl = gaussian_kl(mu, logvar).sum(1)  # (B,)
        beta = self.kl_weight_now()
        if self.training:
            self.steps_seen += 1
        return {
            "loss": -(log_px - beta * kl).mean(),  # -(log p(x|z) - β KL), averaged over the batch
            "recon_nll": -log_px.detach().mean(),
            "kl": kl.detach().mean(),
            "neg_elbo": (kl - log_px).detach().mean(),  # with β = 1, whatever the training β
            "kl_weight": torch.tensor(beta),
        }

    # -- evaluation --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def log_likelihood_bounds(self, images: Tensor, labels: Tensor | None = None, *, k: int = 5000,
                              batch_size: int = 64, chunk: int = 500,
                              generator: torch.Generator | None = None) -> dict[str, Any]:
        """Per-image bounds on log p(x) for uint8 images (N, C, H, W), binarized once with `generator` when the
        decoder is a dynamically binarized Bernoulli: {"elbo", "log_px_iw" (k samples), "recon_log_px", "kl"}
        (each (N,) float64 nats) and "kl_per_dim" (D,), "posterior_means" (N, D)."""
        if k < 1:
            raise UserError(f"importance samples k = {k}: need at least 1")
        device = next(self.parameters()).device
        out: dict[str, list[Tensor]] = {"elbo": [], "log_px_iw": [], "recon_log_px": [], "kl": [], "kl_dims": [],
                                        "mu": []}
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float().div(127.5).sub(1.0)  # (B, C, H, W)
            y = self._labels(None if labels is None else labels[start : start + batch_size].to(device))
            target = self.target(x, generator)
            mu, logvar = self.encoder(x, y)  # (B, D)
            kl_dims = gaussian_kl(mu, logvar)  # (B, D)

            def log_px(z: Tensor) -> Tensor:  # (kc, B, D) -> (kc, B)
                kc = z.shape[0]
                y_k = None if y is None else y.expand(kc, *y.shape).flatten(0, 1)
                params = self.decoder(z.flatten(0, 1), y_k)  # (kc*B, P, H, W)
                return self.log_px_given_z(params, target.expand(kc, *target.shape).flatten(0, 1)).view(kc, -1)

            # the ELBO with one sample z ~ q(z|x), and log p(x) >= log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x)
            iw, recon = importance_weighted(mu, logvar, k, chunk, generator, log_px)
            out["log_px_iw"].append(iw)
            out["recon_log_px"].append(recon)
            out["kl"].append(kl_dims.sum(1).double())
            out["elbo"].append(recon - kl_dims.sum(1).double())
            out["kl_dims"].append(kl_dims.double())
            out["mu"].append(mu.double())
        joined = {key: torch.cat(values).cpu() for key, values in out.items()}
        return {"elbo": joined["elbo"], "log_px_iw": joined["log_px_iw"], "recon_log_px": joined["recon_log_px"],
                "kl": joined["kl"], "kl_per_dim": joined["kl_dims"].mean(0), "posterior_means": joined["mu"]}

    # -- sampling ----------------------------------------------------------------------------------------------

    def _decode(self, z: Tensor, labels: Tensor | None, opts: VAESampleOptions,
                generator: torch.Generator | None) -> Tensor:
        params = self.decoder(z, self._labels(labels))
        image = self.mean_image(params) if opts.decode == "mean" else self.draw_image(params, generator)
        return image.float().clamp(-1, 1)

    @torch.no_grad()
    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None,
               data: Any = None, **options: Any) -> Tensor:
        """Images in [-1, 1] by `sample.mode`: prior -> n images; reconstruct -> 2n (n inputs, then their
        reconstructions from the posterior mean); interpolate -> n strips of `steps` images between random pairs of
        the input images, decoded along the straight line between their posterior means; manifold -> n images (n a
        square) decoded from a grid over the 2-D latent at the normal quantiles 0.05 .. 0.95 (K&W 2014, fig. 4).
        `data`: the data set (its uint8 `images` (N, C, H, W) and `labels`) reconstruct and interpolate start from;
        the pipeline passes the split `sample.split` of the run's data set. `cond`: class ids for conditional models (prior and manifold; the inputs
        keep their own labels)."""
        opts = VAESampleOptions.parse(options)
        cfg = self.config
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            if opts.mode == "prior":
                labels = class_ids(n, cond, cfg.num_classes, device, "VAE")
                z = torch.randn(n, cfg.latent_dim, generator=generator, device=device) * opts.temperature
                return self._decode(z, labels, opts, generator)
            if opts.mode == "manifold":
                return self._manifold(n, cond, opts, generator, device)
            return self._from_inputs(n, opts, generator, device, data)
        finally:
            self.train(was_training)

    def _manifold(self, n: int, cond: Any, opts: VAESampleOptions, generator: torch.Generator | None,
                  device: torch.device) -> Tensor:
        side = math.isqrt(n)
        if self.config.latent_dim != 2:
            raise UserError(f"sample.mode = manifold draws a 2-D latent; this model has model.latent_dim = "
                            f"{self.config.latent_dim} (train one with --set model.latent_dim=2)")
        if side * side != n:
            raise UserError(f"sample.mode = manifold makes a square grid: --n must be a square (e.g. {side * side} "
                            f"or {(side + 1) ** 2}), got {n}")
        quantiles = torch.linspace(0.05, 0.95, side, device=device)
        values = torch.special.ndtri(quantiles)  # the inverse normal CDF: equal prior mass between grid lines
        grid_y, grid_x = torch.meshgrid(values.flip(0), values, indexing="ij")  # rows top to bottom
        z = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)  # (n, 2)
        labels = class_ids(n, cond, self.config.num_classes, device, "VAE")
        return self._decode(z, labels, opts, generator)

    def _from_inputs(self, n: int, opts: VAESampleOptions, generator: torch.Generator | None, device: torch.device,
                     data: Any) -> Tensor:
        if data is None:
            raise UserError(f"sample.mode = {opts.mode} needs input images: sample through genforge.load(...) or "
                            "`genforge sample`, which read them from the run's data set, or pass data=")
        images, labels = data.images, data.labels
        pairs = 2 if opts.mode == "interpolate" else 1
        if len(images) < n * pairs:
            raise UserError(f"sample.mode = {opts.mode} with --n {n} needs {n * pairs} input images; the split "
                            f"{opts.split!r} has {len(images)}; ask for fewer")
        pick = torch.randperm(len(images), generator=generator, device=generator.device if generator else None)
        pick = pick.cpu()[: n * pairs]
        x = images[pick].to(device).float().div(127.5).sub(1.0)  # (n*pairs, C, H, W)
        y = labels[pick].to(device) if labels is not None and self.config.num_classes else None
        if self.config.num_classes and y is None:
            raise UserError("this conditional VAE needs labelled input images; the data split has no labels")
        mu, _ = self.encoder(x, self._labels(y))  # posterior means
        if opts.mode == "reconstruct":
            return torch.cat([x, self._decode(mu, y, opts, generator)])  # inputs, then outputs
        t = torch.linspace(0, 1, opts.steps, device=device).view(1, -1, 1)  # (1, S, 1)
        start, end = mu[0::2].unsqueeze(1), mu[1::2].unsqueeze(1)  # (n, 1, D)
        path = (start + t * (end - start)).flatten(0, 1)  # (n*S, D), strip after strip
        strip_labels = None if y is None else y[0::2].repeat_interleave(opts.steps)  # each strip: its start's class
        return self._decode(path, strip_labels, opts, generator)
