"""Text corpora for language models: a UTF-8 file or folder, Tiny Shakespeare, and the random windows GPT trains on.

A corpus is one string (a folder's files are read in sorted path order and concatenated, each ending in a newline).
It is split by characters as nanoGPT splits Tiny Shakespeare: the first `1 - data.val_fraction` (default 90%) is
"train", the rest "val". The tokenizer (`data.tokenizer`: char, word or bpe, `data.vocab_size` for bpe) is fitted once:
a char vocabulary on the whole text (so that val has no unknown characters, as nanoGPT does), words and byte-level
BPE on the train part only (unseen words are <unk>; BPE encodes anything), so val stays unseen.

Each split is encoded once into a uint16 array (uint32 when the vocabulary exceeds 65,535 tokens), cached in memory
for the life of the process under a hash of the text, the tokenizer settings and the split fraction, so building
"train" and then "val" (or building again) fits and encodes once. Nothing is written next to the data: data folders
may be read-only (the package's own assets), and encoding these corpora takes about a second.

`TextBatches` draws random (block_size + 1)-token windows from a seeded torch.Generator, as nanoGPT's get_batch
does; its state is the generator state, so a resumed run draws exactly the windows the original would have.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from genforge.config import DataSection
from genforge.data.download import ENV_VAR, data_root, data_root_origin, raw_dir
from genforge.data.tokenizers import BPETokenizer, Tokenizer, train_tokenizer
from genforge.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
DEFAULT_VAL_FRACTION = 0.1  # nanoGPT's shakespeare_char split: first 90% train, last 10% val
SHAKESPEARE_FILE = "input.txt"  # the name char-rnn and nanoGPT publish it under
SHAKESPEARE_MINI_ASSET = "tinyshakespeare_mini.txt"  # in genforge/data/assets/: see build_shakespeare_mini
_BPE_CHUNK_CHARS = 1 << 16  # text per piece when encoding a corpus with BPE (the library encodes pieces in parallel)
_CACHE_ENTRIES = 4  # corpora kept encoded in memory


@dataclass
class TextDataset:
    tokens: torch.Tensor  # uint16 or uint32 (N,): the split's token ids in order
    tokenizer: Tokenizer  # encodes/decodes these ids; the same object for both splits of a corpus
    name: str  # the data set name, for messages and logs

    def __post_init__(self) -> None:
        assert self.tokens.dim() == 1 and self.tokens.dtype in (torch.uint16, torch.uint32), self.tokens.dtype

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batches(self, batch_size: int, seed: int, block_size: int = 256) -> "TextBatches":
        """The trainer's view of a data set: an endless, resumable batch source of `block_size` windows."""
        return TextBatches(self, batch_size, block_size, seed)


# --------------------------------------------------------------------------------------------------------------
# Reading


def read_corpus(path: str | Path) -> str:
    """A UTF-8 file, or every file under a folder (sorted paths, hidden ones skipped), each ending in a newline."""
    path = Path(path).expanduser()
    if path.is_file():
        return _read_utf8(path)
    if not path.is_dir():
        raise UserError(f"`data.path` = {str(path)!r} does not exist; point it at a UTF-8 text file or a folder "
                        "of them")
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise UserError(f"`data.path` = {str(path)!r} is a folder without files; put UTF-8 text files in it")
    texts = [_read_utf8(f) for f in files]
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts)


