"""Generative adversarial networks: DCGAN-family generators and discriminators, three losses, class conditioning.

One file holds the config, the networks and the losses (STYLE.md "one family, one file"):

- generators:     "dcgan"   transposed-conv stack (Radford et al. 2016, arXiv:1511.06434)
                  "upconv"  nearest upsample + 3x3 conv (the layout of PyTorch-GAN's implementations/dcgan)
                  "mlp"     fully connected (Goodfellow et al. 2014; PyTorch-GAN's implementations/gan)
- discriminators: "dcgan"   4x4 stride-2 convs, LeakyReLU(0.2)
                  "strided" 3x3 stride-2 convs with Dropout2d (PyTorch-GAN's dcgan discriminator)
                  "mlp"     fully connected
- losses:         "ns"      non-saturating (Goodfellow 2014, sec. 3): D minimises BCE, G maximises log D(G(z))
                  "wgan-gp" Wasserstein loss + gradient penalty on per-sample gradient norms (Gulrajani 2017, eq. 3)
                  "hinge"   hinge loss (Lim & Ye 2017; Miyato 2018), usually with spectral normalization
- conditioning:   the generator concatenates a learned label embedding to z; the discriminator adds the projection
                  term <embed(y), h> to its output (Miyato & Koyama 2018, eq. 3).

The discriminator returns raw logits / critic values; the losses apply the sigmoid where one is needed, in the
numerically stable softplus form.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genforge.config import ModelSection, SampleOptions
from genforge.errors import UserError
from genforge.models._draws import draw_rows
from genforge.models._layers import check_image_data, class_ids, image_size_problems


class GANConfig(ModelSection):
    family: Literal["gan"] = "gan"
    image_size: int = Field(default=28, ge=8, le=256)  # output height = width; must match the data
    channels: Literal[1, 3] = 1  # output channels; must match the data
    z_dim: int = Field(default=100, ge=1)  # latent size
    num_classes: int = Field(default=0, ge=0)  # > 0: class-conditional G and projection D; must match the data
    embed_dim: int = Field(default=32, ge=1)  # size of the generator's label embedding (conditional only)
    generator: Literal["dcgan", "upconv", "mlp"] = "dcgan"  # generator architecture (see module docstring)
    discriminator: Literal["dcgan", "strided", "mlp"] = "dcgan"  # discriminator architecture
    g_width: int = Field(default=64, ge=1)  # conv G: channels of the last stage (earlier stages double it)
    d_width: int = Field(default=64, ge=1)  # conv D: channels of the first stage (later stages double it)
    g_stages: int = Field(default=2, ge=1, le=6)  # conv G: number of 2x upsampling stages
    d_stages: int = Field(default=2, ge=1, le=6)  # conv D: number of stride-2 stages
    g_hidden: list[int] = [128, 256, 512, 1024]  # mlp G: hidden layer sizes
    d_hidden: list[int] = [512, 256]  # mlp D: hidden layer sizes
    bn_eps: float = Field(default=1e-5, gt=0)  # eps of the BatchNorms inside G/D stages (PyTorch-GAN passes 0.8)
    d_norm: Literal["batch", "layer", "none"] = "batch"  # D normalization; use layer/none with wgan-gp
    d_dropout: float = Field(default=0.0, ge=0, lt=1)  # dropout after each D stage (PyTorch-GAN dcgan: 0.25)
    spectral_norm: bool = False  # spectral normalization on every D weight (Miyato et al. 2018)
    loss: Literal["ns", "wgan-gp", "hinge"] = "ns"  # adversarial loss
    gp_weight: float = Field(default=10.0, ge=0)  # lambda of the gradient penalty (wgan-gp only)
    n_critic: int = Field(default=1, ge=1)  # discriminator steps per generator step
    reuse_fakes: bool = False  # G steps first and D trains on the fakes G just made (as PyTorch-GAN does): one G
    #                            forward pass per step instead of two; needs n_critic 1
    init: Literal["dcgan", "default"] = "dcgan"  # dcgan: conv/linear weights ~ N(0, 0.02), BN gamma ~ N(1, 0.02)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "debug": {"z_dim": 8, "g_width": 4, "d_width": 4, "embed_dim": 4, "g_hidden": [16, 16], "d_hidden": [16]},
        "dcgan": {},
    }

    @model_validator(mode="after")
    def _check_sizes(self) -> "GANConfig":
        if self.generator != "mlp" and self.image_size % (2**self.g_stages):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**g_stages = {2 ** self.g_stages}; "
                f"pick another model.g_stages or model.image_size"
            )
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            # Batch norm makes each critic output depend on the whole batch, which breaks the per-sample
            # gradient penalty (Gulrajani et al. 2017, sec. 4).
            raise ValueError("loss wgan-gp needs model.d_norm 'layer' or 'none' (batch norm breaks the penalty)")
        if self.reuse_fakes and self.n_critic != 1:
            raise ValueError("model.reuse_fakes needs model.n_critic 1: extra critic steps would see stale fakes")
        return self

    def check_run(self, run: Any) -> list[str]:
        """Cross-section checks against the data config, reported with the config's other problems."""
        return image_size_problems(run, self.image_size, self.channels)

    def adapt_to_data(self, dataset: Any) -> "GANConfig":
        """The data the trainer loaded must have the shape and classes this config builds the networks for."""
        check_image_data(dataset, self.channels, self.image_size, self.num_classes)
        return self


