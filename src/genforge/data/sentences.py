"""Sentence data sets: IMDB movie reviews (Maas et al. 2011) with their sentiment, and any text file read one sentence
per line. What sentence VAEs train on, and what a GPT can train on too (as one stream of sentences).

Reading IMDB (`data.name: imdb`, `data.path` = the file or folder; default `<data root>/imdb/raw/aclImdb`):

- the official aclImdb layout: `{train,test}/{pos,neg}/{id}_{rating}.txt` (the `unsup` reviews have no label and are
  skipped), or a folder holding `aclImdb/`;
- a CSV with at least the columns `review` and `label` (0/1, or neg/pos, negative/positive), and optionally `split`
  (train/test; without it every review is train and there is no test split).

Each review is cleaned (the `<br />` line breaks and other HTML tags removed, entities unescaped, white space
collapsed), then cut into sentences at `.`, `!` and `?` (not after Mr., Dr., etc.) with `data.unit: sentence`, or
kept whole (`data.unit: review`). Every sentence keeps its review's label. The train reviews are shuffled once with a
fixed seed and the last `data.val_fraction` of them (whole reviews, so no review is in two splits) are "val"; the
official test reviews are "test". Sentences longer than `data.max_length` tokens are left out (a cut sentence would
teach a model to end sentences mid-clause); whole reviews are cut to max_length tokens.

The tokenizer (`data.tokenizer`: word, char or bpe; `data.min_freq`, `data.vocab_size`) is fitted on the train
sentences (a char vocabulary on all splits, so that no held-out character is unknown, as for text corpora); a newline
is its sentence boundary (`tokenizers.boundary_id`). A built split is memoised in memory for the life of the process,
so train, val and test read the file once.

Batches: a sentence model (`batch_options` sentences=True) gets padded batches of whole sentences, an epoch at a time
in a seeded order; sentences of similar length are batched together (each pool of 50 batches is sorted by length,
then the batches are shuffled), which halves the padding. A GPT gets random windows of the stream of sentences, each
followed by a newline, exactly as from a text corpus.
"""
from __future__ import annotations

import csv
import hashlib
import html
import importlib.resources
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genforge.config import DataSection
from genforge.data.build import ShuffledOrder, length_bucketed_order
from genforge.data.download import ENV_VAR, data_root, data_root_origin, raw_dir
from genforge.data.text import SHAKESPEARE_MINI_ASSET, TextDataset, read_corpus
from genforge.data.tokenizers import Tokenizer, boundary_id, train_tokenizer
from genforge.errors import UserError
from genforge.media import pad_sentences

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASS_NAMES = ("neg", "pos")  # IMDB's labels 0 and 1
_LABEL_WORDS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
_SHUFFLE_SEED = 0  # the one fixed order of the train reviews that decides the val split
_POOL_BATCHES = 50  # batches per length-sorted pool (see the module docstring)
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "mt", "no", "vol", "ft", "lt"}
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")
_TAG = re.compile(r"<[^>]*>")
_BREAK = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)


@dataclass
class Review:
    text: str
    label: int | None
    split: str  # train or test, as the source says


@dataclass
class SentenceDataset:
    sentences: list[list[int]]  # token ids of each example, without boundary tokens
    texts: list[str]  # the cleaned text of each example
    labels: torch.Tensor | None  # int64 (N,) class ids, or None for unlabelled text
    tokenizer: Tokenizer
    name: str  # for messages and result keys
    class_names: tuple[str, ...] = ()  # names of the class ids (IMDB: neg, pos)
    _tokens: torch.Tensor | None = field(default=None, repr=False)

    @cached_property
    def boundary(self) -> int:
        return boundary_id(self.tokenizer)  # read once: every batch needs it

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def tokens(self) -> torch.Tensor:
        """Every example followed by a newline, as one stream of token ids (what a GPT and the `ppl` metric read)."""
        if self._tokens is None:
            b = self.boundary
            ids = [t for sentence in self.sentences for t in (*sentence, b)]
            dtype = np.uint16 if self.tokenizer.vocab_size <= 1 << 16 else np.uint32
            self._tokens = torch.from_numpy(np.array([b, *ids], dtype=dtype))
        return self._tokens

    def batches(self, batch_size: int, seed: int, block_size: int = 256, sentences: bool = False) -> Any:
        """The trainer's batch source: whole sentences (sentence models) or windows of the stream (a GPT)."""
        if sentences:
            return SentenceBatches(self, batch_size, seed)
        return TextDataset(tokens=self.tokens, tokenizer=self.tokenizer, name=self.name).batches(batch_size, seed,
                                                                                                 block_size)


