"""Text to speech: the alignment search, the speech data sets, the shared log-mel feature, the TTS family's losses
and synthesis, and the command line from training to a WAV file."""
from __future__ import annotations

import itertools
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_data
from genforge import audio
from genforge.cli import main
from genforge.config import DataSection
from genforge.data import speech
from genforge.data.phonemes import PhonemeTokenizer
from genforge.errors import UserError
from genforge.models.tts import TTS, TTSConfig, intersperse, monotonic_alignment

REPO = Path(__file__).resolve().parents[1]
DEBUG = str(REPO / "configs" / "debug" / "tts.yaml")


# --------------------------------------------------------------------------------------------------------------
# Monotonic alignment search


def _best_by_enumeration(log_p: torch.Tensor) -> float:
    """The best score over every monotonic surjective alignment of T frames to L symbols, by brute force."""
    L, T = log_p.shape
    best = -float("inf")
    for cuts in itertools.combinations(range(1, T), L - 1):  # where symbols 1..L-1 start
        starts = (0, *cuts, T)
        score = sum(float(log_p[i, starts[i]:starts[i + 1]].sum()) for i in range(L))
        best = max(best, score)
    return best


def test_alignment_search_finds_the_best_monotonic_path() -> None:
    g = torch.Generator().manual_seed(0)
    for L, T in [(1, 4), (2, 2), (3, 7), (4, 9)]:
        log_p = torch.randn(1, L, T, generator=g, dtype=torch.float64)
        path = monotonic_alignment(log_p, torch.tensor([L]), torch.tensor([T]))[0]
        assert torch.equal(path.sum(0), torch.ones(T, dtype=path.dtype))  # every frame to exactly one symbol
        assert (path.sum(1) >= 1).all()  # every symbol at least one frame
        owner = path.argmax(0)
        assert torch.all(owner[1:] >= owner[:-1]) and owner[0] == 0 and owner[-1] == L - 1  # monotonic, surjective
        assert float((path * log_p[0]).sum()) == pytest.approx(_best_by_enumeration(log_p[0]), abs=1e-9)


def test_alignment_search_respects_each_rows_lengths() -> None:
    log_p = torch.zeros(2, 3, 6)
    log_p[0, 0, :2] = log_p[0, 1, 2:4] = log_p[0, 2, 4:] = 5.0
    log_p[1, 0, :1] = log_p[1, 1, 1:3] = 5.0  # row 1: 2 symbols, 3 frames; the rest is padding
    path = monotonic_alignment(log_p, torch.tensor([3, 2]), torch.tensor([6, 3]))
    assert path[0].sum(1).tolist() == [2, 2, 2]
    assert path[1].sum(1).tolist() == [1, 2, 0] and path[1, :, 3:].sum() == 0


def test_blanks_go_between_and_around_symbols_and_padding_stays_zero() -> None:
    out, lengths = intersperse(torch.tensor([[5, 6, 7], [8, 0, 0]]), torch.tensor([3, 1]), blank=9)
    assert out.tolist() == [[9, 5, 9, 6, 9, 7, 9], [9, 8, 9, 0, 0, 0, 0]]
    assert lengths.tolist() == [7, 3]


# --------------------------------------------------------------------------------------------------------------
# Features and files


def test_log_mel_has_one_frame_per_hop_and_the_silence_floor() -> None:
    cfg = audio.MelConfig(sample_rate=8000, n_fft=256, hop_length=64, win_length=256, n_mels=20, fmax=None)
    t = torch.arange(8000) / 8000
    mel = audio.log_mel(0.5 * torch.sin(2 * torch.pi * 1000 * t), cfg)
    assert mel.shape == (20, 125)
    peak_band = int(mel[:, 60].argmax())
    assert peak_band == 8  # 1 kHz is the center of band 8 of 20 between 0 and 4 kHz (Slaney scale: 15 of 35.2 mel)
    assert float(audio.log_mel(torch.zeros(1000), cfg).max()) == pytest.approx(np.log(audio.LOG_FLOOR))
    fb = audio.mel_filterbank(audio.MelConfig())
    assert fb.shape == (80, 513) and float(fb.sum()) == pytest.approx(3.71369, abs=1e-4)


def test_wav_files_round_trip_as_16_bit_and_bad_files_are_named(tmp_path: Path) -> None:
    wave_in = np.sin(np.linspace(0, 100, 4000)).astype(np.float32) * 0.5
    path = audio.write_wav(tmp_path / "a.wav", wave_in, 8000)
    with wave.open(str(path)) as handle:
        assert (handle.getsampwidth(), handle.getframerate(), handle.getnchannels()) == (2, 8000, 1)
    back, rate = audio.read_wav(path)
    assert rate == 8000 and np.abs(back - wave_in).max() < 1 / 32767 + 1e-6
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really")
    with pytest.raises(UserError, match="bad.wav: cannot read this audio file"):
        audio.read_wav(tmp_path / "bad.wav")
    with pytest.raises(UserError, match="no such audio file"):
        audio.read_wav(tmp_path / "missing.wav")
    resampled, rate = audio.read_wav(path, sample_rate=16000)
    assert rate == 16000 and len(resampled) == 8000


