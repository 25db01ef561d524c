"""Denoising diffusion models for images (DDPM, Ho et al. 2020, arXiv:2006.11239) with a small U-Net, ε-, v- or
x0-prediction, linear or cosine noise schedules, and classifier-free guidance.

Training (Ho et al. Algorithm 1): draw t ~ U{0, ..., T-1} and ε ~ N(0, I), make the noisy image

    x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε                                                  (Ho et al. eq. 4)

and regress the network's output on its target with the mean squared error: ε (eq. 14, "ε-prediction") or
v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x0 (Salimans & Ho 2022, arXiv:2202.00512, sec. 4, "v-prediction") or the
clean image x0 itself ("x0-prediction"; Ho et al. sec. 3.2 discuss it, and Chen et al. 2022, "Analog Bits",
arXiv:2208.04202, Algorithm 1, train this way on discrete data). They differ most at low noise: an ε-network must
pull out a noise that is 1% of its input and amplify it 100x (at σ = 0.01 the clean image inherits σ times its ε
error), while an x0-network only has to say what the clean pixel is, e.g. "background: exactly -1".
With `loss_weighting: min-snr` each image's MSE is weighted by min(SNR_t, γ) / SNR_t for ε-prediction,
min(SNR_t, γ) / (SNR_t + 1) for v-prediction and min(SNR_t, γ) for x0-prediction, SNR_t = ᾱ_t / (1 - ᾱ_t): the same
loss in x0 terms for all three (Hang et al. 2023, "Efficient Diffusion
Training via Min-SNR Weighting Strategy", arXiv:2303.09556, eq. 8 and sec. 3.4): the nearly clean timesteps, whose
gradients conflict with the noisy ones', count less, which the paper finds speeds up convergence.

Schedules: "linear" β_t from 1e-4 to 0.02 over T = 1000 steps (Ho et al. sec. 4); "cosine"
ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2), s = 0.008, β_t clipped at 0.999 (Nichol & Dhariwal 2021,
arXiv:2102.09672, eq. 17).

Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598): the class label is replaced by a "null" class with
probability `label_dropout` in training, so one network learns p(x|y) and p(x); sampling mixes the two predictions,
ε̂ = ε(x, ∅) + w · (ε(x, y) - ε(x, ∅)) with the guidance scale w (w = 1: the conditional model alone; the paper's
weight is w - 1). `sample.guidance_interval` guides only the middle noise levels (Kynkäänniemi et al. 2024,
"Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models",
arXiv:2404.07724): guidance at high noise pulls every sample of a class toward the same few modes, and at low
noise it does little. The samplers (`genforge/models/samplers/`, one file each) see only `denoise(x_t, t) -> (ε, x0)`;
the U-Net never knows which sampler drives it.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from genforge.config import ModelSection, SampleOptions
from genforge.errors import UserError
from genforge.models import samplers
from genforge.models._draws import draw_rows
from genforge.models._layers import check_image_data, class_ids, image_size_problems


class DiffusionConfig(ModelSection):
    family: Literal["diffusion"] = "diffusion"
    image_size: int = Field(default=28, ge=8, le=256)  # height = width of the images; must match the data
    channels: Literal[1, 3] = 1  # image channels; must match the data
    num_classes: int = Field(default=0, ge=0)  # > 0: class-conditional U-Net (label embedding + a null class)
    label_dropout: float = Field(default=0.1, ge=0, le=1)  # classifier-free guidance: P(label -> null) in training
    width: int = Field(default=32, ge=4)  # U-Net channels at full resolution
    patch: Literal[1, 2] = 1  # 2: the U-Net works on 2x2 pixel patches (pixel unshuffle in, shuffle out), a
    #                           quarter of the positions at every level for the same channels (cheap on CPUs)
    channel_mult: list[int] = [1, 2, 2]  # channels per resolution level (width x mult); each next level is 2x smaller
    res_blocks: int = Field(default=1, ge=1, le=4)  # residual blocks per level (the decoder has one more)
    attention_levels: list[int] = [2]  # levels (0 = full resolution) with self-attention after each block
    heads: int = Field(default=1, ge=1)  # attention heads
    groups: int = Field(default=8, ge=1)  # GroupNorm groups (must divide every level's channels)
    dropout: float = Field(default=0.0, ge=0, lt=1)  # dropout inside residual blocks (Ho et al.: 0.1 on CIFAR-10)
    timesteps: int = Field(default=1000, ge=2, le=10_000)  # T, the training noise levels
    schedule: Literal["linear", "cosine"] = "linear"  # noise schedule (module docstring)
    prediction: Literal["epsilon", "v", "x0"] = "epsilon"  # what the U-Net predicts (module docstring)
    loss_weighting: Literal["uniform", "min-snr"] = "uniform"  # per-timestep weight of the MSE: uniform = Ho et
    #                                                            al.'s L_simple; min-snr = Hang et al. 2023 (below)
    min_snr_gamma: float = Field(default=5.0, gt=0)  # γ of min-snr: timesteps with SNR above γ are down-weighted

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "debug": {"width": 8, "channel_mult": [1, 2], "attention_levels": [1], "groups": 4, "timesteps": 100},
        "small": {},
    }

    @field_validator("channel_mult")
    @classmethod
    def _mults(cls, value: list[int]) -> list[int]:
        if not value or any(m < 1 for m in value):
            raise ValueError("channel_mult needs at least one level, each multiplier >= 1")
        return value

    @model_validator(mode="after")
    def _check(self) -> "DiffusionConfig":
        levels = len(self.channel_mult)
        if self.image_size % (self.patch * 2 ** (levels - 1)):
            raise ValueError(f"image_size {self.image_size} is not divisible by patch * 2**(levels - 1) = "
                             f"{self.patch * 2 ** (levels - 1)} for {levels} channel_mult levels; drop a level, use "
                             f"model.patch 1 or change model.image_size")
        bad = [lv for lv in self.attention_levels if not 0 <= lv < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range: levels are 0..{levels - 1}")
        for mult in self.channel_mult:
            if (self.width * mult) % self.groups:
                raise ValueError(f"groups {self.groups} does not divide the {self.width * mult} channels of a level")
            if (self.width * mult) % self.heads:
                raise ValueError(f"heads {self.heads} does not divide the {self.width * mult} channels of a level")
        return self

    def check_run(self, run: Any) -> list[str]:
        return image_size_problems(run, self.image_size, self.channels)

    def adapt_to_data(self, dataset: Any) -> "DiffusionConfig":
        check_image_data(dataset, self.channels, self.image_size, self.num_classes)
        return self


class DiffusionSampleOptions(SampleOptions):
    """The diffusion family's keys of the `sample:` section."""

    sampler: Literal["ddpm", "ddim", "dpm++2m"] = "ddim"  # ddpm: ancestral (Ho 2020); ddim: Song 2021 with eta;
    #                                                       dpm++2m: DPM-Solver++(2M) (Lu 2022), for 10-25 steps
    steps: int = Field(default=50, ge=1)  # denoising steps = network evaluations (x2 with guidance); <= the
    #                                       model's training timesteps
    eta: float = Field(default=0.0, ge=0, le=1)  # ddim: 0 deterministic, 1 = DDPM's noise
    variance: Literal["small", "large"] = "small"  # ddpm: each step's noise variance, the posterior's β̃ (small)
    #                                                or the step's β (large), Ho et al. 2020 sec. 3.2; small won on
    #                                                mnist/ddpm: FID-2k 13.89 vs 28.46 at 25 steps (BENCHMARKS.md)
    guidance: float = Field(default=1.0, ge=0, le=50)  # classifier-free guidance scale w; 1 = no guidance
    #                                                    (conditional models only)
    guidance_interval: tuple[float, float] | None = None  # [σ_lo, σ_hi]: guide only the steps whose noise level
    #   σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) lies in (σ_lo, σ_hi], the conditional model alone elsewhere (one network
    #   evaluation instead of two); None = every step. Kynkäänniemi et al. 2024, arXiv:2404.07724
    clip_x0: bool = True  # clip each predicted clean image to [-1, 1] (Ho et al.'s sampler does)
    spacing: Literal["auto", "uniform", "logsnr"] = "auto"  # timesteps evenly spaced in t or in log SNR; auto =
    #                                                        logsnr for dpm++2m (Lu et al. 2022), uniform otherwise

    def timestep_spacing(self) -> str:
        """`spacing` with auto resolved: logsnr for dpm++2m, uniform for the others."""
        if self.spacing != "auto":
            return self.spacing
        return "logsnr" if self.sampler == "dpm++2m" else "uniform"

    @model_validator(mode="after")
    def _options_of_one_sampler(self) -> "DiffusionSampleOptions":
        if self.eta and self.sampler != "ddim":
            raise ValueError(f"sample.eta applies to sampler ddim only; sampler {self.sampler} was chosen "
                             f"(set sample.sampler=ddim or drop sample.eta)")
        if self.variance != "small" and self.sampler != "ddpm":
            raise ValueError(f"sample.variance applies to sampler ddpm only; sampler {self.sampler} was chosen "
                             f"(set sample.sampler=ddpm or drop sample.variance)")
        if self.guidance_interval is not None:
            low, high = self.guidance_interval
            if not 0 <= low < high:
                raise ValueError(f"sample.guidance_interval must be [σ_lo, σ_hi] with 0 <= σ_lo < σ_hi; got "
                                 f"[{low}, {high}] (e.g. --set 'sample.guidance_interval=[0.3, 5]')")
            if self.guidance == 1.0:
                raise ValueError("sample.guidance_interval limits guidance, but sample.guidance is 1 (no guidance); "
                                 "set sample.guidance above 1 or drop sample.guidance_interval")
        return self

    def guidance_at(self, alpha_cumprod: float) -> float:
        """The guidance scale of a step whose ᾱ_t is `alpha_cumprod`: `guidance` inside the interval, else 1."""
        if self.guidance_interval is None:
            return self.guidance
        low, high = self.guidance_interval
        sigma = math.sqrt((1 - alpha_cumprod) / alpha_cumprod)
        return self.guidance if low < sigma <= high else 1.0


