#!/usr/bin/env python3
"""genforge's VAE next to the unmodified pytorch/examples `vae/main.py`, at an equal wall-clock training budget on
full MNIST, scored by the same code.

    .venv/bin/python benchmarks/vae_reference.py --minutes 4 --threads 1 --out runs/vae_reference

Both sides model the same targets: the gray levels of MNIST in [0, 1] as soft Bernoulli targets (the reference's
`BCE(recon, x, reduction='sum') + KLD`; genforge with `--set model.binarize=none`). Reported for each side:
training minutes, images seen, the test -ELBO in nats per image over the 10,000 test images (one z ~ q(z|x) per
image, as the reference's own `test()` computes its "Test set loss") and FID between `--eval-n` samples from the
prior N(0, I), decoded to the Bernoulli mean, and the test split (`--ref mnist:test`).

The reference (`--repo`: a checkout of github.com/pytorch/examples outside this repository; only `vae/main.py` is
needed, e.g. `git --git-dir=<fetched mirror> show HEAD:vae/main.py > /work/.bench/examples/vae/main.py`) runs as
`benchmarks/gan_reference.py` runs PyTorch-GAN's scripts:

* `<out>/reference/vae/` gets a copy of `main.py` and a `results/` dir for its PNGs, and is the child's cwd.
* The child is `python -c <bootstrap>` that loads this file and calls `_child_main`: it sets the torch threads,
  installs a global optimizer step post-hook (`torch.optim.optimizer.register_optimizer_step_post_hook`) and runs
  the script with `runpy.run_path(script, run_name="__main__")` and `sys.argv` = its own flags (`--epochs 1000000`,
  so the budget ends it; more after `--`). Nothing in the script is changed.
* `torchvision` is `benchmarks/reference_shim` (first on PYTHONPATH): `datasets.MNIST` reads the IDX files of
  `--mnist-raw` (env `GENFORGE_REF_MNIST_RAW`), never downloads; `transforms.ToTensor`, `utils.save_image`.
* The training clock starts at the end of the first optimizer step (as gan_reference.py's) and stops while the
  script's model is in eval mode: `nn.Module.train` is wrapped, and the time from a top-level `.eval()` to the next
  top-level `.train()` (the script's per-epoch `test()` with its reconstruction PNG and its sample PNG) is not
  training time, as genforge's budget (`train.max_minutes`) counts only its training steps, data loading included,
  not validation, samples or checkpoints. The script's per-10-batches print stays inside the clock (it goes to
  `<out>/reference/script.log`). When the clock reaches `--minutes` the hook raises an exception derived from
  BaseException (gan_reference's `_StopBenchmark`) that ends the script inside its training loop.
* Getting hold of the script's objects: on its first call the hook walks up the call stack (the hook is called
  from `optimizer.step()` inside the script's `train()`) to the frame whose globals hold a `model` (nn.Module)
  whose parameters are exactly the stepping optimizer's; those globals are the script's module namespace, kept
  alive by the reference we hold after the script ended. This does not depend on runpy's temporary
  `sys.modules['__main__']`, and the identity check makes sure it is the trained model, not a name that happens
  to be `model`.
* Then, in the child: (a) the test loss exactly as the script's `test()` computes it, with the script's own
  `model` (eval mode), `test_loader` (batch 128, ToTensor gray levels) and `loss_function`, summed per batch with
  `.item()` and divided by the number of test images, after `torch.manual_seed(--seed)` so the one z per image is
  reproducible; its KL part is also split out. (b) `--samples-n` images: z ~ N(0, I) of the decoder's input size
  (a seeded generator), `model.decode(z)` = the Bernoulli means the script's own `sample_*.png` show, saved with
  genforge's `media.save_images` (key `images`, (N, 28, 28, 1) uint8, [0, 1] -> round(x * 255) through the same
  [-1, 1] quantization genforge's own samples get) to `<out>/reference_samples.npz`.
* Images seen by the reference: its optimizer steps times the batch size, counting the last batch of each epoch
  as the 96 images it holds (60,000 = 468 * 128 + 96).

genforge: `genforge train mnist/vae --run-dir <out>/genforge --set model.binarize=none --set train.max_minutes=M
--set train.threads=T --set train.steps=10000000 ...` (steps so high that the budget ends the run and the cosine
schedule stays at lr ~1e-3, the reference's constant Adam lr; val/sample/checkpoint/tensorboard off during
training; `--genforge-set KEY=VALUE` adds overrides after these, e.g. `--genforge-set model.arch=mlp
--genforge-set model.hidden=400 --genforge-set model.latent_dim=20` for the reference's architecture), then `genforge eval <out>/genforge --metrics elbo,fid --n N --ref mnist:test`.
The reference's samples: `genforge eval --samples <out>/reference_samples.npz --ref mnist:test --metrics fid --n N`.

Order: reference training, genforge training, then the evaluations, each alone, with `--threads` torch threads
(and OMP_NUM_THREADS), pinned with `taskset -c --cpus` when given. Outputs in `--out`: `reference.json`,
`reference_eval.json`, `genforge/` (the run), `genforge_eval.json`, `summary.json` and `table.md`; the JSON line and
the table also go to stdout. `--skip-reference` / `--skip-genforge` reuse that side's files from an earlier run.
FID needs the Inception weights (and the first time ~minutes of feature extraction of the test split, then cached);
`--no-fid` skips it (smoke tests), `--test-limit N` scores the -ELBO on the first N test images only (both sides).

The parent process does not import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from gan_reference import (  # benchmarks/ is not a package: HERE is on sys.path
    CONTENDED_SHARE,
    DEFAULT_MNIST_RAW,
    SHIM_DIR,
    _busy_cpu_seconds,
    _sha256,
    _StopBenchmark,
)
from leaderboard import genforge_cmd, last_record, pinned

SCRIPT = os.path.join("vae", "main.py")
DEFAULT_REPO = "/work/.bench/examples"
DEFAULT_OUT = "runs/vae_reference"

_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_genforge_vae_reference', {path!r})\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(mod)\n"
    "sys.exit(mod._child_main({config!r}))\n"
)


# --------------------------------------------------------------------------- child


def _child_main(config_path: str) -> int:
    """Runs inside the child: hook the optimizer and nn.Module.train, run the script, score its model."""
    import resource
    import runpy

    with open(config_path) as f:
        cfg = json.load(f)

    import torch
    import torch.optim.optimizer as optim_mod
    import torch.utils.data as tud
    from torch import nn

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    budget = float(cfg["minutes"]) * 60
    state = {"optimizer": None, "globals": None, "steps": 0, "first_step": None, "last_step": None,
             "paused": 0.0, "eval_since": None, "eval_periods": 0, "other_optimizer_steps": 0, "loaders": []}

    def train_seconds(now: float) -> float:
        return now - state["first_step"] - state["paused"]

    # The training clock stops while the model is in eval mode (the script's test() and sampling).
    orig_train = nn.Module.train
    depth = [0]

    def train_wrapper(self, mode: bool = True):
        depth[0] += 1
        try:
            return orig_train(self, mode)
        finally:
            depth[0] -= 1
            if depth[0] == 0 and state["first_step"] is not None:  # a top-level call, after training began
                now = time.perf_counter()
                if not mode and state["eval_since"] is None:
                    state["eval_since"] = now
                elif mode and state["eval_since"] is not None:
                    state["paused"] += now - state["eval_since"]
                    state["eval_since"] = None
                    state["eval_periods"] += 1

    nn.Module.train = train_wrapper

    orig_dl_init = tud.DataLoader.__init__

    def dl_init(self, *args, **kwargs):  # record the script's loaders (batch size, dataset size)
        orig_dl_init(self, *args, **kwargs)
        state["loaders"].append({"batch_size": self.batch_size, "num_workers": self.num_workers,
                                 "dataset_len": len(self.dataset), "drop_last": self.drop_last})

    tud.DataLoader.__init__ = dl_init

    def post_step(optimizer, args, kwargs):
        now = time.perf_counter()
        if state["optimizer"] is None:
            state["optimizer"] = optimizer
            state["first_step"] = now
            state["globals"] = _script_globals(optimizer)
        elif optimizer is not state["optimizer"]:
            state["other_optimizer_steps"] += 1
            return
        state["steps"] += 1
        state["last_step"] = now
        if train_seconds(now) >= budget:
            raise _StopBenchmark()

    handle = optim_mod.register_optimizer_step_post_hook(post_step)
    script = cfg["script_path"]
    sys.argv = [script] + list(cfg["script_args"])
    sys.path[0] = os.path.dirname(script)  # as `python main.py` would have it
    stopped, error, finished_globals = False, None, None
    t_run = time.perf_counter()
    try:
        finished_globals = runpy.run_path(script, run_name="__main__")
    except _StopBenchmark:
        stopped = True
    except SystemExit as e:  # argparse errors etc.
        error = f"SystemExit({e.code})"
    except Exception as e:  # noqa: BLE001 - report anything the script raised
        error = f"{type(e).__name__}: {e}"
    finally:
        handle.remove()
        nn.Module.train = orig_train
        tud.DataLoader.__init__ = orig_dl_init
    t_end = time.perf_counter()
    sys.stdout.flush()

    steps = state["steps"]
    loader = state["loaders"][0] if state["loaders"] else {}
    result = {
        "budget_minutes": cfg["minutes"],
        "stopped_by_benchmark": stopped,
        "error": error,
        "optimizer_steps": steps,
        "other_optimizer_steps": state["other_optimizer_steps"],
        "train_seconds": round(train_seconds(state["last_step"]), 3) if steps else None,
        "eval_mode_seconds": round(state["paused"], 3),
        "eval_mode_periods": state["eval_periods"],
        "wall_from_first_step_s": round(state["last_step"] - state["first_step"], 3) if steps else None,
        "time_to_first_step_s": round(state["first_step"] - t_run, 3) if steps else None,
        "script_seconds": round(t_end - t_run, 3),
        "train_loader": loader,
        "test_loader": state["loaders"][1] if len(state["loaders"]) > 1 else None,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if loader and steps:
        bs, n = loader["batch_size"], loader["dataset_len"]
        per_epoch = n // bs if loader["drop_last"] else -(-n // bs)
        last_bs = bs if loader["drop_last"] else n - (per_epoch - 1) * bs
        epochs, rest = divmod(steps, per_epoch)
        result.update({"batch_size": bs, "batches_per_epoch": per_epoch, "epochs": round(steps / per_epoch, 3),
                       "images_seen": epochs * ((per_epoch - 1) * bs + last_bs) + rest * bs})

    g = state["globals"] if state["globals"] is not None else finished_globals
    if g is not None and error is None:
        t0 = time.perf_counter()
        result.update(_score(g, cfg))
        result["score_seconds"] = round(time.perf_counter() - t0, 3)
    elif error is None:
        result["error"] = "the script never stepped its optimizer: nothing to score"
    result["child_self_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    with open(cfg["result_path"], "w") as f:
        json.dump(result, f)
    return 0 if result["error"] is None else 1


def _script_globals(optimizer) -> dict:
    """The running script's module globals: the frame up the call stack whose `model` is the nn.Module that owns
    exactly the parameters `optimizer` steps."""
    from torch import nn

    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frame = sys._getframe(1)
    while frame is not None:
        model = frame.f_globals.get("model")
        if isinstance(model, nn.Module) and {id(p) for p in model.parameters()} == wanted:
            return frame.f_globals
        frame = frame.f_back
    raise RuntimeError("the reference script's `model` (owning the stepping optimizer's parameters) was not found "
                       "in the globals of any frame up the stack")


def _score(g: dict, cfg: dict) -> dict:
    """The script's own test loss of its model (as its test() computes it) and `samples_n` prior samples."""
    import torch

    model, loss_function, test_loader = g["model"], g["loss_function"], g["test_loader"]
    device = next(model.parameters()).device
    limit = cfg.get("test_limit")
    model.eval()
    torch.manual_seed(int(cfg["seed"]))  # the script's reparameterize draws eps with torch.randn_like
    test_loss, kl_sum, count = 0.0, 0.0, 0
    with torch.no_grad():
        for data, _ in test_loader:
            if limit:
                data = data[: limit - count]
                if not len(data):
                    break
            data = data.to(device)
            recon_batch, mu, logvar = model(data)
            test_loss += loss_function(recon_batch, data, mu, logvar).item()
            kl_sum += (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())).item()  # the KLD of loss_function
            count += len(data)
    # the script divides by len(test_loader.dataset); the same number unless --test-limit
    out = {"test_images": count, "test_loss": test_loss / count, "test_kl": kl_sum / count,
           "test_recon_bce": (test_loss - kl_sum) / count}

    if cfg.get("samples_out"):
        from genforge.media import save_images

        n, batch = int(cfg["samples_n"]), 128
        latent_dim = model.fc3.in_features  # the decoder's input: the script samples torch.randn(64, 20)
        generator = torch.Generator(device).manual_seed(int(cfg["seed"]))
        chunks = []
        with torch.no_grad():
            for start in range(0, n, batch):
                z = torch.randn(min(batch, n - start), latent_dim, generator=generator, device=device)
                chunks.append(model.decode(z).float().cpu())  # Bernoulli means in [0, 1], (B, 784)
        images = torch.cat(chunks).view(-1, 1, 28, 28)  # as the script views them for save_image
        save_images(images * 2 - 1, cfg["samples_out"])  # genforge's [-1, 1] -> uint8 quantization
        save_images(images[:64] * 2 - 1, os.path.splitext(cfg["samples_out"])[0] + ".png", nrow=8)
        out.update({"samples_out": cfg["samples_out"], "samples_n": n, "latent_dim": latent_dim})
    return out


