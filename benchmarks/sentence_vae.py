"""Sentence VAE on IMDB: which remedies prevent posterior collapse, how close the VAE's likelihood comes to a GPT's,
and how well the sentiment CVAE obeys its class. Every row trains with the genforge CLI on the same data and the same
budget, then `genforge eval` scores it on the same held-out sentences.

    python benchmarks/sentence_vae.py --data ../shared/data/imdb/imdb_subset.csv --steps 600 --out /tmp/svae

Rows (imdb/sentence_vae.yaml with these changes; the annealing lengths scale with --steps):
    none         β = 1 from the first step, no word dropout, no free bits (the setting that collapses)
    linear       β ramped linearly over the first half of training (Bowman et al. 2016)
    cyclical+wd  4 cycles of cyclical annealing (Fu et al. 2019) and 30% word dropout (Bowman et al. 2016)
    free-bits    β = 1 with 0.2 free nats per latent dimension (Kingma et al. 2016)
    lm           imdb/gpt_words.yaml: a GPT language model of similar size, as many training tokens as the VAE rows
    cvae         imdb/sentence_cvae.yaml (cyclical + word dropout) for --cvae-steps, scored on the sentiment of 500
                 positive and 500 negative samples at class guidance 1 (none), 2 and 3

Every VAE row's samples (for distinct-n and self-BLEU) are decoded at temperature 0.8, top-p 0.9, no repeated
3-grams, as the configs sample. A second call with the same --out skips the training of rows already trained and
evaluates them again.

Runs go --jobs at a time, one torch thread each; the table is printed as Markdown at the end and written to
OUT/table.md. Wall times depend on the machine and on what shares it: compare rows of one run only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GENFORGE = [str(Path(sys.executable).with_name("genforge"))]  # the CLI of the venv that runs this script
TOKENS_PER_SENTENCE = 19.3  # mean tokens per training sentence of the IMDB subset (words + end), for the LM's budget


def rows(steps: int, cvae_steps: int) -> dict[str, tuple[str, list[str]]]:
    half, cycle = max(1, steps // 2), max(1, steps // 4)
    lm_steps = round(steps * 64 * TOKENS_PER_SENTENCE / (16 * 64))  # the GPT's batch: 16 windows of 64 tokens
    return {
        "none": ("imdb/sentence_vae", ["model.anneal=none", "model.word_dropout=0", "model.free_bits=0"]),
        "linear": ("imdb/sentence_vae", ["model.anneal=linear", f"model.anneal_steps={half}",
                                         "model.word_dropout=0", "model.free_bits=0"]),
        "cyclical+wd": ("imdb/sentence_vae", ["model.anneal=cyclical", f"model.anneal_steps={cycle}",
                                              "model.anneal_cycles=4", "model.word_dropout=0.3", "model.free_bits=0"]),
        "free-bits": ("imdb/sentence_vae", ["model.anneal=none", "model.word_dropout=0", "model.free_bits=0.2"]),
        "lm": ("imdb/gpt_words", [f"train.steps={lm_steps}", "train.optim.warmup_steps=50"]),
        "cvae": ("imdb/sentence_cvae", [f"train.steps={cvae_steps}", f"model.anneal_steps={max(1, cvae_steps // 4)}",
                                        "model.anneal_cycles=4"]),
    }


SAMPLING = ["sample.temperature=0.8", "sample.top_p=0.9", "sample.no_repeat_ngram_size=3"]  # as the configs sample
GUIDANCE = (1.0, 2.0, 3.0)  # the CVAE's sentiment is measured at each


def evaluate(run_dir: Path, metrics: str, out: Path, args: argparse.Namespace, sets: list[str]) -> dict:
    command = [*GENFORGE, "eval", str(run_dir), "--metrics", metrics, "--test-limit", str(args.test_limit),
               "--iw-samples", str(args.iw_samples), "--n", "1000", "--json", str(out)]
    subprocess.run(command + [a for s in sets for a in ("--set", s)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["metrics"]


def run(name: str, config: str, overrides: list[str], args: argparse.Namespace) -> dict:
    run_dir = args.out / name.replace("+", "_")
    sets = [f"data.path={args.data}", f"train.steps={args.steps}", "train.progress=false", "train.sample_every=0",
            f"train.checkpoint_every={args.steps}", "train.tensorboard=false", *overrides]
    train = [*GENFORGE, "train", config, "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    if not (run_dir / "latest").exists():  # a second call only evaluates again
        with (args.out / f"{run_dir.name}.log").open("w") as log:
            subprocess.run(train, check=True, stdout=subprocess.DEVNULL, stderr=log)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tokens = max((r.get("tokens_seen", 0) for r in records), default=0)
    train_s = max((r.get("elapsed", 0.0) for r in records), default=0.0)  # the trainer's time in training steps
    if name == "lm":
        results = evaluate(run_dir, "sentence-nll", run_dir / "eval.json", args, [])
    else:
        results = evaluate(run_dir, "sentence-elbo,sentence-nll,distinct,self-bleu", run_dir / "eval.json", args,
                           SAMPLING)
    if name == "cvae":
        for g in GUIDANCE:
            found = evaluate(run_dir, "sentiment,distinct,self-bleu", run_dir / f"sentiment-g{g:g}.json", args,
                             [*SAMPLING, f"sample.guidance={g}"])
            results.update({f"g{g:g}/{k}": v for k, v in found.items()})
    return {"name": name, "train_min": train_s / 60, "tokens": tokens, **results}


def pick(results: dict, prefix: str) -> float | None:
    for key, value in results.items():
        if key.startswith(prefix):
            return value
    return None


def table(results: list[dict]) -> str:
    lines = ["| row | KL (nats) | MI (nats) | active units | -ELBO / word | IW-NLL / word | perplexity | "
             "distinct-2 | self-BLEU | tokens | train min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def f(prefix: str, fmt: str = "{:.2f}") -> str:
            value = pick(r, prefix)
            return "-" if value is None else fmt.format(value)
        iw = next((v for k, v in r.items() if k.startswith("nll-iw") and "-per-word-" in k), None)
        exact = next((v for k, v in r.items() if k.startswith("nll-exact-per-word")), None)
        nll = f"{iw:.3f}" if iw is not None else (f"{exact:.3f} (exact)" if exact is not None else "-")
        ppl = next((v for k, v in r.items() if k.startswith("ppl-")), None)
        lines.append(f"| {r['name']} | {f('kl-')} | {f('mi-')} | {f('active-units', '{:.0f}')} | "
                     f"{f('neg-elbo-per-word', '{:.3f}')} | {nll} | {'-' if ppl is None else f'{ppl:.1f}'} | "
                     f"{f('distinct_2@', '{:.3f}')} | {f('self_bleu@', '{:.1f}')} | {r['tokens']:,} | "
                     f"{r['train_min']:.1f} |")
    for r in results:
        for g in GUIDANCE:
            if f"g{g:g}/sentiment-acc-neg" not in r:
                continue
            acc = next(v for k, v in r.items() if k.startswith(f"g{g:g}/sentiment-acc") and k[-2:] == "1k")
            lines.append(f"\n{r['name']}, guidance {g:g}: sentiment accuracy {100 * acc:.1f}% (neg "
                         f"{100 * r[f'g{g:g}/sentiment-acc-neg']:.1f}%, pos {100 * r[f'g{g:g}/sentiment-acc-pos']:.1f}%), "
                         f"distinct-2 {r[f'g{g:g}/distinct_2@1000']:.3f}, self-BLEU {r[f'g{g:g}/self_bleu@1000']:.1f}; "
                         f"the judge's accuracy on real test sentences {100 * pick(r, f'g{g:g}/sentiment-judge-acc'):.1f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="IMDB CSV or aclImdb folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/svae"))
    parser.add_argument("--steps", type=int, default=600, help="training steps of each VAE row (64 sentences each)")
    parser.add_argument("--cvae-steps", type=int, default=1500)
    parser.add_argument("--rows", default="none,linear,cyclical+wd,free-bits,lm")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--iw-samples", type=int, default=50)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table_rows = rows(args.steps, args.cvae_steps)
    names = args.rows.split(",")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda n: run(n, *table_rows[n], args), names))
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
