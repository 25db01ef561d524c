"""Check genforge's caption metrics against the COCO caption evaluation toolkit (pycocoevalcap) on identical token
strings: BLEU-1..4, ROUGE-L and CIDEr-D, over a fixed toy set (the one `tests/test_caption_metrics.py` pins) and,
with --captions, over a Flickr8k-style captions.txt (`image,caption`): each image's first caption is the candidate,
the others its references, and a second pass shuffles the candidates between images.

    pip download pycocoevalcap --no-deps -d /tmp/pcec && unzip -q /tmp/pcec/*.whl -d /tmp/pcec/x
    python benchmarks/caption_metrics_reference.py --toolkit /tmp/pcec/x --captions ../shared/data/flickr8k_subset/captions.txt

The toolkit's scorers are pure Python (its PTB tokenizer needs Java and is not run: both sides get genforge's
`ptb_tokenize` output). Prints each score from both and the largest absolute difference.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from collections import defaultdict

from genforge.evaluation.captions import bleu, cider_d, ptb_tokenize, rouge_l

TOY_REFERENCES = {
    "1": ["A black dog runs across the grass.", "A dog is running on a lawn.", "The black dog plays outside."],
    "2": ["Two children play in the sand at the beach.", "Kids building a sandcastle.", "Two kids on a beach."],
    "3": ["A man rides a red bicycle down the street.", "A cyclist on a city street.",
          "A man on a bike in traffic.", "Someone is riding a bicycle."],
    "4": ["A woman in a blue dress smiles.", "A smiling woman wearing blue.", "A lady in blue is happy."],
    "5": ["Snow covers the mountains.", "A snowy mountain range under a clear sky.", "Mountains with snow."],
}
TOY_CANDIDATES = {"1": "a black dog is running on the grass", "2": "two kids play on the beach",
                  "3": "a man is riding a bike on the street", "4": "a woman", "5": "a dog runs in the snow"}


def toolkit_scores(toolkit: str, cands: dict[str, str], refs: dict[str, list[str]]) -> dict[str, float]:
    sys.path.insert(0, toolkit)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    res = {k: [v] for k, v in cands.items()}
    b, _ = Bleu(4).compute_score(refs, res, verbose=0)
    r, _ = Rouge().compute_score(refs, res)
    c, _ = Cider().compute_score(refs, res)
    return {**{f"bleu{k + 1}": b[k] for k in range(4)}, "rouge_l": float(r), "cider_d": float(c)}


def ours(cands: dict[str, str], refs: dict[str, list[str]]) -> dict[str, float]:
    b = bleu(cands, refs)
    return {**{f"bleu{k + 1}": b[k] for k in range(4)}, "rouge_l": rouge_l(cands, refs), "cider_d": cider_d(cands, refs)}


def compare(name: str, toolkit: str, cands: dict[str, str], refs: dict[str, list[str]]) -> float:
    cands = {k: " ".join(ptb_tokenize(v)) for k, v in cands.items()}
    refs = {k: [" ".join(ptb_tokenize(r)) for r in v] for k, v in refs.items()}
    theirs, mine = toolkit_scores(toolkit, cands, refs), ours(cands, refs)
    worst = max(abs(theirs[k] - mine[k]) for k in theirs)
    print(f"{name} ({len(cands)} images): " + ", ".join(f"{k} {theirs[k]:.12f} / {mine[k]:.12f}" for k in theirs))
    print(f"  largest |toolkit - genforge| = {worst:.2e}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toolkit", required=True, help="folder holding the unpacked pycocoevalcap package")
    parser.add_argument("--captions", help="a captions.txt with image,caption rows (Flickr8k layout)")
    args = parser.parse_args()
    compare("toy set", args.toolkit, TOY_CANDIDATES, TOY_REFERENCES)
    if args.captions:
        by_image: dict[str, list[str]] = defaultdict(list)
        with open(args.captions, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                by_image[row["image"]].append(row["caption"])
        cands = {k: v[0] for k, v in by_image.items()}
        refs = {k: v[1:] for k, v in by_image.items()}
        compare("held-out reference as candidate", args.toolkit, cands, refs)
        keys = sorted(cands)
        shuffled = keys[:]
        random.Random(0).shuffle(shuffled)
        compare("candidates of other images", args.toolkit, {k: cands[s] for k, s in zip(keys, shuffled)}, refs)


if __name__ == "__main__":
    main()
