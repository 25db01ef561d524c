#!/usr/bin/env python3
"""Text generation speed: genforge's KV-cached GPT against nanoGPT's `model.generate`, side by side in one process.

Both models are nanoGPT's `config/train_shakespeare_char.py` size (6 layers, 6 heads, 384 dims, 256-token context,
65-token vocabulary, no biases) with the *same* random weights: nanoGPT's GPT is built from the checkout given by
--nanogpt (imported via sys.path, never copied into this repo) and its state dict is loaded into genforge's GPT with
strict=True. Weights do not change the cost of a step, so no training is needed.

nanoGPT's sample.py generates by calling `model.generate`, which crops the context to the last block_size tokens and
runs the whole context through the model for every new token (no cache). genforge prefills once and feeds one token
per step into a KV cache that slides past block_size (see genforge/models/gpt.py). Both sample with the options of
nanoGPT's sample.py (temperature 0.8, top_k 200) from a one-token prompt.

To share the machine's noise fairly, generation is interleaved in windows of --window tokens: nanoGPT continues its
sequence by `generate(idx, window)` (equivalent to one long call: it keeps no state besides idx), then genforge pulls
`window` steps from its `stream()` iterator, and the order alternates from window to window. The per-window times
show the cost per token against context length (nanoGPT's grows until block_size; genforge's should stay flat, with
a small bump in windows where the context slides).

Example::

    .venv/bin/python benchmarks/gpt_generate.py --nanogpt /work/.bench/nanoGPT --tokens 500 --batch8-tokens 200

The last stdout line is one JSON object with the results; a markdown table precedes it. --profile adds a
torch.profiler breakdown of genforge's batch-1 step (matmuls vs other ops vs Python overhead).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from genforge.models.gpt import GPT, GPTConfig

MODEL = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False)
SAMPLING = dict(temperature=0.8, top_k=200)  # nanoGPT sample.py's defaults


def build_models(nanogpt_dir: Path) -> tuple[torch.nn.Module, GPT]:
    sys.path.insert(0, str(nanogpt_dir))
    import model as nanogpt_model  # nanoGPT's model.py

    torch.manual_seed(1337)
    reference = nanogpt_model.GPT(nanogpt_model.GPTConfig(**MODEL)).eval()
    ours = GPT(GPTConfig.from_dict({"family": "gpt", **MODEL})).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # same parameter names, same weights
    return reference, ours


def run_side_by_side(reference: torch.nn.Module, ours: GPT, batch: int, tokens: int, window: int,
                     window_keep: int | None) -> dict[str, Any]:
    options = dict(SAMPLING, max_new_tokens=tokens, window_keep=window_keep)
    generator = torch.Generator().manual_seed(0)
    # warm-up: the first calls allocate and pick kernels
    reference.generate(torch.zeros(batch, 1, dtype=torch.long), 4, **SAMPLING)
    ours.generate([[0]] * batch, generator=generator, **dict(options, max_new_tokens=4))

    idx = torch.zeros(batch, 1, dtype=torch.long)  # nanoGPT's running sequence (B, 1 + generated)
    stream = ours.stream([[0]] * batch, generator=generator, **options)
    ref_times: list[float] = []
    our_times: list[float] = []

    def ref_window(n: int) -> None:
        nonlocal idx
        t = time.perf_counter()
        idx = reference.generate(idx, n, **SAMPLING)
        ref_times.append(time.perf_counter() - t)

    def our_window(n: int) -> None:
        t = time.perf_counter()
        for _ in range(n):
            next(stream)
        our_times.append(time.perf_counter() - t)

    done = 0
    while done < tokens:
        n = min(window, tokens - done)
        first, second = (ref_window, our_window) if len(ref_times) % 2 == 0 else (our_window, ref_window)
        first(n)
        second(n)
        done += n
    assert idx.shape == (batch, 1 + tokens)
    ref_total, our_total = sum(ref_times), sum(our_times)
    return {
        "batch": batch,
        "new_tokens": tokens,
        "nanogpt_tokens_per_s": batch * tokens / ref_total,
        "genforge_tokens_per_s": batch * tokens / our_total,
        "speedup": ref_total / our_total,
        "window": window,
        # ms per generation step (one token per row) in each window of `window` steps
        "nanogpt_ms_per_step": [round(1000 * t / window, 2) for t in ref_times],
        "genforge_ms_per_step": [round(1000 * t / window, 2) for t in our_times],
    }


def profile_ours(ours: GPT, tokens: int) -> dict[str, float]:
    """Where genforge's batch-1 step spends its time: matmuls, other ATen ops, and the rest (Python, dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    generator = torch.Generator().manual_seed(0)
    ours.generate([[0]], generator=generator, max_new_tokens=8, **SAMPLING)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        ours.generate([[0]], generator=generator, max_new_tokens=tokens, **SAMPLING)
        wall = time.perf_counter() - t
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e6
    aten = sum(e.self_cpu_time_total for e in events) / 1e6
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {
        "profiled_tokens": tokens,
        "wall_ms_per_token": 1000 * wall / tokens,
        "matmul_ms_per_token": 1000 * matmul / tokens,
        "other_aten_ms_per_token": 1000 * (aten - matmul) / tokens,
        "python_and_dispatch_ms_per_token": 1000 * (wall - aten) / tokens,
        "top_ops_ms_per_token": {e.key: round(e.self_cpu_time_total / 1e3 / tokens, 3) for e in top},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (outside this repo)")
    parser.add_argument("--tokens", type=int, default=500, help="new tokens at batch 1")
    parser.add_argument("--batch8-tokens", type=int, default=200, help="new tokens at batch 8 (0 skips it)")
    parser.add_argument("--window", type=int, default=50, help="tokens per timing window")
    parser.add_argument("--window-keep", type=int, default=None, help="genforge sample.window_keep (None: 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="also profile genforge's batch-1 step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reference, ours = build_models(args.nanogpt)
    results: dict[str, Any] = {"benchmark": "gpt_generate", "model": MODEL, "sampling": SAMPLING,
                               "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "machine": platform.machine(), "runs": []}
    for batch, tokens in [(1, args.tokens), (8, args.batch8_tokens)]:
        if tokens > 0:
            run = run_side_by_side(reference, ours, batch, tokens, args.window, args.window_keep)
            results["runs"].append(run)
            print(f"batch {batch}: {run['speedup']:.1f}x  (ms/step per {args.window}-token window; "
                  f"nanoGPT {run['nanogpt_ms_per_step']}, genforge {run['genforge_ms_per_step']})", flush=True)
    if args.profile:
        results["profile"] = profile_ours(ours, 100)
    print()
    print("| batch | new tokens | nanoGPT tokens/s | genforge tokens/s | speedup | "
          "genforge ms/step, min-max over windows |")
    print("|---|---|---|---|---|---|")
    for run in results["runs"]:
        ms = run["genforge_ms_per_step"]
        print(f"| {run['batch']} | {run['new_tokens']} | {run['nanogpt_tokens_per_s']:.0f} | "
              f"{run['genforge_tokens_per_s']:.0f} | {run['speedup']:.1f}x | {min(ms):.2f}-{max(ms):.2f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