class GANSampleOptions(SampleOptions):
    """The GAN's keys of the `sample:` section."""

    bn_stats: Literal["running", "batch"] = "running"  # BatchNorm in G when sampling: running statistics (eval
    #        mode), or each batch's own statistics, as PyTorch-GAN's and the original DCGAN scripts sample (train
    #        mode, running statistics untouched); batch mode generates in chunks of bn_batch
    bn_batch: int = Field(default=64, ge=2)  # chunk size of bn_stats = batch (PyTorch-GAN: its batch size, 64)

    def chunk_size(self, preferred: int) -> int:
        """With batch statistics, whole chunks of bn_batch images, so that evaluating in pieces normalizes exactly
        the batches one big call would."""
        return preferred if self.bn_stats == "running" else max(1, preferred // self.bn_batch) * self.bn_batch


# --------------------------------------------------------------------------------------------------------------
# Generators: (B, z_dim) [+ labels] -> (B, C, H, W) in [-1, 1]


class UpsampleConv2d(nn.Conv2d):
    """Nearest 2x upsampling followed by a 3x3 conv (padding 1), computed as one 4x4 stride-2 transposed conv:
    the same function and the same parameters as `nn.Upsample(2) + nn.Conv2d(c_in, c_out, 3, 1, 1)`, with 4
    instead of 9 multiply-adds per output pixel and input channel, and no upsampled image in memory.

    Output row 2i+a sees upsampled rows 2i+a-1 .. 2i+a+1, i.e. input rows (i-1, i, i) for a = 0 and (i, i, i+1)
    for a = 1. A transposed conv (stride 2, padding 1) gives output row 2i+a the taps K[a+1] on input row i, K[a+3]
    on row i-1 and K[a-1] on row i+1, so the 1-D kernel is K = (w2, w1+w2, w0+w1, w0) = R @ w with the 4x3 matrix
    R below; in 2-D, K = R w R^T for each (out, in) channel pair.
    """

    # rows of R: which 3x3 kernel rows each of the 4 transposed-conv taps sums
    R: ClassVar[Tensor] = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, kernel_size=3, stride=1, padding=1)

    def transposed_kernel(self) -> Tensor:
        r = self.R.to(self.weight)
        return torch.einsum("yr,oirc,xc->ioyx", r, self.weight, r)  # (c_in, c_out, 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.transposed_kernel(), self.bias, stride=2, padding=1)  # (B, O, 2H, 2W)


