"""Sentence data: the word tokenizer, IMDB's two layouts (aclImdb folders, CSV) with their cleaning, sentence splitting
and splits, the embedded lines data set, resumable sentence batches, and every bad input with a clear message."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import shared_data
from genforge.config import DataSection
from genforge.data.sentences import SentenceBatches, build_imdb, build_lines, clean_review, split_sentences
from genforge.data.tokenizers import WordTokenizer, boundary_id, load_tokenizer
from genforge.errors import UserError
from genforge.media import pad_sentences

# --------------------------------------------------------------------------------------------------------------
# Word tokenizer


def test_word_tokenizer_vocabulary_encode_decode() -> None:
    tok = WordTokenizer.train("The film was good. The film!\nA film was great.\n", min_freq=2)
    assert tok.words == ["<unk>", "\n", "film", ".", "the", "was"]  # by count, then alphabetically; min_freq 2
    assert tok.encode("THE FILM was great.\n") == [4, 2, 5, 0, 3, 1]
    assert tok.decode(tok.encode("the film, was bad.\nthe")) == "the film <unk> was <unk>.\nthe"
    full = WordTokenizer.train("I didn't like it, really (not at all)!", min_freq=1)
    assert full.decode(full.encode("I didn't like it, really (not at all)!")) == \
        "i didn't like it, really (not at all)!"
    assert WordTokenizer.train("a a a b b c", vocab_size=3).words == ["<unk>", "\n", "a"]  # the cap counts the two
    assert boundary_id(tok) == 1


def test_word_tokenizer_saves_loads_and_rejects_corrupt_files(tmp_path: Path) -> None:
    tok = WordTokenizer.train("one two two three three three")
    loaded = load_tokenizer(tok.save(tmp_path))
    assert isinstance(loaded, WordTokenizer) and loaded.words == tok.words
    (tmp_path / "bad.json").write_text('{"type": "genforge.word", "version": 1, "words": ["a", "b"]}')
    with pytest.raises(UserError, match="must start with '<unk>' and a newline"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(UserError, match=r"token id 99 is outside this tokenizer's vocabulary \[0, 5\)"):
        tok.decode([1, 99])


# --------------------------------------------------------------------------------------------------------------
# Cleaning and splitting


def test_clean_review_removes_html_and_collapses_space() -> None:
    raw = "Great film!<br /><br />The <i>best</i> of 2001 &amp; after.<BR>   Really."
    assert clean_review(raw) == "Great film! The best of 2001 & after. Really."


def test_split_sentences_keeps_abbreviations_and_initials() -> None:
    text = 'I saw it in N.Y. with Mr. Smith. It was great!! Really? "Yes." Then J. R. R. Tolkien wrote it. End'
    assert split_sentences(text) == ["I saw it in N.Y. with Mr. Smith.", "It was great!!", "Really?", '"Yes."',
                                     "Then J. R. R. Tolkien wrote it.", "End"]


# --------------------------------------------------------------------------------------------------------------
# IMDB layouts


def _aclimdb(root: Path) -> Path:
    reviews = {
        ("train", "pos", "0_9"): "A wonderful film. I loved it!<br /><br />Great cast.",
        ("train", "pos", "1_8"): "Great fun. Wonderful music.",
        ("train", "neg", "0_2"): "A dull film. I hated it.",
        ("train", "neg", "1_1"): "Awful. Dull and long.",
        ("test", "pos", "0_10"): "Great film.",
        ("test", "neg", "0_3"): "Dull film.",
        ("train", "unsup", "0_0"): "No label here.",
    }
    for (split, label, name), text in reviews.items():
        folder = root / "aclImdb" / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.txt").write_text(text)
    return root


def test_aclimdb_layout_gives_labelled_sentences_in_three_splits(tmp_path: Path) -> None:
    cfg = DataSection(name="imdb", path=str(_aclimdb(tmp_path)), tokenizer="word", val_fraction=0.25)
    train, val, test = (build_imdb(cfg, s) for s in ("train", "val", "test"))
    # the train reviews in their fixed shuffled order, the last quarter (one review, whole) is val
    assert train.texts == ["A dull film.", "I hated it.", "Awful.", "Dull and long.", "Great fun.", "Wonderful music."]
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1] and train.class_names == ("neg", "pos")
    assert val.texts == ["A wonderful film.", "I loved it!", "Great cast."] and val.labels.tolist() == [1, 1, 1]
    assert test.texts == ["Dull film.", "Great film."] and test.labels.tolist() == [0, 1]  # unsup/ is skipped
    # the tokenizer is fitted on train only: val's words unseen there are <unk>
    assert [val.tokenizer.decode(ids) for ids in val.sentences] == ["a wonderful film.", "i <unk> it <unk>",
                                                                     "great <unk>."]


def test_csv_layout_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "reviews.csv"
    good.write_text('review,label,split\n"Loved it. Great.",pos,train\n"Hated it.",negative,train\n'
                    '"Fine film.",1,test\n')
    cfg = DataSection(name="imdb", path=str(good), tokenizer="word", val_fraction=0.0)
    assert build_imdb(cfg, "train").texts == ["Loved it.", "Great.", "Hated it."]
    assert build_imdb(cfg, "train").labels.tolist() == [1, 1, 0]
    assert build_imdb(cfg, "test").labels.tolist() == [1]
    with pytest.raises(UserError, match="the val split of imdb is empty: `data.val_fraction` is 0"):
        build_imdb(cfg, "val")
    cases = {
        "text,label\nx,1\n": "has no 'review' column .*header is text, label",
        "review,label\nx,maybe\n": r"line 2: label 'maybe' is not a sentiment; use 0/1, neg/pos",
        "review,label,split\nx,1,dev\n": "line 2: split 'dev' is neither train nor test",
        "review,label\n": "a header but no reviews",
    }
    for i, (content, message) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.csv"
        bad.write_text(content)
        with pytest.raises(UserError, match=message):
            build_imdb(DataSection(name="imdb", path=str(bad), tokenizer="word"), "train")
    no_test = tmp_path / "no_test.csv"
    no_test.write_text("review,label\nGood.,1\nBad.,0\n")
    with pytest.raises(UserError, match="test split of imdb is empty: the source has no test reviews"):
        build_imdb(DataSection(name="imdb", path=str(no_test), tokenizer="word"), "test")
    with pytest.raises(UserError, match="does not exist; point it at an IMDB CSV"):
        build_imdb(DataSection(name="imdb", path=str(tmp_path / "nope.csv")), "train")
    with pytest.raises(UserError, match=r"IMDB not found at .*imdb/raw/aclImdb .*set `data.path`"):
        build_imdb(DataSection(name="imdb", root=str(tmp_path / "empty-root")), "train")
    with pytest.raises(UserError, match="not a split of imdb; allowed: train, val, test"):
        build_imdb(cfg, "dev")


def test_long_sentences_are_left_out_and_long_reviews_cut(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text('review,label\n"One two three four five six. Short one.",1\n')
    sentences = build_imdb(DataSection(name="imdb", path=str(csv), tokenizer="word", val_fraction=0.0,
                                       max_length=4), "train")
    assert sentences.texts == ["Short one."]
    reviews = build_imdb(DataSection(name="imdb", path=str(csv), tokenizer="word", val_fraction=0.0,
                                     max_length=4, unit="review"), "train")
    assert reviews.tokenizer.decode(reviews.sentences[0]) == "one two three four"


def test_real_imdb_subset_counts() -> None:
    path = shared_data("imdb", "imdb_subset.csv")
    cfg = DataSection(name="imdb", path=str(path), tokenizer="word", min_freq=3, vocab_size=6000, max_length=40)
    train, val, test = (build_imdb(cfg, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (51655, 5725, 11164)
    assert train.tokenizer.vocab_size == 6000
    assert train.labels.float().mean().item() == pytest.approx(0.48710, abs=1e-5)  # neg reviews have more sentences
    assert train.tokens[:3].tolist() == [1, *train.sentences[0][:2]]  # a GPT reads newline-separated sentences


# --------------------------------------------------------------------------------------------------------------
# Lines and batches


def test_embedded_lines_and_resumable_batches() -> None:
    cfg = DataSection(name="lines", tokenizer="word", max_length=12, limit=400)
    train = build_lines(cfg, "train")
    assert (len(train), train.texts[0], train.labels) == (331, "First Citizen:", None)
    batches = SentenceBatches(train, 8, seed=0)
    first = batches.next_batch()
    x, y = first["x"], first["y"]
    lengths = (y != -100).sum(1)
    assert (x[:, 0] == 1).all() and torch.equal(x[:, 1:][y[:, :-1] != -100], y[:, :-1][y[:, :-1] != -100])
    assert [int(y[r, lengths[r] - 1]) for r in range(8)] == [1] * 8  # every sentence ends with the boundary
    assert int(lengths.max()) == x.shape[1]
    state = batches.state_dict()
    expected = [batches.next_batch() for _ in range(50)]  # past the end of an epoch of 41 batches
    resumed = SentenceBatches(train, 8, seed=123)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch()
        assert torch.equal(got["x"], want["x"]) and torch.equal(got["y"], want["y"])
    with pytest.raises(UserError, match="fewer than one batch of `train.batch_size` = 1000"):
        SentenceBatches(train, 1000, seed=0)


def test_pad_sentences_layout() -> None:
    batch = pad_sentences([[5, 6], [7]], boundary=1, labels=torch.tensor([1, 0]))
    assert batch["x"].tolist() == [[1, 5, 6], [1, 7, 1]]
    assert batch["y"].tolist() == [[5, 6, 1], [7, 1, -100]]
    assert batch["label"].tolist() == [1, 0]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_every_tokenizer_kind_reads_imdb_with_a_newline_boundary(tmp_path: Path, kind: str) -> None:
    cfg = DataSection(name="imdb", path=str(_aclimdb(tmp_path)), tokenizer=kind, val_fraction=0.25,
                      vocab_size=300 if kind == "bpe" else None)
    train = build_imdb(cfg, "train")
    assert train.tokenizer.decode([train.boundary]) == "\n"
    assert train.tokenizer.decode(train.sentences[0]) == "A dull film."  # char and BPE keep case and spacing
