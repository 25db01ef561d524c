#!/usr/bin/env python3
"""Reference side of the GAN throughput benchmark.

Runs one of the *unmodified* PyTorch-GAN scripts (github.com/eriklindernoren/PyTorch-GAN,
``implementations/dcgan/dcgan.py`` or ``implementations/gan/gan.py``) from a local
checkout that lives outside this repository, and measures training throughput
(images/s) and peak memory (max RSS of the training process).

How it works
------------
* A scratch working directory ``<work>/implementations/<script>/`` gets a copy of the
  script and is the child's cwd, so the script's relative paths (``images/``,
  ``../../data/mnist``) land inside the scratch dir.
* The child is ``python -c <bootstrap>``; the bootstrap loads this file and calls
  ``_child_main``, which installs a global optimizer step post-hook
  (``torch.optim.optimizer.register_optimizer_step_post_hook``) and then runs the
  script with ``runpy.run_path(script, run_name="__main__")`` and ``sys.argv`` set to
  the script's own flags. Nothing in the script is changed.
* Each training iteration of these scripts is: generator Adam step, then
  discriminator Adam step, then a print (and a PNG grid every ``sample_interval``
  batches). The hook timestamps the end of every discriminator step; after
  ``warmup + iters`` iterations it raises an exception derived from BaseException
  that ends the script. Throughput = images in the ``iters`` iteration periods after
  the warmup / their wall time.
* ``torchvision`` comes from ``benchmarks/reference_shim`` (prepended to PYTHONPATH):
  a small genforge stand-in; MNIST is read from ``--mnist-raw`` via the env var
  ``GENFORGE_REF_MNIST_RAW`` and never downloaded.
* Peak RSS is the child's ``ru_maxrss`` from ``os.wait4`` (cross-checked with the
  child's own ``getrusage(RUSAGE_SELF)``).
* The script's per-iteration stdout goes to ``<work>/script.log`` (not a terminal).

The last stdout line is one JSON object with the results.

Example::

    .venv/bin/python benchmarks/gan_reference.py --script dcgan \
        --repo /work/.bench/PyTorch-GAN --mnist-raw /work/shared/data/mnist/raw --iters 60

Budget mode (the fixed-budget leaderboard, benchmarks/leaderboard.py): ``--minutes 10 --samples-out gan.npz``
trains for 10 minutes from the first optimizer step instead of ``--iters``, then saves ``--samples-n`` images made
by the script's own generator in train mode (as the script makes its images), to score with
``genforge eval --samples gan.npz --ref mnist:test``.

Flags after ``--`` go to the reference script unchanged (e.g. ``-- --batch_size 64``).
The parent process deliberately does not import torch, to keep its own memory out
of the way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_DIR = os.path.join(HERE, "reference_shim")
SCRIPTS = {
    "dcgan": os.path.join("implementations", "dcgan", "dcgan.py"),
    "gan": os.path.join("implementations", "gan", "gan.py"),
}
DEFAULT_REPO = "/work/.bench/PyTorch-GAN"
DEFAULT_MNIST_RAW = "/work/shared/data/mnist/raw"
# Share of the machine's CPU capacity used by *other* processes during the run above which the
# result is flagged "contended" (torch's threads then fight over cores and timings blow up).
CONTENDED_SHARE = 0.10

_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_genforge_gan_reference', {path!r})\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(mod)\n"
    "sys.exit(mod._child_main({config!r}))\n"
)


# --------------------------------------------------------------------------- child


class _StopBenchmark(BaseException):
    """Raised from the optimizer hook to end the reference script after N iterations."""


def _child_main(config_path: str) -> int:
    """Runs inside the child: hook the optimizers, run the script, write results."""
    import resource
    import runpy

    t_child_start = time.perf_counter()
    with open(config_path) as f:
        cfg = json.load(f)

    import torch
    import torch.optim.optimizer as optim_mod
    import torch.utils.data as tud

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))

    warmup, iters = int(cfg["warmup"]), int(cfg["iters"])
    total = warmup + iters
    budget = float(cfg["minutes"]) * 60 if cfg.get("minutes") else None  # training-time budget mode
    state = {
        "order": [],  # optimizer ids in order of first step: [G, D]
        "seq_errors": 0,
        "last": None,
        "d_end": [],  # perf_counter at the end of every discriminator step
        "g_end": [],
        "loaders": [],
        "params": [],  # trainable parameter count per optimizer, in step order [G, D]
    }

    # Record how the script builds its DataLoader (batch size, workers, dataset size).
    orig_dl_init = tud.DataLoader.__init__

    def dl_init(self, *args, **kwargs):
        orig_dl_init(self, *args, **kwargs)
        try:
            n = len(self.dataset)
        except TypeError:
            n = None
        state["loaders"].append(
            {"batch_size": self.batch_size, "num_workers": self.num_workers, "dataset_len": n,
             "drop_last": self.drop_last, "dataset": type(self.dataset).__name__}
        )

    tud.DataLoader.__init__ = dl_init

    def post_step(optimizer, args, kwargs):
        now = time.perf_counter()
        oid = id(optimizer)
        if oid not in state["order"]:
            state["order"].append(oid)
            state["params"].append(sum(p.numel() for g in optimizer.param_groups for p in g["params"]))
        role = state["order"].index(oid)  # 0 = first to step (generator), 1 = discriminator
        if role > 1:
            state["seq_errors"] += 1
            return
        expected = 0 if state["last"] in (None, 1) else 1
        if role != expected:
            state["seq_errors"] += 1
        state["last"] = role
        state.setdefault("first_step", now)
        if role == 0:
            state["g_end"].append(now)
        else:
            state["d_end"].append(now)
            if budget is not None and now - state["first_step"] >= budget:
                state["script_globals"] = _script_globals()
                raise _StopBenchmark()
            if budget is None and len(state["d_end"]) >= total:
                raise _StopBenchmark()

    handle = optim_mod.register_optimizer_step_post_hook(post_step)

    script = cfg["script_path"]
    sys.argv = [script] + list(cfg["script_args"])
    sys.path[0] = os.path.dirname(script)  # as `python script.py` would have it
    stopped = False
    error = None
    t_run = time.perf_counter()
    try:
        runpy.run_path(script, run_name="__main__")
    except _StopBenchmark:
        stopped = True
    except SystemExit as e:  # argparse errors etc.
        error = f"SystemExit({e.code})"
    except Exception as e:  # noqa: BLE001 - report anything the script raised
        error = f"{type(e).__name__}: {e}"
    finally:
        handle.remove()
        tud.DataLoader.__init__ = orig_dl_init
    sys.stdout.flush()

    d_end = state["d_end"]
    loader = state["loaders"][0] if state["loaders"] else {}
    if budget is not None and stopped and cfg.get("samples_out"):
        _dump_samples(state["script_globals"], cfg["samples_out"], int(cfg["samples_n"]), loader["batch_size"])
    result = {
        "budget_minutes": cfg.get("minutes"),
        "train_seconds": round(d_end[-1] - state["first_step"], 3) if d_end else None,
        "stopped_by_benchmark": stopped,
        "error": error,
        "iterations_run": len(d_end),
        "optimizers_seen": len(state["order"]),
        "params_G": state["params"][0] if len(state["params"]) > 0 else None,
        "params_D": state["params"][1] if len(state["params"]) > 1 else None,
        "step_order_errors": state["seq_errors"],
        "loader": loader,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "child_import_to_run_s": round(t_run - t_child_start, 3),
        "time_to_first_iter_end_s": round(d_end[0] - t_run, 3) if d_end else None,
        "child_self_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    if len(d_end) >= total and loader:
        bs, n = loader["batch_size"], loader["dataset_len"]
        nb = -(-n // bs) if not loader["drop_last"] else n // bs
        last_bs = n - (nb - 1) * bs if not loader["drop_last"] else bs

        def images_in(k: int) -> int:
            return last_bs if k % nb == nb - 1 else bs

        # Iteration periods warmup .. total-1, each from the end of the previous D step.
        t0, t1 = d_end[warmup - 1] if warmup > 0 else t_run, d_end[total - 1]
        periods = [d_end[k] - (d_end[k - 1] if k > 0 else t_run) for k in range(warmup, total)]
        imgs = sum(images_in(k) for k in range(warmup, total))
        periods_sorted = sorted(periods)
        # Split of each period: [end of previous D step -> end of G step] covers print/sample of the
        # previous iteration, fetching the batch and the generator step; the rest is the D step.
        g_part = sorted(state["g_end"][k] - d_end[k - 1] for k in range(max(warmup, 1), total))
        d_part = sorted(d_end[k] - state["g_end"][k] for k in range(max(warmup, 1), total))
        result.update(
            {
                "seconds": round(t1 - t0, 4),
                "images": imgs,
                "images_per_s": round(imgs / (t1 - t0), 2),
                "s_per_iter_mean": round((t1 - t0) / iters, 4),
                "s_per_iter_median": round(periods_sorted[len(periods_sorted) // 2], 4),
                "s_per_iter_min": round(periods_sorted[0], 4),
                "s_per_iter_max": round(periods_sorted[-1], 4),
                "warmup_seconds": round(t0 - t_run, 3),
                "s_data_and_G_step_median": round(g_part[len(g_part) // 2], 4) if g_part else None,
                "s_D_step_median": round(d_part[len(d_part) // 2], 4) if d_part else None,
            }
        )
    with open(cfg["result_path"], "w") as f:
        json.dump(result, f)
    return 0 if (stopped and error is None) else 1


def _script_globals() -> dict:
    """The running reference script's module globals (its `generator`, `opt`), found up the call stack."""
    frame = sys._getframe()
    while frame is not None:
        if "generator" in frame.f_globals and "opt" in frame.f_globals:
            return frame.f_globals
        frame = frame.f_back
    raise RuntimeError("the reference script's globals (generator, opt) were not found on the stack")