class ConvGenerator(nn.Module):
    """Project z to (C0, s0, s0), then `stages` 2x upsampling stages, then a 3x3 conv to the image channels.

    "dcgan" upsamples with 4x4 stride-2 transposed convs and ReLU; "upconv" with nearest upsampling followed by a
    3x3 conv and LeakyReLU(0.2) (which avoids checkerboard artifacts; Odena et al. 2016).
    """

    def __init__(self, cfg: GANConfig, in_dim: int):
        super().__init__()
        self.s0 = cfg.image_size // 2**cfg.g_stages
        if cfg.generator == "dcgan":
            widths = [cfg.g_width * 2 ** (cfg.g_stages - i) for i in range(cfg.g_stages + 1)]  # e.g. 256, 128, 64
        else:  # upconv: PyTorch-GAN keeps the width of the projection in the first stage (128, 128, 64)
            widths = [cfg.g_width * 2 ** max(cfg.g_stages - 1 - i, 0) for i in range(cfg.g_stages)]
            widths = [widths[0]] + widths
        self.c0 = widths[0]
        self.project = nn.Linear(in_dim, self.c0 * self.s0 * self.s0)
        self.project_norm = nn.BatchNorm2d(self.c0)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            if cfg.generator == "dcgan":
                layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out, eps=cfg.bn_eps)]
                layers += [nn.ReLU()]
            else:
                layers += [UpsampleConv2d(c_in, c_out)]  # = nn.Upsample(2, "nearest") + nn.Conv2d(c_in, c_out, 3, 1, 1)
                layers += [nn.BatchNorm2d(c_out, eps=cfg.bn_eps), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(widths[-1], cfg.channels, 3, 1, 1), nn.Tanh()]
        self.stages = nn.Sequential(*layers)
        self.relu_after_projection = cfg.generator == "dcgan"

    def forward(self, h: Tensor) -> Tensor:
        x = self.project(h).view(-1, self.c0, self.s0, self.s0)  # (B, C0, s0, s0)
        x = self.project_norm(x)
        if self.relu_after_projection:
            x = F.relu(x)
        return self.stages(x)  # (B, C, H, W)