# --------------------------------------------------------------------------- parent


def _run(cmd: list[str], *, cwd: str | None, env: dict, log_path: str, timeout: float) -> dict:
    """Run `cmd` with stdout/stderr to `log_path`; its exit code, wall time, rusage and the other processes' CPU
    share of the machine while it ran (a contended run is not a measurement)."""
    busy_before = _busy_cpu_seconds()
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    break
                if time.perf_counter() - t0 > timeout:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, rusage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)  # Ctrl-C: take the child's whole process group with us
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    busy_after = _busy_cpu_seconds()
    other_share = None
    if busy_before is not None and busy_after is not None:
        other = (busy_after - busy_before) - (rusage.ru_utime + rusage.ru_stime)
        other_share = round(max(0.0, other) / (wall * (os.cpu_count() or 1)), 3)
    result = {"exit_code": proc.returncode, "timed_out": timed_out, "wall_s": round(wall, 2),
              "cpu_s": round(rusage.ru_utime + rusage.ru_stime, 2), "peak_rss_mb": round(rusage.ru_maxrss / 1024, 1),
              "other_cpu_share": other_share,
              "contended": other_share is not None and other_share > CONTENDED_SHARE}
    if proc.returncode != 0 or timed_out:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 3000))
            sys.stderr.write(f.read().decode("utf-8", "replace"))
        raise SystemExit(f"failed (exit {proc.returncode}{', timed out' if timed_out else ''}): {' '.join(cmd)}; "
                         f"log: {log_path}")
    return result


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("PYTHONUNBUFFERED", None)  # a plain `python main.py > log` block-buffers stdout
    return env