def _read_utf8(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as exc:
        raise UserError(f"{file} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it, e.g. "
                        f"`iconv -f LATIN1 -t UTF-8`, or remove it from `data.path`") from None


# --------------------------------------------------------------------------------------------------------------
# Encoding, once per process


def encode_corpus(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """All of `text` as a uint16 array (uint32 for vocabularies over 65,535 tokens)."""
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    if isinstance(tokenizer, BPETokenizer):
        ids = [i for piece in tokenizer.encode_batch(_split_for_bpe(text)) for i in piece]
    else:
        ids = tokenizer.encode(text)
    return np.array(ids, dtype=dtype)


def _split_for_bpe(text: str) -> list[str]:
    """Pieces of about _BPE_CHUNK_CHARS that encode to the same tokens as the whole: each cut is at a newline followed
    by a non-space character, where the GPT-2 pre-tokenizer always starts a new piece (no merge crosses it)."""
    pieces, start = [], 0
    while len(text) - start > _BPE_CHUNK_CHARS:
        cut = start + _BPE_CHUNK_CHARS
        while cut < len(text) and not (text[cut - 1] == "\n" and not text[cut].isspace()):
            cut += 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return [p for p in pieces if p]


@dataclass
class _Encoded:
    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]


_CACHE: dict[str, _Encoded] = {}


def encode_splits(text: str, kind: Literal["char", "word", "bpe"], vocab_size: int | None, val_fraction: float,
                  tokenizer: Tokenizer | None = None, min_freq: int = 1) -> _Encoded:
    """Fit the tokenizer (unless given) and encode both splits, memoised in memory (see the module docstring)."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"`data.val_fraction` ({val_fraction}) must be in [0, 1): the share of the text kept for val")
    fingerprint = tokenizer.to_json() if tokenizer is not None else f"{kind}:{vocab_size}:{min_freq}"
    key = hashlib.sha256(f"{fingerprint}\0{val_fraction!r}\0{text}".encode()).hexdigest()
    if key not in _CACHE:
        cut = int(len(text) * (1.0 - val_fraction))
        train_text, val_text = text[:cut], text[cut:]
        if tokenizer is None:
            tokenizer = train_tokenizer(kind, text if kind == "char" else train_text, vocab_size, min_freq)
        splits = {"train": encode_corpus(tokenizer, train_text), "val": encode_corpus(tokenizer, val_text)}
        log.info("encoded %d + %d tokens (vocabulary %d)", len(splits["train"]), len(splits["val"]),
                 tokenizer.vocab_size)
        while len(_CACHE) >= _CACHE_ENTRIES:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = _Encoded(tokenizer, splits)
    return _CACHE[key]


# --------------------------------------------------------------------------------------------------------------
# Builders: `build(cfg: DataSection, split) -> TextDataset` (registry.DATASETS)


def _dataset(text: str, cfg: DataSection, split: str, name: str, tokenizer: Tokenizer | None) -> TextDataset:
    if split not in SPLITS:
        raise UserError(f"`data.split` = {split!r} is not a split of {name}; allowed: {', '.join(SPLITS)}")
    if cfg.limit is not None:
        text = text[: cfg.limit]  # `data.limit` for text: the first N characters, before the split
    if not text:
        raise UserError(f"{name} has no text to train on; check `data.path`")
    val_fraction = float(getattr(cfg, "val_fraction", DEFAULT_VAL_FRACTION))
    kind = getattr(cfg, "tokenizer", "char")
    encoded = encode_splits(text, kind, getattr(cfg, "vocab_size", None), val_fraction, tokenizer,
                            getattr(cfg, "min_freq", 1))
    tokens = encoded.splits[split]
    if len(tokens) == 0:
        hint = ("`data.val_fraction` is 0, so there is no val text; set it above 0" if split == "val" else
                "lower `data.val_fraction` or add text")
        raise UserError(f"the {split} split of {name} is empty; {hint}")
    return TextDataset(tokens=torch.from_numpy(tokens), tokenizer=encoded.tokenizer, name=name)


def build_text(cfg: DataSection, split: str, tokenizer: Tokenizer | None = None) -> TextDataset:
    """Any UTF-8 file or folder of files at `data.path`. Pass `tokenizer` (e.g. a checkpoint's) to encode with it
    instead of fitting a new one: evaluation and resumed runs must see the ids the model was trained on."""
    if cfg.path is None:
        raise UserError("`data.path` is required for `data.name: text`: a UTF-8 text file or a folder of them")
    return _dataset(read_corpus(cfg.path), cfg, split, Path(cfg.path).name, tokenizer)


def build_shakespeare(cfg: DataSection, split: str, tokenizer: Tokenizer | None = None) -> TextDataset:
    """Tiny Shakespeare (Karpathy's char-rnn; 1,115,394 characters, 65 distinct; public domain) from
    `<data root>/tinyshakespeare/raw/input.txt`. With the defaults this is exactly nanoGPT's shakespeare_char:
    1,003,854 train and 111,540 val tokens."""
    root = data_root(cfg.root)
    file = raw_dir("tinyshakespeare", root) / SHAKESPEARE_FILE
    if not file.is_file():
        raise UserError(
            f"Tiny Shakespeare not found at {file} (data root {root} is {data_root_origin(cfg.root)}). Run "
            "`genforge data fetch tinyshakespeare` to download it, or `genforge data fetch tinyshakespeare --from DIR` "
            f"to import a local input.txt; or point env {ENV_VAR} or `data.root` at a data root that has "
            "tinyshakespeare/raw/input.txt (or use `data.name: shakespeare-mini`, which needs no download)")
    return _dataset(_read_utf8(file), cfg, split, "tinyshakespeare", tokenizer)


def build_shakespeare_mini(cfg: DataSection, split: str, tokenizer: Tokenizer | None = None) -> TextDataset:
    """The embedded Tiny Shakespeare subset (no download): its first 99,844 characters (3,922 lines, up to the end
    of a speech), 61 distinct characters; split 90/10 like the full set."""
    asset = importlib.resources.files("genforge.data").joinpath("assets").joinpath(SHAKESPEARE_MINI_ASSET)
    return _dataset(asset.read_bytes().decode("utf-8"), cfg, split, "shakespeare-mini", tokenizer)


# --------------------------------------------------------------------------------------------------------------
# Batches


class TextBatches:
    """Endless batches of random windows, as nanoGPT's get_batch: x = tokens[i : i + T], y = tokens[i + 1 : i + T + 1]
    for B starts i drawn uniformly from a torch.Generator seeded with `seed`. `state_dict()` is the generator state,
    so a resumed run continues with exactly the windows the uninterrupted run would have drawn."""

    def __init__(self, dataset: TextDataset, batch_size: int, block_size: int, seed: int):
        if len(dataset) <= block_size:
            raise UserError(f"{dataset.name} has {len(dataset)} tokens in this split, not enough for one window of "
                            f"`model.block_size` + 1 = {block_size + 1} tokens; lower model.block_size, or add text "
                            "(or lower `data.val_fraction` if this is the val split)")
        if batch_size < 1:
            raise UserError(f"`train.batch_size` ({batch_size}) must be at least 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.block_size = block_size
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(block_size + 1)  # (T + 1,)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """{"x": int64 (B, T) inputs, "y": int64 (B, T) the next token at every position}."""
        starts = torch.randint(len(self.dataset) - self.block_size, (self.batch_size,), generator=self.generator)
        windows = self.dataset.tokens[starts[:, None] + self._offsets].long()  # (B, T + 1)
        return {"x": windows[:, :-1].contiguous(), "y": windows[:, 1:].contiguous()}

    def __iter__(self) -> TextBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}  # uint8 tensor: safe for torch.load(weights_only=True)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        generator = state.get("generator")
        if not (isinstance(generator, torch.Tensor) and generator.dtype == torch.uint8):
            raise UserError("the checkpoint's data position has no text-batch generator state; was it written by "
                            "a run on another kind of data set?")
        self.generator.set_state(generator)
