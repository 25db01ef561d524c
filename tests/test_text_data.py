"""Tokenizers (char, byte-level BPE, tokenizer.json) and text data sets (reading, splits, batches, resume)."""
from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import shared_data
from genforge.config import DataSection
from genforge.data.text import (TextBatches, build_shakespeare, build_shakespeare_mini, build_text, encode_corpus,
                                read_corpus)
from genforge.data.tokenizers import BPETokenizer, load_tokenizer, train_tokenizer
from genforge.errors import UserError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def data_cfg(path: Path | None = None, **fields):
    """A data section as a namespace, so that the text fields (val_fraction, tokenizer, vocab_size) work before
    config.DataSection has them."""
    values = dict(name="text", root=None, path=str(path) if path else None, split="train", limit=None)
    values.update(fields)
    return SimpleNamespace(**values)


# --------------------------------------------------------------------------------------------------------------
# Tokenizers


def test_char_tokenizer_round_trip_and_unknown_character():
    tokenizer = train_tokenizer("char", "hello world\n")
    assert tokenizer.chars == sorted(set("hello world\n")) and tokenizer.vocab_size == 9
    ids = tokenizer.encode("world hello")
    assert tokenizer.decode(ids) == "world hello"
    assert ids[:2] == [tokenizer.chars.index("w"), tokenizer.chars.index("o")]
    with pytest.raises(UserError, match=r"character 'Z' \(U\+005A\) at position 6"):
        tokenizer.encode("hello Z")
    with pytest.raises(UserError, match="data.vocab_size"):
        train_tokenizer("char", "abc", vocab_size=100)


def test_bpe_round_trip():
    pytest.importorskip("tokenizers")
    tokenizer = train_tokenizer("bpe", TEXT, vocab_size=300)
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.vocab_size == 300
    ids = tokenizer.encode("Before we proceed, speak.")
    assert len(ids) < len("Before we proceed, speak.")  # merges learned from TEXT apply
    for text in ["Before we proceed, speak.", "Unseen: naïve café ✓ 😀\n\n  two  spaces", ""]:
        assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level: any text round-trips
    with pytest.raises(UserError, match="at least 256"):
        train_tokenizer("bpe", TEXT, vocab_size=100)


