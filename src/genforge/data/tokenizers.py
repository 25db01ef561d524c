"""Tokenizers for the text families: characters (nanoGPT's shakespeare_char), words (the vocabulary of the sentence
VAE literature: Bowman et al. 2016) and byte-level BPE (GPT-2's scheme).

All satisfy the small `Tokenizer` protocol and are saved as one `tokenizer.json`, which a checkpoint directory
holds next to the weights; `load_tokenizer(path)` recognises each kind from the file's content:

- char: `{"type": "genforge.char", "version": 1, "chars": ["\\n", " ", "!", ...]}`, token id = index in `chars`.
- word: `{"type": "genforge.word", "version": 1, "words": ["<unk>", "\\n", "the", ...]}`, token id = index.
- bpe: the Hugging Face `tokenizers` library's own tokenizer.json (any tool that reads it can use the file).

Token ids are always 0 .. vocab_size - 1; no kind adds special tokens. A newline is one token in every kind (the
sentence families use it as the boundary between sentences, as GPT-2 uses <|endoftext|>: see `boundary_id`).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from genforge.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
CHAR_TYPE = "genforge.char"  # the "type" value that marks a char tokenizer file
WORD_TYPE = "genforge.word"  # ... and a word tokenizer file
BYTE_ALPHABET = 256  # byte-level BPE starts from one token per byte value, so any text can be encoded
DEFAULT_BPE_VOCAB = 4096  # `data.vocab_size` when unset for BPE: enough merges for a few MB of text


@runtime_checkable
class Tokenizer(Protocol):
    kind: ClassVar[Literal["char", "word", "bpe"]]
    unknown_id: ClassVar[int | None]  # the id that stands for any text outside the vocabulary, or None (no such id)

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_json(self) -> str:
        """The content of tokenizer.json (also what cache keys hash)."""
        ...

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json into the directory `path` (or to the file `path` if it ends in .json)."""
        ...


def _json_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" else path / TOKENIZER_FILE


def _write(path: str | Path, content: str) -> Path:
    target = _json_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    return target


# --------------------------------------------------------------------------------------------------------------
# Characters


class CharTokenizer:
    """One token per distinct character of the training text, in code point order (nanoGPT's shakespeare_char)."""

    kind: ClassVar[Literal["char"]] = "char"
    unknown_id: ClassVar[int | None] = None  # an unknown character is an error

    def __init__(self, chars: Sequence[str]):
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise UserError("a char tokenizer's `chars` must be distinct single characters; the tokenizer.json is "
                            "corrupt or was edited by hand")
        if not chars:
            raise UserError("cannot build a char tokenizer from an empty text")
        self.chars = list(chars)
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as exc:
            c = exc.args[0]
            raise UserError(
                f"character {c!r} (U+{ord(c):04X}) at position {text.index(c)} of the text is not in this "
                f"tokenizer's vocabulary of {self.vocab_size} characters (those of its training text); remove it, "
                "or train with `data.tokenizer: bpe`, whose byte-level vocabulary encodes any text"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return "".join(self.chars[i] for i in ids)
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and 0 <= i < self.vocab_size))
            raise UserError(f"token id {bad!r} is outside this tokenizer's vocabulary [0, {self.vocab_size})") from None

    def to_json(self) -> str:
        return json.dumps({"type": CHAR_TYPE, "version": 1, "chars": self.chars}, ensure_ascii=False)

    def save(self, path: str | Path) -> Path:
        return _write(path, self.to_json())


# --------------------------------------------------------------------------------------------------------------
# Words


