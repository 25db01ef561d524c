#!/usr/bin/env python3
"""Speed profile of the image likelihood families, VAE and diffusion, on one shipped config, in one process.

Reported (everything fp32, `--threads` torch threads, on random images of the config's shape, labels when
model.num_classes > 0; no data loading, no trainer):

1. Training throughput: images/s of `model.loss(batch, group)` + backward + the optimizer step of the config
   (`train.optim` through genforge's own `build_optimizer`: fused Adam), `train.channels_last` honoured; the
   median of `--rounds` timed rounds of `--iters` steps after `--warmup` steps. Not included: the trainer's EMA
   update, logging, LR setting and data loading.
2. FLOPs per training image (forward + backward of the loss) and per forward (the loss under no_grad), counted by
   `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention only: GroupNorm, SiLU,
   elementwise ops count 0; the CPU flash-attention kernel is added to its mapping, torch counts only the CUDA
   ones). MFU = training FLOP/image x images/s / this CPU's fp32 matmul rate, measured here with the same thread
   count (a 1024x1024 `torch.mm` loop, best block, before and after the runs; the higher of the two is the peak).
3. Where the time goes: `torch.profiler` over `--profile-steps` training steps, the top `--top` events by self
   CPU time, as ms per step and % of the profiled step's wall time (the profiler's overhead is in the wall time).
4. Sampling. Diffusion: `model.sample(n, generator=..., sampler=S, steps=K)` for each sampler (`--samplers`) and
   each K of `--steps` (K above the model's training timesteps is skipped), images/s at `--n` images; the
   network evaluations are counted (dpm++2m's log-SNR spacing may visit fewer timesteps than K). A row whose
   n x K exceeds `--max-evals` is not run but estimated from the measured time of one network evaluation at batch
   n (`model.predict`, what the samplers call; marked "est."): seconds ~= evaluations x ms/eval. VAE: prior
   samples (`sample.mode=prior`), images/s; the importance-weighted bound
   (`model.log_likelihood_bounds(uint8 images, k=K)`, genforge eval's code) at k = `--iw-k` on `--iw-n` images,
   images/s, and the time for the 10,000 MNIST test images at k = 5,000 extrapolated linearly in images x k.
5. A markdown table per part and one JSON line at the end; `--json PATH` writes the same object to PATH.

    .venv/bin/python benchmarks/image_family_speed.py mnist/vae --threads 1 --json runs/speed/mnist_vae.json
    .venv/bin/python benchmarks/image_family_speed.py mnist/ddpm --threads 1 --max-evals 6400 \
        --json runs/speed/mnist_ddpm.json

`--set KEY=VALUE` (repeatable) overrides the config like `genforge train --set` (e.g. model.patch=1).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

EVAL_TEST_IMAGES = 10_000  # MNIST test split, what `genforge eval --metrics nll` scores
EVAL_IW_K = 5_000  # the default importance samples of the nll metric (mnist/vae: eval.iw_samples)


# --------------------------------------------------------------------------------------------------------------
# Measuring


def matmul_gflops(n: int = 1024, reps: int = 10, blocks: int = 3) -> float:
    """fp32 `torch.mm` of two n x n matrices: the best of `blocks` blocks of `reps` products, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best / 1e9