def test_corpus_encoding_in_pieces_equals_whole(monkeypatch):
    pytest.importorskip("tokenizers")
    import genforge.data.text as text_module
    tokenizer = train_tokenizer("bpe", TEXT, vocab_size=300)
    monkeypatch.setattr(text_module, "_BPE_CHUNK_CHARS", 50)  # many cuts, each at "\n" + non-space
    assert encode_corpus(tokenizer, TEXT).tolist() == tokenizer.encode(TEXT)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizer_json_save_load(tmp_path, kind):
    if kind == "bpe":
        pytest.importorskip("tokenizers")
    tokenizer = train_tokenizer(kind, TEXT, vocab_size=280 if kind == "bpe" else None)
    written = tokenizer.save(tmp_path)
    assert written == tmp_path / "tokenizer.json"
    for path in (tmp_path, written):  # the directory or the file
        loaded = load_tokenizer(path)
        assert type(loaded) is type(tokenizer) and loaded.vocab_size == tokenizer.vocab_size
        assert loaded.encode("All: speak.") == tokenizer.encode("All: speak.")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="no tokenizer at"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"something": "else"}')
    with pytest.raises(UserError, match="not a tokenizer genforge knows"):
        load_tokenizer(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# Reading and splitting


def test_split_fractions(tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text("abcdefghij" * 100)  # 1,000 characters
    train, val = build_text(data_cfg(file), "train"), build_text(data_cfg(file), "val")
    assert (len(train), len(val)) == (900, 100)  # nanoGPT: first 90% / last 10%
    assert train.tokenizer is val.tokenizer and train.tokens.dtype == torch.uint16
    assert train.tokenizer.decode(val.tokens[:3].tolist()) == "abc"
    cfg = data_cfg(file, val_fraction=0.25)
    assert (len(build_text(cfg, "train")), len(build_text(cfg, "val"))) == (750, 250)
    assert len(build_text(data_cfg(file, limit=200), "train")) == 180  # data.limit: the first N characters
    with pytest.raises(UserError, match="data.val_fraction` is 0"):
        build_text(data_cfg(file, val_fraction=0.0), "val")
    with pytest.raises(UserError, match="`data.split` = 'test'"):
        build_text(data_cfg(file), "test")


def test_works_with_the_current_data_section(tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text("to be or not to be\n" * 10)
    assert len(build_text(DataSection(name="text", path=str(file)), "val")) == 19


def test_folder_is_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third\n")
    (tmp_path / ".hidden").write_text("never")
    assert read_corpus(tmp_path) == "first\nsecond\nthird\n"


def test_non_utf8_file_is_a_user_error(tmp_path):
    (tmp_path / "good.txt").write_text("fine\n")
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt is not UTF-8"):
        build_text(data_cfg(tmp_path), "train")
    with pytest.raises(UserError, match="does not exist"):
        build_text(data_cfg(tmp_path / "missing.txt"), "train")


def test_shakespeare_mini_is_embedded():
    train = build_shakespeare_mini(data_cfg(), "train")
    val = build_shakespeare_mini(data_cfg(), "val")
    assert (len(train), len(val), train.tokenizer.vocab_size) == (89859, 9985, 61)
    assert train.tokenizer.decode(train.tokens[:14].tolist()) == "First Citizen:"


def test_full_shakespeare_needs_a_fetch(tmp_path):
    with pytest.raises(UserError, match="genforge data fetch tinyshakespeare"):
        build_shakespeare(data_cfg(root=str(tmp_path)), "train")


def test_tiny_shakespeare_split_matches_nanogpt(tmp_path):
    raw = tmp_path / "tinyshakespeare" / "raw"
    raw.mkdir(parents=True)
    (raw / "input.txt").symlink_to(shared_data("tinyshakespeare", "input.txt").resolve())
    train = build_shakespeare(data_cfg(root=str(tmp_path)), "train")
    val = build_shakespeare(data_cfg(root=str(tmp_path)), "val")
    # nanoGPT data/shakespeare_char/prepare.py: vocab 65, 1,003,854 train and 111,540 val tokens
    assert (train.tokenizer.vocab_size, len(train), len(val)) == (65, 1003854, 111540)


# --------------------------------------------------------------------------------------------------------------
# Batches


@pytest.fixture
def dataset(tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text(TEXT)
    return build_text(data_cfg(file), "train")


def test_batches_are_shifted_windows(dataset):
    batch = TextBatches(dataset, batch_size=4, block_size=16, seed=0).next_batch()
    assert batch["x"].shape == batch["y"].shape == (4, 16) and batch["x"].dtype == torch.int64
    assert torch.equal(batch["x"][:, 1:], batch["y"][:, :-1])  # y is x moved one token ahead
    text = dataset.tokenizer.decode(dataset.tokens.tolist())
    assert dataset.tokenizer.decode(batch["x"][0].tolist()) in text


def test_batches_are_seeded_and_resume_exactly(dataset):
    a, b = TextBatches(dataset, 4, 16, seed=1), TextBatches(dataset, 4, 16, seed=1)
    assert all(torch.equal(a.next_batch()["x"], b.next_batch()["x"]) for _ in range(3))
    assert not torch.equal(TextBatches(dataset, 4, 16, seed=2).next_batch()["x"], b.next_batch()["x"])
    # a checkpoint taken now, then the uninterrupted run continues
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    expected = [a.next_batch() for _ in range(3)]
    buffer.seek(0)
    resumed = TextBatches(dataset, 4, 16, seed=123)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for batch in expected:
        got = resumed.next_batch()
        assert torch.equal(got["x"], batch["x"]) and torch.equal(got["y"], batch["y"])


def test_block_size_larger_than_split_is_a_user_error(dataset):
    with pytest.raises(UserError, match="model.block_size"):
        TextBatches(dataset, batch_size=2, block_size=len(dataset), seed=0)