# --------------------------------------------------------------------------------------------------------------
# Reading and cleaning


def clean_review(text: str) -> str:
    """HTML line breaks and tags out, entities unescaped, white space collapsed to single spaces."""
    text = _TAG.sub(" ", _BREAK.sub(" ", text))
    return " ".join(html.unescape(text).split())


def split_sentences(text: str) -> list[str]:
    """Sentences of a cleaned review: cut after ., ! or ? (and any closing quotes or brackets) followed by white
    space, unless the word before the period is a common abbreviation (Mr., Dr., etc.), an initial or dotted (N.Y.)."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        before = text[start:match.start()].rsplit(" ", 1)[-1].lower()
        word = before.rstrip(".").strip("\"'(")
        if text[match.start()] == "." and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or
                                          (len(word) > 1 and "." in word)):  # Mr. / J. R. R. Tolkien / N.Y.
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _label(value: str, where: str) -> int:
    label = _LABEL_WORDS.get(value.strip().lower())
    if label is None:
        raise UserError(f"{where}: label {value!r} is not a sentiment; use 0/1, neg/pos or negative/positive")
    return label


def read_csv_reviews(path: Path) -> list[Review]:
    """Reviews of a CSV with `review` and `label` columns (and optionally `split`)."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"`data.path` = {str(path)!r}: cannot open ({exc.strerror})") from None
    with handle:
        try:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in ("review", "label") if c not in columns]
            if missing:
                raise UserError(f"{path}: the CSV has no {' and no '.join(repr(c) for c in missing)} column "
                                f"(its header is {', '.join(columns) or 'empty'}); an IMDB CSV needs `review` (the "
                                "text) and `label` (0/1 or neg/pos), and may have `split` (train/test)")
            reviews = []
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                if row.get("review") is None or row.get("label") is None:
                    raise UserError(f"{where}: the row has fewer fields than the header; check the quoting")
                split = (row.get("split") or "train").strip().lower()
                if split not in ("train", "test"):
                    raise UserError(f"{where}: split {split!r} is neither train nor test")
                reviews.append(Review(row["review"], _label(row["label"], where), split))
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it, e.g. "
                            "`iconv -f LATIN1 -t UTF-8`") from None
        except csv.Error as exc:
            raise UserError(f"{path}: not a valid CSV file ({exc})") from None
    if not reviews:
        raise UserError(f"{path}: the CSV has a header but no reviews")
    return reviews


def read_aclimdb(root: Path) -> list[Review]:
    """Reviews of the aclImdb layout, sorted by split, label and numeric id (the file names' `{id}_{rating}`)."""
    if (root / "aclImdb").is_dir():
        root = root / "aclImdb"
    reviews = []
    for split in ("train", "test"):
        for label, name in enumerate(CLASS_NAMES):
            folder = root / split / name
            if not folder.is_dir():
                continue
            files = sorted(folder.glob("*.txt"), key=lambda p: (int(p.stem.split("_")[0]) if
                                                                p.stem.split("_")[0].isdigit() else -1, p.name))
            for file in files:
                try:
                    reviews.append(Review(file.read_text(encoding="utf-8"), label, split))
                except UnicodeDecodeError:
                    raise UserError(f"{file} is not UTF-8 text; the aclImdb files are UTF-8") from None
    if not reviews:
        raise UserError(f"`data.path` = {str(root)!r} has no aclImdb reviews: expected {{train,test}}/{{pos,neg}}/"
                        "<id>_<rating>.txt files, or a CSV with `review` and `label` columns")
    return reviews