def flop_mapping() -> dict[Any, Any]:
    """FlopCounterMode formulas for the CPU flash-attention kernels (torch's table has the CUDA ones only)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(q: Any, k: Any, v: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
        return sdpa_flop_count(q, k, v)

    def backward(grad: Any, q: Any, k: Any, v: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
        return sdpa_backward_flop_count(grad, q, k, v)

    mapping: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = forward
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return mapping


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of fn() (total, and by op)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        fn()
    by_op = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def timed_calls(fn: Callable[[], Any], min_seconds: float, max_calls: int = 50) -> tuple[float, int]:
    """Median seconds per call of fn(): called once, then again until `min_seconds` have passed in all."""
    times: list[float] = []
    while True:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if sum(times) >= min_seconds or len(times) >= max_calls:
            return statistics.median(times), len(times)


# --------------------------------------------------------------------------------------------------------------
# The model and its training step


def load(name: str, overrides: list[str]) -> tuple[Any, nn.Module]:
    from genforge.config import load_config, resolve_config_path
    from genforge.registry import model_class

    cfg = load_config(resolve_config_path(name), overrides)
    if cfg.model.family not in ("vae", "diffusion"):
        raise SystemExit(f"{name}: model.family is {cfg.model.family!r}; this benchmark profiles vae and diffusion")
    model = model_class(cfg.model.family)(cfg.model)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return cfg, model


def random_batch(model_cfg: Any, batch: int, generator: torch.Generator, channels_last: bool) -> dict[str, Tensor]:
    """Images on the 256 pixel levels in [-1, 1] (what the data pipeline yields), (B, C, H, W), plus labels."""
    shape = (batch, model_cfg.channels, model_cfg.image_size, model_cfg.image_size)
    images = torch.randint(0, 256, shape, generator=generator).float().div(127.5).sub(1.0)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    out = {"image": images}
    if model_cfg.num_classes:
        out["label"] = torch.randint(0, model_cfg.num_classes, (batch,), generator=generator)
    return out


class TrainStep:
    """One optimizer step of every parameter group, as the trainer does it (the other groups frozen meanwhile)."""

    def __init__(self, cfg: Any, model: nn.Module):
        from genforge.train.optim import build_optimizer, group_settings

        self.model = model
        self.groups = model.param_groups()
        settings = group_settings(cfg.train.optim, cfg.train.groups, list(self.groups))
        self.optimizers = {g: build_optimizer(model, g, params, settings[g]) for g, params in self.groups.items()}

    def _freeze_others(self, active: str | None) -> None:
        if len(self.groups) == 1:
            return
        for name, params in self.groups.items():
            for p in params:
                p.requires_grad_(active is None or name == active)

    def forward_backward(self, batch: dict[str, Tensor], group: str) -> None:
        self.model.loss(batch, group)["loss"].backward()

    def __call__(self, batch: dict[str, Tensor]) -> None:
        for group, optimizer in self.optimizers.items():
            self._freeze_others(group)
            optimizer.zero_grad(set_to_none=True)
            self.forward_backward(batch, group)
            optimizer.step()
        self._freeze_others(None)


def measure_training(step: TrainStep, batches: list[dict[str, Tensor]], warmup: int, iters: int,
                     rounds: int) -> dict[str, Any]:
    batch_size = len(batches[0]["image"])
    for i in range(warmup):
        step(batches[i % len(batches)])
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(iters):
            step(batches[i % len(batches)])
        per_round.append(iters * batch_size / (time.perf_counter() - start))
    images_per_s = statistics.median(per_round)
    return {"images_per_s": images_per_s, "per_round": [round(r, 2) for r in per_round],
            "ms_per_step": 1000 * batch_size / images_per_s}


def training_flops(step: TrainStep, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
    """FLOPs of the loss forward + backward (every group) and of the loss forward alone, per image."""
    b = len(batch["image"])

    def forward_backward() -> None:
        for group in step.groups:
            step._freeze_others(group)
            step.forward_backward(batch, group)
        step._freeze_others(None)

    train_total, train_by_op = count_flops(forward_backward)
    model.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.no_grad():
            for group in step.groups:
                model.loss(batch, group)

    forward_total, _ = count_flops(forward)
    return {"train_flops_per_image": train_total / b, "forward_flops_per_image": forward_total / b,
            "train_flops_by_op_per_image": {k: v / b for k, v in sorted(train_by_op.items(), key=lambda kv: -kv[1])}}


def profile_training(step: TrainStep, batches: list[dict[str, Tensor]], steps: int, top: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    step(batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        wall = time.perf_counter() - start
    events = list(prof.key_averages())
    total_self = sum(e.self_cpu_time_total for e in events)  # microseconds
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    wall_us = wall * 1e6
    rows = [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "percent": 100 * e.self_cpu_time_total / wall_us, "calls_per_step": e.count / steps}
            for e in ranked[:top]]
    rest = total_self - sum(e.self_cpu_time_total for e in ranked[:top])
    return {"steps": steps, "profiled_ms_per_step": 1000 * wall / steps, "top": rows,
            "other_ops_percent": 100 * rest / wall_us,
            "outside_ops_percent": 100 * max(0.0, wall_us - total_self) / wall_us}


# --------------------------------------------------------------------------------------------------------------
# Sampling


def sample_options(cfg: Any, **changes: Any) -> dict[str, Any]:
    options = cfg.sample.kwargs()
    options.update(changes)
    if options.get("sampler", "ddim") != "ddim":
        options.pop("eta", None)  # eta is a ddim option; the family refuses it for the others
    return options


def diffusion_sampling(cfg: Any, model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    from genforge.models import samplers

    n = args.n
    opts = sample_options(cfg)
    guidance = float(opts.get("guidance", 1.0))
    clip_x0 = bool(opts.get("clip_x0", True))
    generator = torch.Generator().manual_seed(0)
    labels = (torch.arange(n) % cfg.model.num_classes) if cfg.model.num_classes else None
    x = torch.randn(n, cfg.model.channels, cfg.model.image_size, cfg.model.image_size, generator=generator)
    t_mid = cfg.model.timesteps // 2
    model.eval()
    with torch.no_grad():
        def one_eval() -> None:
            model.predict(x, t_mid, labels, guidance, clip_x0)

        one_eval()
        eval_s, eval_calls = timed_calls(one_eval, args.min_time)
        eval_flops, _ = count_flops(one_eval)
    model.train()
    result: dict[str, Any] = {
        "n": n, "guidance": guidance, "eval_ms": 1000 * eval_s, "eval_ms_per_image": 1000 * eval_s / n,
        "eval_calls_timed": eval_calls, "eval_flops_per_image": eval_flops / n,
        "eval_gflops_per_s": eval_flops / eval_s / 1e9, "rows": [], "skipped": [],
    }

    calls = [0]
    hook = model.denoiser.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        for sampler in args.samplers:
            for steps in args.steps:
                if steps > cfg.model.timesteps:
                    result["skipped"].append({"sampler": sampler, "steps": steps,
                                              "why": f"more than the model's {cfg.model.timesteps} timesteps"})
                    continue
                options = sample_options(cfg, sampler=sampler, steps=steps)
                spacing = options.get("spacing", "auto")
                if spacing == "auto":
                    spacing = "logsnr" if sampler == "dpm++2m" else "uniform"
                planned = len(samplers.timestep_schedule(model.alphas_cumprod.cpu(), steps, spacing))
                row: dict[str, Any] = {"sampler": sampler, "steps": steps}
                if args.max_evals and n * steps > args.max_evals:
                    seconds = planned * eval_s
                    row.update(evals=planned, seconds=seconds, estimated=True, calls_timed=0)
                else:
                    calls[0] = 0

                    def run(options: dict[str, Any] = options) -> None:
                        model.sample(n, generator=torch.Generator().manual_seed(0), **options)

                    seconds, timed = timed_calls(run, args.min_time)
                    row.update(evals=calls[0] // timed, seconds=seconds, estimated=False, calls_timed=timed)
                row["images_per_s"] = n / row["seconds"]
                row["ms_per_eval"] = 1000 * row["seconds"] / max(1, row["evals"])
                result["rows"].append(row)
                print(f"  {sampler:8s} steps {steps:5d}: {row['evals']} evals, {row['seconds']:.3f} s, "
                      f"{row['images_per_s']:.2f} images/s{' (est.)' if row['estimated'] else ''}",
                      file=sys.stderr, flush=True)
    finally:
        hook.remove()
    return result


def vae_sampling(cfg: Any, model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    options = sample_options(cfg, mode="prior")

    def prior() -> None:
        model.sample(n, generator=torch.Generator().manual_seed(0), **options)

    prior()
    prior_s, prior_calls = timed_calls(prior, args.min_time)

    generator = torch.Generator().manual_seed(1)
    shape = (args.iw_n, cfg.model.channels, cfg.model.image_size, cfg.model.image_size)
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    labels = None
    if cfg.model.num_classes:
        labels = torch.randint(0, cfg.model.num_classes, (args.iw_n,), generator=generator)
    model.eval()
    model.log_likelihood_bounds(images[:2], None if labels is None else labels[:2], k=2,
                                generator=torch.Generator().manual_seed(0))  # warm-up

    def bounds() -> None:
        model.log_likelihood_bounds(images, labels, k=args.iw_k, generator=torch.Generator().manual_seed(0))

    iw_s, iw_calls = timed_calls(bounds, args.min_time, max_calls=5)
    model.train()
    per_image_sample = iw_s / (args.iw_n * args.iw_k)
    return {
        "n": n, "prior_seconds": prior_s, "prior_images_per_s": n / prior_s, "prior_calls_timed": prior_calls,
        "iw_k": args.iw_k, "iw_images": args.iw_n, "iw_seconds": iw_s, "iw_images_per_s": args.iw_n / iw_s,
        "iw_calls_timed": iw_calls, "iw_us_per_image_sample": 1e6 * per_image_sample,
        "eval_extrapolation": {"images": EVAL_TEST_IMAGES, "k": EVAL_IW_K,
                               "seconds": per_image_sample * EVAL_TEST_IMAGES * EVAL_IW_K},
    }


# --------------------------------------------------------------------------------------------------------------
# Reporting


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def print_tables(r: dict[str, Any]) -> None:
    t, f = r["training"], r["flops"]
    print(f"\n### {r['config']} ({r['family']}, {r['parameters'] / 1e6:.3f}M parameters), batch {r['batch']}, "
          f"{r['threads']} thread(s), fp32, torch {r['torch']} ({r['cpu_capability']})\n")
    print("| train images/s (median) | per round | ms/step | train MFLOP/image | forward MFLOP/image "
          "| achieved GFLOP/s | fp32 mm GFLOP/s (before, after) | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {t['images_per_s']:.1f} | {', '.join(f'{x:.1f}' for x in t['per_round'])} | {t['ms_per_step']:.1f} "
          f"| {f['train_flops_per_image'] / 1e6:.2f} | {f['forward_flops_per_image'] / 1e6:.2f} "
          f"| {r['achieved_gflops']:.2f} | {r['mm_gflops']['peak']:.1f} ({r['mm_gflops']['before']:.1f}, "
          f"{r['mm_gflops']['after']:.1f}) | {100 * r['mfu']:.1f}% |")

    p = r.get("profile")
    if p:
        print_profile(p)
    print_sampling(r)


def print_profile(p: dict[str, Any]) -> None:
    print(f"\nWhere a training step's time goes (torch.profiler, {p['steps']} steps, "
          f"{p['profiled_ms_per_step']:.1f} ms/step profiled):\n")
    print("| op | self CPU ms/step | % of step | calls/step |")
    print("|---|---|---|---|")
    for row in p["top"]:
        print(f"| `{row['op']}` | {row['ms_per_step']:.2f} | {row['percent']:.1f}% | {row['calls_per_step']:g} |")
    print(f"| all other ops | | {p['other_ops_percent']:.1f}% | |")
    print(f"| outside any op (Python, dispatch) | | {p['outside_ops_percent']:.1f}% | |")


def print_sampling(r: dict[str, Any]) -> None:
    s = r.get("sampling")
    if s and r["family"] == "diffusion":
        doubled = f", the U-Net on {2 * s['n']} inputs per evaluation" if s["guidance"] != 1 else ""
        print(f"\nSampling {s['n']} images (guidance {s['guidance']:g}{doubled}); one network evaluation at batch "
              f"{s['n']}: "
              f"{s['eval_ms']:.1f} ms ({s['eval_ms_per_image']:.3f} ms/image, "
              f"{s['eval_flops_per_image'] / 1e6:.2f} MFLOP/image, {s['eval_gflops_per_s']:.1f} GFLOP/s = "
              f"{100 * s['eval_gflops_per_s'] / r['mm_gflops']['peak']:.0f}% of the mm peak); "
              f"images/s ~= {s['n']} / (evaluations x {s['eval_ms'] / 1000:.4f} s):\n")
        print("| sampler | steps | network evals | s per batch | images/s | ms/eval | |")
        print("|---|---|---|---|---|---|---|")
        for row in s["rows"]:
            print(f"| {row['sampler']} | {row['steps']} | {row['evals']} | {row['seconds']:.2f} "
                  f"| {row['images_per_s']:.2f} | {row['ms_per_eval']:.1f} | {'est.' if row['estimated'] else ''} |")
        for row in s["skipped"]:
            print(f"| {row['sampler']} | {row['steps']} | skipped: {row['why']} | | | | |")
    elif s:
        e = s["eval_extrapolation"]
        print("\nSampling and evaluation:\n")
        print("| what | images/s | time |")
        print("|---|---|---|")
        print(f"| prior samples, batch {s['n']} | {s['prior_images_per_s']:.0f} | {1000 * s['prior_seconds']:.2f} ms "
              f"per batch |")
        print(f"| IWAE bound, k = {s['iw_k']}, {s['iw_images']} images | {s['iw_images_per_s']:.2f} "
              f"| {s['iw_seconds']:.2f} s ({s['iw_us_per_image_sample']:.1f} us per image-sample) |")
        print(f"| IWAE bound, k = {e['k']}, {e['images']} test images (extrapolated) | "
              f"{e['images'] / e['seconds']:.3f} | {duration(e['seconds'])} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a shipped config name (mnist/vae, mnist/ddpm, debug/diffusion) or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as genforge train --set (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the config's train.batch_size)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--iters", type=int, default=20, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported")
    p.add_argument("--profile-steps", type=int, default=5, help="training steps under torch.profiler (0: skip)")
    p.add_argument("--top", type=int, default=10, help="ops listed in the profile")
    p.add_argument("--n", type=int, default=64, help="images per sampling call")
    p.add_argument("--steps", default="10,25,50,100,1000", help="diffusion: sampling steps, comma-separated")
    p.add_argument("--samplers", default="ddpm,ddim,dpm++2m", help="diffusion: samplers, comma-separated")
    p.add_argument("--max-evals", type=int, default=0,
                   help="diffusion: rows with n x steps above this are estimated from the per-evaluation time "
                        "instead of run (0: run every row)")
    p.add_argument("--iw-k", type=int, default=100, help="VAE: importance samples of the timed IWAE bound")
    p.add_argument("--iw-n", type=int, default=64, help="VAE: images of the timed IWAE bound")
    p.add_argument("--min-time", type=float, default=0.5,
                   help="sampling: repeat a call until this many seconds have passed; the median call is reported")
    p.add_argument("--mm-reps", type=int, default=10, help="1024x1024 matmuls per timing block of the peak")
    p.add_argument("--no-sampling", action="store_true", help="skip part 4")
    p.add_argument("--json", default=None, help="also write the JSON result to this path")
    args = p.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
    args.samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, model = load(args.config, args.overrides)
    batch_size = args.batch or cfg.train.batch_size
    channels_last = cfg.train.channels_last
    results: dict[str, Any] = {
        "benchmark": "image_family_speed", "config": args.config, "overrides": args.overrides,
        "family": cfg.model.family, "batch": batch_size, "threads": torch.get_num_threads(),
        "channels_last": channels_last, "optimizer": cfg.train.optim.name, "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    mm_before = matmul_gflops(reps=args.mm_reps)
    print(f"fp32 1024^2 mm: {mm_before:.1f} GFLOP/s ({results['threads']} thread(s))", file=sys.stderr, flush=True)

    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(cfg.model, batch_size, generator, channels_last) for _ in range(4)]
    model.train()
    step = TrainStep(cfg, model)
    results["flops"] = training_flops(step, model, batches[0])
    results["training"] = measure_training(step, batches, args.warmup, args.iters, args.rounds)
    print(f"training: {results['training']['images_per_s']:.1f} images/s {results['training']['per_round']}",
          file=sys.stderr, flush=True)
    if args.profile_steps:
        results["profile"] = profile_training(step, batches, args.profile_steps, args.top)
    if not args.no_sampling:
        if cfg.model.family == "diffusion":
            results["sampling"] = diffusion_sampling(cfg, model, args)
        else:
            results["sampling"] = vae_sampling(cfg, model, args)
    mm_after = matmul_gflops(reps=args.mm_reps)
    peak = max(mm_before, mm_after)
    results["mm_gflops"] = {"before": mm_before, "after": mm_after, "peak": peak, "n": 1024}
    results["achieved_gflops"] = results["flops"]["train_flops_per_image"] * results["training"]["images_per_s"] / 1e9
    results["mfu"] = results["achieved_gflops"] / peak

    print_tables(results)
    line = json.dumps(results)
    print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