def train_reference(ns: argparse.Namespace, out: str) -> dict:
    src = os.path.join(os.path.abspath(ns.repo), SCRIPT)
    if not os.path.isfile(src):
        sys.exit(f"reference script not found: {src} (extract pytorch/examples' vae/main.py there, or give --repo)")
    mnist_raw = os.path.abspath(ns.mnist_raw)
    if not os.path.isdir(mnist_raw):
        sys.exit(f"MNIST raw dir not found: {mnist_raw}")
    work = os.path.join(out, "reference")
    shutil.rmtree(work, ignore_errors=True)
    run_dir = os.path.join(work, os.path.dirname(SCRIPT))
    os.makedirs(os.path.join(run_dir, "results"))  # the script saves its PNGs there and does not create it
    script_path = os.path.join(run_dir, os.path.basename(src))
    shutil.copy2(src, script_path)
    config_path, result_path = os.path.join(work, "bench_config.json"), os.path.join(work, "bench_result.json")
    samples_out = os.path.join(out, "reference_samples.npz")
    for stale in (samples_out, os.path.join(out, "reference_eval.json")):
        if os.path.exists(stale):
            os.remove(stale)
    script_args = ["--epochs", "1000000"] + ns.script_args
    with open(config_path, "w") as f:
        json.dump({"script_path": script_path, "script_args": script_args, "threads": ns.threads,
                   "minutes": ns.minutes, "result_path": result_path, "samples_out": samples_out,
                   "samples_n": ns.samples_n, "seed": ns.seed, "test_limit": ns.test_limit}, f)
    env = _env(ns.threads)
    env["PYTHONPATH"] = SHIM_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["GENFORGE_REF_MNIST_RAW"] = mnist_raw
    code = _BOOTSTRAP.format(path=os.path.abspath(__file__), config=config_path)
    print(f"[reference] training {SCRIPT} for {ns.minutes} min ({work})", flush=True)
    run = _run(pinned([ns.python, "-c", code], ns.cpus), cwd=run_dir, env=env,
               log_path=os.path.join(work, "script.log"), timeout=ns.minutes * 60 * 3 + ns.timeout)
    with open(result_path) as f:
        child = json.load(f)
    result = {"script": SCRIPT, "script_sha256": _sha256(src), "repo": os.path.abspath(ns.repo),
              "script_args": script_args, "threads": ns.threads, "cpus": ns.cpus, **child, "process": run,
              "torchvision": "genforge reference_shim"}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"[reference] {child['optimizer_steps']} steps, {child.get('images_seen')} images in "
          f"{child['train_seconds']} s; test loss {child.get('test_loss')}", flush=True)
    return result