def read_reviews(cfg: DataSection) -> tuple[list[Review], str]:
    """(reviews, the source's name) from `data.path` or the data root."""
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise UserError(f"`data.path` = {str(path)!r} does not exist; point it at an IMDB CSV (columns review, "
                            "label) or the aclImdb folder")
    else:
        root = data_root(cfg.root)
        path = raw_dir("imdb", root) / "aclImdb"
        if not path.is_dir():
            raise UserError(f"IMDB not found at {path} (data root {root} is {data_root_origin(cfg.root)}). Extract "
                            "aclImdb_v1.tar.gz (https://ai.stanford.edu/~amaas/data/sentiment/) there, or set "
                            "`data.path` to the aclImdb folder or to a CSV with `review` and `label` columns (or "
                            f"point env {ENV_VAR} or `data.root` at a data root that has imdb/raw/aclImdb)")
    if path.is_dir():
        return read_aclimdb(path), "imdb"
    return read_csv_reviews(path), "imdb"


# --------------------------------------------------------------------------------------------------------------
# Building the splits, once per process


@dataclass
class _Built:
    tokenizer: Tokenizer
    splits: dict[str, SentenceDataset]


_CACHE: dict[str, _Built] = {}
_CACHE_ENTRIES = 4


def _source_key(cfg: DataSection, tokenizer: Tokenizer | None) -> str:
    path = Path(cfg.path).expanduser() if cfg.path else raw_dir("imdb", data_root(cfg.root)) / "aclImdb"
    stat = path.stat() if path.exists() else None
    settings = (str(path.resolve()), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0, cfg.unit,
                cfg.max_length, cfg.val_fraction, cfg.tokenizer, cfg.vocab_size, cfg.min_freq, cfg.limit,
                tokenizer.to_json() if tokenizer is not None else "")
    return hashlib.sha256(repr(settings).encode()).hexdigest()


def _examples(reviews: list[Review], unit: str) -> tuple[list[str], list[int | None]]:
    texts, labels = [], []
    for review in reviews:
        clean = clean_review(review.text)
        pieces = split_sentences(clean) if unit == "sentence" else [clean]
        texts += pieces
        labels += [review.label] * len(pieces)
    return texts, labels


def build_imdb(cfg: DataSection, split: str, tokenizer: Tokenizer | None = None) -> SentenceDataset:
    """The IMDB split `split` (train, val or test); see the module docstring. Pass `tokenizer` (a checkpoint's) to
    encode with it instead of fitting one."""
    if split not in SPLITS:
        raise UserError(f"`data.split` = {split!r} is not a split of imdb; allowed: {', '.join(SPLITS)}")
    key = _source_key(cfg, tokenizer)
    if key not in _CACHE:
        reviews, name = read_reviews(cfg)
        train = [r for r in reviews if r.split == "train"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(_SHUFFLE_SEED)).tolist()
        train = [train[i] for i in order]
        n_val = int(round(len(train) * cfg.val_fraction))
        by_split = {"train": train[: len(train) - n_val], "val": train[len(train) - n_val:],
                    "test": [r for r in reviews if r.split == "test"]}
        texts = {s: _examples(rs, cfg.unit) for s, rs in by_split.items()}
        if cfg.limit is not None:  # the first N examples of each split
            texts = {s: (t[: cfg.limit], y[: cfg.limit]) for s, (t, y) in texts.items()}
        if not texts["train"][0]:
            raise UserError(f"{name} has no train reviews; check `data.path` (a CSV needs rows with split=train or "
                            "no split column)")
        if tokenizer is None:  # a char vocabulary covers every split (as for text corpora), the others train only
            fit_on = [t for s in SPLITS for t in texts[s][0]] if cfg.tokenizer == "char" else texts["train"][0]
            tokenizer = train_tokenizer(cfg.tokenizer, "\n".join(fit_on) + "\n", cfg.vocab_size, cfg.min_freq)
        boundary_id(tokenizer)  # fails early with a clear message if the tokenizer cannot mark sentence ends
        splits = {s: _encode(t, y, tokenizer, cfg, name, s) for s, (t, y) in texts.items()}
        while len(_CACHE) >= _CACHE_ENTRIES:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = _Built(tokenizer, splits)
    dataset = _CACHE[key].splits[split]
    if len(dataset) == 0:
        hint = {"val": "`data.val_fraction` is 0 or too small for this many reviews; raise it",
                "test": "the source has no test reviews (a CSV without a `split` column is all train)",
                "train": "check `data.path`"}[split]
        raise UserError(f"the {split} split of {dataset.name} is empty: {hint}")
    return dataset


