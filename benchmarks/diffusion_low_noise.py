#!/usr/bin/env python3
"""How well a trained diffusion model denoises at the low-noise end, where FID on MNIST is decided.

Real MNIST has 80% exactly-black pixels; a faint noise floor on that background, invisible in pictures, costs about
18 FID-2k points (BENCHMARKS.md, "Why FID-2k stays far above the floor"). Three measurements per run, on the first
100 (`--n`) test images, each with fixed seeds so runs compare side by side:

- `eps`: the ε-prediction MSE at a few timesteps, and the RMS error of the implied clean image on background pixels
  in gray levels (0..255), x0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t), before clipping;
- `from-real`: real test images noised to the visited timestep whose σ = sqrt(1 - ᾱ_t) is nearest `--sigma`, then
  the rest of the run's own sampler (its `sample:` section: sampler and steps) down to t = 0; the share of exactly-0
  pixels after the uint8 rounding `genforge eval` applies (real: about 82% on these images) and the RMS error to the
  real image. It isolates the low-noise end of sampling from the model's global shapes.
- `samples`: the share of exactly-0 pixels in `--n` samples from pure noise (seed 0), as `genforge sample` draws them.

    .venv/bin/python benchmarks/diffusion_low_noise.py runs/mnist-ddpm runs/other-ddpm --sigma 0.05 --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from genforge import media, sampling  # noqa: E402
from genforge.data.build import build_dataset  # noqa: E402
from genforge.models import samplers  # noqa: E402

TIMESTEPS = (0, 3, 10, 30, 100, 300)


def to_gray_levels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> 0..255, quantized as genforge eval quantizes samples (media.to_uint8), as float."""
    return torch.from_numpy(media.to_uint8(x)).float()


def measure(run: str, n: int, sigma: float) -> dict[str, object]:
    pipeline = sampling.load(run)
    model = pipeline.module
    options = pipeline.sample_options()
    test = build_dataset(pipeline.config.data.model_copy(update={"limit": None}), "test")
    x0 = test.images[:n].float() / 127.5 - 1
    labels = test.labels[:n] if model.config.num_classes and test.labels is not None else None
    guidance = options.guidance if labels is not None else 1.0
    alphas = model.alphas_cumprod.cpu()
    background = x0 < -0.99
    eps_rows = {}
    generator = torch.Generator().manual_seed(0)
    for t in TIMESTEPS:
        if t >= model.config.timesteps:
            continue
        noise = torch.randn(x0.shape, generator=generator)
        a = float(alphas[t])
        with torch.no_grad():
            eps, x0_hat = model.predict(math.sqrt(a) * x0 + math.sqrt(1 - a) * noise, t, labels, guidance, False)
        background_rms = float((x0_hat - x0)[background].pow(2).mean().sqrt()) * 127.5
        eps_rows[t] = {"eps_mse": round(float((eps - noise).pow(2).mean()), 4),
                       "background_x0_rms_gray": round(background_rms, 3)}
    visited = samplers.timestep_schedule(alphas, options.steps, options.timestep_spacing())
    start = min(visited, key=lambda t: abs(math.sqrt(1 - float(alphas[t])) - sigma))
    rest = [t for t in visited if t <= start]
    generator = torch.Generator().manual_seed(0)
    a = float(alphas[start])
    x = math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(x0.shape, generator=generator)
    with torch.no_grad():
        out = samplers.get(options.sampler)(
            lambda x_t, t: model.predict(x_t, t, labels, guidance, options.clip_x0), alphas, rest, x,
            generator=generator, eta=options.eta)
    real = to_gray_levels(x0)
    from_real = to_gray_levels(out)
    drawn = to_gray_levels(pipeline.sample(n, seed=0, cond=labels))
    return {"run": run, "eps": eps_rows,
            "from_real": {"start_t": start, "sigma": round(math.sqrt(1 - a), 4), "steps": len(rest),
                          "zero_share": round(float((from_real == 0).float().mean()), 4),
                          "real_zero_share": round(float((real == 0).float().mean()), 4),
                          "rms_gray": round(float((from_real - real).pow(2).mean().sqrt()), 3)},
            "samples_zero_share": round(float((drawn == 0).float().mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="diffusion run dirs (or step dirs)")
    parser.add_argument("--n", type=int, default=100, help="test images (and samples) per measurement")
    parser.add_argument("--sigma", type=float, default=0.05, help="noise level the from-real chain starts at")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for run in args.runs:
        print(json.dumps(measure(run, args.n, args.sigma)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
