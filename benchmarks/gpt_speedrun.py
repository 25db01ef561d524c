#!/usr/bin/env python3
"""The speedrun's levers on nanoGPT's baby GPT (4 layers, 4 heads, 128 dims, 64-token context), one at a time, with
seeds, side by side with nanoGPT's own train.py in one run.

    .venv/bin/python benchmarks/gpt_speedrun.py --nanogpt /tmp/nanoGPT --seeds 1337,1338 --jobs 2

Rows (each adds one lever to the row above; every row trains configs/shakespeare/gpt_char_baby_fast.yaml, the
fastest AdamW recipe, with the row's --set keys, and the same token budget, 2,400 steps of 6 x 64 tokens):

    adamw        the baseline: nanoGPT's block, AdamW 5e-3
    +muon        train.optim.name=muon: Muon (lr --muon-lr) for the block matrices, AdamW for the rest
    +rotary      model.rotary=true: rotary position embeddings instead of the learned table
    +qk_norm     model.qk_norm=true
    +relu2       model.mlp=relu2
    +zero_init   model.zero_init_proj=true
    +untied      model.tie_head=false
    +softcap     model.logit_softcap=15
    recipe       (--recipe) configs/shakespeare/gpt_char_baby_speedrun.yaml as shipped: the levers that helped

With --on-recipe, the rows named in --rows are instead each added ALONE to the recipe (its config and budget), so a
lever that was left out of the recipe is measured against the recipe, not stacked on other left-out levers.

Each run validates every 100 steps on its fixed 40 val batches; reported per row (median and each seed): the
tokens and the wall time until the first val loss <= --target (1.88), and the final val loss at the full budget.
nanoGPT runs as in benchmarks/gpt_train.py (2,000 iterations of 12 x 64, its README's CPU baby GPT), or with
--nanogpt-iters for longer schedules of the same recipe (max_iters = lr_decay_iters = N; it validates every 250
iterations): its README's 2,000 end at about 1.885, so its own time to 1.88 needs a longer schedule. nanoGPT runs
and genforge runs alternate in the queue, so each genforge run shares the CPU with a nanoGPT run. Runs go --jobs
at a time, one thread each (OMP_NUM_THREADS=1): wall times of one table are comparable, not across machines.
The table is printed as Markdown and the raw results written to WORK/speedrun.json.

--char N instead compares the 6x6x384 model (block 256, batch 64, dropout 0.2): nanoGPT's
config/train_shakespeare_char.py against configs/shakespeare/gpt_char_speedrun.yaml (the same model and schedule
with Muon, rotary embeddings and QK-norm), both for the first N of their 5,000-iteration schedules (the learning
rate follows the full schedule), side by side, one thread each, validated every --char-every iterations on
--char-eval-batches batches (nanoGPT also estimates its train loss, with as many). It reports both val curves
and the tokens the recipe needs to reach nanoGPT's last val loss.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt_train import REPO, prepare_nanogpt_data, run_genforge, run_nanogpt  # noqa: E402

FAST = REPO / "configs" / "shakespeare" / "gpt_char_baby_fast.yaml"
CHAR_RECIPE = REPO / "configs" / "shakespeare" / "gpt_char_speedrun.yaml"
CHAR_NANOGPT = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                "--log_interval=1"]  # its 6x6x384 recipe as shipped; the schedule and evaluation flags are added
CHAR_TOKENS_PER_STEP = 64 * 256
RECIPE = REPO / "configs" / "shakespeare" / "gpt_char_baby_speedrun.yaml"


def tokens_per_step(config: Path, sets: list[str]) -> int:
    """Tokens in one training step of `config` with --set `sets`: batch_size x block_size (64 for the baby GPT)."""
    batch = yaml.safe_load(config.read_text())["train"]["batch_size"]
    for key_value in sets:
        if key_value.startswith("train.batch_size="):
            batch = int(key_value.split("=", 1)[1])
    return batch * 64


def ladder(muon_lr: float) -> list[tuple[str, list[str]]]:
    steps = [("adamw", []),
             ("+muon", ["train.optim.name=muon", f"train.optim.muon_lr={muon_lr}"]),
             ("+rotary", ["model.rotary=true"]),
             ("+qk_norm", ["model.qk_norm=true"]),
             ("+relu2", ["model.mlp=relu2"]),
             ("+zero_init", ["model.zero_init_proj=true"]),
             ("+untied", ["model.tie_head=false"]),
             ("+softcap", ["model.logit_softcap=15"])]
    rows, keys = [], []
    for name, sets in steps:
        keys = keys + sets
        rows.append((name, list(keys)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (outside this repo); omit to skip it")
    parser.add_argument("--seeds", default="1337,1338")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--steps", type=int, default=None, help="override the budget (default: the config's 2,400)")
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--recipe", action="store_true", help="also run gpt_char_baby_speedrun.yaml as shipped")
    parser.add_argument("--on-recipe", action="store_true",
                        help="add each of --rows alone to the recipe config (implies --recipe)")
    parser.add_argument("--nanogpt-iters", default="2000", help="comma-separated nanoGPT schedules (max_iters)")
    parser.add_argument("--char", type=int, help="compare the 6x6x384 model for this many iterations instead")
    parser.add_argument("--char-every", type=int, default=50, help="--char: validate every this many iterations")
    parser.add_argument("--char-eval-batches", type=int, default=20,
                        help="--char: val batches of 64 x 256 per validation, both sides (nanoGPT's eval_iters)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    work = args.work or Path(tempfile.mkdtemp(prefix="speedrun-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.char:
        char_model(args, work)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in ladder(args.muon_lr) if not args.rows or r[0] in args.rows.split(",")]
    if args.on_recipe:  # each lever's own keys (not the ladder's accumulated ones), on the recipe config
        own = dict(zip([n for n, _ in ladder(args.muon_lr)], [[]] + [
            b[len(a):] for (_, a), (_, b) in zip(ladder(args.muon_lr), ladder(args.muon_lr)[1:])]))
        rows = [(f"recipe {name}", own[name]) for name, _ in rows]
        args.recipe = True
    tasks = [(name, sets, seed) for name, sets in rows for seed in seeds]
    if args.recipe:
        rows.append(("recipe", []))
        tasks += [("recipe", [], seed) for seed in seeds]

    def one(task: tuple[str, list[str], int]) -> dict:
        name, sets, seed = task
        label = f"{name.replace('recipe ', 'recipe-').replace('+', '')}-{seed}"
        config = RECIPE if name.startswith("recipe") else FAST
        result = run_genforge(config, args.steps, work, args.target, [*sets, f"run.seed={seed}", "train.val_every=100",
                                                                "train.sample_every=0", "train.threads=1"], label)
        crossing = next((step for step, loss in result["val_curve"] if loss <= args.target), None)
        per_step = tokens_per_step(config, sets)
        result.update(row=name, seed=seed, tokens_to_target=crossing * per_step if crossing else None)
        result["tokens_seen"] = result["steps"] * per_step
        print(f"{label}: val {result['val_loss']:.4f}, to {args.target}: {result['time_to_target_s']} s", flush=True)
        return result

    iters = [int(i) for i in args.nanogpt_iters.split(",")] if args.nanogpt is not None else []
    if iters:
        prepare_nanogpt_data(args.nanogpt)
    queue: list = []  # nanoGPT and genforge runs alternate, so they run side by side
    for i in range(max(len(iters), len(tasks))):
        queue += [("nanogpt", iters[i])] if i < len(iters) else []
        queue += [("genforge", tasks[i])] if i < len(tasks) else []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one, job) if kind == "genforge" else
                   pool.submit(run_nanogpt, args.nanogpt, job, work, args.target, f"nanogpt-{job}")
                   for kind, job in queue]
        results = [f.result() for f in futures]
    (work / "speedrun.json").write_text(json.dumps(results, indent=1))
    print(f"\n| row | tokens to {args.target} (median; per seed) | wall to {args.target} | final val loss |")
    print("|---|---|---|---|")
    for nano in (r for r in results if r["name"] == "nanoGPT"):
        tokens = next((s * 12 * 64 for s, loss in nano["val_curve"] if loss <= args.target), None)
        print(f"| nanoGPT ({nano['steps']} x 12) | {tokens or 'not reached'} | "
              f"{nano['time_to_target_s'] or 'not reached'} | {nano['val_loss']:.4f} |")
    for name, _ in rows:
        runs = [r for r in results if r.get("row") == name]
        tok = [r["tokens_to_target"] for r in runs]
        wall = [r["time_to_target_s"] for r in runs]
        final = [r["val_loss"] for r in runs]

        def show(values: list, fmt: str) -> str:
            reached = [v for v in values if v is not None]
            median = format(statistics.median(reached), fmt) if len(reached) == len(values) else "not reached"
            return f"{median} ({', '.join(format(v, fmt) if v is not None else '-' for v in values)})"

        print(f"| {name} | {show(tok, '.0f')} | {show(wall, '.1f')} | {show(final, '.4f')} |")
    print(f"\nraw results: {work / 'speedrun.json'}")


def char_model(args: argparse.Namespace, work: Path) -> None:
    """--char N: nanoGPT's 6x6x384 recipe and gpt_char_speedrun.yaml, the first N iterations, side by side."""
    if args.nanogpt is None:
        raise SystemExit("--char needs --nanogpt (a nanoGPT checkout)")
    prepare_nanogpt_data(args.nanogpt)
    n, every = args.char, args.char_every
    with ThreadPoolExecutor(2) as pool:
        nano = pool.submit(run_nanogpt, args.nanogpt, n, work, args.target, "nanogpt-char",
                           [*CHAR_NANOGPT, f"--eval_iters={args.char_eval_batches}"], 5000, every,
                           CHAR_TOKENS_PER_STEP)
        ours = pool.submit(run_genforge, CHAR_RECIPE, None, work, args.target,
                           [f"train.steps={n}", f"train.val_every={every}",
                            f"train.val_batches={args.char_eval_batches}", "train.sample_every=0",
                            f"train.checkpoint_every={n}", "train.threads=1"], "char-speedrun")
        results = [nano.result(), ours.result()]
    (work / "speedrun-char.json").write_text(json.dumps(results, indent=1))
    nano_curve, our_curve = dict(results[0]["val_curve"]), dict(results[1]["val_curve"])
    print("\n| iteration (tokens) | nanoGPT val loss | genforge speedrun recipe val loss |")
    print("|---|---|---|")
    for step in sorted(set(nano_curve) | set(our_curve)):
        show = [f"{c[step]:.4f}" if step in c else "-" for c in (nano_curve, our_curve)]
        print(f"| {step} ({step * CHAR_TOKENS_PER_STEP:,}) | {show[0]} | {show[1]} |")
    last = results[0]["val_loss"]
    reach = next((step for step, loss in sorted(our_curve.items()) if loss <= last), None)
    print(f"\nnanoGPT after {n} iterations: val {last:.4f} in {results[0]['wall_s']:.0f} s; the recipe reaches it at "
          f"iteration {reach} ({reach * CHAR_TOKENS_PER_STEP if reach else 'not reached'} tokens, "
          f"{reach / n if reach else float('nan'):.2f}x nanoGPT's); its whole run took {results[1]['wall_s']:.0f} s")
    print(f"raw results: {work / 'speedrun-char.json'}")


if __name__ == "__main__":
    main()
