"""Speech data sets: transcribed recordings of one speaker, for text-to-speech and for vocoders.

`ljspeech` reads the LJ Speech layout (Ito & Johnson 2017), which most single-speaker corpora copy:

    <data.path>/metadata.csv     one clip per line, `id|text|normalized text`, no header, UTF-8
    <data.path>/wavs/<id>.wav    its recording (any rate soundfile reads; mono or mixed down to mono)

The split is by clip id, so a clip never moves between splits: ids are sorted, the last `data.test_fraction` of them
are the test split (the held-out sentences `genforge eval` synthesizes), the `data.val_fraction` before them val,
the rest train. The text a model reads is the normalized column, through the symbol table (`data.phonemes`):
phonemes from espeak-ng (`data.tokenizer: phonemes`) or characters (`data.tokenizer: char`). The table is fixed,
not fitted, and saved in every checkpoint as its tokenizer.

`speech-mini` is a generated stand-in for tests and debug configs (no files, no network): short "sentences" of a
few words, each letter a 70 ms tone of its own pitch at 8 kHz, so an aligner has something real to learn.

Batches (`dataset.batches(batch_size, seed, segment=None)`):

    text model (segment None)    text int64 (B, L) padded with 0, text_lengths (B,), audio float32 (B, T)
                                 zero-padded, audio_lengths (B,): whole clips, similar lengths batched together
    vocoder (segment = samples)  audio float32 (B, segment): a random crop of a random clip (zero-padded if shorter)

Every epoch is a shuffled order of clips held with its position in `state_dict()`, so resumed runs read the same
batches as uninterrupted ones (the crops' offsets come from the same saved generator).
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genforge import audio
from genforge.config import DataSection
from genforge.data.build import ShuffledOrder, length_bucketed_order
from genforge.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_POOL_BATCHES = 8  # batches whose clips are sorted by length together (less padding, still random)


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str  # as written
    normalized: str  # numbers and abbreviations spelled out (LJ Speech's third column)
    wav: Path | None  # None for generated clips


@dataclass
class SpeechDataset:
    """One split: its clips' texts, their waveforms (float32 mono at `sample_rate`) and their symbol ids."""

    utterances: list[Utterance]
    waves: list[np.ndarray]
    sample_rate: int
    tokenizer: Any  # a `data.phonemes.PhonemeTokenizer`: the symbol table
    symbols: list[list[int]]  # the symbol ids of each clip's normalized text
    name: str  # for messages

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def texts(self) -> list[str]:
        """The normalized texts: what the recordings say, the references of word error rates."""
        return [u.normalized for u in self.utterances]

    @property
    def seconds(self) -> float:
        return sum(len(w) for w in self.waves) / self.sample_rate

    def batches(self, batch_size: int, seed: int, segment: int | None = None) -> SpeechBatches:
        return SpeechBatches(self, batch_size, seed, segment)


# --------------------------------------------------------------------------------------------------------------
# Reading LJ Speech-format folders


def read_metadata(folder: Path) -> list[Utterance]:
    """Every line of `folder`/metadata.csv as an Utterance; a malformed line or a missing WAV is a UserError
    naming the file and line."""
    path = folder / "metadata.csv"
    if not folder.is_dir():
        raise UserError(f"`data.path` {str(folder)!r}: no such folder; give an LJ Speech-format folder "
                        "(metadata.csv and wavs/), e.g. data.path=../shared/data/ljspeech_subset")
    if not path.is_file():
        raise UserError(f"{path}: missing; an LJ Speech-format folder holds metadata.csv (`id|text|normalized "
                        "text` per line) beside wavs/")
    utterances, seen = [], set()
    with open(path, encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) not in (2, 3):
                raise UserError(f"{path}, line {line_no}: expected `id|text|normalized text` (3 fields split by |, "
                                f"or 2 without the normalized text), found {len(row)} field(s); fix or remove it")
            clip_id, text = row[0].strip(), row[1].strip()
            normalized = row[2].strip() if len(row) == 3 and row[2].strip() else text
            if not clip_id or not normalized:
                raise UserError(f"{path}, line {line_no}: the clip id and its text must not be empty")
            if clip_id in seen:
                raise UserError(f"{path}, line {line_no}: clip id {clip_id!r} appears twice; ids must be unique")
            seen.add(clip_id)
            wav = folder / "wavs" / f"{clip_id}.wav"
            if not wav.is_file():
                raise UserError(f"{path}, line {line_no}: its audio {wav} does not exist; add the file or remove "
                                "the line")
            utterances.append(Utterance(clip_id, text, normalized, wav))
    if not utterances:
        raise UserError(f"{path}: holds no clips")
    return utterances


