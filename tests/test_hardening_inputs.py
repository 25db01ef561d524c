"""Issue 9: inputs a user can get wrong end in a UserError that names the file or key and the fix, never in a
traceback or in silently wrong data: 16-bit PNGs in an image folder, `eval --samples` files, out-of-range and
mistyped config values, and a GPT micro-batch larger than the machine's memory."""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genforge import config, media
from genforge.cli import main
from genforge.config import ConfigError, DataSection
from genforge.data import images
from genforge.data.images import decode_image, build_imagefolder
from genforge.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------------------
# 1. 16-bit PNGs in an image folder


def png_bytes(pixels: np.ndarray, color_type: int) -> bytes:
    """A PNG written byte by byte (not by Pillow), so the stored 16-bit values are exactly `pixels`:
    (H, W) for gray (color type 0), (H, W, 3) for RGB (color type 2); big-endian samples, filter 0 per row."""
    h, w = pixels.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = pixels.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


GRAY16 = np.array([[0, 256, 65535], [255, 4660, 32768]], dtype=np.uint16)  # 4660 = 0x1234 -> 0x12 = 18
GRAY8 = np.array([[0, 1, 255], [0, 18, 128]], dtype=np.uint8)  # value >> 8


def test_sixteen_bit_gray_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(GRAY16, color_type=0))
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode.startswith("I")  # what Pillow gives a 16-bit gray PNG ("I;16"; "I" in older Pillows)
    for channels, c in [(None, 1), (1, 1), (3, 3)]:
        ds = build_imagefolder(DataSection(name="imagefolder", path=str(tmp_path), channels=channels), "train")
        assert ds.images.shape == (1, c, 2, 3)
        for i in range(c):
            assert ds.images[0, i].tolist() == GRAY8.tolist(), channels


def test_sixteen_bit_png_written_by_pillow_in_both_byte_orders(tmp_path: Path) -> None:
    for mode, dtype in [("I;16", "<u2"), ("I;16B", ">u2")]:
        Image.frombytes(mode, (3, 2), GRAY16.astype(dtype).tobytes()).save(tmp_path / f"{mode}.png")
        assert decode_image(tmp_path / f"{mode}.png", None)[:, :, 0].tolist() == GRAY8.tolist()


def test_mode_i_with_16_bit_values_is_scaled_and_wider_values_refused(tmp_path: Path) -> None:
    image = Image.fromarray(GRAY16.astype(np.int32))
    assert image.mode == "I"
    assert images._pil_to_array(image, 3, tmp_path / "x.png")[:, :, 2].tolist() == GRAY8.tolist()
    wide = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(UserError, match=r"x\.png: 32-bit integer pixels .*70000.*0\.\.65535"):
        images._pil_to_array(wide, None, tmp_path / "x.png")


def test_sixteen_bit_rgb_png_keeps_the_high_byte(tmp_path: Path) -> None:
    rgb16 = np.array([[[0, 256, 65535], [65535, 0, 512]]], dtype=np.uint16)
    (tmp_path / "c.png").write_bytes(png_bytes(rgb16, color_type=2))
    ds = build_imagefolder(DataSection(name="imagefolder", path=str(tmp_path)), "train")
    assert ds.images[0].permute(1, 2, 0).tolist() == [[[0, 1, 255], [255, 0, 2]]]


# --------------------------------------------------------------------------------------------------------------
# 2. `genforge eval --samples FILE`


def _load_error(loader, path: Path) -> str:
    with pytest.raises(UserError) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_npz_that_is_not_a_readable_archive(tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert "is empty (0 bytes)" in _load_error(media.load_images_npz, empty)
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((4, 8, 8, 3), np.uint8))
    cut = tmp_path / "cut.npz"
    for size in (10, 100, good.stat().st_size - 30):
        cut.write_bytes(good.read_bytes()[:size])
        assert "truncated or not an .npz" in _load_error(media.load_images_npz, cut)
    npy = tmp_path / "plain.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros((2, 4, 4), np.uint8))
    assert "np.savez(" in _load_error(media.load_images_npz, npy)
    other = tmp_path / "other.npz"
    np.savez(other, pics=np.zeros((1, 4, 4), np.uint8))
    assert "no `images` array inside (found: pics)" in _load_error(media.load_images_npz, other)


