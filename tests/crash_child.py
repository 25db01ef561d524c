"""Run the genforge CLI and SIGKILL the process at a deterministic point, for the crash tests:

    python tests/crash_child.py POINT K[,K2...] [SIGNAL] -- genforge-args...

POINT names a function the run calls; the process sends itself SIGNAL (default KILL; INT and TERM test graceful
stops) at the K-th call (1-based), right before the call runs, so "the K-th call" is exactly where the signal
lands, whatever the machine's speed:

    batch    trainer.to_device: a training batch is about to be used (K-th batch of the run)
    weights  checkpoint.save_file: a safetensors file of a checkpoint is about to be written
    state    checkpoint.torch.save: a checkpoint's train_state.pt is about to be written
    rename   checkpoint.os.replace: a checkpoint's temporary dir is about to be renamed into place
    prune    checkpoint.shutil.rmtree: an old checkpoint is about to be deleted
    latest   checkpoint.write_text: the `latest` pointer (or the run's config.yaml) is about to be replaced
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any

from genforge import checkpoint
from genforge.cli import main
from genforge.train import trainer

TARGETS: dict[str, tuple[Any, str]] = {
    "batch": (trainer, "to_device"),
    "weights": (checkpoint, "save_file"),
    "state": (checkpoint.torch, "save"),
    "rename": (checkpoint.os, "replace"),
    "prune": (checkpoint.shutil, "rmtree"),
    "latest": (checkpoint, "write_text"),
}


def signal_at(point: str, calls_to_hit: set[int], signum: int = signal.SIGKILL) -> None:
    owner, name = TARGETS[point]
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] in calls_to_hit:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    point, ks, *rest = sys.argv[1:]
    sep = rest.index("--")
    signum = signal.Signals["SIG" + rest[0]] if sep == 1 else signal.SIGKILL
    signal_at(point, {int(k) for k in ks.split(",")}, signum)
    sys.exit(main(rest[sep + 1:]))