UNK = "<unk>"  # id 0 of every word vocabulary: any word outside it
NEWLINE = "\n"  # id 1: the sentence boundary
_WORD = re.compile(r"\n|[a-z0-9]+(?:'[a-z]+)*|[^\sa-z0-9]")  # lower-cased words (with their 's, n't), each
#                                                              punctuation mark alone, and newlines
_NO_SPACE_BEFORE = set(".,!?;:)]}%") | {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"}
_NO_SPACE_AFTER = set("([{$\n")


class WordTokenizer:
    """Lower-cased words and single punctuation marks, the words seen at least `min_freq` times in the training text
    (at most `vocab_size` tokens, the most frequent first), everything else <unk>. Encoding never fails; decoding
    joins words with single spaces, with none before punctuation, so it gives back the text up to case and spacing.
    Contractions stay one word ("didn't", "film's"), as in the usual word-level IMDB vocabularies."""

    kind: ClassVar[Literal["word"]] = "word"
    unknown_id: ClassVar[int | None] = 0  # <unk>

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:2] != [UNK, NEWLINE] or len(set(words)) != len(words) or any(not w for w in words):
            raise UserError(f"a word tokenizer's `words` must start with {UNK!r} and a newline and be distinct, "
                            "non-empty words; the tokenizer.json is corrupt or was edited by hand")
        self.words = words
        self._ids = {w: i for i, w in enumerate(words)}

    @staticmethod
    def split(text: str) -> list[str]:
        """The words of `text` as this tokenizer sees them (lower case)."""
        return _WORD.findall(text.lower())

    @classmethod
    def train(cls, text: str, min_freq: int = 1, vocab_size: int | None = None) -> WordTokenizer:
        if min_freq < 1:
            raise UserError(f"`data.min_freq` ({min_freq}) must be at least 1")
        counts = Counter(w for w in cls.split(text) if w != NEWLINE)
        ranked = sorted((w for w, c in counts.items() if c >= min_freq and w != UNK), key=lambda w: (-counts[w], w))
        if vocab_size is not None:
            ranked = ranked[: max(0, vocab_size - 2)]
        return cls([UNK, NEWLINE, *ranked])

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.unknown_id) for w in self.split(text)]

    def decode(self, ids: Sequence[int]) -> str:
        try:
            words = [self.words[i] for i in ids]
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and 0 <= i < self.vocab_size))
            raise UserError(f"token id {bad!r} is outside this tokenizer's vocabulary [0, {self.vocab_size})") from None
        out: list[str] = []
        for word in words:
            if out and word not in _NO_SPACE_BEFORE and out[-1][-1:] not in _NO_SPACE_AFTER and word != NEWLINE:
                out.append(" ")
            out.append(word)
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"type": WORD_TYPE, "version": 1, "words": self.words}, ensure_ascii=False)

    def save(self, path: str | Path) -> Path:
        return _write(path, self.to_json())


# --------------------------------------------------------------------------------------------------------------
# Byte-level BPE (Radford et al. 2019; Sennrich et al. 2016), trained and run by the Hugging Face `tokenizers` library


def _tokenizers_lib() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UserError("byte-level BPE needs the `tokenizers` package: pip install tokenizers (or use "
                        "`data.tokenizer: char`)") from None
    return tokenizers