def _encode(texts: list[str], labels: list[int | None], tokenizer: Tokenizer, cfg: DataSection, name: str,
            split: str) -> SentenceDataset:
    kept_texts, kept_ids, kept_labels = [], [], []
    too_long = 0
    for text, label in zip(texts, labels):
        ids = tokenizer.encode(text)
        if not ids:
            continue
        if len(ids) > cfg.max_length:
            if cfg.unit == "sentence":
                too_long += 1
                continue
            ids = ids[: cfg.max_length]
        kept_texts.append(text)
        kept_ids.append(ids)
        kept_labels.append(label)
    if too_long:
        log.info("%s %s: left out %d of %d sentences longer than data.max_length = %d tokens", name, split,
                 too_long, len(texts), cfg.max_length)
    has_labels = bool(kept_labels) and all(y is not None for y in kept_labels)
    labels_t = torch.tensor(kept_labels, dtype=torch.long) if has_labels else None
    return SentenceDataset(kept_ids, kept_texts, labels_t, tokenizer, name, CLASS_NAMES if has_labels else ())


def build_lines(cfg: DataSection, split: str, tokenizer: Tokenizer | None = None) -> SentenceDataset:
    """`data.name: lines`: every non-empty line of the UTF-8 file `data.path` is one unlabelled sentence; the last
    `data.val_fraction` of the lines are val. Without data.path: the embedded Tiny Shakespeare subset (3,922 lines),
    so sentence models run with no download."""
    if split not in ("train", "val"):
        raise UserError(f"`data.split` = {split!r} is not a split of a lines data set; allowed: train, val")
    if cfg.path is not None:
        text, name = read_corpus(cfg.path), Path(cfg.path).name
    else:
        asset = importlib.resources.files("genforge.data").joinpath("assets").joinpath(SHAKESPEARE_MINI_ASSET)
        text, name = asset.read_bytes().decode("utf-8"), "shakespeare-mini-lines"
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line][: cfg.limit]
    cut = len(lines) - int(round(len(lines) * cfg.val_fraction))
    chosen = lines[:cut] if split == "train" else lines[cut:]
    if tokenizer is None:
        fit_on = lines if cfg.tokenizer == "char" else lines[:cut]
        tokenizer = train_tokenizer(cfg.tokenizer, "\n".join(fit_on) + "\n", cfg.vocab_size, cfg.min_freq)
    boundary_id(tokenizer)
    dataset = _encode(chosen, [None] * len(chosen), tokenizer, cfg, name, split)
    if len(dataset) == 0:
        raise UserError(f"the {split} split of {name} is empty; check `data.path` and `data.val_fraction`")
    return dataset


# --------------------------------------------------------------------------------------------------------------
# Batches


class SentenceBatches(ShuffledOrder):
    """Endless padded batches of whole sentences, an epoch at a time (see the module docstring):

        x      int64 (B, T): the boundary, then the sentence (padded with the boundary id, never read)
        y      int64 (B, T): the sentence, then the boundary (its end); -100 where padded
        label  int64 (B,):   the sentence's class, for labelled data

    T is the longest sentence of the batch plus one. `state_dict()` holds the generator, the epoch's order and the
    position in it, so a resumed run continues with exactly the batches the uninterrupted run would have drawn."""

    EXAMPLES = "sentence"

    def __init__(self, dataset: SentenceDataset, batch_size: int, seed: int):
        if batch_size < 1:
            raise UserError(f"`train.batch_size` ({batch_size}) must be at least 1")
        if len(dataset) < batch_size:
            raise UserError(f"{dataset.name} has {len(dataset)} sentences in this split, fewer than one batch of "
                            f"`train.batch_size` = {batch_size}; lower train.batch_size or add data")
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.lengths = torch.tensor([len(s) for s in dataset.sentences])
        self.order = torch.zeros(0, dtype=torch.long)
        self.position = 0

    def _new_epoch(self) -> None:
        self.order = length_bucketed_order(self.lengths, self.batch_size, self.generator, _POOL_BATCHES)
        self.position = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.position >= len(self.order):
            self._new_epoch()
        rows = self.order[self.position:self.position + self.batch_size].tolist()
        self.position += self.batch_size
        return pad_sentences([self.dataset.sentences[i] for i in rows], self.dataset.boundary,
                       None if self.dataset.labels is None else self.dataset.labels[rows])
