#!/usr/bin/env python3
"""The README's VAE and diffusion pictures, from trained runs, through the public Pipeline API only.

    .venv/bin/python scripts/make_readme_pictures.py --vae runs/mnist-vae --diffusion runs/mnist-ddpm --out docs

writes
    vae-samples.png        prior samples (8x8)
    vae-interpolation.png  4 strips of 10 images between pairs of test images through the latent space
    vae-reconstructions.png  10 test images above their reconstructions
    diffusion-steps.png    the same 8 starting noises sampled with DDIM in 2, 5, 10, 20 and 50 steps (one row each:
                           DDIM with eta 0 is deterministic, so each column is one image refined by more steps)
    diffusion-samples.png  64 samples with the run's own sampler settings
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", help="a VAE run dir")
    p.add_argument("--diffusion", help="a diffusion run dir")
    p.add_argument("--out", default="docs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="2,5,10,20,50", help="rows of the diffusion steps strip (DDIM)")
    args = p.parse_args(argv)

    import torch

    import genforge
    from genforge import media

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.vae:
        vae = genforge.load(args.vae)
        media.save_images(vae.sample(64, seed=args.seed), out / "vae-samples.png", nrow=8)
        strips = vae.sample(4, seed=args.seed, mode="interpolate", steps=10)
        media.save_images(strips, out / "vae-interpolation.png", nrow=10)
        pairs = vae.sample(10, seed=args.seed, mode="reconstruct")
        media.save_images(pairs, out / "vae-reconstructions.png", nrow=10)
    if args.diffusion:
        diffusion = genforge.load(args.diffusion)
        rows = [diffusion.sample(8, seed=args.seed, sampler="ddim", steps=int(s), eta=0.0)
                for s in args.steps.split(",")]
        media.save_images(torch.cat(rows), out / "diffusion-steps.png", nrow=8)
        media.save_images(diffusion.sample(64, seed=args.seed), out / "diffusion-samples.png", nrow=8)
    for path in sorted(out.glob("vae-*.png")) + sorted(out.glob("diffusion-*.png")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
