"""The text front end of the speech families: English text -> normalized words -> IPA phonemes -> token ids.

Three steps, as in Tacotron 2 (Shen et al. 2018) and the VITS / Piper voices:

1. `normalize`: what a reader would say. Unicode to ASCII, abbreviations ("Mr." -> "mister"), numbers, years,
   ordinals, money and percentages to words ("£10,500" -> "ten thousand, five hundred pounds"), in the
   conventions of LJ Speech's own normalized transcripts (no "and" inside numbers, "eighteen oh three" for 1803).
   Punctuation stays: , . ! ? ; : - ' " are pauses and intonation for the model.
2. `phonemize`: the normalized text to IPA through espeak-ng's en-us voice (the espeak-ng shared library that the
   `espeakng-loader` wheel ships, called through ctypes; else an `espeak-ng` binary on PATH). espeak drops
   punctuation, so each run of words is phonemized alone and the punctuation between runs is put back.
   "Hello, world." -> "həlˈoʊ, wˈɜːld."
3. `PhonemeTokenizer`: one id per symbol of a fixed inventory (padding, punctuation, space, the IPA characters
   espeak-ng's en-us voice emits), saved as the checkpoint's tokenizer.json. In mode "chars" the symbols are the
   normalized text's lower-case letters instead: no espeak needed, a worse voice.

`split_sentences` cuts a long text into sentences a model can synthesize one at a time.
"""
from __future__ import annotations

import ctypes
import json
import logging
import re
import shutil
import subprocess
import threading
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

from genforge.errors import UserError

log = logging.getLogger(__name__)

# ==============================================================================================================
# 1. Normalization
# ==============================================================================================================

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ["", "thousand", "million", "billion", "trillion", "quadrillion"]  # numbers below 10**18 are read out
_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                      "nine": "ninth", "twelve": "twelfth"}


