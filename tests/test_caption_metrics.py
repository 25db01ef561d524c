"""Caption metrics equal the COCO caption toolkit's (pycocoevalcap): the values pinned here are the toolkit's own
scores of this toy set on the same token strings, printed by `benchmarks/caption_metrics_reference.py` (which also
checks 1,000 Flickr8k images: equal to 4e-16)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from genforge.evaluation.captions import bleu, caption_scores, cider_d, ptb_tokenize, rouge_l

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from caption_metrics_reference import TOY_CANDIDATES, TOY_REFERENCES  # noqa: E402

# pycocoevalcap 1.2 (Bleu(4), Rouge(), Cider()) on the PTB-tokenized toy set
TOOLKIT = {"bleu1": 0.903225806422, "bleu2": 0.697389673917, "bleu3": 0.452477762900, "bleu4": 0.271697536144,
           "rouge_l": 0.552398794509, "cider_d": 1.519965064317}


def test_scores_equal_the_toolkits() -> None:
    scores = caption_scores(TOY_CANDIDATES, TOY_REFERENCES)
    for key, value in TOOLKIT.items():
        assert scores[key] == pytest.approx(value, abs=1e-9), key


def test_ptb_style_tokens() -> None:
    assert ptb_tokenize("A dog's ball, isn't it?") == ["a", "dog", "'s", "ball", "is", "n't", "it"]
    assert ptb_tokenize('Two "kids" (boys) play -- in the sand...') == ["two", "kids", "boys", "play", "in", "the",
                                                                         "sand"]
    assert ptb_tokenize("A black-and-white dog, 3.5 ft tall.") == ["a", "black-and-white", "dog", "3.5", "ft", "tall"]


def test_edge_cases_of_the_scorers() -> None:
    refs = {"a": ["a dog runs", "the dog is running"]}
    assert bleu({"a": "a dog runs"}, refs)[0] == pytest.approx(1.0)  # an exact reference: full precision, no penalty
    assert rouge_l({"a": "cat"}, refs) == 0.0
    # CIDEr-D's IDF of a one-image corpus is log(1) - log(1) = 0 for every n-gram: no information, score 0
    assert cider_d({"a": "a dog runs"}, refs) == 0.0
    with pytest.raises(ValueError, match="must cover the same images"):
        bleu({"a": "x"}, {"b": ["x"]})
    with pytest.raises(ValueError, match="image 'a' has no reference caption"):
        rouge_l({"a": "x"}, {"a": []})