def train_genforge(ns: argparse.Namespace, out: str) -> dict:
    run_dir = os.path.join(out, "genforge")
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run would not have had its whole budget
    eval_json = os.path.join(out, "genforge_eval.json")
    if os.path.exists(eval_json):
        os.remove(eval_json)
    sets = ["model.binarize=none", f"train.max_minutes={ns.minutes}", "train.progress=false", "train.val_every=0",
            f"train.threads={ns.threads}", "train.steps=10000000", "train.sample_every=0",
            "train.checkpoint_every=0", "train.tensorboard=false", f"run.seed={ns.seed}"] + ns.genforge_set
    cmd = genforge_cmd() + ["train", ns.genforge_config, "--run-dir", run_dir]
    for item in sets:
        cmd += ["--set", item]
    print(f"[genforge] training {ns.genforge_config} for {ns.minutes} min ({run_dir})", flush=True)
    os.makedirs(out, exist_ok=True)
    run = _run(pinned(cmd, ns.cpus), cwd=None, env=_env(ns.threads), log_path=os.path.join(out, "genforge_train.log"),
               timeout=ns.minutes * 60 * 3 + ns.timeout)
    record = last_record(Path(run_dir))
    result = {"config": ns.genforge_config, "sets": sets, "steps": record["step"],
              "images_seen": record["images_seen"], "train_seconds": record["elapsed"], "threads": ns.threads,
              "cpus": ns.cpus, "process": run}
    with open(os.path.join(out, "genforge_train.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"[genforge] {result['steps']} steps, {result['images_seen']} images in {result['train_seconds']} s",
          flush=True)
    return result


def evaluate(ns: argparse.Namespace, out: str, side: str) -> None:
    if side == "reference":
        metrics = "fid"
        what = ["--samples", os.path.join(out, "reference_samples.npz")]
    else:
        metrics = "elbo" if ns.no_fid else "elbo,fid"
        what = [os.path.join(out, "genforge"), "--seed", str(ns.seed)]
        if ns.test_limit:
            what += ["--test-limit", str(ns.test_limit)]
    cmd = genforge_cmd() + ["eval", *what, "--metrics", metrics, "--n", str(ns.eval_n), "--ref", ns.ref,
                            "--threads", str(ns.threads), "--json", os.path.join(out, f"{side}_eval.json")]
    if ns.inception:
        cmd += ["--inception", ns.inception]
    print(f"[{side}] eval: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    _run(pinned(cmd, ns.eval_cpus or ns.cpus), cwd=None, env=_env(ns.threads),
         log_path=os.path.join(out, f"{side}_eval.log"), timeout=ns.timeout + 7200)
    print(f"[{side}] eval: {time.perf_counter() - t0:.0f} s", flush=True)


def _load(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _pick(metrics: dict, prefix: str, digits: bool) -> tuple[str | None, float | None]:
    for key, value in metrics.items():
        if key.startswith(prefix) and (not digits or key[len(prefix):len(prefix) + 1].isdigit()) \
                and not key.endswith("-std"):
            return key, value
    return None, None


def summarize(ns: argparse.Namespace, out: str) -> tuple[dict, str]:
    ref, ref_eval = _load(os.path.join(out, "reference.json")), _load(os.path.join(out, "reference_eval.json"))
    gf, gf_eval = _load(os.path.join(out, "genforge_train.json")), _load(os.path.join(out, "genforge_eval.json"))
    rows: dict[str, dict] = {}
    if ref is not None:
        fid_key, fid = _pick((ref_eval or {}).get("metrics", {}), "fid", True)
        rows["reference"] = {
            "what": f"pytorch/examples `{SCRIPT}` (unmodified)", "train_minutes": ref["train_seconds"] / 60,
            "steps": ref["optimizer_steps"], "images_seen": ref.get("images_seen"), "neg_elbo": ref.get("test_loss"),
            "kl": ref.get("test_kl"), "recon_nll": ref.get("test_recon_bce"), "test_images": ref.get("test_images"),
            "fid_key": fid_key, "fid": fid, "contended": ref["process"]["contended"],
            "other_cpu_share": ref["process"]["other_cpu_share"]}
    if gf is not None:
        m = (gf_eval or {}).get("metrics", {})
        elbo_key, neg_elbo = _pick(m, "neg-elbo-", False)
        fid_key, fid = _pick(m, "fid", True)
        rows["genforge"] = {
            "what": f"genforge `{gf['config']}`" + "".join(f" {s}" for s in ns_sets_shown(gf["sets"])),
            "train_minutes": gf["train_seconds"] / 60, "steps": gf["steps"], "images_seen": gf["images_seen"],
            "neg_elbo": neg_elbo, "neg_elbo_key": elbo_key, "kl": _pick(m, "kl-mnist", False)[1],
            "recon_nll": _pick(m, "recon-nll-", False)[1], "fid_key": fid_key, "fid": fid,
            "contended": gf["process"]["contended"], "other_cpu_share": gf["process"]["other_cpu_share"]}
    ratio = None
    if "reference" in rows and "genforge" in rows and rows["reference"]["fid"] and rows["genforge"]["fid"] is not None:
        ratio = rows["genforge"]["fid"] / rows["reference"]["fid"]
    summary = {"benchmark": "vae_reference", "minutes": ns.minutes, "threads": ns.threads, "eval_n": ns.eval_n,
               "ref": ns.ref, "rows": rows, "fid_ratio_genforge_over_reference": ratio,
               "python": platform.python_version(), "cpu_count": os.cpu_count()}

    def fmt(value, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    fid_head = f"FID-{ns.eval_n if ns.eval_n % 1000 else f'{ns.eval_n // 1000}k'} vs {ns.ref}"
    lines = [f"| side | training minutes | images seen | test -ELBO (nats) | {fid_head} | FID / reference's |",
             "|---|---|---|---|---|---|"]
    for side, row in rows.items():
        mark = " (contended)" if row["contended"] else ""
        rel = "1.00x" if side == "reference" and row["fid"] else (fmt(ratio, ".2f") + "x" if ratio else "–")
        lines.append(f"| {row['what']}{mark} | {fmt(row['train_minutes'], '.2f')} | "
                     f"{fmt(row['images_seen'], ',')} | {fmt(row['neg_elbo'], '.2f')} | {fmt(row['fid'], '.2f')} | "
                     f"{rel} |")
    return summary, "\n".join(lines)


def ns_sets_shown(sets: list[str]) -> list[str]:
    """The overrides worth showing in the table (the budget/logging ones are the same for every run)."""
    routine = ("train.max_minutes=", "train.progress=", "train.val_every=", "train.threads=", "train.steps=",
               "train.sample_every=", "train.checkpoint_every=", "train.tensorboard=", "run.seed=")
    return [f"`{s}`" for s in sets if not s.startswith(routine)]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="genforge's VAE vs the unmodified pytorch/examples vae/main.py at an equal training budget.",
        epilog="Arguments after `--` go to vae/main.py unchanged (after --epochs 1000000).")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget of each side (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides and the evaluations (default 1)")
    p.add_argument("--cpus", default=None, help="taskset core list for training, e.g. 0")
    p.add_argument("--eval-cpus", default=None, help="taskset core list for the evaluations (default: --cpus)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output dir (default {DEFAULT_OUT})")
    p.add_argument("--repo", default=DEFAULT_REPO, help=f"pytorch/examples checkout with {SCRIPT} (default "
                                                        f"{DEFAULT_REPO})")
    p.add_argument("--mnist-raw", default=os.environ.get("GENFORGE_REF_MNIST_RAW", DEFAULT_MNIST_RAW),
                   help="directory with the MNIST raw IDX files, .gz or not (the reference's data)")
    p.add_argument("--genforge-config", default="mnist/vae", help="genforge config (default mnist/vae)")
    p.add_argument("--genforge-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra --set override of the genforge run (repeatable; applied last)")
    p.add_argument("--samples-n", type=int, default=2000, help="prior samples saved from the reference (default 2000)")
    p.add_argument("--eval-n", type=int, default=None, help="samples per FID (default: --samples-n)")
    p.add_argument("--ref", default="mnist:test", help="FID reference images (default mnist:test)")
    p.add_argument("--inception", default=None, help="FID Inception weights (default: genforge's lookup)")
    p.add_argument("--seed", type=int, default=0, help="seed of genforge's run, of the test z and the samples")
    p.add_argument("--test-limit", type=int, default=None, help="-ELBO on the first N test images only (smoke tests)")
    p.add_argument("--no-fid", action="store_true", help="skip FID (smoke tests without Inception features)")
    p.add_argument("--skip-reference", action="store_true", help="reuse the reference's results in --out")
    p.add_argument("--skip-genforge", action="store_true", help="reuse genforge's results in --out")
    p.add_argument("--python", default=sys.executable, help="interpreter of the reference child (default: this one)")
    p.add_argument("--timeout", type=float, default=1800.0, help="extra seconds before a child is killed")
    if "--" in argv:
        i = argv.index("--")
        ns = p.parse_args(argv[:i])
        ns.script_args = argv[i + 1:]
    else:
        ns = p.parse_args(argv)
        ns.script_args = []
    ns.eval_n = ns.eval_n or ns.samples_n
    if ns.eval_n > ns.samples_n:
        p.error(f"--eval-n {ns.eval_n} > --samples-n {ns.samples_n}: the reference has only --samples-n images")
    if ns.minutes <= 0:
        p.error("--minutes must be > 0")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = _parse(sys.argv[1:] if argv is None else argv)
    out = os.path.abspath(ns.out)
    os.makedirs(out, exist_ok=True)
    if not ns.skip_reference:
        train_reference(ns, out)
    if not ns.skip_genforge:
        train_genforge(ns, out)
    if not ns.skip_reference and not ns.no_fid:
        evaluate(ns, out, "reference")
    if not ns.skip_genforge:
        evaluate(ns, out, "genforge")
    summary, table = summarize(ns, out)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(json.dumps(summary))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