def split_by_id(utterances: list[Utterance], split: str, val_fraction: float, test_fraction: float,
                name: str) -> list[Utterance]:
    """The clips of `split`: ids sorted; test = the last test_fraction, val = the val_fraction before, train = the
    rest. Each split that a fraction asks for gets at least one clip."""
    if split not in SPLITS:
        raise UserError(f"`data.split` {split!r}: {name} has the splits {', '.join(SPLITS)}")
    ordered = sorted(utterances, key=lambda u: u.id)
    n = len(ordered)
    n_test = math.ceil(n * test_fraction) if test_fraction > 0 else 0
    n_val = math.ceil(n * val_fraction) if val_fraction > 0 else 0
    if n - n_test - n_val < 1:
        raise UserError(f"{name}: {n} clips are too few for data.val_fraction {val_fraction} and "
                        f"data.test_fraction {test_fraction}: no training clip would be left; lower them")
    bounds = {"train": (0, n - n_test - n_val), "val": (n - n_test - n_val, n - n_test), "test": (n - n_test, n)}
    start, end = bounds[split]
    if start == end:
        raise UserError(f"{name} has no {split} split: raise data.{split}_fraction above 0")
    return ordered[start:end]


def _symbol_table(cfg: DataSection, tokenizer: Any) -> Any:
    from genforge.data.phonemes import PhonemeTokenizer

    if tokenizer is not None:
        return tokenizer
    if cfg.tokenizer not in ("phonemes", "char"):
        raise UserError(f"`data.tokenizer` {cfg.tokenizer!r}: speech data sets read phonemes (espeak-ng) or "
                        "characters; set data.tokenizer to phonemes or char")
    return PhonemeTokenizer(mode="phonemes" if cfg.tokenizer == "phonemes" else "chars")


def _encode_all(utterances: list[Utterance], tokenizer: Any) -> list[list[int]]:
    encoded = []
    for u in utterances:
        try:
            encoded.append(tokenizer.encode(u.normalized))
        except UserError as exc:
            raise UserError(f"clip {u.id}: {exc}") from None
    return encoded


_CACHE: dict[tuple[Any, ...], SpeechDataset] = {}  # built splits, per process: eval and sampling rebuild them


def build_ljspeech(cfg: DataSection, split: str, tokenizer: Any = None) -> SpeechDataset:
    if not cfg.path:
        raise UserError("the ljspeech data set reads an LJ Speech-format folder: set data.path to it (metadata.csv "
                        "and wavs/), e.g. --set data.path=../shared/data/ljspeech_subset")
    folder = Path(cfg.path).expanduser()
    table = _symbol_table(cfg, tokenizer)
    key = (str(folder.resolve()), split, cfg.val_fraction, cfg.test_fraction, cfg.limit, table.to_json())
    if key in _CACHE:
        return _CACHE[key]
    utterances = split_by_id(read_metadata(folder), split, cfg.val_fraction, cfg.test_fraction, f"ljspeech at {folder}")
    if cfg.limit:
        utterances = utterances[: cfg.limit]
    waves, rate = [], None
    for u in utterances:
        assert u.wav is not None
        wave, r = audio.read_wav(u.wav, sample_rate=rate)  # the first clip's rate is the data set's
        rate = rate or r
        waves.append(wave)
    assert rate is not None
    dataset = SpeechDataset(utterances, waves, rate, table, _encode_all(utterances, table), f"ljspeech:{split}")
    log.info("%s: %d clips, %.1f min of audio at %d Hz", dataset.name, len(dataset), dataset.seconds / 60, rate)
    _CACHE[key] = dataset
    return dataset


# --------------------------------------------------------------------------------------------------------------
# The generated stand-in


MINI_RATE = 8000
MINI_CLIPS = 60
_MINI_WORDS = ("a", "bad", "cab", "dead", "face", "fed", "bead", "dab", "cafe", "deed", "bee", "ace")
_LETTER_SECONDS = 0.07


