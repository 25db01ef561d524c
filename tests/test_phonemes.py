"""The speech text front end: normalization (pinned outputs and agreement with LJ Speech's own normalized
transcripts), IPA through espeak-ng (pinned strings), the phoneme tokenizer and its tokenizer.json, the espeak
fallbacks and errors, and sentence splitting."""
from __future__ import annotations

import json
import logging
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import shared_data

from genforge.data import phonemes
from genforge.data.phonemes import (
    PHONEME_TYPE,
    PhonemeTokenizer,
    espeak_available,
    normalize,
    number_to_words,
    ordinal_to_words,
    phonemize,
    split_sentences,
    year_to_words,
)
from genforge.data.tokenizers import load_tokenizer
from genforge.errors import UserError


@pytest.fixture
def espeak() -> None:
    """Skip a test that needs espeak-ng where it is missing (fail in CI, where it must be installed)."""
    if not espeak_available():
        message = "espeak-ng is missing: pip install espeakng-loader"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# --------------------------------------------------------------------------------------------------------------
# Normalization


@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith paid $5.20 on May 21st, 1883.",
     "Mister Smith paid five dollars, twenty cents on May twenty-first, eighteen eighty-three."),
    ("In 2005 he had 1,000 men and 3.5% more.", "In two thousand five he had one thousand men and three point five "
                                                "percent more."),
    ("£3 or $1.01 or $0.50 or £10,500", "three pounds or one dollar, one cent or fifty cents or ten thousand, five "
                                        "hundred pounds"),
    ("$2.5 billion", "two point five billion dollars"),
    ("6439 persons and 7020 more in 1803", "six thousand, four hundred thirty-nine persons and seven thousand twenty "
                                           "more in eighteen oh three"),
    ("1,234,567,890", "one billion, two hundred thirty-four million, five hundred sixty-seven thousand, eight "
                      "hundred ninety"),
    ("the 1st, 2nd, 3rd, 12th and 101st", "the first, second, third, twelfth and one hundred first"),
    ("Dr. Jones lives on Baker St. near St. Paul's.", "Doctor Jones lives on Baker Street near Saint Paul's."),
    ("Capt. Lt. Sgt. Col. Gen. Jr. Ltd. Co.", "Captain Lieutenant Sergeant Colonel General Junior Limited Company."),
    ("\u201cCurly\u201d \u2018quotes\u2019 \u2014 caf\u00e9, na\u00efve", "\"Curly\" 'quotes' - cafe, naive"),
    ("George II (1727) and the 1880s", "George the second, seventeen twenty-seven, and the eighteen eighties"),
    ("At 3:30 and 10:00, -5 degrees, 1800-1810", "At three thirty and ten o'clock, minus five degrees, eighteen "
                                                 "hundred to eighteen ten"),
    ("  lots   of\n space  ,  here !", "lots of space, here!"),
    ("Tom & Jerry: 100% fun; 中文 dropped?", "Tom and Jerry: one hundred percent fun; dropped?"),
])
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_number_words() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(199) == "one hundred ninety-nine"
    assert number_to_words(114_300) == "one hundred fourteen thousand, three hundred"
    assert number_to_words(3_000_000_001) == "three billion one"
    assert number_to_words(-12) == "minus twelve"
    assert ordinal_to_words(20) == "twentieth"
    assert ordinal_to_words(1000) == "one thousandth"
    assert [year_to_words(y) for y in (1455, 1800, 1000, 2000, 2005, 2024)] == [
        "fourteen fifty-five", "eighteen hundred", "one thousand", "two thousand", "two thousand five",
        "twenty twenty-four"]


def _canon(text: str) -> str:
    """Lower case, words only: LJ Speech's column and ours differ in punctuation only."""
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " ")).split())