class MLPGenerator(nn.Module):
    """Linear + BatchNorm + LeakyReLU(0.2) blocks (no norm on the first), then Linear + Tanh to the image."""

    def __init__(self, cfg: GANConfig, in_dim: int):
        super().__init__()
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)
        layers: list[nn.Module] = []
        for i, width in enumerate(cfg.g_hidden):
            layers.append(nn.Linear(in_dim, width))
            if i > 0:
                layers.append(nn.BatchNorm1d(width, eps=cfg.bn_eps))
            layers.append(nn.LeakyReLU(0.2))
            in_dim = width
        layers += [nn.Linear(in_dim, math.prod(self.shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).view(-1, *self.shape)


class Generator(nn.Module):
    """z (B, z_dim) and optional labels (B,) -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.label_embed = nn.Embedding(cfg.num_classes, cfg.embed_dim) if cfg.num_classes else None
        in_dim = cfg.z_dim + (cfg.embed_dim if cfg.num_classes else 0)
        self.body = MLPGenerator(cfg, in_dim) if cfg.generator == "mlp" else ConvGenerator(cfg, in_dim)
        if cfg.init == "dcgan":
            self.apply(_init_dcgan)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.label_embed is not None:
            z = torch.cat([z, self.label_embed(labels)], dim=1)  # (B, z_dim + embed_dim)
        return self.body(z)


# --------------------------------------------------------------------------------------------------------------
# Discriminators: images (B, C, H, W) [+ labels] -> logits (B,)


def _norm2d(kind: str, channels: int, eps: float) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # layer norm over (C, H, W) of each sample
    return nn.Identity()


class ConvDiscriminatorBody(nn.Module):
    """`stages` stride-2 convs, doubling the width each stage, no norm on the first (Radford et al. 2016)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        kernel = 4 if cfg.discriminator == "dcgan" else 3
        layers: list[nn.Module] = []
        c_in = cfg.channels
        for i in range(cfg.d_stages):
            c_out = cfg.d_width * 2**i
            layers.append(nn.Conv2d(c_in, c_out, kernel, 2, 1))
            if cfg.discriminator == "strided":  # PyTorch-GAN order: conv, LeakyReLU, Dropout2d, BN
                layers += [nn.LeakyReLU(0.2), nn.Dropout2d(cfg.d_dropout)]
                if i > 0:
                    layers.append(_norm2d(cfg.d_norm, c_out, cfg.bn_eps))
            else:  # DCGAN order: conv, BN, LeakyReLU
                if i > 0:
                    layers.append(_norm2d(cfg.d_norm, c_out, cfg.bn_eps))
                layers.append(nn.LeakyReLU(0.2))
                if cfg.d_dropout:
                    layers.append(nn.Dropout2d(cfg.d_dropout))
            c_in = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)  # (B, features)


class MLPDiscriminatorBody(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_dim = cfg.channels * cfg.image_size**2
        for width in cfg.d_hidden:
            layers += [nn.Linear(in_dim, width), nn.LeakyReLU(0.2)]
            if cfg.d_dropout:
                layers.append(nn.Dropout(cfg.d_dropout))
            in_dim = width
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class Discriminator(nn.Module):
    """features h = body(x); logit = w.h + b (+ <embed(y), h> for the projection discriminator)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.body = MLPDiscriminatorBody(cfg) if cfg.discriminator == "mlp" else ConvDiscriminatorBody(cfg)
        with torch.no_grad():  # feature size of this body at this resolution
            features = self.body(torch.zeros(2, cfg.channels, cfg.image_size, cfg.image_size)).shape[1]
        self.head = nn.Linear(features, 1)
        self.label_embed = nn.Embedding(cfg.num_classes, features) if cfg.num_classes else None
        if cfg.init == "dcgan":
            self.apply(_init_dcgan)
        if cfg.spectral_norm:  # after init: the parametrization normalizes whatever weight it is given
            for module in list(self.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    _spectral_norm(module)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.body(x)  # (B, F)
        logit = self.head(h).squeeze(1)  # (B,)
        if self.label_embed is not None:
            logit = logit + (self.label_embed(labels) * h).sum(dim=1)  # projection term
        return logit


# --------------------------------------------------------------------------------------------------------------
# The model


def _init_dcgan(module: nn.Module) -> None:
    # Radford et al. 2016, sec. 4: "All weights were initialized from a zero-centered Normal distribution with
    # standard deviation 0.02"; BN scale around 1.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@contextlib.contextmanager
def _batch_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalize with each batch's own statistics and leave their running statistics alone
    (train mode with track_running_stats off); everything else stays as it is."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.train(True)
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.train(training)
            m.track_running_stats = track


class GAN(nn.Module):
    Config = GANConfig
    SampleOptions = GANSampleOptions
    output_kind: ClassVar[Literal["image"]] = "image"
    conditioning: ClassVar[Literal["class"]] = "class"  # `cond` of sample(): class ids (--class)
    ema_modules: ClassVar[tuple[str, ...]] = ("generator",)

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        # n_critic discriminator steps on fresh real batches, then one generator step that reuses the last batch
        # (only for its size and labels), so images/s counts each real image once. With reuse_fakes the generator
        # steps first and the discriminator step reuses its batch and its (detached) fakes.
        if config.reuse_fakes:
            self.train_schedule = [("generator", 1, True), ("discriminator", 1, False)]
        else:
            self.train_schedule = [("discriminator", config.n_critic, True), ("generator", 1, False)]
        self._fakes: Tensor | None = None  # fakes of the last generator step, for reuse_fakes (never saved)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"discriminator": list(self.discriminator.parameters()), "generator": list(self.generator.parameters())}

    # -- losses ------------------------------------------------------------------------------------------------

    def _noise(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.config.z_dim, device=device, generator=generator)

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        if not self.config.num_classes:
            return None
        if "label" not in batch:
            raise UserError("model.num_classes > 0 needs a labelled dataset; this data has no labels")
        return batch["label"]

    def loss(self, batch: dict[str, Tensor], group: str) -> dict[str, Tensor]:
        real = batch["image"]  # (B, C, H, W) in [-1, 1]
        labels = self._labels(batch)
        z = draw_rows(lambda m: self._noise(m, real.device), real.shape[0])  # (B, z_dim), see _draws.py
        if group == "discriminator":
            if self._fakes is not None:  # reuse_fakes: the fakes of this step's generator update
                fake, self._fakes = self._fakes, None
            else:
                with torch.no_grad():
                    fake = self.generator(z, labels)
            fake = fake.to(real.dtype).contiguous(memory_format=_memory_format(real))
            return self._discriminator_loss(real, fake, labels)
        if group == "generator":
            fake = self.generator(z, labels)
            if self.config.reuse_fakes:
                self._fakes = fake.detach()
            d_fake = self.discriminator(fake, labels)
            if self.config.loss == "ns":
                loss = F.softplus(-d_fake).mean()  # -log sigmoid(D(G(z)))
            else:  # wgan-gp and hinge both maximise the critic value of fakes
                loss = -d_fake.mean()
            return {"loss": loss}
        raise ValueError(f"unknown param group {group!r}")

    def _discriminator_loss(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        d_real = self.discriminator(real, labels)  # (B,)
        d_fake = self.discriminator(fake, labels)  # (B,)
        out: dict[str, Tensor] = {"d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
        if self.config.loss == "ns":
            # BCE(sigmoid(d_real), 1) + BCE(sigmoid(d_fake), 0)
            out["loss"] = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        elif self.config.loss == "hinge":
            out["loss"] = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        else:
            gp = self._gradient_penalty(real, fake, labels)
            out["wasserstein"] = (d_real.mean() - d_fake.mean()).detach()
            out["gp"] = gp.detach()
            out["loss"] = d_fake.mean() - d_real.mean() + self.config.gp_weight * gp
        return out

    def _gradient_penalty(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> Tensor:
        # Gulrajani et al. 2017, eq. 3: E[(||grad_x D(x_hat)||_2 - 1)^2], x_hat = eps*x + (1-eps)*x_fake,
        # eps ~ U[0, 1] per sample; the norm is over all pixels and channels of each sample.
        eps = draw_rows(lambda m: torch.rand(m, 1, 1, 1, device=real.device, dtype=real.dtype), real.shape[0])
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        d_hat = self.discriminator(x_hat, labels)
        (grad,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
        norms = grad.flatten(1).norm(2, dim=1)  # (B,)
        return ((norms - 1.0) ** 2).mean()

    # -- sampling ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        """n images (n, C, H, W) in [-1, 1]. `cond`: a class id, a sequence/tensor of n ids, or None (conditional
        models then cycle through the classes 0, 1, ..., so a grid with num_classes columns shows one class per
        column). BatchNorm uses its running statistics (eval mode); options `bn_stats="batch"`, `bn_batch=B`
        normalize each chunk of B images with its own statistics instead (sample.bn_stats), leaving the running
        statistics untouched."""
        opts = GANSampleOptions.parse(options)
        bn_stats, bn_batch = opts.bn_stats, opts.bn_batch
        device = next(self.parameters()).device
        labels = class_ids(n, cond, self.config.num_classes, device, "GAN")
        z = self._noise(n, device, generator)
        was_training = self.generator.training
        self.generator.eval()
        try:
            if bn_stats == "running":
                return self.generator(z, labels).float().clamp(-1, 1)
            if n < 2:
                raise UserError("sample.bn_stats = batch needs at least 2 images per call (batch statistics of one "
                                "image are undefined); ask for more, or use sample.bn_stats=running")
            bounds = list(range(0, n, bn_batch)) + [n]
            if bounds[-1] - bounds[-2] == 1:  # a last chunk of one image joins the chunk before it
                del bounds[-2]
            with _batch_statistics(self.generator):
                chunks = [self.generator(z[a:b], None if labels is None else labels[a:b])
                          for a, b in zip(bounds, bounds[1:])]
            return torch.cat(chunks).float().clamp(-1, 1)
        finally:
            self.generator.train(was_training)


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