def _below_thousand(n: int) -> str:
    """0 < n < 1000 -> "one hundred ninety-nine" (no "and", as LJ Speech reads it)."""
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if rest >= 20:
        words.append(_TENS[rest // 10] + (f"-{_ONES[rest % 10]}" if rest % 10 else ""))
    elif rest:
        words.append(_ONES[rest])
    return " ".join(words)


def number_to_words(n: int) -> str:
    """A cardinal: 6439 -> "six thousand, four hundred thirty-nine", 7020 -> "seven thousand twenty" (a comma
    between groups unless the last one is below a hundred, the LJ Speech / inflect convention). Numbers of 10**18
    and more are read digit by digit."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 1000:
        return _below_thousand(n) if n else "zero"
    if n >= 1000 ** len(_SCALES):
        return _digits(str(n))
    groups: list[int] = []  # least significant group first
    while n:
        n, group = divmod(n, 1000)
        groups.append(group)
    out = ""
    for scale in range(len(groups) - 1, -1, -1):
        group = groups[scale]
        if not group:
            continue
        words = _below_thousand(group) + (f" {_SCALES[scale]}" if scale else "")
        if out:
            out += " " if scale == 0 and group < 100 else ", "
        out += words
    return out


def ordinal_to_words(n: int) -> str:
    """21 -> "twenty-first", 100 -> "one hundredth"."""
    words = number_to_words(n)
    head, sep, last = max(words.rpartition(" "), words.rpartition("-"), key=lambda p: len(p[0]))
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year_to_words(n: int) -> str:
    """How years are read (Tacotron's rule, which LJ Speech follows): 1455 -> "fourteen fifty-five",
    1803 -> "eighteen oh three", 1800 -> "eighteen hundred", 2005 -> "two thousand five"; outside 1001..2999 a
    plain cardinal."""
    if not 1000 < n < 3000 or 2000 <= n < 2010:
        return number_to_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{number_to_words(high)} hundred"
    return f"{number_to_words(high)} {'oh ' + _ONES[low] if low < 10 else number_to_words(low)}"


def _digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s)


def _cardinal(s: str) -> str:
    """A number as written, with optional thousands commas and decimals: "10,500" -> cardinal words,
    "3.14" -> "three point one four", "007" -> "zero zero seven"."""
    whole, _, frac = s.replace(",", "").partition(".")
    if len(whole) > 1 and whole.startswith("0"):
        words = _digits(whole)
    else:
        words = number_to_words(int(whole)) if whole else "zero"
    return words + (f" point {_digits(frac)}" if frac else "")


# Abbreviations, after the Tacotron english_cleaners list (plus a few more); the period goes with them.
_ABBREVIATIONS = {
    "mrs": "misess", "mr": "mister", "ms": "miz", "messrs": "messieurs", "dr": "doctor", "drs": "doctors",
    "st": "saint", "co": "company", "jr": "junior", "sr": "senior", "maj": "major", "gen": "general",
    "rev": "reverend", "lt": "lieutenant", "hon": "honorable", "sgt": "sergeant", "capt": "captain",
    "esq": "esquire", "ltd": "limited", "col": "colonel", "ft": "fort", "prof": "professor", "mt": "mount",
    "vs": "versus", "etc": "et cetera", "inc": "incorporated", "dept": "department", "approx": "approximately",
}
_ABBREVIATION_RE = re.compile(r"\b(" + "|".join(sorted(_ABBREVIATIONS, key=len, reverse=True)) + r")\.", re.I)
_PLACE_FORMS = {"st": "street", "dr": "drive"}  # "Baker St." / "Mulholland Dr.": after a name, before no name

_UNICODE = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2212": "-", "\u2026": "...", "\u00a0": " ",
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "Ae", "\u0153": "oe", "\u0152": "Oe", "\u00f8": "o", "\u00d8": "O",
    "\u0142": "l", "\u0141": "L", "\u0111": "d", "\u0110": "D", "\u00fe": "th", "\u00de": "Th", "\u00f0": "d",
    "\u00bd": " one half", "\u00bc": " one quarter", "\u00be": " three quarters",
    "\u00b0": " degrees", "\u00d7": " times ", "&": " and ", "+": " plus ", "=": " equals ", "@": " at ",
    "(": ", ", ")": ", ", "[": ", ", "]": ", ", "{": ", ", "}": ", ",
})
_NUM = r"\d[\d,]*(?:\.\d+)?"  # a number as written: 5, 10,500, 3.14
_CURRENCIES = {  # symbol: (unit, units, cent, cents)
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "sen", "sen"),
}
_CURRENCY_RE = re.compile(r"([$£€¥])\s?(" + _NUM + r")(?:\s?(thousand|million|billion|trillion)\b)?", re.I)
_REGNAL_RE = re.compile(
    r"\b(George|Henry|Edward|William|Charles|James|Louis|Richard|Elizabeth|Mary|Anne|John|Stephen|Philip|Frederick|"
    r"Pius|Leo|Gregory|Innocent|Clement|Benedict|Paul|Catherine|Alexander|Nicholas|Ferdinand|Francis|Napoleon)"
    r"\s+(X{0,3}(?:IX|IV|V?I{0,3}))\b(?!')")
_ROMAN = {"I": 1, "V": 5, "X": 10}


def _roman(s: str) -> int:
    values = [_ROMAN[c] for c in s]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


def _currency(m: re.Match[str]) -> str:
    unit, units, cent, cents = _CURRENCIES[m.group(1)]
    amount, scale = m.group(2), m.group(3)
    if scale:  # "$2.5 million" -> "two point five million dollars"
        return f"{_cardinal(amount)} {scale.lower()} {units}"
    whole, _, frac = amount.replace(",", "").partition(".")
    major, minor = int(whole), int((frac + "00")[:2]) if frac else 0
    parts = []
    if major or not minor:
        parts.append(f"{number_to_words(major)} {unit if major == 1 else units}")
    if minor:
        parts.append(f"{number_to_words(minor)} {cent if minor == 1 else cents}")
    return ", ".join(parts)


def _abbreviation(m: re.Match[str]) -> str:
    key = m.group(1).lower()
    word = _ABBREVIATIONS[key]
    if key in _PLACE_FORMS:  # a capitalized word before and none after: a street name
        before = m.string[:m.start()].rstrip().rsplit(" ", 1)[-1]
        after = m.string[m.end():].lstrip()
        if before[:1].isupper() and not after[:1].isupper():
            word = _PLACE_FORMS[key]
    if m.group(1)[0].isupper():
        word = word[0].upper() + word[1:]
    return word + ("." if not m.string[m.end():].strip() else "")  # the last word of the text keeps its stop


def _plural(words: str) -> str:
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _time(m: re.Match[str]) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    if minutes == 0:
        return f"{number_to_words(hours)} o'clock"
    return f"{number_to_words(hours)} {'oh ' + _ONES[minutes] if minutes < 10 else number_to_words(minutes)}"


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _expand_numbers(text: str) -> str:
    text = _CURRENCY_RE.sub(_currency, text)  # "$5.20", "£10,500", "$3 million"
    text = re.sub(r"(" + _NUM + r")\s?%", lambda m: f"{_cardinal(m.group(1))} percent", text)
    text = re.sub(r"\b(\d{1,2}):(\d{2})\b", _time, text)  # "3:30"
    text = re.sub(r"(\d)-(?=\d)", r"\1 to ", text)  # ranges "1800-1810"
    text = re.sub(r"(?<![\w.])-(?=\d)", "minus ", text)
    text = re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", lambda m: _cardinal(m.group()), text)  # "1,000": never a year
    text = re.sub(r"\d*\.\d+", lambda m: _cardinal(m.group()), text)  # "3.5", ".5"
    text = re.sub(r"(\d+)(st|nd|rd|th)\b", lambda m: ordinal_to_words(int(m.group(1))), text, flags=re.I)
    text = re.sub(r"'?(\d+)'?s\b", lambda m: _plural(year_to_words(int(m.group(1)))), text)  # "1880s", "'90s"
    text = re.sub(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])", " ", text)  # "5pm" -> "5 pm"
    return re.sub(r"\d+", lambda m: year_to_words(int(m.group())) if len(m.group()) == 4
                  else _cardinal(m.group()), text)


def normalize(text: str) -> str:
    """English text as a reader would say it, in ASCII: words, single spaces and the punctuation
    , . ! ? ; : - ' " (case is kept). Characters with no English reading (other scripts, emoji) are dropped.

    >>> normalize("Mr. Smith paid $5.20 on May 21st, 1883.")
    'Mister Smith paid five dollars, twenty cents on May twenty-first, eighteen eighty-three.'
    """
    text = text.translate(_UNICODE)
    text = re.sub(r"(?<=\d)\u2013(?=\d)", "-", text)  # an en dash in a range: "1800\u20131810"
    text = re.sub(r"\s*[\u2013\u2014\u2015]+\s*", " - ", text)  # a dash elsewhere is a pause
    text = re.sub(r"#\s?(?=\d)", "number ", text)
    text = _REGNAL_RE.sub(lambda m: f"{m.group(1)} the {ordinal_to_words(_roman(m.group(2)))}"
                          if m.group(2) else m.group(), text)  # "George II" -> "George the second"
    text = _ABBREVIATION_RE.sub(_abbreviation, text)
    text = _expand_numbers(text)
    text = _strip_accents(text)
    text = re.sub(r"[^A-Za-z,.!?;:'\"\- ]+", " ", text)  # everything else (other scripts, symbols) is silent
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r" (?=[,.!?;:])", "", text)  # no space before a mark
    text = re.sub(r",+(?=[,.!?;:])", "", text)  # "(1462)." -> ", 1462." not ", 1462,."
    return text.strip(" ,")


# ==============================================================================================================
# 2. Phonemes through espeak-ng
# ==============================================================================================================

VOICE = "en-us"
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Initialize output mode: no audio device, nothing played
_CHARS_UTF8 = 1  # espeakCHARS_UTF8
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes phonememode bit 1: IPA as UTF-8 (0: espeak's ASCII names)
_INSTALL_HINT = "pip install espeakng-loader (the espeak-ng library as a wheel) or apt-get install espeak-ng"
_WORDS_RE = re.compile(r"[A-Za-z0-9']+(?:-[A-Za-z0-9']+)*(?: [A-Za-z0-9']+(?:-[A-Za-z0-9']+)*)*")  # a run of
#                                                      words with no pause inside, which espeak phonemizes alone
_LANGUAGE_SWITCH_RE = re.compile(r"\([a-z]{2,3}(?:-[a-z]+)?\)")  # "(fr)" markers espeak puts around foreign words

_lock = threading.Lock()  # espeak-ng keeps global state: one call at a time
_backend: Callable[[str], str] | None = None


def _load_library() -> Callable[[str], str] | None:
    """espeak_TextToPhonemes from the espeakng-loader wheel's libespeak-ng, initialized; None when unavailable."""
    try:
        import espeakng_loader

        lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_path = str(espeakng_loader.get_data_path()).encode()
    except (ImportError, OSError) as exc:
        log.debug("espeak-ng library unavailable: %s", exc)
        return None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0) <= 0:  # returns the sample rate, or -1
        log.warning("espeak-ng library at %s failed to initialize with data %s", lib._name, data_path)
        return None
    if lib.espeak_SetVoiceByName(VOICE.encode()) != 0:
        log.warning("espeak-ng has no %s voice in %s", VOICE, data_path)
        return None

    def text_to_phonemes(text: str) -> str:
        buffer = ctypes.create_string_buffer(text.encode())  # kept alive while espeak walks the pointer
        pointer = ctypes.c_char_p(ctypes.addressof(buffer))
        clauses = []
        while pointer.value is not None:  # one clause per call; espeak sets the pointer to NULL at the end
            clause = lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA)
            if clause:
                clauses.append(clause.decode())
        return " ".join(clauses)

    return text_to_phonemes


def _binary() -> Callable[[str], str] | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None

    def text_to_phonemes(text: str) -> str:
        out = subprocess.run([exe, "-q", "--ipa", "-v", VOICE, text], capture_output=True, text=True, check=True)
        return " ".join(out.stdout.split())

    return text_to_phonemes


def _get_backend() -> Callable[[str], str]:
    global _backend
    if _backend is None:
        _backend = _load_library() or _binary()
        if _backend is None:
            raise UserError(f"phonemes need espeak-ng, which was not found: {_INSTALL_HINT}; or train with "
                            "`data.tokenizer: char`, which reads letters instead")
    return _backend


def espeak_available() -> bool:
    """Whether `phonemize` can run here (the espeak-ng library or binary was found)."""
    with _lock:
        try:
            _get_backend()
        except UserError:
            return False
    return True


def phonemize(text: str) -> str:
    """Normalized text -> IPA with stress marks, words separated by spaces and the punctuation kept:
    "Hello, world." -> "həlˈoʊ, wˈɜːld." (call `normalize` first: digits and symbols are not normalized here)."""
    pieces = []
    last = 0
    with _lock:
        backend = _get_backend()
        for m in _WORDS_RE.finditer(text):
            pieces.append(text[last:m.start()])  # the punctuation and spaces between runs, as they are
            pieces.append(_LANGUAGE_SWITCH_RE.sub("", backend(m.group())).strip())
            last = m.end()
    pieces.append(text[last:])
    return re.sub(r"\s+", " ", "".join(pieces)).strip()


# ==============================================================================================================
# 3. The symbol table (the speech checkpoint's tokenizer)
# ==============================================================================================================

PHONEME_TYPE = "genforge.phonemes"  # the "type" value that marks a phoneme tokenizer file
TOKENIZER_FILE = "tokenizer.json"  # the name tokenizers.load_tokenizer reads in a checkpoint dir
PAD = "_"  # id 0: padding (never produced by `normalize` or espeak)
PUNCTUATION = list(",.!?;:-'\"")
SPACE = " "
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
# Every character espeak-ng's en-us voice emitted for the LJ Speech subset and the 57,000 distinct words of Tiny
# Shakespeare and the IMDB subset (abdefhijklmnoprstuvwxz æðŋɐɑɔəɚɛɜɡɪɹɾʃʊʌʒʔ θᵻ, stress ˈ ˌ, length ː,
# palatal ʲ, nasal U+0303, syllabic U+0329), plus the rest of the usual English and near-English IPA so that IPA
# from another phonemizer (or a future espeak-ng) also maps: ɒ ɝ ɫ ʍ ʧ ʤ, the tie U+0361, aspiration ʰ, ...
IPA = sorted(set(
    "abdefhijklmnoprstuvwxz" "æðŋɐɑɔəɚɛɜɡɪɹɾʃʊʌʒʔθᵻ" "ˈˌːʲ\u0303\u0329"  # seen from espeak-ng en-us
    "cgqy" "çœøɒɘɝɞɟɣɨɫɬɭɯɲɳɵɺʀʁʋʍʎʏʧʤχʰʷˑ\u0361"  # the usual IPA besides
))


def symbols_for(mode: Literal["phonemes", "chars"]) -> list[str]:
    """The fixed inventory of a mode: padding, punctuation, space, then the IPA characters or the letters."""
    if mode not in ("phonemes", "chars"):
        raise UserError(f"phoneme tokenizer mode {mode!r}: allowed: phonemes (IPA through espeak-ng), chars "
                        "(the normalized letters)")
    return [PAD, *PUNCTUATION, SPACE, *(IPA if mode == "phonemes" else LETTERS)]


class PhonemeTokenizer:
    """Text -> `normalize` -> IPA (mode "phonemes") or lower-cased letters (mode "chars") -> one id per character
    of a fixed inventory. Id 0 is padding, which `decode` drops. Characters outside the inventory are dropped with
    a warning; a text with nothing to say is an error."""

    kind: ClassVar[Literal["phonemes"]] = "phonemes"
    unknown_id: ClassVar[int | None] = None  # unknown symbols are dropped, never mapped
    pad_id: ClassVar[int] = 0

    def __init__(self, mode: Literal["phonemes", "chars"] = "phonemes", symbols: Sequence[str] | None = None):
        self.mode = mode
        self.symbols = symbols_for(mode) if symbols is None else list(symbols)
        if (any(len(s) != 1 for s in self.symbols) or len(set(self.symbols)) != len(self.symbols)
                or self.symbols[:1] != [PAD]):
            raise UserError(f"a phoneme tokenizer's `symbols` must be distinct single characters starting with the "
                            f"padding symbol {PAD!r}; the tokenizer.json is corrupt or was edited by hand")
        self._ids = {s: i for i, s in enumerate(self.symbols)}
        self._silent = {self._ids[s] for s in [PAD, SPACE, *PUNCTUATION] if s in self._ids}

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def sentences(self, text: str) -> list[str]:
        """A long text in the pieces a speech model speaks one at a time (`split_sentences`)."""
        return split_sentences(text)

    def text_to_symbols(self, text: str) -> str:
        """The string of symbols `encode` maps: IPA or lower-cased normalized text."""
        normalized = normalize(text)
        return phonemize(normalized) if self.mode == "phonemes" else normalized.lower()

    def encode(self, text: str) -> list[int]:
        symbols = self.text_to_symbols(text)
        ids = [self._ids[s] for s in symbols if s in self._ids]
        if len(ids) != len(symbols):
            unknown = sorted(set(symbols) - set(self._ids))
            log.warning("dropped %s outside the %s inventory while encoding %r", ", ".join(map(repr, unknown)),
                        self.mode, text[:80])
        if all(i in self._silent for i in ids):
            raise UserError(f"nothing to say in the text {text[:80]!r}: speech models read English (letters, "
                            "numbers, money, dates and punctuation; other scripts and symbols are dropped); give at "
                            "least one English word")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return "".join(self.symbols[i] for i in ids if i != self.pad_id)
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and 0 <= i < self.vocab_size))
            raise UserError(f"token id {bad!r} is outside this tokenizer's vocabulary [0, {self.vocab_size})") from None

    def to_json(self) -> str:
        return json.dumps({"type": PHONEME_TYPE, "version": 1, "mode": self.mode, "symbols": self.symbols},
                          ensure_ascii=False)

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json into the directory `path` (or to the file `path` if it ends in .json)."""
        # tokenizers._write, repeated: tokenizers.load_tokenizer imports this module, so this one can't import it
        target = Path(path) if Path(path).suffix == ".json" else Path(path) / TOKENIZER_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_json(), encoding="utf-8")
        return target

    @classmethod
    def from_dict(cls, data: dict) -> PhonemeTokenizer:
        """From the parsed tokenizer.json (what `tokenizers.load_tokenizer` reads)."""
        mode = data.get("mode")
        if mode not in ("phonemes", "chars"):
            raise UserError(f"a phoneme tokenizer.json has mode {mode!r}; allowed: phonemes, chars; the file is "
                            "corrupt or was edited by hand")
        return cls(mode, data.get("symbols", []))


# ==============================================================================================================
# Long text -> sentences
# ==============================================================================================================

_NO_BREAK_AFTER = {"mr", "mrs", "ms", "messrs", "dr", "drs", "st", "maj", "gen", "rev", "lt", "hon", "sgt", "capt",
                   "col", "ft", "prof", "mt", "vs", "no", "e.g", "i.e", "cf", "fig", "vol"}  # always before more
_BREAK_RE = re.compile(r"[.!?;]+[\"')\]]*(?=\s)")


def split_sentences(text: str, max_words: int = 30) -> list[str]:
    """Split a text for synthesis one sentence at a time: after . ! ? ; (not after "Mr.", "Dr.", "e.g." or an
    initial such as "J.", nor inside a quote followed by lower case: '"Stop!" she cried.'), and a sentence of more
    than `max_words` words at its commas, or else every `max_words` words. The pieces keep their punctuation."""
    text = re.sub(r"\s+", " ", text).strip()
    sentences: list[str] = []
    start = 0
    for m in _BREAK_RE.finditer(text):
        word = text[start:m.end()].rsplit(" ", 1)[-1].rstrip(".").lower()
        if m.group() == "." and (word in _NO_BREAK_AFTER or re.fullmatch(r"[a-z]", word)):
            continue
        if m.group()[-1] in "\"')]" and text[m.end() + 1:m.end() + 2].islower():  # '"Stop!" she cried.'
            continue
        sentences.append(text[start:m.end()].strip())
        start = m.end()
    sentences.append(text[start:].strip())
    return [piece for s in sentences if s for piece in _split_long(s, max_words)]


def _split_long(sentence: str, max_words: int) -> list[str]:
    if len(sentence.split()) <= max_words:
        return [sentence]
    pieces: list[str] = []
    for clause in re.split(r"(?<=,) ", sentence):  # greedily join clauses while they fit
        if pieces and len(pieces[-1].split()) + len(clause.split()) <= max_words:
            pieces[-1] += " " + clause
        else:
            pieces.append(clause)
    out = []
    for piece in pieces:
        words = piece.split()
        out += [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)]
    return out