def _dump_samples(script_globals: dict, path: str, n: int, batch_size: int) -> None:
    """n images from the script's generator as it makes them itself: train mode (BatchNorm batch statistics),
    z ~ N(0, 1) of opt.latent_dim, in batches of the script's batch size; saved as uint8 (N, H, W, C) .npz with
    genforge's quantization round((x + 1) * 127.5)."""
    import numpy as np
    import torch

    generator, latent_dim = script_globals["generator"], script_globals["opt"].latent_dim
    device = next(generator.parameters()).device
    g = torch.Generator(device).manual_seed(0)
    chunks = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - start), latent_dim, generator=g, device=device)
            chunks.append(generator(z).float().cpu())
    x = torch.cat(chunks).clamp(-1, 1)
    images = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(path, images=images)


# --------------------------------------------------------------------------- parent


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def _busy_cpu_seconds():
    """Busy CPU seconds of the whole machine so far (from /proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _parse(argv):
    p = argparse.ArgumentParser(
        description="Throughput / peak-RSS of an unmodified PyTorch-GAN reference script.",
        epilog="Arguments after `--` are passed to the reference script unchanged.",
    )
    p.add_argument("--script", choices=sorted(SCRIPTS), required=True)
    p.add_argument("--repo", default=DEFAULT_REPO, help=f"local PyTorch-GAN checkout (default {DEFAULT_REPO})")
    p.add_argument("--iters", type=int, default=60, help="measured iterations after warmup (default 60)")
    p.add_argument("--warmup", type=int, default=5, help="iterations excluded from timing (default 5)")
    p.add_argument("--mnist-raw", default=os.environ.get("GENFORGE_REF_MNIST_RAW", DEFAULT_MNIST_RAW),
                   help="directory with MNIST raw IDX files, .gz or not")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in the child (default: leave torch's default)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the child (default: this one)")
    p.add_argument("--workdir", default=None, help="scratch dir (default: a fresh temp dir, removed afterwards)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the scratch dir (log, images/)")
    p.add_argument("--timeout", type=float, default=1800.0, help="kill the child after this many seconds")
    p.add_argument("--json-out", default=None, help="also write the result JSON to this file")
    p.add_argument("--minutes", type=float, default=None,
                   help="budget mode: train for this many minutes (from the first optimizer step), not --iters")
    p.add_argument("--samples-out", default=None, help="budget mode: save generated images here (.npz, uint8)")
    p.add_argument("--samples-n", type=int, default=2000, help="how many images --samples-out gets")
    if "--" in argv:
        i = argv.index("--")
        ns = p.parse_args(argv[:i])
        ns.script_args = argv[i + 1:]
    else:
        ns = p.parse_args(argv)
        ns.script_args = []
    if ns.iters < 1 or ns.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    return ns


def _script_flag(script_args, name: str, default):
    """Value of a script flag as its own argparse would see it (last one wins)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(f"--{name}", type=type(default), default=default)
    ns, _ = p.parse_known_args(script_args)
    return getattr(ns, name)