# --------------------------------------------------------------------------------------------------------------
# Data


def _lj_folder(tmp_path: Path, lines: list[str], wavs: list[str]) -> Path:
    folder = tmp_path / "lj"
    (folder / "wavs").mkdir(parents=True)
    (folder / "metadata.csv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    for name in wavs:
        audio.write_wav(folder / "wavs" / f"{name}.wav", np.zeros(2000, dtype=np.float32) + 0.01, 8000)
    return folder


@pytest.mark.parametrize(("lines", "wavs", "message"), [
    (["A-1|one|one", "A-2|two"], ["A-1"], r"line 2: its audio .*A-2.wav does not exist"),
    (["A-1|one|one|extra"], ["A-1"], r"metadata.csv, line 1: expected `id\|text\|normalized text`"),
    (["A-1|one|one", "A-1|again|again"], ["A-1"], r"line 2: clip id 'A-1' appears twice"),
    (["A-1||"], ["A-1"], r"line 1: the clip id and its text must not be empty"),
])
def test_malformed_metadata_names_the_file_and_line(tmp_path: Path, lines: list[str], wavs: list[str],
                                                    message: str) -> None:
    folder = _lj_folder(tmp_path, lines, wavs)
    with pytest.raises(UserError, match=message):
        speech.read_metadata(folder)


def test_a_corrupt_wav_is_named_when_the_data_set_is_built(tmp_path: Path) -> None:
    folder = _lj_folder(tmp_path, [f"A-{i}|word {i}|word {i}" for i in range(4)], [f"A-{i}" for i in range(4)])
    (folder / "wavs" / "A-2.wav").write_bytes(b"garbage")
    cfg = DataSection(name="ljspeech", path=str(folder), tokenizer="char", val_fraction=0.0, test_fraction=0.25)
    with pytest.raises(UserError, match="A-2.wav: cannot read"):
        speech.build_ljspeech(cfg, "train")


def test_ljspeech_subset_splits_by_id_and_reads_its_text() -> None:
    folder = shared_data("ljspeech_subset")
    cfg = DataSection(name="ljspeech", path=str(folder), tokenizer="char", val_fraction=0.03, test_fraction=0.06)
    test = speech.build_ljspeech(cfg, "test")
    assert len(test) == 24 and test.sample_rate == 22050
    assert [u.id for u in test.utterances[:2]] == ["LJ002-0177", "LJ002-0178"]
    assert test.utterances[-1].id == "LJ002-0200"
    assert test.tokenizer.decode(test.symbols[0])[:30] == test.texts[0].lower()[:30]


def test_speech_batches_resume_exactly_and_crop_for_vocoders() -> None:
    cfg = DataSection(name="speech-mini", tokenizer="char", val_fraction=0.1, test_fraction=0.1)
    data = speech.build_speech_mini(cfg, "train")
    assert len(data) == 48 and data.sample_rate == 8000
    assert data.texts[:2] == ["ace ace face cab", "dead cafe fed dab"]
    first = data.batches(4, seed=7)
    for _ in range(13):  # into the second epoch
        first.next_batch()
    state = first.state_dict()
    expected = first.next_batch()
    again = data.batches(4, seed=99)
    again.load_state_dict(state)
    got = again.next_batch()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert expected["text"].shape[0] == 4 and int(expected["audio_lengths"].max()) == expected["audio"].shape[1]
    crops = data.batches(4, seed=0, segment=1024).next_batch()
    assert list(crops) == ["audio"] and crops["audio"].shape == (4, 1024)


# --------------------------------------------------------------------------------------------------------------
# The model


def _mini() -> tuple[TTS, speech.SpeechDataset]:
    cfg = DataSection(name="speech-mini", tokenizer="char", val_fraction=0.1, test_fraction=0.1)
    data = speech.build_speech_mini(cfg, "train")
    model_cfg = TTSConfig.from_dict({"family": "tts", "preset": "debug"}).adapt_to_data(data)
    torch.manual_seed(0)
    model = TTS(model_cfg)
    model.tokenizer = data.tokenizer
    return model, data


def test_losses_after_two_steps_are_pinned() -> None:
    model, data = _mini()
    assert (model.config.vocab_size, model.config.mel_mean, model.config.mel_std) == (37, -6.3322, 1.6763)
    batches = data.batches(4, seed=0)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(2):
        out = model.loss(batches.next_batch())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    values = {k: round(float(v.detach()), 4) for k, v in out.items()}
    assert values == pytest.approx({"loss": 2.9185, "prior": 0.399, "duration": 1.8751, "mel": 0.6444}, abs=2e-4)


def test_synthesis_speaks_any_text_at_a_speaking_rate_and_refuses_empty_text() -> None:
    model, _ = _mini()
    model.eval()
    clips = model.sample(1, cond="a bad cab. a face!", griffin_lim_iters=2)
    assert isinstance(clips, audio.AudioClips) and clips.sample_rate == 8000 and clips.texts == ["a bad cab. a face!"]
    normal = len(clips.waves[0])
    fast = len(model.sample(1, cond="a bad cab. a face!", griffin_lim_iters=2, speaking_rate=2.0).waves[0])
    assert fast < normal
    for text in ["", "   "]:
        with pytest.raises(UserError, match="empty"):
            model.sample(1, cond=text)
    with pytest.raises(UserError, match="nothing to say in the text '!!!'"):
        model.sample(1, cond="!!!")
    with pytest.raises(UserError, match="sample.vocoder = 'wavenet'"):
        model.sample(1, cond="a bad cab", vocoder="wavenet")


# --------------------------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tts") / "run"
    assert main(["train", DEBUG, "--run-dir", str(run), "--set", "train.threads=1"]) == 0
    return run


def test_training_writes_checkpoints_with_the_symbol_table_and_wav_samples(trained: Path) -> None:
    assert sorted(p.name for p in (trained / "step-4").iterdir()) == ["config.yaml", "model.safetensors",
                                                                      "tokenizer.json", "train_state.pt"]
    assert (trained / "samples" / "step-4.wav").is_file()
    assert PhonemeTokenizer(mode="chars").to_json() == (trained / "step-4" / "tokenizer.json").read_text()


def test_sample_writes_a_16_bit_wav_of_the_given_text(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "speech.wav"
    assert main(["sample", str(trained), "--text", "a bad cab. deed!", "--out", str(out)]) == 0
    with wave.open(str(out)) as handle:
        assert (handle.getsampwidth(), handle.getframerate()) == (2, 8000) and handle.getnframes() > 1000


@pytest.mark.parametrize(("args", "message"), [
    (["--text", ""], "empty"),
    (["--text", "a cab", "--out", "x.png"], "audio samples must end in .wav or .zip"),
    (["--prompt", "a cab"], "--prompt applies to models conditioned on a prompt"),
    (["--text", "a cab", "--set", "sample.speaking_rate=0"], "speaking_rate"),
    (["--text", "a cab", "--set", "sample.vocoder=/nonexistent/run"], "sample.vocoder = '/nonexistent/run'"),
])
def test_bad_sample_command_lines_exit_2_naming_the_flag(trained: Path, tmp_path: Path, args: list[str],
                                                         message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", str(trained), *args]) == 2
    assert message in capsys.readouterr().err


def test_eval_scores_held_out_sentences_with_the_speech_protocol(trained: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pocketsphinx")
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained), "--json", str(out)]) == 0
    import json

    results = json.loads(out.read_text())["metrics"]
    tag = "speech-mini-test2"
    assert sorted(results) == sorted(f"{m}-{tag}" for m in ("mcd", "wer", "wer_real", "rtf"))
    assert results[f"mcd-{tag}"] > 0 and results[f"rtf-{tag}"] > 0
    assert results[f"wer_real-{tag}"] == 1.0  # letter tones are no English: the recognizer hears no reference word


def test_tensorboard_gets_the_clips_their_texts_and_pictures_of_frames_and_alignment() -> None:
    model, _ = _mini()
    model.eval()
    clips = model.sample(1, cond="a bad cab", griffin_lim_iters=2)
    mel, alignment = clips.pictures["mel"], clips.pictures["alignment"]
    assert mel.dtype == np.uint8 and mel.shape[0] == 20 and alignment.shape == (2 * 9 + 1, mel.shape[1])

    class Writer:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        def add_audio(self, tag: str, *args: object, **kwargs: object) -> None:
            self.calls.append(("audio", tag))

        def add_image(self, tag: str, *args: object, **kwargs: object) -> None:
            self.calls.append(("image", tag))

        def add_text(self, tag: str, *args: object, **kwargs: object) -> None:
            self.calls.append(("text", tag))

    writer = Writer()
    audio.log_clips(writer, "samples", clips, 4)
    assert writer.calls == [("audio", "samples/0"), ("image", "samples/mel"), ("image", "samples/alignment"),
                            ("text", "samples/texts")]


def test_serve_refuses_a_bad_sample_override_before_it_binds(trained: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(trained), "--set", "sample.speaking_rate=0", "--port", "0"]) == 2
    assert "speaking_rate" in capsys.readouterr().err


def test_the_encoder_trains_with_muon_like_every_transformer(tmp_path: Path) -> None:
    model, _ = _mini()
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = sorted(names[id(p)] for p in model.matrix_parameters())
    assert chosen == ["blocks.0.attn.c_attn.weight", "blocks.0.attn.c_proj.weight", "blocks.0.mlp.c_fc.weight",
                      "blocks.0.mlp.c_proj.weight"]
    assert main(["train", DEBUG, "--run-dir", str(tmp_path / "run"), "--set", "train.optim.name=muon",
                 "--set", "train.steps=2", "--set", "train.threads=1"]) == 0