def _mini_clip(text: str, rng: np.random.Generator) -> np.ndarray:
    """Each letter a tone (its own pitch, 70 ms with a short fade), each space 50 ms of silence, a little noise."""
    parts = []
    t = np.arange(int(_LETTER_SECONDS * MINI_RATE)) / MINI_RATE
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    for ch in text:
        if ch == " ":
            parts.append(np.zeros(int(0.05 * MINI_RATE)))
        else:
            pitch = 300.0 + 120.0 * (ord(ch) - ord("a"))
            parts.append(0.5 * np.sin(2 * np.pi * pitch * t) * fade)
    wave = np.concatenate([np.zeros(400), *parts, np.zeros(400)])
    return (wave + 0.003 * rng.standard_normal(len(wave))).astype(np.float32)


def build_speech_mini(cfg: DataSection, split: str, tokenizer: Any = None) -> SpeechDataset:
    rng = np.random.default_rng(1234)
    utterances, waves = [], []
    for i in range(MINI_CLIPS):
        words = rng.choice(len(_MINI_WORDS), size=int(rng.integers(2, 5)))
        text = " ".join(_MINI_WORDS[w] for w in words)
        utterances.append(Utterance(f"mini-{i:03d}", text, text, None))
        waves.append(_mini_clip(text, rng))
    table = _symbol_table(cfg, tokenizer)
    chosen = {u.id for u in split_by_id(utterances, split, cfg.val_fraction, cfg.test_fraction, "speech-mini")}
    keep = [i for i, u in enumerate(utterances) if u.id in chosen]
    if cfg.limit:
        keep = keep[: cfg.limit]
    picked = [utterances[i] for i in keep]
    return SpeechDataset(picked, [waves[i] for i in keep], MINI_RATE, table, _encode_all(picked, table),
                         f"speech-mini:{split}")


# --------------------------------------------------------------------------------------------------------------
# Batches


class SpeechBatches(ShuffledOrder):
    EXAMPLES = "speech clip"

    def __init__(self, dataset: SpeechDataset, batch_size: int, seed: int, segment: int | None = None):
        if batch_size < 1:
            raise UserError(f"`train.batch_size` ({batch_size}) must be at least 1")
        if len(dataset) < batch_size:
            raise UserError(f"{dataset.name} has {len(dataset)} clips, fewer than one batch of "
                            f"`train.batch_size` = {batch_size}; lower train.batch_size or add data")
        self.dataset, self.batch_size, self.segment = dataset, batch_size, segment
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.zeros(0, dtype=torch.long)
        self.position = 0
        self.lengths = torch.tensor([len(w) for w in dataset.waves])

    def _new_epoch(self) -> None:
        if self.segment is not None:  # crops: lengths do not matter
            perm = torch.randperm(len(self.dataset), generator=self.generator)
            self.order = perm[: len(perm) // self.batch_size * self.batch_size]  # whole batches only
        else:
            self.order = length_bucketed_order(self.lengths, self.batch_size, self.generator, _POOL_BATCHES)
        self.position = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.position >= len(self.order):
            self._new_epoch()
        rows = self.order[self.position:self.position + self.batch_size].tolist()
        self.position += self.batch_size
        if self.segment is not None:
            return {"audio": self._crops(rows)}
        return pad_clips([self.dataset.symbols[i] for i in rows], [self.dataset.waves[i] for i in rows])

    def _crops(self, rows: list[int]) -> torch.Tensor:
        assert self.segment is not None
        out = torch.zeros(len(rows), self.segment)
        for b, i in enumerate(rows):
            wave = torch.from_numpy(self.dataset.waves[i])
            spare = len(wave) - self.segment
            start = int(torch.randint(spare + 1, (1,), generator=self.generator)) if spare > 0 else 0
            piece = wave[start:start + self.segment]
            out[b, : len(piece)] = piece
        return out


def pad_clips(symbols: list[list[int]], waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Whole clips as one padded batch: symbol ids padded with 0 (the table's padding id), audio with silence."""
    text = torch.zeros(len(symbols), max(len(s) for s in symbols), dtype=torch.long)
    audio_batch = torch.zeros(len(waves), max(len(w) for w in waves))
    for b, (ids, wave) in enumerate(zip(symbols, waves)):
        text[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        audio_batch[b, : len(wave)] = torch.from_numpy(wave)
    return {"text": text, "text_lengths": torch.tensor([len(s) for s in symbols]), "audio": audio_batch,
            "audio_lengths": torch.tensor([len(w) for w in waves])}