class BPETokenizer:
    """GPT-2 style: text is split by the GPT-2 regex (ByteLevel pre-tokenizer), each piece mapped to bytes, and the
    bytes merged by learned BPE merges. Every text encodes; decode(encode(text)) == text."""

    kind: ClassVar[Literal["bpe"]] = "bpe"
    unknown_id: ClassVar[int | None] = None  # bytes encode anything

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer  # a tokenizers.Tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> BPETokenizer:
        if vocab_size < BYTE_ALPHABET:
            raise UserError(f"`data.vocab_size` ({vocab_size}) must be at least {BYTE_ALPHABET} for byte-level BPE: "
                            "its base vocabulary is one token per byte value")
        lib = _tokenizers_lib()
        tokenizer = lib.Tokenizer(lib.models.BPE())
        tokenizer.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                          initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(_chunks(text), trainer=trainer, length=None)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, content: str) -> BPETokenizer:
        return cls(_tokenizers_lib().Tokenizer.from_str(content))

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once (the library parallelises over them)."""
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise UserError(f"token id {bad} is outside this tokenizer's vocabulary [0, {self.vocab_size})")
        return self._tokenizer.decode(ids)

    def to_json(self) -> str:
        return self._tokenizer.to_str()

    def save(self, path: str | Path) -> Path:
        return _write(path, self.to_json())


def _chunks(text: str, lines_per_chunk: int = 1000) -> Iterator[str]:
    """The training text in pieces of whole lines (the trainer consumes an iterator of strings)."""
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), lines_per_chunk):
        yield "".join(lines[i:i + lines_per_chunk])


# --------------------------------------------------------------------------------------------------------------
# Training and loading


def train_tokenizer(kind: Literal["char", "word", "bpe"], text: str, vocab_size: int | None = None,
                    min_freq: int = 1) -> CharTokenizer | WordTokenizer | BPETokenizer:
    """A tokenizer fitted to `text`. char: the vocabulary is the text's characters (vocab_size must be None);
    word: the words seen min_freq times, at most vocab_size of them (None: no cap); bpe: byte-level BPE with
    `vocab_size` tokens (default DEFAULT_BPE_VOCAB)."""
    if kind == "char":
        if vocab_size is not None:
            raise UserError(f"`data.vocab_size` ({vocab_size}) applies only to `data.tokenizer: bpe`; a char "
                            "tokenizer's vocabulary is the set of characters in the text. Remove data.vocab_size")
        return CharTokenizer.train(text)
    if kind == "word":
        return WordTokenizer.train(text, min_freq, vocab_size)
    if kind == "bpe":
        return BPETokenizer.train(text, DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size)
    raise UserError(f"`data.tokenizer` = {kind!r}: allowed: char, word, bpe")


def boundary_id(tokenizer: Tokenizer) -> int:
    """The id of a newline, which sentence data sets put between (and models around) sentences. It must be exactly
    one token; every tokenizer trained on a sentence data set has it (a char vocabulary from text with newlines,
    any word vocabulary, byte-level BPE)."""
    try:
        ids = tokenizer.encode("\n")
    except UserError:
        ids = []
    if len(ids) != 1:
        raise UserError(f"this {tokenizer.kind} tokenizer does not encode a newline as one token, which sentence "
                        "models use as the sentence boundary; train it on text with newlines")
    return ids[0]


def load_tokenizer(path: str | Path) -> CharTokenizer | WordTokenizer | BPETokenizer:
    """Load a tokenizer.json written by any kind (or a speech model's phoneme tokenizer); `path` is the file or the
    directory that holds it."""
    file = _json_path(path)
    if not file.is_file():
        raise UserError(f"no tokenizer at {file}: a text model's checkpoint holds {TOKENIZER_FILE} next to its "
                        "weights; is this the checkpoint of a text model?")
    content = file.read_text(encoding="utf-8")
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}); the file is corrupt") from None
    if isinstance(data, dict) and data.get("type") == CHAR_TYPE:
        return CharTokenizer(data.get("chars", []))
    if isinstance(data, dict) and data.get("type") == WORD_TYPE:
        return WordTokenizer(data.get("words", []))
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("type") == "BPE":
        return BPETokenizer.from_json(content)
    from genforge.data.phonemes import PHONEME_TYPE, PhonemeTokenizer  # lazily: phonemes.py imports this module

    if isinstance(data, dict) and data.get("type") == PHONEME_TYPE:
        return PhonemeTokenizer.from_dict(data)
    raise UserError(f"{file}: not a tokenizer genforge knows; expected a char (\"type\": \"{CHAR_TYPE}\"), word "
                    f"(\"type\": \"{WORD_TYPE}\") or phoneme (\"type\": \"{PHONEME_TYPE}\") tokenizer or a Hugging "
                    "Face `tokenizers` BPE tokenizer.json")