def main(argv=None) -> int:
    ns = _parse(sys.argv[1:] if argv is None else argv)
    src = os.path.join(os.path.abspath(ns.repo), SCRIPTS[ns.script])
    if not os.path.isfile(src):
        sys.exit(f"reference script not found: {src}")
    mnist_raw = os.path.abspath(ns.mnist_raw)
    if not os.path.isdir(mnist_raw):
        sys.exit(f"MNIST raw dir not found: {mnist_raw}")

    made_tmp = ns.workdir is None
    work = tempfile.mkdtemp(prefix=f"gan_ref_{ns.script}_") if made_tmp else os.path.abspath(ns.workdir)
    run_dir = os.path.join(work, os.path.dirname(SCRIPTS[ns.script]))
    os.makedirs(run_dir, exist_ok=True)
    script_path = os.path.join(run_dir, os.path.basename(src))
    shutil.copy2(src, script_path)

    config_path = os.path.join(work, "bench_config.json")
    result_path = os.path.join(work, "bench_result.json")
    log_path = os.path.join(work, "script.log")
    with open(config_path, "w") as f:
        json.dump({"script_path": script_path, "script_args": ns.script_args, "warmup": ns.warmup,
                   "iters": ns.iters, "threads": ns.threads, "result_path": result_path, "minutes": ns.minutes,
                   "samples_out": os.path.abspath(ns.samples_out) if ns.samples_out else None,
                   "samples_n": ns.samples_n}, f)

    env = dict(os.environ)
    env["PYTHONPATH"] = SHIM_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["GENFORGE_REF_MNIST_RAW"] = mnist_raw
    # Plain `python dcgan.py > log` block-buffers stdout; don't inherit a forced -u from our shell.
    env.pop("PYTHONUNBUFFERED", None)
    code = _BOOTSTRAP.format(path=os.path.abspath(__file__), config=config_path)

    load_before = os.getloadavg()
    busy_before = _busy_cpu_seconds()
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([ns.python, "-c", code], cwd=run_dir, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t0 + ns.timeout
        status = rusage = None
        timed_out = False
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    busy_after = _busy_cpu_seconds()
    load_after = os.getloadavg()
    # CPU time the rest of the machine used while the child ran: a contended run is not a measurement.
    other_share = None
    if busy_before is not None and busy_after is not None and rusage is not None:
        other = (busy_after - busy_before) - (rusage.ru_utime + rusage.ru_stime)
        other_share = round(max(0.0, other) / (wall * (os.cpu_count() or 1)), 3)

    child = {}
    if os.path.isfile(result_path):
        with open(result_path) as f:
            child = json.load(f)
    loader = child.get("loader", {})
    result = {
        "script": os.path.relpath(src, os.path.abspath(ns.repo)),
        "script_sha256": _sha256(src),
        "repo": os.path.abspath(ns.repo),
        "script_args": ns.script_args,
        "iters": ns.iters,
        "warmup": ns.warmup,
        "batch_size": loader.get("batch_size"),
        "params_G": child.get("params_G"),
        "params_D": child.get("params_D"),
        "seconds": child.get("seconds"),
        "images_per_s": child.get("images_per_s"),
        "s_per_iter_mean": child.get("s_per_iter_mean"),
        "s_per_iter_median": child.get("s_per_iter_median"),
        "s_per_iter_min": child.get("s_per_iter_min"),
        "s_per_iter_max": child.get("s_per_iter_max"),
        "s_data_and_G_step_median": child.get("s_data_and_G_step_median"),
        "s_D_step_median": child.get("s_D_step_median"),
        "peak_rss_mb": round(rusage.ru_maxrss / 1024.0, 1) if rusage is not None else None,
        "child_self_maxrss_mb": child.get("child_self_maxrss_mb"),
        "torch_threads": child.get("torch_threads"),
        "torch_interop_threads": child.get("torch_interop_threads"),
        "threads_forced": ns.threads,
        "n_cpu_flag": _script_flag(ns.script_args, "n_cpu", 8),
        "dataloader_num_workers": loader.get("num_workers"),
        "n_cpu_note": "the script parses --n_cpu (default 8) but never passes it to its DataLoader; "
                      "data loading runs in the training process (num_workers as reported)",
        "dataset": loader.get("dataset"),
        "dataset_len": loader.get("dataset_len"),
        "time_to_first_iter_end_s": child.get("time_to_first_iter_end_s"),
        "warmup_seconds": child.get("warmup_seconds"),
        "iterations_run": child.get("iterations_run"),
        "budget_minutes": child.get("budget_minutes"),
        "train_seconds": child.get("train_seconds"),
        "step_order_errors": child.get("step_order_errors"),
        "torch_version": child.get("torch_version"),
        "cuda_available": child.get("cuda_available"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "other_cpu_share": other_share,
        "contended": (other_share is not None and other_share > CONTENDED_SHARE),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "wall_s": round(wall, 2),
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "error": child.get("error") if child else "child wrote no result (see log)",
        "torchvision": "genforge reference_shim",
        "script_stdout": "to a log file" + ("" if made_tmp and not ns.keep_workdir else f": {log_path}"),
    }
    ok = (not timed_out) and proc.returncode == 0 and (result["images_per_s"] is not None or bool(ns.minutes))
    if not ok:
        try:
            with open(log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(log_path) - 4000))
                sys.stderr.write(f.read().decode("utf-8", "replace"))
        except OSError:
            pass
    if made_tmp and not ns.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        result["workdir"] = work
    line = json.dumps(result)
    if ns.json_out:
        with open(ns.json_out, "w") as f:
            f.write(line + "\n")
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
