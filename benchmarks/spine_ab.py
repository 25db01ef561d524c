#!/usr/bin/env python3
"""Training-spine A/B: throughput and `make demo` wall time, previous code vs current code, side by side.

Both trees run with the same interpreter; only PYTHONPATH differs (it wins over the editable install), so the
comparison isolates the package code. The previous tree is a clean export of a commit, e.g.
`mkdir /tmp/old && git archive ee5a56a | tar -x -C /tmp/old`. Each case runs the old and the new tree
alternately for --rounds rounds, alternating which goes first so that drift in machine load hits both sides,
each in a fresh temp run dir with progress bar and TensorBoard off. Reported per run: the median `throughput`
(images/s or tokens/s) over the metrics.jsonl train records after the first one (which includes warm-up),
and the whole-process wall time.

Cases: `gan` (configs/mnist/dcgan.yaml, 200 steps), `gpt` (configs/shakespeare/gpt_char_baby.yaml, 300 steps),
both on the embedded mini data sets with one thread and sampling, checkpoints, validation and evaluation off;
`demo` runs each tree's own configs/quickstart.yaml exactly as `make demo` does (plus progress off), and the
new tree on the OLD quickstart config, so the spine's own overhead is visible apart from the config change.

    .venv/bin/python benchmarks/spine_ab.py --old /tmp/old --cases gan gpt --rounds 3 \\
        --json-out /tmp/ab/spine_ab_train.json

The demo case (add `demo`, e.g. `--cases demo --demo-rounds 1`) takes about 15-20 minutes a round on a slow
2-core CPU: the old quickstart alone runs 1000 steps of batch 64.

Prints a markdown table and writes --json-out. Keep the machine otherwise idle while it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUIET = ["--set", "train.progress=false", "--set", "train.tensorboard=false"]
# Same overrides for both trees: mini data, one thread, nothing but training steps.
OFF = ["train.threads=1", "train.sample_every=0", "train.checkpoint_every=0"]
CASES: dict[str, tuple[str, list[str]]] = {
    "gan": ("mnist/dcgan.yaml", ["data.name=mnist-mini", "train.steps=200", *OFF]),
    "gpt": ("shakespeare/gpt_char_baby.yaml",
            ["data.name=shakespeare-mini", "train.steps=300", *OFF, "train.val_every=0", "train.eval_every=0"]),
}


def run_train(tree: Path, config: Path, overrides: list[str], log_dir: Path, tag: str) -> dict:
    """Train once with the package under `tree`/src in a fresh run dir; return throughput and wall time."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [sys.executable, "-m", "genforge.cli", "train", str(config)]
    with tempfile.TemporaryDirectory(prefix="spine_ab_") as tmp:
        run_dir = Path(tmp) / "run"
        args = cmd + ["--run-dir", str(run_dir)] + QUIET + [a for o in overrides for a in ("--set", o)]
        t0 = time.perf_counter()
        proc = subprocess.run(args, env=env, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (log_dir / f"{tag}.log").write_text(" ".join(args) + "\n\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return {"ok": False, "wall_s": wall, "error": (proc.stderr or proc.stdout).strip()[-2000:]}
        metrics = run_dir / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rates = [r["throughput"] for r in records if "throughput" in r]
    steady = rates[1:] or rates
    return {"ok": True, "wall_s": round(wall, 2), "throughput": round(statistics.median(steady), 1) if steady else None,
            "n_records": len(rates)}


def ab(name: str, sides: dict[str, tuple[Path, Path]], overrides: list[str], rounds: int, log_dir: Path,
       key: str) -> dict[str, list[dict]]:
    """Run each side (label -> (tree, config)) once per round, reversing the order every other round."""
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for side in order:
            tree, config = sides[side]
            res = run_train(tree, config, overrides, log_dir, f"{name}-{side}-r{r}")
            runs[side].append(res)
            print(f"  {name} round {r} {side}: {res}", file=sys.stderr, flush=True)
    return runs


def summarize(name: str, old: list[dict], new: list[dict], key: str) -> dict:
    runs = {"old": old, "new": new}
    vals = {s: [x[key] for x in runs[s] if x.get("ok")] for s in runs}
    med = {s: statistics.median(v) if v else None for s, v in vals.items()}
    ratio = med["new"] / med["old"] if med["old"] and med["new"] else None
    return {"case": name, "metric": key, "old_median": med["old"], "new_median": med["new"],
            "ratio_new_over_old": round(ratio, 3) if ratio else None, "old": vals["old"], "new": vals["new"],
            "runs": runs}


def table(rows: list[dict]) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"
    out = ["| case | metric | old median | new median | new/old | old per round | new per round |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['case']} | {r['metric']} | {f(r['old_median'])} | {f(r['new_median'])} | "
                   f"{'-' if r['ratio_new_over_old'] is None else r['ratio_new_over_old']} | "
                   f"{', '.join(f(v) for v in r['old'])} | {', '.join(f(v) for v in r['new'])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", type=Path, default=Path("/tmp/old"), help="export of the previous commit (src/, configs/)")
    p.add_argument("--new", type=Path, default=REPO, help="current tree (src/, configs/)")
    p.add_argument("--cases", nargs="+", default=["gan", "gpt", "demo"], choices=["gan", "gpt", "demo"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--demo-rounds", type=int, default=None, help="rounds for the demo case (default: --rounds)")
    p.add_argument("--json-out", type=Path, default=Path("/tmp/ab/spine_ab.json"))
    args = p.parse_args(argv)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = args.json_out.parent / "logs"
    log_dir.mkdir(exist_ok=True)
    old, new = args.old.resolve(), args.new.resolve()

    rows = []
    for name in args.cases:
        if name in CASES:
            rel, overrides = CASES[name]
            runs = ab(name, {"old": (old, old / "configs" / rel), "new": (new, new / "configs" / rel)},
                      overrides, args.rounds, log_dir, "throughput")
            rows.append(summarize(name, runs["old"], runs["new"], "throughput"))
        else:
            # `make demo`: each tree's own quickstart (they differ on purpose), whole-process wall time; then the
            # new tree on the old config, so the spine's overhead shows apart from the config change.
            rounds = args.demo_rounds or args.rounds
            old_cfg, new_cfg = old / "configs" / "quickstart.yaml", new / "configs" / "quickstart.yaml"
            runs = ab("demo", {"old": (old, old_cfg), "new": (new, new_cfg), "new-oldcfg": (new, old_cfg)}, [],
                      rounds, log_dir, "wall_s")
            rows.append(summarize("demo (own configs)", runs["old"], runs["new"], "wall_s"))
            rows.append(summarize("demo (old config on both)", runs["old"], runs["new-oldcfg"], "wall_s"))
        # Written after every case, so a long demo case that is cut short keeps the results before it.
        args.json_out.write_text(json.dumps({"python": sys.executable, "old": str(old), "new": str(new),
                                             "rounds": args.rounds, "cases": rows}, indent=2))
    print(table(rows))
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
