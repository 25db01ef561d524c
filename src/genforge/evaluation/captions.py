"""Caption metrics computed as the COCO caption evaluation toolkit (pycocoevalcap, the scorer every captioning paper
reports) computes them: BLEU-1..4, ROUGE-L and CIDEr-D, corpus-level, on PTB-style tokens.

Inputs are dicts keyed by image: `candidates[image]` one caption, `references[image]` a list of captions. Both are
tokenized by `ptb_tokenize` and joined with single spaces before scoring, as the toolkit does with the Stanford
PTBTokenizer (lower case, punctuation tokens removed). genforge's tokenizer is a Python re-implementation of that
tokenizer's behaviour on caption text (clitics split as "do n't", "it 's"; brackets, quotes and the punctuation the
toolkit lists removed); the scorers themselves were checked against the toolkit's on identical token strings
(`benchmarks/caption_metrics_reference.py`; pinned in `tests/test_caption_metrics.py`).

BLEU (Papineni et al. 2002), as the toolkit's `bleu_scorer.py`: n-gram counts clipped by the maximum count in any one
reference, summed over the corpus; BLEU-n is the geometric mean of the first n precisions, each smoothed as
(correct + 1e-15) / (guessed + 1e-9); the brevity penalty compares the total candidate length with the sum of each
candidate's *closest* reference length (ties to the shorter). ROUGE-L (Lin 2004), as `rouge.py`: per image the
longest common subsequence with each reference, the best precision and the best recall over the references
(separately), F with beta 1.2; the mean over images. CIDEr-D (Vedantam et al. 2015), as `cider_scorer.py`: TF-IDF
vectors of 1..4-grams with the document frequency taken over the references of all images (log(max(1, df)) against
log(number of images)), the candidate's counts clipped at each reference's, cosine similarity per n, times a Gaussian
length penalty exp(-δ²/2σ²) with σ = 6 (δ counted in bigrams, as the toolkit does), averaged over n and references,
times 10; the mean over images.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

# What the toolkit's tokenizer wrapper drops after PTB tokenization (PTB writes brackets as -LRB- etc., quotes as `` '')
PUNCTUATION = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--", "...", ";",
               '"', "(", ")", "[", "]", "{", "}"}
_TOKEN = re.compile(r"\.\.\.|--|[a-z0-9]+(?:[-'.&/][a-z0-9]+)*'?|[^\sa-z0-9]")
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2


def ptb_tokenize(text: str) -> list[str]:
    """Lower-cased PTB-style tokens of a caption, without punctuation: "A dog's ball, isn't it?" ->
    ["a", "dog", "'s", "ball", "is", "n't", "it"]."""
    tokens = []
    for token in _TOKEN.findall(text.lower().replace("\u2019", "'")):
        for clitic in _CLITICS:
            if token.endswith(clitic) and len(token) > len(clitic):
                tokens += [token[: -len(clitic)], clitic]
                break
        else:
            tokens.append(token.strip("'") or token)
    return [t for t in tokens if t not in PUNCTUATION]


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    if set(candidates) != set(references):
        missing = sorted(set(references) - set(candidates))[:3] or sorted(set(candidates) - set(references))[:3]
        raise ValueError(f"candidates and references must cover the same images; e.g. {missing} is in only one")
    empty = [image for image, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"image {empty[0]!r} has no reference caption")
    return list(references)


def bleu(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], n: int = 4) -> list[float]:
    """[BLEU-1, ..., BLEU-n] of whitespace-tokenized captions (see the module docstring)."""
    images = _check(candidates, references)
    correct, guessed = [0] * n, [0] * n
    test_len = ref_len = 0
    for image in images:
        words = candidates[image].split()
        refs = [r.split() for r in references[image]]
        max_counts: Counter = Counter()
        for ref in refs:
            for gram, count in _ngrams(ref, n).items():
                max_counts[gram] = max(max_counts[gram], count)
        for gram, count in _ngrams(words, n).items():
            correct[len(gram) - 1] += min(max_counts[gram], count)
        for k in range(n):
            guessed[k] += max(0, len(words) - k)
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in refs)[1]
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + 1e-15) / (guessed[k] + 1e-9)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + 1e-15) / (ref_len + 1e-9)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [s * penalty for s in scores]


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    """Mean ROUGE-L F (beta 1.2) over images, the best precision and recall over each image's references."""
    images = _check(candidates, references)
    total = 0.0
    for image in images:
        words = candidates[image].split(" ")
        precision = recall = 0.0
        for ref in references[image]:
            ref_words = ref.split(" ")
            common = _lcs(ref_words, words)
            precision = max(precision, common / len(words))
            recall = max(recall, common / len(ref_words))
        if precision and recall:
            total += (1 + ROUGE_BETA**2) * precision * recall / (recall + ROUGE_BETA**2 * precision)
    return total / len(images)


def cider_d(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], n: int = 4,
            sigma: float = CIDER_SIGMA) -> float:
    """Mean CIDEr-D over images (see the module docstring)."""
    images = _check(candidates, references)
    ref_counts = {image: [_ngrams(r.split(), n) for r in references[image]] for image in images}
    document_frequency: Counter = Counter()
    for image in images:
        document_frequency.update({gram for counts in ref_counts[image] for gram in counts})
    log_images = math.log(float(len(images)))

    def vectors(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norms = [0.0] * n
        for gram, tf in counts.items():
            weight = tf * (log_images - math.log(max(1.0, document_frequency[gram])))
            vec[len(gram) - 1][gram] = weight
            norms[len(gram) - 1] += weight * weight
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)  # the toolkit's length
        return vec, [math.sqrt(v) for v in norms], bigrams

    total = 0.0
    for image in images:
        vec, norms, length = vectors(_ngrams(candidates[image].split(), n))
        score = [0.0] * n
        for counts in ref_counts[image]:
            ref_vec, ref_norms, ref_length = vectors(counts)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * sigma**2))
            for k in range(n):
                value = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in vec[k].items())
                if norms[k] and ref_norms[k]:
                    value /= norms[k] * ref_norms[k]
                score[k] += value * penalty
        total += sum(score) / n / len(ref_counts[image]) * 10.0
    return total / len(images)


def caption_scores(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of raw captions, PTB-tokenized first as the toolkit does."""
    cands = {image: " ".join(ptb_tokenize(c)) for image, c in candidates.items()}
    refs = {image: [" ".join(ptb_tokenize(r)) for r in rs] for image, rs in references.items()}
    b = bleu(cands, refs)
    return {**{f"bleu{k + 1}": b[k] for k in range(4)}, "rouge_l": rouge_l(cands, refs),
            "cider_d": cider_d(cands, refs)}
