"""Issue "every failure a user meets ends cleanly", the run-directory half: each test reproduces one way a run used
to be corrupted, lose steps or end in a traceback, and pins what happens now."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from genforge import checkpoint
from genforge.checkpoint import RunDir
from genforge.cli import main

REPO = Path(__file__).resolve().parents[1]
DEBUG_GAN = str(REPO / "configs" / "debug" / "gan.yaml")
DEBUG_GPT = str(REPO / "configs" / "debug" / "gpt.yaml")
CRASH_CHILD = str(Path(__file__).with_name("crash_child.py"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A debug GAN trained 4 steps with an EMA: checkpoints step-2 and step-4."""
    path = tmp_path / "run"
    assert main(["train", DEBUG_GAN, "--run-dir", str(path), "--set", "train.ema_decay=0.9"]) == 0
    return path


def _err(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


# 1. --resume RUN/step-N


def test_resume_from_the_newest_step_dir_continues_its_run_and_never_writes_into_it(run: Path) -> None:
    before = _files(run / "step-4")
    assert main(["train", "--resume", str(run / "step-4"), "--set", "train.steps=6"]) == 0
    assert _files(run / "step-4") == before
    assert (run / "latest").read_text().strip() == "step-6"


def test_resume_from_an_older_step_dir_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _err(capsys, ["train", "--resume", str(run / "step-2"), "--set", "train.steps=6"])
    assert "the newest good checkpoint of" in err and "is step-4" in err and "overwrite the newer ones" in err
    assert sorted(p.name for p in run.glob("step-*")) == ["step-2", "step-4"]
    err = _err(capsys, ["train", DEBUG_GAN, "--run-dir", str(run / "step-4")])
    assert "is a checkpoint, not a run dir" in err


# 2. one trainer per run dir


def test_a_second_trainer_on_a_run_dir_is_refused_with_the_pid(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = RunDir(run)
    holder.open(resume=True)
    try:
        err = _err(capsys, ["train", "--resume", str(run), "--set", "train.steps=6"])
        assert f"in use by another genforge process (PID {os.getpid()}" in err
    finally:
        holder.close()
    assert main(["train", "--resume", str(run), "--set", "train.steps=6"]) == 0


def test_a_killed_trainer_does_not_keep_the_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, CRASH_CHILD, "batch", "3", "--", "train", DEBUG_GAN, "--run-dir", str(run)],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (run / ".lock").read_text().strip().isdigit()  # the dead process's PID is still written there
    assert main(["train", "--resume", str(run)]) == 0


# 4. file modes and permission errors


def test_checkpoint_files_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert main(["train", DEBUG_GAN, "--run-dir", str(tmp_path / "run"), "--set", "train.steps=2"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run" / "step-2").iterdir()}
    assert modes == {"config.yaml": 0o644, "model.safetensors": 0o644, "train_state.pt": 0o644}


def test_a_permission_error_is_not_called_corruption(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def denied(path: str) -> dict:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(checkpoint, "load_file", denied)
    err = _err(capsys, ["sample", str(run), "--out", str(run.parent / "x.png")])
    assert "model.safetensors cannot be read: Permission denied" in err and "do not delete it" in err
    assert "corrupt" not in err
    err = _err(capsys, ["train", "--resume", str(run), "--set", "train.steps=6"])
    assert "cannot be read: Permission denied" in err and "every checkpoint is corrupt" not in err


# 5. SIGINT / SIGTERM


@pytest.mark.parametrize(("name", "code"), [("TERM", 143), ("INT", 130)])
def test_first_signal_finishes_the_step_and_checkpoints(tmp_path: Path, name: str, code: int) -> None:
    run = tmp_path / "run"
    args = ["train", DEBUG_GAN, "--run-dir", str(run), "--set", "train.steps=1000", "--set", "train.checkpoint_every=0",
            "--set", "train.sample_every=0"]
    proc = subprocess.run([sys.executable, CRASH_CHILD, "batch", "7", name, "--", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert f"SIG{name} received: stopped after step 7, checkpoint {run / 'step-7'} written" in proc.stderr
    assert (run / "latest").read_text().strip() == "step-7"
    assert torch.load(run / "step-7" / "train_state.pt", weights_only=True)["step"] == 7
    assert main(["train", "--resume", str(run), "--set", "train.steps=9"]) == 0


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", DEBUG_GAN, "--run-dir", str(run), "--set", "train.steps=1000", "--set", "train.grad_accum=2",
            "--set", "train.checkpoint_every=0"]
    # grad_accum 2: batches 5 and 6 belong to step 3, so the second Ctrl-C lands before that step could finish
    proc = subprocess.run([sys.executable, CRASH_CHILD, "batch", "5,6", "INT", "--", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 130 and "interrupted; checkpoints already written are kept" in proc.stderr
    assert not list(run.glob("step-*"))


# 6. temporary files of dead writers


def test_temporary_files_of_dead_writers_are_removed_on_resume(run: Path) -> None:
    (run / ".tmp-step-6-999999").mkdir()
    (run / ".tmp-step-6-999999" / "model.safetensors").write_bytes(b"half")
    (run / ".stale-step-2-999999").mkdir()
    (run / ".latest.tmp-999999").write_text("step-6\n")
    (run / "samples" / ".step-6.png.tmp-999999.png").write_bytes(b"half")
    assert main(["train", "--resume", str(run), "--set", "train.steps=6"]) == 0
    hidden = sorted(p.relative_to(run).as_posix() for p in run.rglob(".*"))
    assert hidden == [".lock"]


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_ones(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    before = _files(run / "step-4")
    monkeypatch.setattr(checkpoint, "save_file", full)
    err = _err(capsys, ["train", "--resume", str(run), "--set", "train.steps=6"])
    assert f"could not write checkpoint {run / 'step-6'}" in err and "earlier checkpoints" in err
    assert _files(run / "step-4") == before and not list(run.glob(".tmp-*"))


# 7. tracebacks for user errors


def test_binary_config_in_a_checkpoint_is_named_and_resume_falls_back(run: Path, capsys: pytest.CaptureFixture[str],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    (run / "step-4" / "config.yaml").write_bytes(b"\xff\xfe\x00binary")
    err = _err(capsys, ["sample", str(run / "step-4"), "--out", str(run.parent / "x.png")])
    assert "step-4/config.yaml is corrupt (not UTF-8 text" in err
    assert main(["train", "--resume", str(run)]) == 0  # falls back to step-2 and trains to step 4 again
    assert "skipping checkpoint step-4" in caplog.text


def test_a_latest_file_that_is_not_utf8_or_names_another_run_is_refused(run: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (run / "latest").write_bytes(b"\xff\xfe")
    assert f"{run / 'latest'} should name one step-N dir of its run" in _err(capsys, ["sample", str(run)])
    (run / "latest").write_text("../other-run/step-4\n")
    err = _err(capsys, ["sample", str(run)])
    assert "should name one step-N dir of its run but holds '../other-run/step-4'" in err
    (run / "latest").write_text("step-99\n")
    assert "names step-99, which does not exist" in _err(capsys, ["sample", str(run)])


def test_unusable_paths_and_thread_counts_are_user_errors(run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert "--threads 100000: use 1 to 256" in _err(capsys, ["sample", str(run), "--threads", "100000"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _err(capsys, ["sample", str(run), "--out", str(blocker / "x.png")])  # a file where a folder must be
    assert f"cannot write or read {blocker}" in err
    err = _err(capsys, ["sample", str(run), "--set", "sample.n=abc"])
    assert "--set sample.n=abc (applied to" in err and "`sample.n` = 'abc'" in err


# 9. a corpus without a newline


def test_a_corpus_without_a_newline_trains_and_says_how_to_get_samples(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    corpus = tmp_path / "one-line.txt"
    corpus.write_text("to be or not to be that is the question " * 40)
    assert main(["train", DEBUG_GPT, "--run-dir", str(tmp_path / "run"), "--set", "data.name=text", "--set",
                 f"data.path={corpus}", "--set", "data.limit=null"]) == 0
    assert (tmp_path / "run" / "step-4").is_dir()
    assert "no samples written" in caplog.text and "--set sample.prompt=TEXT" in caplog.text


# 10. a missing EMA file


def test_a_missing_ema_file_is_an_error_not_raw_weights(run: Path, capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    (run / "step-4" / "ema.safetensors").unlink()
    err = _err(capsys, ["sample", str(run), "--out", str(run.parent / "x.png")])
    assert "ema.safetensors is missing" in err and "sample.use_ema=false" in err
    assert main(["sample", str(run), "--out", str(run.parent / "x.png"), "--set", "sample.use_ema=false"]) == 0
    assert main(["train", "--resume", str(run)]) == 0  # the resume falls back to step-2, whose EMA is there
    assert "ema.safetensors is missing (the run saved an EMA" in caplog.text


# 11. a train state that asks to run code


def test_a_malicious_train_state_is_refused_without_pytorchs_advice(run: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    torch.save({"step": Evil()}, run / "step-4" / "train_state.pt")
    assert main(["train", "--resume", str(run)]) == 0
    assert "asks to load objects other than tensors" in caplog.text and "could run code" in caplog.text
    assert "will likely succeed" not in caplog.text