def test_agrees_with_lj_speech_normalized_column() -> None:
    """LJ Speech's metadata.csv holds each line as written and as its reader said it. For every line with digits
    (68 of the 385), normalize(written) must say the same words as the spoken column; the spoken column keeps
    "Mr." and "etc." written out, so it goes through normalize too (it has no digits: only the abbreviations
    change). Measured: 68/68 on the number lines; 374/385 lines match the raw column, the 11 others differ only by
    "Mr." / "Messrs." / "etc."."""
    path = shared_data("ljspeech_subset", "metadata.csv")
    rows = [line.split("|") for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 385
    numbered = [(written, spoken) for _, written, spoken in rows if re.search(r"\d", written)]
    assert len(numbered) == 68
    misses = [(normalize(w), s) for w, s in numbered if _canon(normalize(w)) != _canon(normalize(s))]
    assert misses == []
    raw_matches = sum(_canon(normalize(w)) == _canon(s) for _, w, s in rows)
    assert raw_matches == 374


# --------------------------------------------------------------------------------------------------------------
# Phonemes


def test_phonemize_pinned(espeak: None) -> None:
    assert phonemize("Hello, world!") == "həlˈoʊ, wˈɜːld!"
    assert phonemize(normalize("The quick brown fox jumps over the lazy dog.")) == (
        "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ.")
    # punctuation between word runs is put back as written, a free-standing dash included
    assert phonemize('"Stop!" she cried - then: silence; the end.') == (
        '"stˈɑːp!" ʃiː kɹˈaɪd - ðˈɛn: sˈaɪləns; ðɪ ˈɛnd.')


def test_phonemize_from_many_threads(espeak: None) -> None:
    """espeak-ng keeps global state; the lock makes concurrent callers (a server's workers) safe."""
    texts = [normalize(f"Sentence number {i}, said Mr. Smith.") for i in range(40)]
    expected = [phonemize(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(phonemize, texts)) == expected


def test_every_symbol_espeak_emits_for_lj_speech_is_in_the_inventory(espeak: None) -> None:
    lines = shared_data("ljspeech_subset", "metadata.csv").read_text(encoding="utf-8").splitlines()
    text = " ".join(phonemize(normalize(line.split("|")[1])) for line in lines)
    assert set(text) <= set(PhonemeTokenizer().symbols)


# --------------------------------------------------------------------------------------------------------------
# The tokenizer


def test_encode_decode_round_trip(espeak: None) -> None:
    tok = PhonemeTokenizer()
    assert tok.kind == "phonemes" and tok.vocab_size == 95 and tok.symbols[:12] == list("_,.!?;:-'\" a")
    ids = tok.encode("Hello, world!")
    assert ids == [18, 48, 22, 85, 25, 72, 1, 10, 33, 85, 51, 87, 22, 14, 3]
    assert tok.decode(ids) == "həlˈoʊ, wˈɜːld!"
    assert tok.decode([0, 0, *ids, 0]) == "həlˈoʊ, wˈɜːld!"  # padding is dropped


def test_save_and_load_through_load_tokenizer(tmp_path: Path) -> None:
    for mode in ("phonemes", "chars"):
        tok = PhonemeTokenizer(mode)
        path = tok.save(tmp_path / mode)
        assert path == tmp_path / mode / "tokenizer.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        assert (data["type"], data["version"], data["mode"]) == (PHONEME_TYPE, 1, mode)
        loaded = load_tokenizer(tmp_path / mode)
        assert isinstance(loaded, PhonemeTokenizer)
        assert (loaded.mode, loaded.symbols) == (mode, tok.symbols)


def test_chars_mode() -> None:
    tok = PhonemeTokenizer("chars")
    assert tok.vocab_size == 37
    ids = tok.encode("Dr. Who, 1st!")
    assert tok.decode(ids) == "doctor who, first!"
    assert ids[:3] == [14, 25, 13]  # d o c: after padding, 9 marks and the space, a = 11


def test_unknown_symbols_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    tok = PhonemeTokenizer("chars", [*PhonemeTokenizer("chars").symbols[:-1]])  # no "z"
    with caplog.at_level(logging.WARNING, logger="genforge.data.phonemes"):
        assert tok.decode(tok.encode("zoo")) == "oo"
    assert "'z'" in caplog.text


@pytest.mark.parametrize("text", ["", "!!!", "中文", " ... "])
def test_nothing_to_say_is_an_error(text: str) -> None:
    for mode in ("chars", "phonemes"):
        if mode == "phonemes" and not espeak_available():
            continue
        with pytest.raises(UserError, match=r"nothing to say in the text .*give at least one English word") as info:
            PhonemeTokenizer(mode).encode(text)
        assert repr(text) in str(info.value)


def test_bad_ids_and_files(tmp_path: Path) -> None:
    tok = PhonemeTokenizer("chars")
    with pytest.raises(UserError, match=r"token id 37 is outside this tokenizer's vocabulary \[0, 37\)"):
        tok.decode([1, 37])
    with pytest.raises(UserError, match="mode 'letters': allowed: phonemes"):
        PhonemeTokenizer("letters")  # type: ignore[arg-type]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": PHONEME_TYPE, "version": 1, "mode": "ipa"}))
    with pytest.raises(UserError, match="mode 'ipa'; allowed: phonemes, chars"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": PHONEME_TYPE, "mode": "chars", "symbols": ["a"]}))
    with pytest.raises(UserError, match="starting with the padding symbol '_'"):
        load_tokenizer(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# Backends: the library, else the binary, else a message that says how to install one


@pytest.fixture
def no_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phonemes, "_backend", None)
    monkeypatch.setattr(phonemes, "_load_library", lambda: None)


def test_falls_back_to_the_binary(no_library: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "espeak-ng"  # a stand-in that records its arguments
    exe.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\necho " wˈʌn"\necho " tˈuː"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert phonemize("one two, three.") == "wˈʌn tˈuː, wˈʌn tˈuː."
    assert (tmp_path / "calls").read_text().splitlines() == ["-q --ipa -v en-us one two", "-q --ipa -v en-us three"]


def test_no_espeak_says_how_to_install(no_library: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not espeak_available()
    hint = r"pip install espeakng-loader .* apt-get install espeak-ng.*data.tokenizer: char"
    with pytest.raises(UserError, match=hint):
        PhonemeTokenizer().encode("hello")
    assert PhonemeTokenizer("chars").encode("hi") == [18, 19]  # letters need no espeak


# --------------------------------------------------------------------------------------------------------------
# Sentences


@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith went to Washington. He said: hi! Did he? Yes; really.",
     ["Mr. Smith went to Washington.", "He said: hi!", "Did he?", "Yes;", "really."]),
    ("J. R. R. Tolkien wrote it. It costs $3.50 today...  Dr. No e.g. returns",
     ["J. R. R. Tolkien wrote it.", "It costs $3.50 today...", "Dr. No e.g. returns"]),
    ('"Stop!" she cried. "Why?" He left.', ['"Stop!" she cried.', '"Why?"', "He left."]),
    ("", []),
])
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_long_sentences() -> None:
    clauses = ", ".join(" ".join(f"w{i}{j}" for j in range(7)) for i in range(10))  # 70 words, a comma every 7
    pieces = split_sentences(clauses + ".")
    assert [len(p.split()) for p in pieces] == [28, 28, 14]
    assert pieces[0].endswith("w36,") and pieces[-1].endswith("w96.")
    assert [len(p.split()) for p in split_sentences("word " * 65)] == [30, 30, 5]
    assert [len(p.split()) for p in split_sentences("word " * 65, max_words=40)] == [40, 25]