def test_npz_layouts_nhwc_nhw_and_unambiguous_nchw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    for name, array in [("nhwc", nhwc), ("nchw", nhwc.transpose(0, 3, 1, 2)), ("gray", nhwc[..., 0])]:
        np.savez(tmp_path / f"{name}.npz", images=array)
    expected = torch.from_numpy(nhwc).permute(0, 3, 1, 2)
    assert torch.equal(media.load_images_npz(tmp_path / "nhwc.npz"), expected)
    assert torch.equal(media.load_images_npz(tmp_path / "nchw.npz"), expected)
    assert torch.equal(media.load_images_npz(tmp_path / "gray.npz"), expected[:, :1])
    np.savez(tmp_path / "nchw1.npz", images=nhwc[:, None, :, :, 0])  # (N, 1, 28, 28), as torch code saves MNIST
    assert torch.equal(media.load_images_npz(tmp_path / "nchw1.npz"), expected[:, :1])
    np.savez(tmp_path / "rgba.npz", images=np.zeros((2, 8, 8, 4), np.uint8))
    assert "images[..., :3]" in _load_error(media.load_images_npz, tmp_path / "rgba.npz")


def test_npz_contents_that_are_refused(tmp_path: Path) -> None:
    cases = {
        "float": (np.zeros((2, 8, 8, 3), np.float32), "must be uint8 (0..255), not float32"),
        "int64": (np.zeros((2, 8, 8), np.int64), ".astype(np.uint8)"),
        "none": (np.zeros((0, 8, 8, 3), np.uint8), "holds 0 images"),
        "flat": (np.zeros((5, 64), np.uint8), "shaped (N, H, W), (N, H, W, C) or (N, C, H, W); got shape (5, 64)"),
        "zero-width": (np.zeros((2, 8, 0), np.uint8), "empty images"),
    }
    for name, (array, expected) in cases.items():
        np.savez(tmp_path / f"{name}.npz", images=array)
        assert expected in _load_error(media.load_images_npz, tmp_path / f"{name}.npz"), name
    assert "np.clip((x + 1) * 127.5, 0, 255)" in _load_error(media.load_images_npz, tmp_path / "float.npz")


def test_a_directory_is_not_said_to_not_exist(tmp_path: Path) -> None:
    for loader in (media.load_images_npz, media.load_texts):
        message = _load_error(loader, tmp_path)
        assert "is a directory; give a .npz (images) or .jsonl/.txt (texts) file" in message
        assert "does not exist" not in message