# --------------------------------------------------------------------------------------------------------------
# Noise schedules


def make_alphas_cumprod(schedule: str, timesteps: int) -> Tensor:
    """ᾱ_t = Π_{s<=t} (1 - β_s), float64 (T,)."""
    if schedule == "linear":
        # Ho et al. sec. 4: β from 1e-4 to 0.02 for T = 1000; scaled by 1000/T so other T keep the same end points
        # of ᾱ (Nichol & Dhariwal 2021's improved-diffusion does the same)
        scale = 1000 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clamp(max=0.999)
    else:
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # Nichol & Dhariwal eq. 17 and the clip below it
    return torch.cumprod(1 - betas, dim=0)


# --------------------------------------------------------------------------------------------------------------
# The U-Net denoiser: (x_t, t, label) -> prediction (B, C, H, W)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, sec. 3.5; as in Ho et al.'s U-Net), (B,) ->
    (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the time (and class) embedding as a per-channel shift, GroupNorm-SiLU-dropout-conv,
    and a residual connection (1x1 conv where the width changes)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al.'s zero-initialized last conv)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).view(b, 3, self.heads, c // self.heads, h * w)
        # contiguous (B, nh, HW, hs) each: strided views would send the CPU to SDPA's slow math path
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        return x + self.out(y.transpose(2, 3).reshape(b, c, h, w))


class Level(nn.Module):
    """The blocks of one resolution level: residual blocks, each followed by attention on attention levels."""

    def __init__(self, c_ins: list[int], c_out: int, emb_dim: int, cfg: DiffusionConfig, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, c_out, emb_dim, cfg.groups, cfg.dropout) for c in c_ins)
        self.attentions = nn.ModuleList(
            Attention(c_out, cfg.heads, cfg.groups) if attention else nn.Identity() for _ in c_ins)