def test_text_files_that_are_refused(tmp_path: Path) -> None:
    cases = {
        "empty.jsonl": (b"", "has no texts"),
        "blank.txt": (b"\n\n  \n", "has no texts"),
        "binary.jsonl": (b'{"text": "a"}\n\xff\xfe\x00\x01', "not UTF-8 text (byte 14)"),
        "binary.txt": (bytes(range(256)), "not UTF-8 text (byte 128)"),
        "list.jsonl": (b'{"text": "a"}\n[1, 2]\n',
                       'line 2: expected a JSON object {"text": "..."} per line, got a list'),
        "number.jsonl": (b'{"text": 5}\n', 'line 1: "text" must be a string, got a number'),
        "key.jsonl": (b'{"txt": "a"}\n', 'line 1: no "text" key (found: txt)'),
        "syntax.jsonl": (b'{"text": "a"\n', "line 1: not valid JSON"),
        "deep.jsonl": (b"[" * 100_000 + b"]" * 100_000, "line 1: not valid JSON"),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert expected in _load_error(media.load_texts, tmp_path / name), name


def test_jsonl_lines_are_split_on_newlines_only(tmp_path: Path) -> None:
    # U+2028 is a line break to str.splitlines but may appear raw inside a JSON string (ensure_ascii=False)
    texts = ["one\u2028two", "three\r"]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\r\n" for t in texts))
    assert media.load_texts(tmp_path / "s.jsonl") == texts


def test_eval_cli_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 8, 8, 3), np.float64))
    assert main(["eval", "--samples", str(bad), "--metrics", "fid", "--ref", "mnist-mini:test"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bad.npz" in err and "uint8" in err


# --------------------------------------------------------------------------------------------------------------
# 3. config values: no inf/nan, bounded seeds, whole-number counts


GAN = {"model": {"family": "gan", "preset": "debug"}}


def _problems(overrides: list[str], raw: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.from_dict(raw or GAN, overrides)
    return info.value.problems


def test_floats_refuse_inf_and_nan_in_every_section() -> None:
    for override in ["train.optim.lr=.inf", "train.optim.betas=[0.9, .nan]", "train.max_minutes=.inf",
                     "train.groups.discriminator.lr=.inf", "data.val_fraction=.nan", "train.ema_decay=-.inf"]:
        (problem,) = _problems([override])
        assert "Input should be a finite number" in problem, override
    assert _problems(["model.dropout=.nan"], {"model": {"family": "gpt", "preset": "debug"}}) == [
        "`model.dropout` = nan: Input should be a finite number"]


def test_seeds_are_bounded() -> None:
    for key in ("run.seed", "sample.seed", "eval.seed"):
        (problem,) = _problems([f"{key}=1e23"])
        assert problem.startswith(f"`{key}` = 1e+23: must be a whole number"), problem
        (problem,) = _problems([f"{key}=-1"])
        assert problem == f"`{key}` = -1: Input should be greater than or equal to 0"
        (problem,) = _problems([f"{key}={2**63}"])
        assert problem == f"`{key}` = {2**63}: Input should be less than or equal to 9223372036854775807"
        assert getattr(config.from_dict(GAN, [f"{key}={2**63 - 1}"]), key.split(".")[0]).seed == 2**63 - 1


def test_counts_are_whole_numbers() -> None:
    (problem,) = _problems(["train.steps=true"])
    assert problem == "`train.steps` = True: must be a whole number (e.g. 100), not true/false"
    (problem,) = _problems(["train.steps=1e23"])
    assert problem == "`train.steps` = 1e+23: must be a whole number (e.g. 100), written without an exponent or " \
                      "fraction (this float is too large to be exact)"
    (problem,) = _problems(["train.steps=2.5"])
    assert problem == "`train.steps` = 2.5: must be a whole number (e.g. 100), not 2.5"
    (problem,) = _problems(["train.steps=1000000001"])
    assert problem == "`train.steps` = 1000000001: Input should be less than or equal to 1000000000"
    # 1e3 is read as the number it is, 1000 (a float from YAML or `--set` with a whole value is exact)
    assert config.from_dict(GAN, ["train.steps=1e3"]).train.steps == 1000
    assert config.from_dict(GAN, ["train.steps=2000.0"]).train.steps == 2000
    keys = ["train.steps", "train.batch_size", "train.grad_accum", "train.log_every", "train.val_every",
            "train.val_batches", "train.eval_every", "train.sample_every", "train.checkpoint_every",
            "train.keep_last", "train.optim.warmup_steps", "train.optim.decay_steps", "train.threads",
            "train.groups.generator.warmup_steps", "train.groups.generator.decay_steps", "sample.n",
            "sample.nrow", "eval.n"]
    problems = _problems([f"{k}=false" for k in keys])
    assert sorted(problems) == sorted(f"`{k}` = False: must be a whole number (e.g. 100), not true/false" for k in keys)


def test_threads_and_batch_size_have_upper_bounds() -> None:
    assert _problems(["train.threads=100000", "train.batch_size=65537"]) == [
        "`train.batch_size` = 65537: Input should be less than or equal to 65536",
        "`train.threads` = 100000: Input should be less than or equal to 256"]
    cfg = config.from_dict(GAN, ["train.threads=256", "train.batch_size=65536", "sample.nrow=null"])
    assert (cfg.train.threads, cfg.train.batch_size, cfg.sample.nrow) == (256, 65536, None)


def test_unreadable_yaml_in_files_and_overrides_is_a_user_error(tmp_path: Path) -> None:
    # found by tests/test_fuzz.py: a control character made the --set parser raise AttributeError
    with pytest.raises(UserError, match=r"--set 'data.channels=\\x1b': the value is not valid YAML \(unacceptable "
                                        r"character #x001b"):
        config.from_dict(GAN, ["data.channels=\x1b"])
    deep = "[" * 5000 + "]" * 5000  # PyYAML parses nesting recursively: RecursionError
    with pytest.raises(UserError, match="the value is nested too deeply to be a config value"):
        config.from_dict(GAN, [f"run.name={deep}"])
    path = tmp_path / "deep.yaml"
    path.write_text(f"run: {{name: {deep}}}\n")
    with pytest.raises(UserError, match=r"deep\.yaml: nested too deeply"):
        config.load_config(path)


def test_a_key_given_twice_in_a_config_file_is_an_error_not_a_silent_overwrite(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    # a pasted second header once made a shipped config's `run:` section vanish without a word
    path = tmp_path / "twice.yaml"
    path.write_text("run: {name: a}\nmodel: {family: gan}\ntrain:\n  steps: 10\n  steps: 20\n")
    with pytest.raises(UserError, match=r"twice\.yaml: key 'steps' appears twice in one mapping \(lines 4 and 5\); "
                                        r"YAML would silently keep the second: delete one of them"):
        config.load_yaml(path)
    path.write_text("run: {name: a, name: b}\n")
    with pytest.raises(UserError, match=r"key 'name' appears twice in one mapping \(lines 1 and 1\)"):
        config.load_yaml(path)
    # a merge key is not a duplicate, and an explicit key may override what it merged
    path.write_text("base: &b {lr: 1, steps: 2}\ntrain:\n  <<: *b\n  steps: 3\n")
    assert config.load_yaml(path)["train"] == {"lr": 1, "steps": 3}
    path.write_text("run: {name: a}\nrun: {name: b}\n")
    assert main(["train", str(path)]) == 2
    assert "key 'run' appears twice in one mapping (lines 1 and 2)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# 4. a GPT micro-batch must fit in memory


def _training_problems(overrides: list[str], raw: dict) -> list[str]:
    cfg = config.from_dict(raw, overrides)  # valid as a config (a checkpoint of it samples anywhere) ...
    return cfg.model.check_training(cfg)  # ... but refused by the trainer on this machine


def test_gpt_batch_larger_than_memory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 16 * 2**30 // 4096}  # a 16 GiB machine
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    gpt = {"model": {"family": "gpt", "preset": "debug"}, "data": {"name": "shakespeare-mini"}}
    # debug GPT, vocab 256: 4 * (2 * (28 * 32 + 2 * 32 * 2) + 3 * 256) = 11,264 bytes per token, x 32 per window
    (problem,) = _training_problems(["train.batch_size=60000"], gpt)
    assert problem == (
        "`train.batch_size` = 60000: one micro-batch of 60000 x 32 tokens needs about 21.6 GB for activations, "
        "attention and logits (this GPT: 11264 bytes per token), more than this machine's 17.2 GB of memory; the "
        "largest batch size that fits is 47662. Lower train.batch_size and raise train.grad_accum to keep the "
        "examples per optimizer step")
    assert _training_problems(["train.batch_size=47662"], gpt) == []
    # BPE: the logits are as wide as data.vocab_size (4096 when unset)
    bpe = {**gpt, "data": {"name": "shakespeare-mini", "tokenizer": "bpe"}}
    (problem,) = _training_problems(["train.batch_size=10000"], bpe)
    assert "(this GPT: 57344 bytes per token)" in problem and "fits is 9362." in problem


def test_shipped_gpt_configs_fit_a_16_gib_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 16 * 2**30 // 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    for path in sorted((REPO / "configs" / "shakespeare").glob("*.yaml")):
        cfg = config.load_config(path)
        assert cfg.model.check_training(cfg) == []
    problems = _training_problems(["train.batch_size=60000"], {"model": {"family": "gpt", "preset": "char"}})
    assert len(problems) == 1 and "largest batch size that fits is 200." in problems[0]


def test_the_trainer_refuses_a_batch_too_large_before_touching_the_run_dir(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from genforge.cli import main

    config_path = str(REPO / "configs" / "debug" / "gpt.yaml")
    assert main(["train", config_path, "--run-dir", str(tmp_path / "run"), "--set", "train.batch_size=65536",
                 "--set", "model.block_size=256", "--set", "model.n_embd=512", "--set", "model.n_head=8"]) == 2
    assert "`train.batch_size` = 65536: one micro-batch of 65536 x 256 tokens" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_preset_that_is_not_a_name_is_a_config_error() -> None:  # found by the long fuzz run
    (problem,) = _problems(["model.preset=[]"])
    assert problem == "`model.preset` = []: a preset is a name, one of debug, dcgan"