class UNet(nn.Module):
    """Ho et al.'s U-Net, small: levels of residual blocks at halving resolutions (stride-2 conv down, nearest + conv
    up), self-attention at low resolution, skip connections from every encoder block to the decoder."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.emb_dim = 4 * cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(cfg.width, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim))
        # class cfg.num_classes is the "null" class of classifier-free guidance
        self.label_embed = nn.Embedding(cfg.num_classes + 1, self.emb_dim) if cfg.num_classes else None
        self.patch = cfg.patch
        self.stem = nn.Conv2d(cfg.channels * cfg.patch**2, cfg.width, 3, 1, 1)
        widths = [cfg.width * m for m in cfg.channel_mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [cfg.width]
        c = cfg.width
        for i, w in enumerate(widths):
            level = Level([c] + [w] * (cfg.res_blocks - 1), w, self.emb_dim, cfg, i in cfg.attention_levels)
            self.down.append(level)
            skips += [w] * cfg.res_blocks
            c = w
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, 2, 1))
            if not last:
                skips.append(c)
        self.mid1 = ResBlock(c, c, self.emb_dim, cfg.groups, cfg.dropout)
        self.mid_attention = Attention(c, cfg.heads, cfg.groups)
        self.mid2 = ResBlock(c, c, self.emb_dim, cfg.groups, cfg.dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            c_ins = []
            for _ in range(cfg.res_blocks + 1):
                c_ins.append(c + skips.pop())
                c = w
            self.up.append(Level(c_ins, w, self.emb_dim, cfg, i in cfg.attention_levels))
            self.upsample.append(nn.Conv2d(w, w, 3, 1, 1) if i else nn.Identity())
        assert not skips
        self.out_norm = nn.GroupNorm(cfg.groups, c)
        self.out = nn.Conv2d(c, cfg.channels * cfg.patch**2, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.width = cfg.width

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.width))  # (B, E)
        if self.label_embed is not None:
            assert labels is not None
            emb = emb + self.label_embed(labels)
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)  # (B, C*p*p, H/p, W/p)
        h = self.stem(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attention in zip(level.blocks, level.attentions):
                h = attention(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attention(self.mid1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample):
            for block, attention in zip(level.blocks, level.attentions):
                h = attention(block(torch.cat([h, skips.pop()], dim=1), emb))
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


# --------------------------------------------------------------------------------------------------------------
# The model


class Diffusion(nn.Module):
    Config = DiffusionConfig
    SampleOptions = DiffusionSampleOptions
    output_kind: ClassVar[Literal["image"]] = "image"
    conditioning: ClassVar[Literal["class"]] = "class"  # `cond` of sample(): class ids (--class)
    ema_modules: ClassVar[tuple[str, ...]] = ("denoiser",)

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.denoiser = UNet(config)
        # ᾱ_t in float64 for the samplers' coefficients; a buffer so it follows .to(device), not saved (derived)
        self.register_buffer("alphas_cumprod", make_alphas_cumprod(config.schedule, config.timesteps),
                             persistent=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.parameters())}

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        if not self.config.num_classes:
            return None
        if "label" not in batch:
            raise UserError("model.num_classes > 0 needs a labelled dataset; this data has no labels")
        return batch["label"]

    def loss(self, batch: dict[str, Tensor], group: str) -> dict[str, Tensor]:
        if group != "model":
            raise ValueError(f"unknown param group {group!r}")
        x0 = batch["image"]  # (B, C, H, W) in [-1, 1]
        b = x0.shape[0]
        labels = self._labels(batch)
        if labels is not None and self.config.label_dropout > 0:  # classifier-free guidance: learn p(x) as well
            drop = draw_rows(lambda m: torch.rand(m, device=x0.device), b) < self.config.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.config.num_classes), labels)
        t = draw_rows(lambda m: torch.randint(0, self.config.timesteps, (m,), device=x0.device), b)  # Alg. 1, line 3
        noise = draw_rows(lambda m: torch.randn(m, *x0.shape[1:], device=x0.device, dtype=x0.dtype), b)
        a = self.alphas_cumprod[t].to(x0.dtype).view(b, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # eq. 4
        if self.config.prediction == "epsilon":
            target = noise
        elif self.config.prediction == "v":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = x0
        prediction = self.denoiser(x_t, t, labels)
        if self.config.loss_weighting == "uniform":
            return {"loss": F.mse_loss(prediction.float(), target.float())}
        per_image = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
        alpha_bar = self.alphas_cumprod[t]  # float64 (B,)
        snr = alpha_bar / (1 - alpha_bar)
        clipped = snr.clamp(max=self.config.min_snr_gamma)
        weight = {"epsilon": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[self.config.prediction]
        return {"loss": (weight.float() * per_image).mean()}

    # -- sampling ----------------------------------------------------------------------------------------------

    def predict(self, x: Tensor, t: int, labels: Tensor | None, guidance: float, clip_x0: bool) -> tuple[Tensor, Tensor]:
        """(ε, x0) predicted at timestep t, with classifier-free guidance when guidance != 1."""
        b = x.shape[0]
        steps = torch.full((b,), t, device=x.device, dtype=torch.long)
        if labels is not None and guidance != 1.0:
            null = torch.full_like(labels, self.config.num_classes)
            both = self.denoiser(torch.cat([x, x]), torch.cat([steps, steps]), torch.cat([labels, null])).float()
            conditional, unconditional = both.chunk(2)
            out = unconditional + guidance * (conditional - unconditional)
        else:
            out = self.denoiser(x, steps, labels).float()
        a = float(self.alphas_cumprod[t])
        if self.config.prediction == "epsilon":
            eps = out
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        elif self.config.prediction == "v":
            # v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x0  =>  x0 = sqrt(ᾱ) x_t - sqrt(1 - ᾱ) v, ε = sqrt(1 - ᾱ) x_t + sqrt(ᾱ) v
            x0 = math.sqrt(a) * x - math.sqrt(1 - a) * out
            eps = math.sqrt(1 - a) * x + math.sqrt(a) * out
        else:  # x0-prediction
            x0 = out
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        if clip_x0 or self.config.prediction == "x0":
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)  # eq. 4 solved for ε: the ε of this (clipped) x0
        return eps, x0

    @torch.no_grad()
    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **options: Any) -> Tensor:
        """n images (n, C, H, W) in [-1, 1] from x_T ~ N(0, I) with `sample.sampler` in `sample.steps` steps.
        `cond`: a class id or n ids for conditional models (None cycles through the classes)."""
        opts = DiffusionSampleOptions.parse(options)
        cfg = self.config
        if opts.steps > cfg.timesteps:
            raise UserError(f"`sample.steps` ({opts.steps}) exceeds the {cfg.timesteps} steps the model was trained "
                            f"with; pass --set sample.steps<={cfg.timesteps}")
        if opts.guidance != 1.0 and not cfg.num_classes:
            raise UserError(f"`sample.guidance` ({opts.guidance}) needs a class-conditional model; this one is "
                            "unconditional (model.num_classes = 0): drop sample.guidance or set it to 1")
        if opts.guidance != 1.0 and cfg.label_dropout == 0:
            raise UserError("`sample.guidance` needs a model trained with label dropout (model.label_dropout > 0): "
                            "this one never learned the unconditional prediction; set sample.guidance=1")
        device = next(self.parameters()).device
        labels = class_ids(n, cond, cfg.num_classes, device, "diffusion")
        x = torch.randn(n, cfg.channels, cfg.image_size, cfg.image_size, generator=generator, device=device)
        timesteps = samplers.timestep_schedule(self.alphas_cumprod.cpu(), opts.steps, opts.timestep_spacing())
        was_training = self.training
        self.eval()
        try:
            def denoise(x_t: Tensor, t: int) -> tuple[Tensor, Tensor]:
                return self.predict(x_t, t, labels, opts.guidance_at(float(self.alphas_cumprod[t])), opts.clip_x0)

            out = samplers.get(opts.sampler)(denoise, self.alphas_cumprod.cpu(), timesteps, x, generator=generator,
                                             eta=opts.eta, variance=opts.variance)
        finally:
            self.train(was_training)
        return out.float().clamp(-1, 1)
